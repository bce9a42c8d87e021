//! Jobs end visible and lose nothing: a worker killed mid-job, a later intent racing an earlier
//! one, a cluster that rejects the objects and a cluster that cannot be reached.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;

use visa_tests::{Stack, StackOptions, kubeconfig_with_server, short_id, silent_server};

const WAIT: Duration = Duration::from_secs(90);

/// Returns an address where nothing listens, so connections are refused at once.
fn closed_server() -> String {
    let port = visa_tests::free_port();
    format!("https://127.0.0.1:{port}")
}

async fn wait_for_job_status(stack: &Stack, id: &str, status: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let jobs = stack.database.jobs_of_instance(id, 10).await.unwrap();
        if jobs.iter().any(|job| job.status == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no job of {id} is {status}: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn killed_worker_loses_no_job() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let hanging = kubeconfig_with_server(&stack, &silent_server().await);
    let first = stack.start_worker(&hanging);

    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    wait_for_job_status(&stack, &id, "running").await;
    stack.kill_worker(first);

    let kubeconfig = stack.kubeconfig.clone();
    stack.start_worker(&kubeconfig);
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    let jobs = stack.database.jobs_of_instance(&id, 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].status, "succeeded");
    assert!(jobs[0].attempts >= 2, "the job ran again: {jobs:?}");
    assert!(
        jobs[0].worker.as_deref().unwrap().ends_with("worker-1"),
        "{jobs:?}"
    );
}

async fn replicas(stack: &Stack, id: &str) -> Option<i32> {
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    sets.get(id).await.unwrap().spec.replicas
}

#[tokio::test]
async fn later_intent_wins() {
    let stack = Stack::start(StackOptions {
        workers: 3,
        ..StackOptions::default()
    })
    .await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    for action in [
        "shutdown", "start", "reboot", "shutdown", "start", "shutdown",
    ] {
        let status = stack
            .post(&format!("/api/instances/{id}/{action}"), None)
            .await
            .status();
        assert_eq!(status, 202, "{action}");
    }
    stack.wait_for_state(&id, "STOPPED", WAIT).await;

    // Every job has finished by now or soon; none of them may undo the last intent.
    let deadline = Instant::now() + WAIT;
    loop {
        let record = stack.database.get_instance(&id).await.unwrap().unwrap();
        if record.applied_seq == record.action_seq {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "intent never converged: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(replicas(&stack, &id).await, Some(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, instance) = stack.instance(&id).await;
    assert_eq!(instance["state"], "STOPPED");

    for action in ["start", "shutdown", "start"] {
        stack
            .post(&format!("/api/instances/{id}/{action}"), None)
            .await;
    }
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    assert_eq!(replicas(&stack, &id).await, Some(1));
}

#[tokio::test]
async fn rejected_objects_end_in_error() {
    let catalogue = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/catalogue.example.yaml"),
    )
    .unwrap()
    // Kubernetes rejects port names with upper case or longer than 15 characters.
    .replace("name: rdp", "name: Remote_Desktop_Protocol");
    let stack = Stack::start(StackOptions {
        catalogue: Some(catalogue),
        ..StackOptions::default()
    })
    .await;

    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    let instance = stack.wait_for_state(&id, "ERROR", WAIT).await;
    let fault = &instance["fault"];
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .contains("Kubernetes rejected"),
        "{fault}"
    );
    assert_eq!(fault["details"], "Invalid");
    assert_eq!(fault["code"], -1);

    let jobs = stack.database.jobs_of_instance(&id, 10).await.unwrap();
    assert_eq!(jobs[0].status, "failed");
    assert!(
        jobs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("Remote_Desktop_Protocol"),
        "{jobs:?}"
    );
    assert_eq!(jobs[0].attempts, 1, "a rejected object is not retried");
}

#[tokio::test]
async fn unreachable_cluster_ends_in_error_then_recovers() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        retry_budget_seconds: 3,
        ..StackOptions::default()
    })
    .await;
    let refused = kubeconfig_with_server(&stack, &closed_server());
    let broken = stack.start_worker(&refused);

    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    let instance = stack.wait_for_state(&id, "ERROR", WAIT).await;
    assert_eq!(instance["fault"]["details"], "RetriesExhausted");
    assert!(
        instance["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 s"),
        "{instance}"
    );
    let log = stack.log("worker-0");
    assert!(
        log.matches("transient failure").count() >= 2,
        "retried with backoff:\n{log}"
    );

    // A later start, taken by a worker that reaches the cluster, clears the fault.
    stack.kill_worker(broken);
    let kubeconfig = stack.kubeconfig.clone();
    stack.start_worker(&kubeconfig);
    assert_eq!(
        stack
            .post(&format!("/api/instances/{id}/start"), None)
            .await
            .status(),
        202
    );
    let instance = stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    assert!(instance["fault"].is_null());
}

/// A Redis server of the test's own, so stopping it leaves the other tests alone.
struct PrivateRedis {
    port: u16,
    process: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let process = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server not found: run the tests with scripts/test.sh");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private Redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateRedis { port, process }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test]
async fn worker_survives_redis_outage() {
    let redis = PrivateRedis::start(visa_tests::free_port());
    let port = redis.port;
    let mut stack = Stack::start(StackOptions {
        redis_url: Some(redis.url()),
        ..StackOptions::default()
    })
    .await;
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    drop(redis);
    // The intent is recorded while the queue is down, and the drift sweep enqueues it later.
    // The response must still come well within VISA's 30 s time-out.
    let sent = Instant::now();
    let response = stack
        .post(&format!("/api/instances/{id}/shutdown"), None)
        .await;
    assert_eq!(response.status(), 202);
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "responded after {:?}",
        sent.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        stack.workers_alive(),
        "a worker exited when Redis went away:\n{}",
        stack.log("worker-0")
    );

    let _redis = PrivateRedis::start(port);
    stack.wait_for_state(&id, "STOPPED", WAIT).await;
    assert!(stack.workers_alive());
    assert!(
        stack.log("worker-0").contains("starting it again"),
        "{}",
        stack.log("worker-0")
    );

    // New jobs flow through the queue again, without waiting for the sweep.
    let started = Instant::now();
    stack
        .post(&format!("/api/instances/{id}/start"), None)
        .await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "start took {:?}",
        started.elapsed()
    );
}
