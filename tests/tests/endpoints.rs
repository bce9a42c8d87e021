//! Every endpoint of VISA's web provider API against the local control plane, each response
//! parsed as strictly as VISA's client parses it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

use visa_jobs::objects::{deny_policy_name, group_policy_name, owned_object_selector, pod_name};
use visa_tests::visa::{self, State};
use visa_tests::{Stack, StackOptions, example_request, short_id};

const WAIT: Duration = Duration::from_secs(90);

async fn parsed<T: serde::de::DeserializeOwned>(stack: &Stack, path: &str) -> T {
    let response = stack.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    visa::parse(&response.text().await.unwrap())
}

async fn pod(stack: &Stack, id: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    pods.get(&pod_name(id)).await.unwrap()
}

/// Returns whether a NetworkPolicy's pod selector selects the pod.
fn selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    let wanted = policy
        .spec
        .as_ref()
        .and_then(|spec| spec.pod_selector.as_ref())
        .and_then(|selector| selector.match_labels.clone())
        .unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    !wanted.is_empty()
        && wanted
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

async fn policies(stack: &Stack, id: &str) -> Vec<NetworkPolicy> {
    let api: Api<NetworkPolicy> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    api.list(&ListParams::default().labels(&owned_object_selector(id)))
        .await
        .unwrap()
        .items
}

async fn wait_for_policies(stack: &Stack, id: &str, count: usize) -> Vec<NetworkPolicy> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = policies(stack, id).await;
        if found.len() == count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} NetworkPolicies instead of {count}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn security_groups_change_network_policies() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let instance_pod = pod(&stack, &id).await;
    let pod_uid = instance_pod.metadata.uid.clone();

    // The example request contains DEFAULT, INSTANCE_SUDOERS and PVC_PERSISTENCE.
    let found = wait_for_policies(&stack, &id, 4).await;
    assert!(found.iter().all(|policy| selects(policy, &instance_pod)));
    let names: Vec<String> = found
        .iter()
        .filter_map(|policy| policy.metadata.name.clone())
        .collect();
    assert!(names.contains(&deny_policy_name(&id)), "{names:?}");
    assert!(
        names.contains(&group_policy_name(&id, "DEFAULT")),
        "{names:?}"
    );

    let path = format!("/api/instances/{id}/security_groups");
    let added = stack
        .post(&path, Some(&json!({ "name": "BL13-XALOC" })))
        .await;
    assert!(added.status().is_success());
    let groups: Vec<String> = parsed(&stack, &path).await;
    assert_eq!(
        groups,
        [
            "DEFAULT",
            "INSTANCE_SUDOERS",
            "PVC_PERSISTENCE",
            "BL13-XALOC"
        ]
    );
    let found = wait_for_policies(&stack, &id, 5).await;
    let beamline = found
        .iter()
        .find(|policy| {
            policy.metadata.name.as_deref() == Some(group_policy_name(&id, "BL13-XALOC").as_str())
        })
        .expect("policy of the added group");
    assert!(selects(beamline, &instance_pod));
    let rule = &beamline.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
    assert_eq!(
        rule.from.as_ref().unwrap()[0]
            .ip_block
            .as_ref()
            .unwrap()
            .cidr,
        "10.13.0.0/16"
    );

    let removed = stack
        .post(
            &format!("{path}/remove"),
            Some(&json!({ "name": "DEFAULT" })),
        )
        .await;
    assert!(removed.status().is_success());
    let found = wait_for_policies(&stack, &id, 4).await;
    assert!(found.iter().all(|policy| policy.metadata.name.as_deref()
        != Some(group_policy_name(&id, "DEFAULT").as_str())));
    let groups: Vec<String> = parsed(&stack, &path).await;
    assert_eq!(
        groups,
        ["INSTANCE_SUDOERS", "PVC_PERSISTENCE", "BL13-XALOC"]
    );

    let unknown = stack
        .post(&path, Some(&json!({ "name": "OPEN_TO_ALL" })))
        .await;
    assert_eq!(unknown.status(), 422);
    assert!(unknown.text().await.unwrap().contains("OPEN_TO_ALL"));
    let missing = stack
        .post(&path, Some(&json!({ "group": "DEFAULT" })))
        .await;
    assert_eq!(missing.status(), 422);

    let (_, instance) = stack.instance(&id).await;
    assert_eq!(instance["state"], "ACTIVE");
    assert_eq!(
        pod(&stack, &id).await.metadata.uid,
        pod_uid,
        "group changes never restart the pod"
    );

    assert_eq!(
        stack.delete(&format!("/api/instances/{id}")).await.status(),
        202
    );
    stack.wait_for_gone(&id, WAIT).await;
    assert!(
        policies(&stack, &id).await.is_empty(),
        "policies go with the instance"
    );
}

