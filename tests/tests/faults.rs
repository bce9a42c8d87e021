//! Faults that the cluster reports read as ERROR with the kubelet's reason and message.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use visa_jobs::objects::{MAIN_CONTAINER, pod_name};
use visa_tests::{Stack, StackOptions, short_id};

const WAIT: Duration = Duration::from_secs(90);

/// Writes the status a kubelet reports when it cannot pull the image. The phase stays Running
/// because KWOK's pod-ready stage takes pending pods back and would overwrite the status.
async fn report_image_pull_back_off(stack: &Stack, id: &str) {
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let pod = pods.get(&pod_name(id)).await.unwrap();
    let image = pod.spec.unwrap().containers[0].image.clone().unwrap();
    let status = json!({
        "status": {
            "conditions": [
                { "type": "Ready", "status": "False", "reason": "ContainersNotReady" },
                { "type": "ContainersReady", "status": "False", "reason": "ContainersNotReady" },
                { "type": "PodScheduled", "status": "True" }
            ],
            "containerStatuses": [{
                "name": MAIN_CONTAINER,
                "image": image,
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "started": false,
                "state": { "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": format!("Back-off pulling image \"{image}\"")
                } }
            }]
        }
    });
    pods.patch_status(
        &pod_name(id),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn image_pull_back_off_reads_as_error() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    report_image_pull_back_off(&stack, &id).await;
    let instance = stack.wait_for_state(&id, "ERROR", WAIT).await;
    let fault = &instance["fault"];
    assert_eq!(fault["details"], "ImagePullBackOff");
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .starts_with("Back-off pulling image \"registry.example.org/visa/ubuntu-desktop"),
        "{fault}"
    );
    assert_eq!(fault["code"], -1);
    assert!(fault["created"].as_str().unwrap().ends_with('Z'), "{fault}");

    // A reboot replaces the failing pod; KWOK's fresh pod is ready, so the fault clears.
    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/reboot"), None)
            .await
            .status(),
        202
    );
    let instance = stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    assert!(instance["fault"].is_null());
}

#[tokio::test]
async fn unschedulable_instance_errors_after_grace() {
    let catalogue = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/catalogue.example.yaml"),
    )
    .unwrap()
    // No KWOK node has 4096 cores, so the scheduler never places the pod.
    .replace("cpus: 4\n", "cpus: 4096\n");
    let stack = Stack::start(StackOptions {
        catalogue: Some(catalogue),
        start_grace_seconds: 3,
        // Without a maximum of its own, the quota is the nodes' capacity and refuses the create.
        api_args: vec!["--max-cores".into(), "100000".into()],
        ..StackOptions::default()
    })
    .await;

    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    let (_, first) = stack.instance(&id).await;
    assert_eq!(first["state"], "BUILDING");

    let instance = stack.wait_for_state(&id, "ERROR", WAIT).await;
    let fault = &instance["fault"];
    assert_eq!(fault["details"], "Unschedulable");
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .contains("Insufficient cpu"),
        "{fault}"
    );
}
