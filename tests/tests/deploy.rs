//! The Helm chart in deploy/helm: helm lint, the rendered objects as the API server accepts them
//! (server-side dry run), the rights of its ServiceAccount, and the whole instance lifecycle run
//! with that ServiceAccount's token instead of the cluster admin's.

use std::path::PathBuf;

use base64::Engine;
use serde_json::Value;

use visa_tests::chart::{
    CHART_NAME, ProviderAccount, chart_dir, create_namespace, helm, kubectl, render,
    server_dry_run, success_output,
};
use visa_tests::lifecycle::run_lifecycle;
use visa_tests::{Backend, Stack, StackOptions, binary, repository_root, required_env, short_id};

fn admin_kubeconfig() -> PathBuf {
    PathBuf::from(required_env("VISA_TEST_KUBECONFIG"))
}

fn values_file(name: &str) -> String {
    chart_dir()
        .join("ci")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// Returns the object of `kind` named `name`, or panics with the objects that are there.
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", object_names(objects)))
}

/// Returns "Kind/name" of each object, sorted.
fn object_names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .map(|object| {
            format!(
                "{}/{}",
                object["kind"].as_str().unwrap(),
                object["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

fn first_container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// Returns the environment variable `name` of a container, or `Value::Null`.
fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|variable| variable["name"] == name)
        .unwrap_or(&Value::Null)
}

fn volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == name)
        .unwrap_or(&Value::Null)
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| mount["name"] == volume)
        .map(|mount| &mount["mountPath"])
        .unwrap_or(&Value::Null)
}

/// Checks the pod and container security settings that every provider pod must have.
fn assert_hardened(deployment: &Value) {
    let name = deployment["metadata"]["name"].as_str().unwrap();
    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true, "{name}: runAsNonRoot");
    assert_eq!(
        pod["seccompProfile"]["type"], "RuntimeDefault",
        "{name}: seccompProfile"
    );
    let container = &first_container(deployment)["securityContext"];
    assert_eq!(
        container["readOnlyRootFilesystem"], true,
        "{name}: readOnlyRootFilesystem"
    );
    assert_eq!(
        container["allowPrivilegeEscalation"], false,
        "{name}: allowPrivilegeEscalation"
    );
    assert_eq!(
        container["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{name}: capabilities"
    );
}

fn decode_secret_value(secret: &Value, key: &str) -> String {
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret has no key {key}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Lists the RBAC rules as sorted (API group, resource, verbs) triples, for exact comparison.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut triples = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let mut verbs: Vec<String> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|verb| verb.as_str().unwrap().to_owned())
            .collect();
        verbs.sort();
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                triples.push((
                    group.as_str().unwrap().to_owned(),
                    resource.as_str().unwrap().to_owned(),
                    verbs.clone(),
                ));
            }
        }
    }
    triples.sort();
    triples
}

fn rule(group: &str, resource: &str, verbs: &[&str]) -> (String, String, Vec<String>) {
    let mut verbs: Vec<String> = verbs.iter().map(|verb| verb.to_string()).collect();
    verbs.sort();
    (group.to_owned(), resource.to_owned(), verbs)
}

#[test]
fn chart_passes_helm_lint() {
    let chart = chart_dir();
    for values in ["required-values.yaml", "full-values.yaml"] {
        let output = helm(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "-f",
            &values_file(values),
        ]);
        let stdout = success_output(&output, &format!("helm lint with {values}"));
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint with {values}: {stdout}"
        );
    }
}

#[test]
fn template_rejects_missing_values() {
    let required = values_file("required-values.yaml");
    let redis = "redis.url=redis://redis.example.test:6379/0";
    let database = "database.url=mysql://visa:test-password@db.example.test:3306/visa";
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "no database URL",
            vec!["--set", redis],
            "database.url or database.existingSecret is required",
        ),
        (
            "no Redis URL",
            vec!["--set", database],
            "redis.url or redis.existingSecret is required",
        ),
        (
            "SQLite database URL",
            vec![
                "--set",
                redis,
                "--set-string",
                "database.url=sqlite:///var/lib/visa/provider.db?mode=rwc",
            ],
            "database.url is a SQLite URL, which the chart rejects",
        ),
        (
            "short token",
            vec!["-f", &required, "--set", "token.value=test-token"],
            "token.value is shorter than 16 characters",
        ),
        (
            "existing ServiceAccount without a name",
            vec!["-f", &required, "--set", "serviceAccount.create=false"],
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ];
    for (case, args, message) in cases {
        let output = render("visa", "visa-provider", &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: helm template succeeded");
        assert!(stderr.contains(message), "{case}: {stderr}");
    }

    // With an existing Secret for each URL, no URL is required.
    let output = render(
        "visa",
        "visa-provider",
        &[
            "--set",
            "database.existingSecret=site-database",
            "--set",
            "redis.existingSecret=site-redis",
        ],
    );
    success_output(&output, "helm template with existing Secrets only");
}