#[tokio::test]
async fn quota_refuses_and_reports() {
    let stack = Stack::start(StackOptions {
        api_args: vec![
            "--max-instances".into(),
            "2".into(),
            "--max-cores".into(),
            "6".into(),
        ],
        ..StackOptions::default()
    })
    .await;

    let first = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    let limits: visa::Limits = parsed(&stack, "/api/metrics").await;
    assert_eq!(limits.max_total_instances, 2);
    assert_eq!(limits.total_instances_used, 1);
    assert_eq!(limits.max_total_cores, 6);
    assert_eq!(limits.total_cores_used, 4, "one medium instance");
    assert_eq!(limits.total_ram_used, 16384);
    assert!(
        limits.max_total_ram_size > 16384,
        "nodes' memory in MiB: {limits:?}"
    );

    let refused = stack
        .post("/api/instances", Some(&example_request("VISA-INSTANCE-2")))
        .await;
    assert_eq!(refused.status(), 403);
    let message = refused.text().await.unwrap();
    assert!(message.contains("maxTotalCores is 6"), "{message}");
    assert_eq!(stack.database.count_rows("instances").await.unwrap(), 1);

    // Stopping frees the cores but not the instance slot.
    stack
        .post(&format!("/api/instances/{first}/shutdown"), None)
        .await;
    let limits: visa::Limits = parsed(&stack, "/api/metrics").await;
    assert_eq!(limits.total_cores_used, 0);
    assert_eq!(limits.total_instances_used, 1);
}

/// Adds a node that advertises GPUs; KWOK makes it ready.
async fn add_gpu_node(stack: &Stack, name: &str) {
    let nodes: Api<Node> = Api::all(stack.kube.clone());
    let mut node = Node::default();
    node.metadata.name = Some(name.to_owned());
    node.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/hostname".to_owned(),
        name.to_owned(),
    )]));
    node.metadata.annotations = Some(BTreeMap::from([(
        "kwok.x-k8s.io/node".to_owned(),
        "fake".to_owned(),
    )]));
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity("32".to_owned())),
        ("memory".to_owned(), Quantity("256Gi".to_owned())),
        ("pods".to_owned(), Quantity("110".to_owned())),
        ("nvidia.com/gpu".to_owned(), Quantity("4".to_owned())),
    ]);
    node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        ..Default::default()
    });
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

