//! Instance pods that work for real users: what the pod template holds, the objects the instance
//! owns, and the provisioning script run for real in a throw-away root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use visa_jobs::objects::{
    CONFIG_DIR, MAIN_CONTAINER, config_map_name, owned_object_selector, pod_name, service_name,
    volume_claim_name,
};
use visa_tests::{Stack, StackOptions, example_request, short_id};

const WAIT: Duration = Duration::from_secs(90);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Returns the example catalogue plus an image and a flavour that use every pod feature.
fn full_catalogue() -> String {
    let example =
        std::fs::read_to_string(repository().join("config/catalogue.example.yaml")).unwrap();
    example.replace(
        "images:\n",
        "images:\n  - id: full-desktop\n    name: Full desktop\n    containerImage: registry.example.org/visa/desktop:1\n    pullPolicy: Always\n    homeTemplate: /opt/visa/home-template\n    pullSecrets: [desktop-registry]\n    env: {DESKTOP_SESSION: xfce}\n    ports: [{name: rdp, port: 3389}]\n    sidecars:\n      - name: file-api\n        containerImage: registry.example.org/visa/file-api:2\n        ports: [{name: files, port: 8087}]\n        env: {FILE_API_ROOT: /home}\n",
    )
    .replace(
        "flavours:\n",
        "flavours:\n  - id: scheduled\n    name: Scheduled\n    cpus: 2\n    ram: 2048\n    disk: 10\n    storageClass: visa-local\n    nodeSelector: {kubernetes.io/os: linux}\n    tolerations: [{key: visa.example.org/dedicated, operator: Exists, effect: NoSchedule}]\n    affinity:\n      nodeAffinity:\n        preferredDuringSchedulingIgnoredDuringExecution:\n          - weight: 10\n            preference: {matchExpressions: [{key: type, operator: In, values: [kwok]}]}\n",
    )
}

fn env_value(pod_spec: &k8s_openapi::api::core::v1::PodSpec, name: &str) -> Option<String> {
    pod_spec.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|env| env.name == name)
        .and_then(|env| env.value.clone())
}

