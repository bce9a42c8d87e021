//! The served OpenAPI document stays true: a walk through every path of the API checks each
//! real answer's status and body against it.

use std::time::Duration;

use serde_json::{Value, json};

use visa_tests::{Stack, StackOptions, TEST_TOKEN, example_request, short_id};

struct Checker {
    document: Value,
    checked: usize,
}

impl Checker {
    /// Checks that `status` is documented for the operation and that `body` matches its schema.
    fn check(&mut self, method: &str, template: &str, status: u16, body: &Value) {
        let operation = &self.document["paths"][template][method];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template} answered {status}, which is not documented: {body}"
        );

        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_null() {
            return;
        }
        let mut root = schema.as_object().unwrap().clone();
        root.insert("components".to_owned(), self.document["components"].clone());
        let validator = jsonschema::validator_for(&Value::Object(root)).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: {errors:?}\nbody: {body}"
        );
        self.checked += 1;
    }
}

async fn call(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = match method {
        "get" => stack.http.get(stack.url(path)),
        "post" => stack.http.post(stack.url(path)),
        "delete" => stack.http.delete(stack.url(path)),
        other => panic!("unknown method {other}"),
    }
    .header("X-Auth-Token", TEST_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn answers_match_openapi() {
    let stack = Stack::start(StackOptions::default()).await;
    let document: Value = stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let mut checker = Checker {
        document,
        checked: 0,
    };

    let name = format!("VISA-INSTANCE-{}", short_id());
    let (status, created) = call(
        &stack,
        "post",
        "/api/instances",
        Some(example_request(&name)),
    )
    .await;
    checker.check("post", "/api/instances", status, &created);
    let id = created["id"].as_str().unwrap().to_owned();
    let instance = format!("/api/instances/{id}");

    let (status, body) = call(&stack, "get", &instance, None).await;
    checker.check("get", "/api/instances/{id}", status, &body);
    stack
        .wait_for_state(&id, "ACTIVE", Duration::from_secs(90))
        .await;

    let reads = [
        ("/api/instances", "/api/instances"),
        ("/api/instances/identifiers", "/api/instances/identifiers"),
        (instance.as_str(), "/api/instances/{id}"),
        ("/api/images", "/api/images"),
        ("/api/images/jupyter-lab", "/api/images/{id}"),
        ("/api/images/none", "/api/images/{id}"),
        ("/api/flavours", "/api/flavours"),
        ("/api/flavours/small", "/api/flavours/{id}"),
        ("/api/flavours/none", "/api/flavours/{id}"),
        (
            "/api/flavours/gpu-large/device_allocations",
            "/api/flavours/{id}/device_allocations",
        ),
        ("/api/security_groups", "/api/security_groups"),
        ("/api/metrics", "/api/metrics"),
        ("/api/devices", "/api/devices"),
        (
            "/api/device/PCI_PASSTHROUGH/nvidia.com/gpu",
            "/api/device/{type}/{identifier}",
        ),
        (
            "/api/device/VIRTUAL_GPU/none",
            "/api/device/{type}/{identifier}",
        ),
        ("/api/device_allocations", "/api/device_allocations"),
        (
            "/api/custom_resource_classes",
            "/api/custom_resource_classes",
        ),
        ("/api/hypervisor_inventories", "/api/hypervisor_inventories"),
        ("/api/hypervisor_usages", "/api/hypervisor_usages"),
        ("/api/hypervisor_allocations", "/api/hypervisor_allocations"),
        ("/api/instances/visa-instance-none", "/api/instances/{id}"),
    ];
    for (path, template) in reads {
        let (status, body) = call(&stack, "get", path, None).await;
        checker.check("get", template, status, &body);
    }

    let groups = format!("{instance}/security_groups");
    let (status, body) = call(&stack, "get", &groups, None).await;
    checker.check("get", "/api/instances/{id}/security_groups", status, &body);
    let (status, body) = call(
        &stack,
        "post",
        &groups,
        Some(json!({ "name": "BL13-XALOC" })),
    )
    .await;
    checker.check("post", "/api/instances/{id}/security_groups", status, &body);
    let (status, body) = call(&stack, "post", &groups, Some(json!({ "name": "NONE" }))).await;
    checker.check("post", "/api/instances/{id}/security_groups", status, &body);
    let (status, body) = call(
        &stack,
        "post",
        &format!("{groups}/remove"),
        Some(json!({ "name": "BL13-XALOC" })),
    )
    .await;
    checker.check(
        "post",
        "/api/instances/{id}/security_groups/remove",
        status,
        &body,
    );

    let migrate = format!("{instance}/migrate");
    let (status, body) = call(&stack, "post", &migrate, Some(json!({ "host": "nowhere" }))).await;
    checker.check("post", "/api/instances/{id}/migrate", status, &body);
    let (status, body) = call(
        &stack,
        "post",
        &migrate,
        Some(json!({ "host": "kwok-node-1" })),
    )
    .await;
    checker.check("post", "/api/instances/{id}/migrate", status, &body);

    for action in ["reboot", "shutdown", "start"] {
        let (status, body) = call(&stack, "post", &format!("{instance}/{action}"), None).await;
        checker.check(
            "post",
            &format!("/api/instances/{{id}}/{action}"),
            status,
            &body,
        );
    }

    let mut bad = example_request("VISA-INSTANCE-BAD");
    bad["flavourId"] = json!("none");
    let (status, body) = call(&stack, "post", "/api/instances", Some(bad)).await;
    checker.check("post", "/api/instances", status, &body);
    let anonymous = stack
        .http
        .get(stack.url("/api/flavours"))
        .send()
        .await
        .unwrap();
    let status = anonymous.status().as_u16();
    checker.check(
        "get",
        "/api/flavours",
        status,
        &anonymous.json().await.unwrap(),
    );

    let (status, body) = call(&stack, "delete", &instance, None).await;
    checker.check("delete", "/api/instances/{id}", status, &body);
    let (status, body) = call(&stack, "post", &format!("{instance}/start"), None).await;
    checker.check("post", "/api/instances/{id}/start", status, &body);

    assert!(
        checker.checked >= 30,
        "only {} answers checked",
        checker.checked
    );
}