#[tokio::test]
async fn gpu_flavour_lands_on_gpu_node() {
    let stack = Stack::start(StackOptions::default()).await;
    let nodes: Api<Node> = Api::all(stack.kube.clone());
    for node in nodes.list(&ListParams::default()).await.unwrap() {
        let name = node.metadata.name.unwrap();
        if name.starts_with("kwok-gpu-") {
            // A GPU node left by an earlier run would compete for the pod.
            nodes.delete(&name, &DeleteParams::default()).await.unwrap();
        }
    }
    let node_name = format!("kwok-gpu-{}", short_id());
    add_gpu_node(&stack, &node_name).await;

    let devices: Vec<visa::Device> = parsed(&stack, "/api/devices").await;
    assert_eq!(devices[0].identifier, "nvidia.com/gpu");
    assert_eq!(devices[0].device_type, visa::DeviceType::PciPassthrough);
    let device: visa::Device =
        parsed(&stack, "/api/device/VIRTUAL_GPU/nvidia.com/mig-1g.10gb").await;
    assert_eq!(device.device_type, visa::DeviceType::VirtualGpu);
    assert_eq!(
        stack
            .get("/api/device/VIRTUAL_GPU/nvidia.com/gpu")
            .await
            .status(),
        404
    );
    let allocations: Vec<visa::DeviceAllocation> = parsed(&stack, "/api/device_allocations").await;
    assert_eq!(allocations.len(), 1);
    assert_eq!(allocations[0].flavour_id, "gpu-large");
    assert_eq!(allocations[0].unit_count, 1);
    let for_flavour: Vec<visa::DeviceAllocation> =
        parsed(&stack, "/api/flavours/gpu-large/device_allocations").await;
    assert_eq!(for_flavour.len(), 1);
    let none: Vec<visa::DeviceAllocation> =
        parsed(&stack, "/api/flavours/small/device_allocations").await;
    assert!(none.is_empty());

    let mut request = example_request(&format!("VISA-INSTANCE-{}", short_id()));
    request["flavourId"] = json!("gpu-large");
    let response = stack.post("/api/instances", Some(&request)).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    let gpu_pod = pod(&stack, &id).await;
    let spec = gpu_pod.spec.unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node_name.as_str()),
        "only this node has GPUs"
    );
    let resources = spec.containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["nvidia.com/gpu"].0, "1");

    let classes: Vec<String> = parsed(&stack, "/api/custom_resource_classes").await;
    assert!(
        classes.contains(&"nvidia.com/gpu".to_owned()),
        "{classes:?}"
    );
    let usages: Vec<visa::HypervisorUsage> = parsed(&stack, "/api/hypervisor_usages").await;
    let usage = usages
        .iter()
        .find(|usage| usage.hypervisor.id == node_name)
        .unwrap();
    assert!(usage.usage["nvidia.com/gpu"] >= 1);
    assert!(usage.usage["VCPU"] >= 16);

    stack.delete(&format!("/api/instances/{id}")).await;
    stack.wait_for_gone(&id, WAIT).await;
    nodes
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn hypervisors_match_nodes() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let node_name = pod(&stack, &id).await.spec.unwrap().node_name.unwrap();

    let inventories: Vec<visa::HypervisorInventory> =
        parsed(&stack, "/api/hypervisor_inventories").await;
    let nodes: Api<Node> = Api::all(stack.kube.clone());
    let node = nodes.get("kwok-node-0").await.unwrap();
    let allocatable = node.status.unwrap().allocatable.unwrap();
    let inventory = inventories
        .iter()
        .find(|entry| entry.hypervisor.id == "kwok-node-0")
        .unwrap();
    assert_eq!(inventory.hypervisor.hostname, "kwok-node-0");
    assert_eq!(inventory.hypervisor.state, "up");
    assert_eq!(inventory.hypervisor.status, "enabled");
    assert_eq!(
        inventory.inventory["VCPU"].to_string(),
        allocatable["cpu"].0
    );
    assert_eq!(
        inventory.inventory["MEMORY_MB"],
        visa_jobs::quantity::parse_units(&allocatable["memory"].0).unwrap() / (1024 * 1024)
    );

    let allocations: Vec<visa::HypervisorAllocation> =
        parsed(&stack, "/api/hypervisor_allocations").await;
    let here = allocations
        .iter()
        .find(|entry| entry.hypervisor.id == node_name)
        .unwrap();
    assert!(
        here.allocations
            .iter()
            .any(|allocation| allocation.server_compute_id == id)
    );
    let elsewhere = allocations
        .iter()
        .filter(|entry| entry.hypervisor.id != node_name);
    assert!(
        elsewhere
            .flat_map(|entry| &entry.allocations)
            .all(|allocation| allocation.server_compute_id != id)
    );

    let usages: Vec<visa::HypervisorUsage> = parsed(&stack, "/api/hypervisor_usages").await;
    let usage = usages
        .iter()
        .find(|entry| entry.hypervisor.id == node_name)
        .unwrap();
    assert_eq!(usage.usage["VCPU"], 4, "one medium instance on {node_name}");
    assert_eq!(usage.usage["MEMORY_MB"], 16384);
    assert_eq!(usage.usage["DISK_GB"], 50);
}