#[tokio::test]
async fn pod_template_holds_everything() {
    let stack = Stack::start(StackOptions {
        catalogue: Some(full_catalogue()),
        ..StackOptions::default()
    })
    .await;
    let mut request = example_request(&format!("VISA-INSTANCE-{}", short_id()));
    request["imageId"] = json!("full-desktop");
    request["flavourId"] = json!("scheduled");
    request["metadata"]["facilityNote"] =
        json!("quote ' semicolon ; $(touch /tmp/visa-pwned) `id`\nnext line é");
    let response = stack.post("/api/instances", Some(&request)).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // ACTIVE means the API server accepted the StatefulSet and the scheduler placed its pod.
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let set = sets.get(&id).await.unwrap();
    let claim = &set.spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("visa-local")
    );
    let pod_spec = set.spec.template.spec.clone().unwrap();

    let main = &pod_spec.containers[0];
    assert_eq!(main.name, MAIN_CONTAINER);
    let hook = main
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &["/bin/sh".to_owned(), format!("{CONFIG_DIR}/provision.sh")]
    );
    let mounts = main.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|mount| mount.mount_path == CONFIG_DIR && mount.read_only == Some(true))
    );
    assert_eq!(env_value(&pod_spec, "VISA_OWNER").as_deref(), Some("jdoe"));
    assert_eq!(
        env_value(&pod_spec, "VISA_OWNER_UID").as_deref(),
        Some("1000")
    );
    assert_eq!(
        env_value(&pod_spec, "VISA_HOME_TEMPLATE").as_deref(),
        Some("/opt/visa/home-template")
    );
    assert_eq!(
        env_value(&pod_spec, "DESKTOP_SESSION").as_deref(),
        Some("xfce")
    );
    assert_eq!(
        env_value(&pod_spec, "VISA_METADATA_SCREEN_WIDTH").as_deref(),
        Some("1920")
    );
    assert_eq!(
        env_value(&pod_spec, "VISA_METADATA_KEYBOARD_LAYOUT").as_deref(),
        Some("en-gb-qwerty")
    );
    assert_eq!(
        env_value(&pod_spec, "VISA_METADATA_FACILITY_NOTE").as_deref(),
        request["metadata"]["facilityNote"].as_str(),
        "hostile attributes pass through as inert data"
    );
    assert_eq!(
        env_value(&pod_spec, "VISA_METADATA_PAM_PUBLIC_KEY"),
        None,
        "the key has its own variable"
    );
    let pam = main
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|env| env.name == "VISA_PAM_PUBLIC_KEY")
        .unwrap();
    let key_ref = pam
        .value_from
        .as_ref()
        .unwrap()
        .config_map_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(key_ref.name, config_map_name(&id));

    let sidecar = &pod_spec.containers[1];
    assert_eq!(sidecar.name, "file-api");
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example.org/visa/file-api:2")
    );
    assert_eq!(sidecar.ports.as_ref().unwrap()[0].container_port, 8087);
    let secrets: Vec<String> = pod_spec
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|secret| secret.name)
        .collect();
    assert_eq!(secrets, ["desktop-registry"]);
    assert_eq!(pod_spec.node_selector.unwrap()["kubernetes.io/os"], "linux");
    assert_eq!(
        pod_spec.tolerations.unwrap()[0].key.as_deref(),
        Some("visa.example.org/dedicated")
    );
    assert!(pod_spec.affinity.unwrap().node_affinity.is_some());

    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let pod = pods.get(&pod_name(&id)).await.unwrap();
    assert_eq!(
        pod.spec.unwrap().containers.len(),
        2,
        "the pod runs the sidecar too"
    );

    let config_maps: Api<ConfigMap> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let config = config_maps.get(&config_map_name(&id)).await.unwrap();
    let data = config.data.clone().unwrap();
    assert!(data["provision.sh"].starts_with("#!/bin/sh"));
    assert_eq!(data["sudo"], "true", "INSTANCE_SUDOERS grants sudo");
    assert_eq!(
        data["pam-public-key.pem"],
        request["metadata"]["pamPublicKey"].as_str().unwrap()
    );
    assert_eq!(
        data["boot-command"],
        request["bootCommand"].as_str().unwrap()
    );
    let metadata: Value = serde_json::from_str(&data["metadata.json"]).unwrap();
    assert_eq!(metadata, request["metadata"]);

    let set_uid = set.metadata.uid.clone().unwrap();
    let owned_by_set = |references: Option<
        &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    >| {
        references
            .is_some_and(|references| references.iter().any(|reference| reference.uid == set_uid))
    };
    assert!(
        owned_by_set(config.metadata.owner_references.as_ref()),
        "ConfigMap"
    );
    let services: Api<Service> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let service = services.get(&service_name(&id)).await.unwrap();
    assert!(
        owned_by_set(service.metadata.owner_references.as_ref()),
        "Service"
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let selector = ListParams::default().labels(&owned_object_selector(&id));
    for policy in policies.list(&selector).await.unwrap() {
        assert!(
            owned_by_set(policy.metadata.owner_references.as_ref()),
            "NetworkPolicy"
        );
    }

    // Deleting the instance removes everything it owns but the user's volume claim.
    assert_eq!(
        stack.delete(&format!("/api/instances/{id}")).await.status(),
        202
    );
    stack.wait_for_gone(&id, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while config_maps
        .get_opt(&config_map_name(&id))
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "ConfigMap outlived the instance");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        services
            .get_opt(&service_name(&id))
            .await
            .unwrap()
            .is_none()
    );
    assert!(policies.list(&selector).await.unwrap().items.is_empty());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    assert!(
        claims
            .get_opt(&volume_claim_name(&id))
            .await
            .unwrap()
            .is_some()
    );
    assert!(!Path::new("/tmp/visa-pwned").exists());
}

#[tokio::test]
async fn hostile_owner_is_rejected() {
    let stack = Stack::start(StackOptions::default()).await;
    let long = "a".repeat(300);
    for owner in [
        "o'brien",
        "jdoe;reboot",
        "$(touch /tmp/visa-pwned)",
        "jdoe\nroot",
        long.as_str(),
        "jöe",
        "Root",
    ] {
        let mut request = example_request(&format!("VISA-INSTANCE-{}", short_id()));
        request["metadata"]["owner"] = json!(owner);
        let response = stack.post("/api/instances", Some(&request)).await;
        assert_eq!(response.status(), 422, "{owner:?}");
        let body = response.text().await.unwrap();
        assert!(body.contains("metadata.owner"), "{body}");
    }
    let mut request = example_request("VISA-INSTANCE-NO-OWNER");
    request["metadata"].as_object_mut().unwrap().remove("owner");
    assert_eq!(
        stack.post("/api/instances", Some(&request)).await.status(),
        422
    );
    assert_eq!(stack.database.count_rows("instances").await.unwrap(), 0);
}

