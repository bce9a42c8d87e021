//! The whole life of an instance, driven over HTTP as VISA drives it, shared by the tests that
//! run it on different stacks.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::Api;

use visa_jobs::objects::{
    ANNOTATION_LAST_ACTION, LABEL_FLAVOUR, LABEL_IMAGE, LABEL_OWNER, MAIN_CONTAINER, pod_name,
    service_name, volume_claim_name,
};

use crate::{Stack, short_id};

pub const WAIT: Duration = Duration::from_secs(90);

async fn pod_uid(stack: &Stack, id: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    pods.get_opt(&pod_name(id))
        .await
        .unwrap()
        .and_then(|pod| pod.metadata.uid)
}

async fn wait_for_pod_gone(stack: &Stack, id: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while pod_uid(stack, id).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "pod of {id} still present"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Drives one instance through create, stop, start, reboot and delete over HTTP, and checks the
/// Kubernetes objects after each step with the stack's admin client.
pub async fn run_lifecycle(stack: &Stack) {
    let name = format!("VISA_INSTANCE-{}", short_id());
    let id = stack.create(&name).await;

    // VISA reads the instance at once and stores the state it reads.
    let (status, first) = stack.instance(&id).await;
    assert_eq!(status, 200);
    assert_eq!(first["state"], "BUILDING");
    assert_eq!(first["name"], name.as_str());
    assert!(first["address"].is_null());

    let active = stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let address = active["address"]
        .as_str()
        .expect("ACTIVE instance has an address");
    assert!(address.parse::<std::net::IpAddr>().is_ok(), "{address}");
    let first_pod = pod_uid(stack, &id)
        .await
        .expect("running instance has a pod");

    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let set = sets.get(&id).await.unwrap();
    let labels = set.metadata.labels.clone().unwrap();
    assert_eq!(labels[LABEL_FLAVOUR], "medium");
    assert_eq!(labels[LABEL_IMAGE], "ubuntu-desktop-24-04");
    assert_eq!(labels[LABEL_OWNER], "jdoe");
    assert_eq!(set.spec.replicas, Some(1));
    let container = &set.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.name, MAIN_CONTAINER);
    let resources = container.resources.as_ref().unwrap();
    assert_eq!(resources.requests, resources.limits);
    let services: Api<Service> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    assert!(
        services
            .get_opt(&service_name(&id))
            .await
            .unwrap()
            .is_some()
    );

    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/shutdown"), None)
            .await
            .status(),
        202
    );
    stack.wait_for_state(&id, "STOPPED", WAIT).await;
    assert_eq!(
        pod_uid(stack, &id).await,
        None,
        "a STOPPED instance has no pod"
    );
    let set = sets.get(&id).await.unwrap();
    assert_eq!(set.spec.replicas, Some(0));

    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/start"), None)
            .await
            .status(),
        202
    );
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let started_pod = pod_uid(stack, &id).await.unwrap();
    assert_ne!(started_pod, first_pod);

    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/reboot"), None)
            .await
            .status(),
        202
    );
    let (_, rebooting) = stack.instance(&id).await;
    assert_eq!(
        rebooting["state"], "REBOOTING",
        "read right after the reboot request"
    );
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let rebooted_pod = pod_uid(stack, &id).await.unwrap();
    assert_ne!(rebooted_pod, started_pod, "reboot recreates the pod");
    let set = sets.get(&id).await.unwrap();
    let annotations = set.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations[ANNOTATION_LAST_ACTION], "reboot");

    assert_eq!(
        stack.delete(&format!("/api/instances/{id}")).await.status(),
        202
    );
    stack.wait_for_gone(&id, WAIT).await;
    wait_for_pod_gone(stack, &id).await;
    assert!(sets.get_opt(&id).await.unwrap().is_none());
    assert!(
        services
            .get_opt(&service_name(&id))
            .await
            .unwrap()
            .is_none()
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let claim = claims.get_opt(&volume_claim_name(&id)).await.unwrap();
    assert!(
        claim.is_some(),
        "the user's volume claim outlives the instance"
    );

    let identifiers = stack
        .get("/api/instances/identifiers")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(
        identifiers
            .as_array()
            .unwrap()
            .iter()
            .all(|entry| entry["id"] != id.as_str())
    );
}