#[tokio::test]
async fn migration_moves_pod_to_node() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let from = pod(&stack, &id).await.spec.unwrap().node_name.unwrap();
    let to = if from == "kwok-node-0" {
        "kwok-node-1"
    } else {
        "kwok-node-0"
    };

    let path = format!("/api/instances/{id}/migrate");
    let unknown = stack
        .post(&path, Some(&json!({ "host": "node-on-the-moon" })))
        .await;
    assert_eq!(unknown.status(), 422);
    assert!(unknown.text().await.unwrap().contains("node-on-the-moon"));

    let body = json!({ "host": to, "blockMigration": false, "diskOverCommit": false });
    assert_eq!(stack.post(&path, Some(&body)).await.status(), 202);
    let (_, migrating) = stack.instance(&id).await;
    assert_eq!(migrating["state"], "MIGRATING");
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    assert_eq!(
        pod(&stack, &id).await.spec.unwrap().node_name.as_deref(),
        Some(to)
    );
}

#[tokio::test]
async fn migration_can_be_turned_off() {
    let stack = Stack::start(StackOptions {
        api_args: vec!["--disable-migration".into()],
        ..StackOptions::default()
    })
    .await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    let body = json!({ "host": "kwok-node-0", "blockMigration": false, "diskOverCommit": false });
    let response = stack
        .post(&format!("/api/instances/{id}/migrate"), Some(&body))
        .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn retries_and_races_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let name = format!("VISA-INSTANCE-{}", short_id());
    let id = stack.create(&name).await;
    assert_eq!(
        stack.create(&name).await,
        id,
        "a repeated create returns the same id"
    );
    assert_eq!(stack.database.count_rows("instances").await.unwrap(), 1);
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    let uid = pod(&stack, &id).await.metadata.uid;
    let jobs = stack.database.count_rows("jobs").await.unwrap();
    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/start"), None)
            .await
            .status(),
        202
    );
    assert_eq!(
        stack.database.count_rows("jobs").await.unwrap(),
        jobs,
        "start on a running instance"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pod(&stack, &id).await.metadata.uid, uid);

    stack
        .post(&format!("/api/instances/{id}/shutdown"), None)
        .await;
    stack.wait_for_state(&id, "STOPPED", WAIT).await;
    let jobs = stack.database.count_rows("jobs").await.unwrap();
    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/shutdown"), None)
            .await
            .status(),
        202
    );
    assert_eq!(
        stack.database.count_rows("jobs").await.unwrap(),
        jobs,
        "stop on a stopped instance"
    );

    let list: Vec<visa::Instance> = parsed(&stack, "/api/instances").await;
    assert_eq!(list.len(), 1);
    assert_eq!(visa::check_instance(&list[0]), State::Stopped);
    let identifiers: Vec<visa::Identifier> = parsed(&stack, "/api/instances/identifiers").await;
    assert_eq!(identifiers[0].id, id);
    assert_eq!(identifiers[0].name, name);
}