/// A throw-away root with just enough of /etc for useradd and groupadd.
struct Root {
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let path = std::env::temp_dir().join(format!("visa-root-{}", short_id()));
        for dir in [
            "etc/skel",
            "opt/visa/home-template/.config",
            "usr/share/zoneinfo/Europe",
            "home",
            "etc/visa",
        ] {
            std::fs::create_dir_all(path.join(dir)).unwrap();
        }
        std::fs::write(path.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(path.join("etc/group"), "root:x:0:\nusers:x:100:\n").unwrap();
        std::fs::write(path.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
        std::fs::write(path.join("etc/gshadow"), "root:*::\nusers:*::\n").unwrap();
        std::fs::write(
            path.join("opt/visa/home-template/.config/desktop.conf"),
            "theme=dark\n",
        )
        .unwrap();
        std::fs::copy(
            "/usr/share/zoneinfo/Europe/Madrid",
            path.join("usr/share/zoneinfo/Europe/Madrid"),
        )
        .unwrap();
        std::fs::write(
            path.join("etc/visa/boot-command"),
            "echo \"boot command ran as $(id -u)\"\n",
        )
        .unwrap();
        Root { path }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    /// Runs the provisioning script with `env` and returns whether it succeeded, and its errors.
    fn provision(&self, env: &[(&str, &str)]) -> (bool, String) {
        let output = Command::new("sh")
            .arg(repository().join("jobs/assets/provision.sh"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("VISA_ROOT", &self.path)
            .env("VISA_CONFIG_DIR", self.path.join("etc/visa"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const OWNER_ENV: [(&str, &str); 5] = [
    ("VISA_OWNER", "jdoe"),
    ("VISA_OWNER_UID", "1000"),
    ("VISA_HOME_TEMPLATE", "/opt/visa/home-template"),
    ("TZ", "Europe/Madrid"),
    ("VISA_GROUPS", "p2025096612:50001,p2025097120:50002"),
];

#[test]
fn provision_script_prepares_owner_twice() {
    let root = Root::new();
    let mut env = OWNER_ENV.to_vec();
    env.push(("VISA_SUDO", "true"));

    for run in 1..=2 {
        let (ok, errors) = root.provision(&env);
        assert!(ok, "run {run} failed: {errors}");
    }

    let passwd = root.read("etc/passwd");
    assert_eq!(
        passwd
            .lines()
            .filter(|line| line.starts_with("jdoe:"))
            .count(),
        1,
        "{passwd}"
    );
    assert!(passwd.contains("jdoe:x:1000:"), "{passwd}");
    let group = root.read("etc/group");
    assert!(group.contains("p2025096612:x:50001:jdoe"), "{group}");
    assert!(group.contains("p2025097120:x:50002:jdoe"), "{group}");
    assert_eq!(root.read("home/jdoe/.config/desktop.conf"), "theme=dark\n");
    assert_eq!(
        root.read("etc/sudoers.d/visa-owner"),
        "jdoe ALL=(ALL) NOPASSWD: ALL\n"
    );
    let zone = std::fs::read_link(root.path.join("etc/localtime")).unwrap();
    assert_eq!(zone, Path::new("/usr/share/zoneinfo/Europe/Madrid"));
    assert_eq!(root.read("etc/timezone"), "Europe/Madrid\n");

    // The boot command runs in the background; its output lands in the instance's log.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root
        .read("var/log/visa/boot-command.log")
        .contains("boot command ran")
    {
        assert!(Instant::now() < deadline, "boot command never ran");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Sudo comes from the mounted file when the environment does not set it, and goes away.
    std::fs::write(root.path.join("etc/visa/sudo"), "false").unwrap();
    let (ok, errors) = root.provision(&OWNER_ENV);
    assert!(ok, "{errors}");
    assert!(!root.path.join("etc/sudoers.d/visa-owner").exists());
}

#[test]
fn provision_script_rejects_hostile_values() {
    let root = Root::new();
    let marker = root.path.join("pwned");
    let injection = format!("$(touch {})", marker.display());
    let long = "a".repeat(300);
    let cases: Vec<(&str, String)> = vec![
        ("VISA_OWNER", injection.clone()),
        ("VISA_OWNER", "o'brien".to_owned()),
        ("VISA_OWNER", "jdoe;touch x".to_owned()),
        ("VISA_OWNER", "jdoe\nroot".to_owned()),
        ("VISA_OWNER", long.clone()),
        ("VISA_OWNER", "jöe".to_owned()),
        ("VISA_OWNER_UID", "0".to_owned()),
        ("VISA_OWNER_UID", "99999999999".to_owned()),
        ("VISA_OWNER_UID", "1000;id".to_owned()),
        ("TZ", format!("Europe/Madrid;{injection}")),
        ("TZ", "../../etc/passwd".to_owned()),
        ("TZ", "Europe/Madrid\nUTC".to_owned()),
        ("VISA_GROUPS", format!("{injection}:5000")),
        ("VISA_GROUPS", "staff:50x".to_owned()),
        ("VISA_GROUPS", "staff:5000\nroot:0".to_owned()),
    ];
    for (name, value) in &cases {
        let mut env: Vec<(&str, &str)> = OWNER_ENV
            .iter()
            .copied()
            .filter(|(key, _)| key != name)
            .collect();
        env.push((name, value.as_str()));
        let (ok, errors) = root.provision(&env);
        assert!(!ok, "{name}={value:?} was accepted");
        assert!(errors.contains("invalid"), "{name}={value:?}: {errors}");
        assert!(!marker.exists(), "{name}={value:?} ran a command");
    }
    assert_eq!(
        root.read("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n",
        "nothing was created"
    );
}