#[test]
fn default_values_pass_server_dry_run() {
    let kubeconfig = admin_kubeconfig();
    let namespace = format!("visa-p-{}", short_id());
    create_namespace(&kubeconfig, &namespace);
    let output = render(
        "visa",
        &namespace,
        &["-f", &values_file("required-values.yaml")],
    );
    let manifest = success_output(&output, "helm template with the required values");
    let objects = server_dry_run(&kubeconfig, &manifest);

    let base = format!("visa-{CHART_NAME}");
    let cluster_name = format!("{namespace}-{base}-node-reader");
    let mut expected = vec![
        format!("ClusterRole/{cluster_name}"),
        format!("ClusterRoleBinding/{cluster_name}"),
        format!("ConfigMap/{base}-catalogue"),
        format!("Deployment/{base}-api"),
        format!("Deployment/{base}-worker"),
        "Namespace/visa-instances".to_owned(),
        format!("PodDisruptionBudget/{base}-api"),
        format!("Role/{base}"),
        format!("RoleBinding/{base}"),
        format!("Secret/{base}"),
        format!("Service/{base}-api"),
        format!("ServiceAccount/{base}"),
    ];
    expected.sort();
    assert_eq!(object_names(&objects), expected);

    let api = find(&objects, "Deployment", &format!("{base}-api"));
    assert_eq!(api["spec"]["replicas"], 2);
    let rolling_update = &api["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling_update["maxUnavailable"], 0);
    assert_eq!(rolling_update["maxSurge"], 1);
    assert_eq!(api["spec"]["template"]["spec"]["serviceAccountName"], base);
    assert_hardened(api);
    let container = first_container(api);
    assert_eq!(container["command"], serde_json::json!(["visa-api"]));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(env(container, "VISA_LISTEN")["value"], "0.0.0.0:8080");
    assert_eq!(env(container, "VISA_NAMESPACE")["value"], "visa-instances");
    assert_eq!(
        env(container, "VISA_CATALOGUE")["value"],
        "/etc/visa/catalogue/catalogue.yaml"
    );
    assert_eq!(
        env(container, "VISA_TOKEN_FILE")["value"],
        "/etc/visa/token/token"
    );
    assert_eq!(mount_path(container, "token"), "/etc/visa/token");
    let token_volume = &volume(api, "token")["secret"];
    assert_eq!(token_volume["secretName"], base);
    assert_eq!(token_volume["items"][0]["key"], "token");
    assert_eq!(token_volume["items"][0]["path"], "token");
    let database_ref = &env(container, "VISA_DATABASE_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(database_ref["name"], base);
    assert_eq!(database_ref["key"], "database-url");
    let redis_ref = &env(container, "VISA_REDIS_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(redis_ref["name"], base);
    assert_eq!(redis_ref["key"], "redis-url");

    let worker = find(&objects, "Deployment", &format!("{base}-worker"));
    assert_eq!(worker["spec"]["replicas"], 1);
    assert_hardened(worker);
    let container = first_container(worker);
    assert_eq!(container["command"], serde_json::json!(["visa-worker"]));
    assert_eq!(mount_path(container, "catalogue"), "/etc/visa/catalogue");
    assert!(env(container, "VISA_LDAP_PASSWORD_FILE").is_null());
    assert!(volume(worker, "ldap").is_null());

    let budget = find(&objects, "PodDisruptionBudget", &format!("{base}-api"));
    assert_eq!(budget["spec"]["minAvailable"], 1);
    let api_labels = &api["spec"]["template"]["metadata"]["labels"];
    for (key, value) in budget["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &api_labels[key], value,
            "PodDisruptionBudget selector {key}"
        );
    }
    let service = find(&objects, "Service", &format!("{base}-api"));
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&api_labels[key], value, "Service selector {key}");
    }

    let catalogue = find(&objects, "ConfigMap", &format!("{base}-catalogue"));
    let example =
        std::fs::read_to_string(repository_root().join("config/catalogue.example.yaml")).unwrap();
    assert_eq!(
        catalogue["data"]["catalogue.yaml"].as_str().unwrap(),
        example,
        "the default catalogue in values.yaml differs from config/catalogue.example.yaml"
    );

    let secret = find(&objects, "Secret", &base);
    assert_eq!(
        decode_secret_value(secret, "database-url"),
        "mysql://visa:test-password@mariadb.example.test:3306/visa"
    );
    assert_eq!(
        decode_secret_value(secret, "redis-url"),
        "redis://redis.example.test:6379/0"
    );
    assert_eq!(decode_secret_value(secret, "token").len(), 48);
    assert!(secret["data"].get("ldap-bind-password").is_none());

    let role = find(&objects, "Role", &base);
    assert_eq!(role["metadata"]["namespace"], "visa-instances");
    assert_eq!(
        rules(role),
        vec![
            rule(
                "",
                "configmaps",
                &["create", "patch", "delete", "deletecollection"]
            ),
            rule("", "pods", &["get", "list", "watch", "delete"]),
            rule("", "resourcequotas", &["list", "watch"]),
            rule("", "services", &["create", "patch", "delete"]),
            rule(
                "apps",
                "statefulsets",
                &["get", "list", "watch", "create", "patch", "delete"]
            ),
            rule(
                "networking.k8s.io",
                "networkpolicies",
                &["list", "create", "patch", "delete", "deletecollection"]
            ),
        ]
    );
    let binding = find(&objects, "RoleBinding", &base);
    assert_eq!(binding["subjects"][0]["name"], base);
    assert_eq!(binding["subjects"][0]["namespace"], namespace);
    let node_reader = find(&objects, "ClusterRole", &cluster_name);
    assert_eq!(
        rules(node_reader),
        vec![rule("", "nodes", &["get", "list", "watch"])]
    );

    let instances = find(&objects, "Namespace", "visa-instances");
    assert_eq!(
        instances["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
}

#[test]
fn full_values_pass_server_dry_run() {
    let kubeconfig = admin_kubeconfig();
    let id = short_id();
    let namespace = format!("visa-p-{id}");
    let instances_namespace = format!("visa-i-{id}");
    create_namespace(&kubeconfig, &namespace);
    create_namespace(&kubeconfig, &instances_namespace);
    let instances_setting = format!("instances.namespace={instances_namespace}");
    let output = render(
        "visa",
        &namespace,
        &[
            "-f",
            &values_file("full-values.yaml"),
            "--set",
            &instances_setting,
        ],
    );
    let manifest = success_output(&output, "helm template with every value set");
    let objects = server_dry_run(&kubeconfig, &manifest);

    // Every secret comes from an existing Secret, and the instances' namespace exists already.
    let cluster_name = format!("{namespace}-visa-full-node-reader");
    let mut expected = vec![
        format!("ClusterRole/{cluster_name}"),
        format!("ClusterRoleBinding/{cluster_name}"),
        "ConfigMap/visa-full-catalogue".to_owned(),
        "Deployment/visa-full-api".to_owned(),
        "Deployment/visa-full-worker".to_owned(),
        "PodDisruptionBudget/visa-full-api".to_owned(),
        "Role/visa-full".to_owned(),
        "RoleBinding/visa-full".to_owned(),
        "Service/visa-full-api".to_owned(),
        "ServiceAccount/visa-provider-account".to_owned(),
    ];
    expected.sort();
    assert_eq!(object_names(&objects), expected);

    let api = find(&objects, "Deployment", "visa-full-api");
    assert_eq!(api["spec"]["replicas"], 3);
    assert_eq!(
        api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(api["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 2);
    assert_eq!(api["metadata"]["labels"]["example.test/team"], "platform");
    assert_hardened(api);
    let pod = &api["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "visa-provider-account");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(pod["imagePullSecrets"][0]["name"], "provider-registry");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "example.test/dedicated");
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "api"
    );
    let container = first_container(api);
    assert_eq!(
        container["image"],
        "registry.example.test/visa/visa-k8s-provider@sha256:0000000000000000000000000000000000000000000000000000000000000000"
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(container["readinessProbe"]["periodSeconds"], 3);
    assert_eq!(container["livenessProbe"]["failureThreshold"], 4);
    assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
    let expected_env = [
        ("RUST_LOG", "debug"),
        ("VISA_LISTEN", "[::]:9090"),
        ("VISA_NAMESPACE", instances_namespace.as_str()),
        ("VISA_ENVIRONMENT", "staging"),
        ("VISA_STORAGE_CLASS", "fast-ssd"),
        ("VISA_TIME_ZONE", "Europe/Paris"),
        (
            "VISA_IMAGE_PULL_SECRETS",
            "desktop-registry,notebook-registry",
        ),
        ("VISA_VOLUME_MOUNT_PATH", "/data"),
        ("VISA_QUEUE", "visa-staging"),
        ("VISA_HEARTBEAT_SECONDS", "10"),
        ("VISA_MISSED_HEARTBEATS", "5"),
        ("VISA_START_GRACE_SECONDS", "900"),
        ("VISA_REFRESH_INTERVAL_MS", "2000"),
        ("RUST_BACKTRACE", "1"),
    ];
    for (name, value) in expected_env {
        assert_eq!(env(container, name)["value"], value, "API variable {name}");
    }
    let token_volume = &volume(api, "token")["secret"];
    assert_eq!(token_volume["secretName"], "visa-token");
    assert_eq!(token_volume["items"][0]["key"], "visa-token");

    let worker = find(&objects, "Deployment", "visa-full-worker");
    assert_eq!(worker["spec"]["replicas"], 3);
    assert_eq!(
        worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        120
    );
    assert_hardened(worker);
    let container = first_container(worker);
    let expected_env = [
        ("VISA_WORKER_CONCURRENCY", "8"),
        ("VISA_LEASE_TTL_SECONDS", "60"),
        ("VISA_RETRY_BUDGET_SECONDS", "300"),
        ("VISA_SWEEP_INTERVAL_SECONDS", "60"),
        ("VISA_SWEEP_STALE_SECONDS", "600"),
        ("VISA_LDAP_PASSWORD_FILE", "/etc/visa/ldap/bind-password"),
    ];
    for (name, value) in expected_env {
        assert_eq!(
            env(container, name)["value"],
            value,
            "worker variable {name}"
        );
    }
    assert_eq!(mount_path(container, "ldap"), "/etc/visa/ldap");
    let ldap_volume = &volume(worker, "ldap")["secret"];
    assert_eq!(ldap_volume["secretName"], "visa-ldap");
    assert_eq!(ldap_volume["items"][0]["key"], "password");
    assert_eq!(ldap_volume["items"][0]["path"], "bind-password");
    let secret_refs = [
        ("VISA_DATABASE_URL", "visa-database", "url"),
        ("VISA_REDIS_URL", "visa-redis", "url"),
    ];
    for deployment in [api, worker] {
        let container = first_container(deployment);
        for (variable, secret, key) in secret_refs {
            let reference = &env(container, variable)["valueFrom"]["secretKeyRef"];
            assert_eq!(reference["name"], secret, "{variable}");
            assert_eq!(reference["key"], key, "{variable}");
        }
    }

    let budget = find(&objects, "PodDisruptionBudget", "visa-full-api");
    assert_eq!(budget["spec"]["minAvailable"], 2);
    let service = find(&objects, "Service", "visa-full-api");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(
        service["metadata"]["annotations"]["example.test/exposed"],
        "true"
    );
    let catalogue = find(&objects, "ConfigMap", "visa-full-catalogue");
    assert!(
        catalogue["data"]["catalogue.yaml"]
            .as_str()
            .unwrap()
            .contains("id: tiny")
    );
    let role = find(&objects, "Role", "visa-full");
    assert_eq!(role["metadata"]["namespace"], instances_namespace);
    let account = find(&objects, "ServiceAccount", "visa-provider-account");
    assert_eq!(
        account["metadata"]["annotations"]["example.test/purpose"],
        "test"
    );
}

/// Reads the token from the release's Secret through kubectl.
fn installed_token(namespace: &str, secret: &str) -> String {
    let output = kubectl(
        &admin_kubeconfig(),
        &[
            "get",
            "secret",
            secret,
            "--namespace",
            namespace,
            "-o",
            "jsonpath={.data.token}",
        ],
        None,
    );
    let encoded = success_output(&output, "kubectl get secret");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Runs `helm install` or `helm upgrade` of the chart on the test cluster with the required
/// values and `extra` arguments.
fn install_chart(command: &str, release: &str, namespace: &str, extra: &[&str]) {
    let kubeconfig = admin_kubeconfig();
    let chart = chart_dir();
    let required = values_file("required-values.yaml");
    let mut args = vec![
        command,
        release,
        chart.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--namespace",
        namespace,
        "-f",
        &required,
    ];
    args.extend_from_slice(extra);
    success_output(&helm(&args), &format!("helm {command}"));
}

/// A Helm release on the test cluster, uninstalled when dropped so that a failed test leaves no
/// ClusterRole behind.
struct InstalledRelease {
    name: String,
    namespace: String,
}

impl InstalledRelease {
    fn uninstall(&self) -> std::process::Output {
        let kubeconfig = admin_kubeconfig();
        helm(&[
            "uninstall",
            &self.name,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--namespace",
            &self.namespace,
            "--ignore-not-found",
            "--wait",
        ])
    }
}

impl Drop for InstalledRelease {
    fn drop(&mut self) {
        let output = self.uninstall();
        if !output.status.success() {
            eprintln!(
                "failed to uninstall release {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn install_keeps_token_and_namespace() {
    let kubeconfig = admin_kubeconfig();
    let id = short_id();
    let namespace = format!("visa-p-{id}");
    let instances_namespace = format!("visa-i-{id}");
    let release = format!("visa-{id}");
    let base = format!("{release}-{CHART_NAME}");
    let instances_setting = format!("instances.namespace={instances_namespace}");

    install_chart(
        "install",
        &release,
        &namespace,
        &["--create-namespace", "--set", &instances_setting],
    );
    let installed = InstalledRelease {
        name: release.clone(),
        namespace: namespace.clone(),
    };
    let token = installed_token(&namespace, &base);
    assert_eq!(token.len(), 48, "generated token length");

    install_chart(
        "upgrade",
        &release,
        &namespace,
        &["--set", &instances_setting, "--set", "logLevel=debug"],
    );
    assert_eq!(
        installed_token(&namespace, &base),
        token,
        "helm upgrade changed the generated token"
    );
    let log_level = kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment",
            &format!("{base}-worker"),
            "--namespace",
            &namespace,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='RUST_LOG')].value}",
        ],
        None,
    );
    assert_eq!(
        success_output(&log_level, "kubectl get deployment"),
        "debug",
        "helm upgrade did not apply the new RUST_LOG"
    );

    let uninstall = installed.uninstall();
    success_output(&uninstall, "helm uninstall");
    let instances = kubectl(
        &kubeconfig,
        &["get", "namespace", &instances_namespace, "-o", "name"],
        None,
    );
    assert_eq!(
        success_output(&instances, "kubectl get namespace").trim(),
        format!("namespace/{instances_namespace}"),
        "helm uninstall deleted the instances' namespace"
    );
    let cluster_role = kubectl(
        &kubeconfig,
        &[
            "get",
            "clusterrole",
            &format!("{namespace}-{base}-node-reader"),
            "--ignore-not-found",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(
        success_output(&cluster_role, "kubectl get clusterrole"),
        "",
        "helm uninstall left the ClusterRole"
    );
}

/// Every VISA_ variable that the chart sets must be an option of the binary it runs, because the
/// binaries ignore unknown variables.
#[test]
fn chart_variables_are_binary_options() {
    let output = render(
        "visa",
        "visa-provider",
        &[
            "-f",
            &values_file("full-values.yaml"),
            "--show-only",
            "templates/api-deployment.yaml",
            "--show-only",
            "templates/worker-deployment.yaml",
        ],
    );
    let manifest = success_output(&output, "helm template of the Deployments");

    for (deployment, binary_name) in [("api", "visa-api"), ("worker", "visa-worker")] {
        let help = std::process::Command::new(binary(binary_name))
            .arg("--help")
            .output()
            .unwrap();
        let help = success_output(&help, &format!("{binary_name} --help"));
        let header = format!("name: visa-full-{deployment}\n");
        let start = manifest.find(&header).unwrap();
        let end = manifest[start..]
            .find("\n---")
            .map_or(manifest.len(), |end| start + end);
        let mut checked = 0;
        for line in manifest[start..end].lines() {
            let Some(name) = line.trim().strip_prefix("- name: VISA_") else {
                continue;
            };
            let name = format!("VISA_{name}");
            checked += 1;
            assert!(
                help.contains(&format!("[env: {name}="))
                    || help.contains(&format!("[env: {name}]")),
                "{binary_name} has no option read from {name}"
            );
        }
        assert!(
            checked >= 15,
            "only {checked} variables found in the {deployment} Deployment"
        );
    }
}

#[tokio::test]
async fn lifecycle_with_chart_service_account() {
    let account = ProviderAccount::create(&admin_kubeconfig());
    let whoami = kubectl(
        &account.kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        None,
    );
    assert_eq!(
        success_output(&whoami, "kubectl auth whoami"),
        format!(
            "system:serviceaccount:{}:{}",
            account.namespace, account.service_account
        )
    );

    let stack = Stack::start(StackOptions {
        backend: Backend::MariaDb,
        namespace: Some(account.instances_namespace.clone()),
        provider_kubeconfig: Some(account.kubeconfig.clone()),
        ..StackOptions::default()
    })
    .await;
    run_lifecycle(&stack).await;

    for log in ["api", "worker-0"] {
        let text = stack.log(log);
        assert!(
            !text.to_lowercase().contains("forbidden"),
            "the {log} log reports a request that RBAC rejected:\n{text}"
        );
    }
}

#[test]
fn chart_service_account_rights() {
    let account = ProviderAccount::create(&admin_kubeconfig());
    let in_instances = ["--namespace", account.instances_namespace.as_str()];

    let allowed = [
        ("get", "statefulsets.apps"),
        ("list", "statefulsets.apps"),
        ("watch", "statefulsets.apps"),
        ("create", "statefulsets.apps"),
        ("patch", "statefulsets.apps"),
        ("delete", "statefulsets.apps"),
        ("create", "services"),
        ("patch", "services"),
        ("delete", "services"),
        ("get", "pods"),
        ("list", "pods"),
        ("watch", "pods"),
        ("delete", "pods"),
        ("create", "configmaps"),
        ("patch", "configmaps"),
        ("deletecollection", "configmaps"),
        ("list", "networkpolicies.networking.k8s.io"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("deletecollection", "networkpolicies.networking.k8s.io"),
        ("list", "resourcequotas"),
        ("watch", "resourcequotas"),
    ];
    for (verb, resource) in allowed {
        assert!(
            account.can_i(verb, resource, &in_instances),
            "{verb} {resource} in the instances' namespace is denied"
        );
    }

    let denied = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("update", "statefulsets.apps"),
        ("deletecollection", "statefulsets.apps"),
        ("create", "pods"),
        ("update", "pods"),
        ("create", "pods/exec"),
        ("create", "deployments.apps"),
        ("get", "services"),
        ("list", "services"),
        ("get", "persistentvolumeclaims"),
        ("delete", "persistentvolumeclaims"),
        ("get", "configmaps"),
        ("list", "configmaps"),
        ("create", "resourcequotas"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ];
    for (verb, resource) in denied {
        assert!(
            !account.can_i(verb, resource, &in_instances),
            "{verb} {resource} in the instances' namespace is allowed"
        );
    }

    let other_namespaces = [
        account.namespace.as_str(),
        "default",
        "kube-system",
        "visa-instances",
    ];
    let workloads = [
        "statefulsets.apps",
        "deployments.apps",
        "pods",
        "services",
        "secrets",
    ];
    for namespace in other_namespaces {
        for resource in workloads {
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                assert!(
                    !account.can_i(verb, resource, &["--namespace", namespace]),
                    "{verb} {resource} in namespace {namespace} is allowed"
                );
            }
        }
    }
    for resource in workloads.iter().chain(&["configmaps"]) {
        for verb in ["get", "list", "watch"] {
            assert!(
                !account.can_i(verb, resource, &["--all-namespaces"]),
                "{verb} {resource} in all namespaces is allowed"
            );
        }
    }

    for verb in ["get", "list", "watch"] {
        assert!(account.can_i(verb, "nodes", &[]), "{verb} nodes is denied");
    }
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        assert!(
            !account.can_i(verb, "nodes", &[]),
            "{verb} nodes is allowed"
        );
    }
    assert!(
        !account.can_i("update", "nodes/status", &[]),
        "update nodes/status is allowed"
    );
}