#[tokio::test]
async fn actions_on_deleting_instance_conflict() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    assert_eq!(
        stack.delete(&format!("/api/instances/{id}")).await.status(),
        202
    );
    assert_eq!(
        stack.delete(&format!("/api/instances/{id}")).await.status(),
        202,
        "a repeated delete"
    );

    for action in ["start", "shutdown", "reboot"] {
        let response = stack
            .post(&format!("/api/instances/{id}/{action}"), None)
            .await;
        assert_eq!(response.status(), 409, "{action}");
        assert!(response.text().await.unwrap().contains("being deleted"));
    }
    let response = stack
        .post(
            &format!("/api/instances/{id}/security_groups"),
            Some(&json!({ "name": "DEFAULT" })),
        )
        .await;
    assert_eq!(response.status(), 409);

    let instance: visa::Instance = parsed(&stack, &format!("/api/instances/{id}")).await;
    assert_eq!(visa::check_instance(&instance), State::Deleted);
}

#[tokio::test]
async fn catalogue_answers_parse_strictly() {
    let stack = Stack::start(StackOptions::default()).await;
    let flavours: Vec<visa::Flavour> = parsed(&stack, "/api/flavours").await;
    assert_eq!(flavours.len(), 4);
    assert!(flavours.iter().all(|flavour| flavour.cpus > 0
        && flavour.ram > 0
        && flavour.disk > 0
        && !flavour.name.is_empty()));
    let images: Vec<visa::Image> = parsed(&stack, "/api/images").await;
    assert!(
        images.iter().any(|image| image.id == "jupyter-lab"
            && image.size.is_none()
            && !image.name.is_empty())
    );
    let groups: Vec<String> = parsed(&stack, "/api/security_groups").await;
    assert_eq!(groups.len(), 4);

    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    let instance: visa::Instance = parsed(&stack, &format!("/api/instances/{id}")).await;
    assert_eq!(visa::check_instance(&instance), State::Building);
    assert_eq!(instance.flavour_id, "medium");
    assert_eq!(instance.image_id, "ubuntu-desktop-24-04");
    assert_eq!(instance.metadata["owner"], "jdoe");
    assert!(instance.boot_command.is_some());
    assert!(instance.name.starts_with("VISA-INSTANCE-"));
    assert!(instance.address.is_none());
}

#[tokio::test]
async fn parallel_creates_make_one_instance() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let kubeconfig = stack.kubeconfig.clone();
    let second = stack.spawn_api(&kubeconfig, "api-2");
    let deadline = Instant::now() + WAIT;
    while !stack
        .http
        .get(format!("{second}/readyz"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(Instant::now() < deadline, "second API not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // VISA retries a create after a time-out; ten copies reach two API replicas at once.
    let name = format!("VISA-INSTANCE-{}", short_id());
    let request = example_request(&name);
    let mut creates = Vec::new();
    for index in 0..10 {
        let base = if index % 2 == 0 {
            stack.base_url.clone()
        } else {
            second.clone()
        };
        let http = stack.http.clone();
        let request = request.clone();
        creates.push(tokio::spawn(async move {
            let response = http
                .post(format!("{base}/api/instances"))
                .header("X-Auth-Token", visa_tests::TEST_TOKEN)
                .json(&request)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for create in creates {
        let (status, body) = create.await.unwrap();
        assert_eq!(status, 201, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one id for one name: {ids:?}");
    assert_eq!(stack.database.count_rows("instances").await.unwrap(), 1);
}

#[tokio::test]
async fn parallel_creates_respect_quota() {
    let stack = Stack::start(StackOptions {
        api_args: vec!["--max-instances".into(), "2".into()],
        ..StackOptions::default()
    })
    .await;
    let mut creates = Vec::new();
    for _ in 0..6 {
        let http = stack.http.clone();
        let url = stack.url("/api/instances");
        let request = example_request(&format!("VISA-INSTANCE-{}", short_id()));
        creates.push(tokio::spawn(async move {
            http.post(url)
                .header("X-Auth-Token", visa_tests::TEST_TOKEN)
                .json(&request)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for create in creates {
        statuses.push(create.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 201, 403, 403, 403, 403]);
    assert_eq!(stack.database.count_rows("instances").await.unwrap(), 2);
}
