//! Every bad request gets a clear 4xx and leaves nothing behind: no database row, no queued job,
//! no Kubernetes object.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use serde_json::{Value, json};

use visa_tests::{Stack, StackOptions, TEST_TOKEN, example_request};

async fn assert_nothing_left(stack: &Stack) {
    assert_eq!(
        stack.database.count_rows("instances").await.unwrap(),
        0,
        "instance rows"
    );
    assert_eq!(
        stack.database.count_rows("jobs").await.unwrap(),
        0,
        "job rows"
    );
    assert_eq!(stack.queued_jobs().await, 0, "queued jobs");
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let list = sets.list(&Default::default()).await.unwrap();
    assert!(list.items.is_empty(), "StatefulSets in the namespace");
}

async fn create_raw(stack: &Stack, body: &str) -> (u16, Value) {
    let response = stack
        .http
        .post(stack.url("/api/instances"))
        .header("X-Auth-Token", TEST_TOKEN)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn error_text(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn bad_create_requests_leave_nothing() {
    let stack = Stack::start(StackOptions::default()).await;

    let (status, body) = create_raw(&stack, "{\"name\": \"VISA-1\", ").await;
    assert_eq!(status, 400, "malformed JSON: {body}");

    let mut missing = example_request("VISA-2");
    missing.as_object_mut().unwrap().remove("imageId");
    let (status, body) = create_raw(&stack, &missing.to_string()).await;
    assert_eq!(status, 422);
    assert!(error_text(&body).contains("imageId"), "{body}");

    let mut wrong_type = example_request("VISA-3");
    wrong_type["flavourId"] = json!(3);
    let (status, body) = create_raw(&stack, &wrong_type.to_string()).await;
    assert_eq!(status, 422);
    assert!(error_text(&body).contains("flavourId"), "{body}");

    let mut wrong_metadata = example_request("VISA-4");
    wrong_metadata["metadata"]["screenWidth"] = json!(1920);
    let (status, body) = create_raw(&stack, &wrong_metadata.to_string()).await;
    assert_eq!(status, 422);
    assert!(error_text(&body).contains("metadata"), "{body}");

    let cases = [
        ("flavourId", json!("huge"), "\"huge\""),
        ("imageId", json!("windows-95"), "\"windows-95\""),
        (
            "securityGroups",
            json!(["DEFAULT", "OPEN_TO_ALL"]),
            "\"OPEN_TO_ALL\"",
        ),
        ("name", json!("___"), "\"___\""),
        ("name", json!(""), "name is empty"),
    ];
    for (field, value, expected) in cases {
        let mut request = example_request("VISA-5");
        request[field] = value;
        let (status, body) = create_raw(&stack, &request.to_string()).await;
        assert_eq!(status, 422, "{field}: {body}");
        assert!(error_text(&body).contains(expected), "{field}: {body}");
    }

    let response = stack
        .http
        .post(stack.url("/api/instances"))
        .header("X-Auth-Token", TEST_TOKEN)
        .body(example_request("VISA-6").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415, "body without a JSON content type");

    // Each entry becomes an environment variable and the boot command a ConfigMap entry, so
    // both are bounded well below what etcd stores.
    let mut many = example_request("VISA-8");
    for index in 0..201 {
        many["metadata"][format!("attribute{index}")] = json!("x");
    }
    let (status, body) = create_raw(&stack, &many.to_string()).await;
    assert_eq!(status, 422);
    assert!(error_text(&body).contains("send at most 200"), "{body}");

    let mut large = example_request("VISA-9");
    large["metadata"]["notes"] = json!("x".repeat(70 * 1024));
    let (status, body) = create_raw(&stack, &large.to_string()).await;
    assert_eq!(status, 422);
    assert!(error_text(&body).contains("send at most 65536"), "{body}");

    let mut boot = example_request("VISA-10");
    boot["bootCommand"] = json!("#".repeat(300 * 1024));
    let (status, body) = create_raw(&stack, &boot.to_string()).await;
    assert_eq!(status, 422);
    assert!(error_text(&body).contains("bootCommand"), "{body}");

    let response = stack
        .http
        .put(stack.url("/api/instances"))
        .header("X-Auth-Token", TEST_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert!(error_text(&body).contains("method not allowed"), "{body}");

    assert_nothing_left(&stack).await;
}

#[tokio::test]
async fn token_is_required() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = example_request("VISA-7");

    let anonymous = stack
        .http
        .post(stack.url("/api/instances"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let wrong = stack
        .http
        .post(stack.url("/api/instances"))
        .header("X-Auth-Token", "not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    for path in [
        "/api/instances",
        "/api/flavours",
        "/api/images/jupyter-lab",
        "/api/nowhere",
    ] {
        let response = stack.http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }

    let health = stack.http.get(stack.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health stays open to probes");

    assert_nothing_left(&stack).await;
}

#[tokio::test]
async fn unknown_instance_is_not_found() {
    let stack = Stack::start(StackOptions::default()).await;

    for id in ["visa-instance-999", "NOT_AN_ID", "x%20y"] {
        assert_eq!(stack.instance(id).await.0, 404, "GET {id}");
        for action in ["start", "shutdown", "reboot"] {
            let status = stack
                .post(&format!("/api/instances/{id}/{action}"), None)
                .await
                .status();
            assert_eq!(status, 404, "{action} {id}");
        }
        assert_eq!(
            stack.delete(&format!("/api/instances/{id}")).await.status(),
            404,
            "DELETE {id}"
        );
    }

    assert_eq!(stack.get("/api/flavours/huge").await.status(), 404);
    assert_eq!(stack.get("/api/images/windows-95").await.status(), 404);
    assert_nothing_left(&stack).await;
}

#[tokio::test]
async fn catalogue_endpoints_match_file() {
    let stack = Stack::start(StackOptions::default()).await;

    let flavours: Value = stack.get("/api/flavours").await.json().await.unwrap();
    let medium = flavours
        .as_array()
        .unwrap()
        .iter()
        .find(|flavour| flavour["id"] == "medium")
        .unwrap();
    assert_eq!(medium["cpus"], 4);
    assert_eq!(medium["ram"], 16384);
    assert_eq!(medium["disk"], 50);

    let flavour: Value = stack.get("/api/flavours/small").await.json().await.unwrap();
    assert_eq!(flavour["ram"], 4096);

    let images: Value = stack.get("/api/images").await.json().await.unwrap();
    let jupyter = images
        .as_array()
        .unwrap()
        .iter()
        .find(|image| image["id"] == "jupyter-lab")
        .unwrap();
    assert!(jupyter["size"].is_null());
    assert!(jupyter.get("containerImage").is_none(), "VISA's shape only");

    let image: Value = stack
        .get("/api/images/ubuntu-desktop-24-04")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(image["size"], 4831838208_i64);

    let groups: Value = stack
        .get("/api/security_groups")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        groups,
        json!([
            "DEFAULT",
            "INSTANCE_SUDOERS",
            "PVC_PERSISTENCE",
            "BL13-XALOC"
        ])
    );
}
