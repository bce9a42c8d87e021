//! A harness that runs the real API and worker binaries against the local control plane, Redis
//! and a database, each test in its own namespace, queue and database.
//!
//! `scripts/test.sh` starts the services and sets `VISA_TEST_KUBECONFIG`, `VISA_TEST_REDIS_URL`,
//! `VISA_TEST_MARIADB_URL`, `VISA_TEST_LDAP_URL`, `VISA_TEST_LDAP_PASSWORD_FILE` and
//! `VISA_TEST_BIN_DIR` (helm and kubectl) before it runs `cargo test`.

pub mod chart;
pub mod lifecycle;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use uuid::Uuid;

use visa_jobs::store::Database;

pub mod visa;

pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";
pub const OPERATOR_USER: &str = "operator";
pub const OPERATOR_PASSWORD: &str = "operator-test-password";
pub const STORAGE_CLASS: &str = "visa-local";

/// Reads a variable that the test script sets; a missing one means the services are not up.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the control plane, Redis and MariaDB")
    })
}

/// The database backend of a test stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MariaDb,
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub backend: Backend,
    /// Catalogue YAML; the repository's example when `None`.
    pub catalogue: Option<String>,
    pub workers: usize,
    pub lease_ttl_seconds: u64,
    pub retry_budget_seconds: u64,
    pub start_grace_seconds: u64,
    /// Extra options for the API, such as `--max-instances 1`.
    pub api_args: Vec<String>,
    /// Redis of this stack, or the shared test Redis when `None`.
    pub redis_url: Option<String>,
    /// Extra command-line options of every worker, for example the LDAP and NFS settings.
    pub worker_args: Vec<String>,
    /// Instances' namespace, which must exist. The stack creates a new one when `None`.
    pub namespace: Option<String>,
    /// Kubeconfig of the API and the workers, or the admin kubeconfig when `None`. The test's
    /// own client (`Stack::kube`) always uses the admin kubeconfig.
    pub provider_kubeconfig: Option<PathBuf>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            catalogue: None,
            workers: 1,
            lease_ttl_seconds: 5,
            retry_budget_seconds: 20,
            start_grace_seconds: 600,
            api_args: Vec::new(),
            redis_url: None,
            worker_args: Vec::new(),
            namespace: None,
            provider_kubeconfig: None,
        }
    }
}

/// One running API, its workers and their private namespace, queue and database.
pub struct Stack {
    pub options: StackOptions,
    pub namespace: String,
    pub queue: String,
    pub database_url: String,
    pub database: Database,
    pub kube: kube::Client,
    pub http: reqwest::Client,
    pub base_url: String,
    pub dir: PathBuf,
    /// Admin kubeconfig of the test cluster.
    pub kubeconfig: PathBuf,
    /// Kubeconfig that the API and the workers use.
    pub provider_kubeconfig: PathBuf,
    /// `http://127.0.0.1:PORT` of each worker's metrics listener, by worker index.
    pub worker_metrics_urls: Vec<String>,
    api: Option<Child>,
    workers: Vec<Option<Child>>,
    /// APIs started by `spawn_api` besides the stack's own.
    extra_apis: Vec<Child>,
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Returns Cargo's target folder: `CARGO_TARGET_DIR`, or `target` in the repository.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repository_root().join("target"))
}

/// Returns the path of a binary of this workspace, which must be built already.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} not found: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    // Tests of one binary run in parallel, so two of them asking the kernel for a free port
    // could both get the same one before either listens. Ports are handed out from a counter
    // instead, below Linux's ephemeral range (32768 and up) so no outgoing connection takes one.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let start = std::process::id() % COUNT;
    loop {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        let port = (FIRST + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Returns the example create request that VISA sends, with a name of this test's own.
pub fn example_request(name: &str) -> Value {
    let text = include_str!("../fixtures/create-instance.request.json");
    let mut request: Value = serde_json::from_str(text).unwrap();
    request["name"] = Value::String(name.to_owned());
    request
}

pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        let kubeconfig = PathBuf::from(required_env("VISA_TEST_KUBECONFIG"));
        let id = short_id();
        let dir = std::env::temp_dir().join(format!("visa-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();

        let kube = kube_client(&kubeconfig).await;
        let namespace = match &options.namespace {
            Some(namespace) => namespace.clone(),
            None => create_namespace(&kube, &format!("visa-t-{id}")).await,
        };
        let provider_kubeconfig = options
            .provider_kubeconfig
            .clone()
            .unwrap_or_else(|| kubeconfig.clone());

        let database_url = match options.backend {
            Backend::Sqlite => visa_jobs::store::sqlite_url(&dir.join("provider.db")),
            Backend::MariaDb => create_mariadb_database(&id).await,
        };
        let catalogue = dir.join("catalogue.yaml");
        let text = options.catalogue.clone().unwrap_or_else(|| {
            std::fs::read_to_string(repository_root().join("config/catalogue.example.yaml"))
                .unwrap()
        });
        std::fs::write(&catalogue, text).unwrap();
        std::fs::write(dir.join("token"), format!("{TEST_TOKEN}\n")).unwrap();
        std::fs::write(
            dir.join("operator-password"),
            format!("{OPERATOR_PASSWORD}\n"),
        )
        .unwrap();

        let port = free_port();
        let mut stack = Stack {
            namespace,
            queue: format!("visa-test-{id}"),
            database: Database::connect(&database_url).await.unwrap(),
            database_url,
            kube,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base_url: format!("http://127.0.0.1:{port}"),
            dir,
            kubeconfig: kubeconfig.clone(),
            provider_kubeconfig: provider_kubeconfig.clone(),
            worker_metrics_urls: Vec::new(),
            api: None,
            workers: Vec::new(),
            extra_apis: Vec::new(),
            options: options.clone(),
        };

        let api = stack.api_command(&provider_kubeconfig, "api", port);
        stack.api = Some(start_api_process(api));
        stack.wait_until_ready().await;

        for _ in 0..options.workers {
            stack.start_worker(&provider_kubeconfig);
        }
        stack
    }

    fn api_command(&self, kubeconfig: &Path, log: &str, port: u16) -> Command {
        let mut api = self.command("visa-api", kubeconfig, log);
        api.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--token-file", self.dir.join("token").to_str().unwrap()])
            .args([
                "--operator-password-file",
                self.dir.join("operator-password").to_str().unwrap(),
            ])
            .args([
                "--start-grace-seconds",
                &self.options.start_grace_seconds.to_string(),
            ])
            .args(["--refresh-interval-ms", "200"])
            .args(&self.options.api_args);
        api
    }

    /// Starts another API on this stack's database and queue that talks to the cluster through
    /// `kubeconfig`, without waiting for it to be ready, and returns its base URL. Its log is
    /// `<dir>/<log>.log`.
    pub fn spawn_api(&mut self, kubeconfig: &Path, log: &str) -> String {
        let port = free_port();
        let api = self.api_command(kubeconfig, log, port);
        self.extra_apis.push(start_api_process(api));
        format!("http://127.0.0.1:{port}")
    }

    /// Builds a command for the API or a worker with this stack's settings; logs go to
    /// `<dir>/<log>.log`.
    fn command(&self, binary_name: &str, kubeconfig: &Path, log: &str) -> Command {
        let log_file = File::create(self.dir.join(format!("{log}.log"))).unwrap();
        let mut command = Command::new(binary(binary_name));
        command
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("VISA_DATABASE_URL")
            .env_remove("VISA_LDAP_PASSWORD")
            .args(["--database-url", &self.database_url])
            .args(["--redis-url", &self.redis_url()])
            .args(["--queue", &self.queue])
            .args([
                "--catalogue",
                self.dir.join("catalogue.yaml").to_str().unwrap(),
            ])
            .args(["--namespace", &self.namespace])
            .args(["--storage-class", STORAGE_CLASS])
            .args(["--heartbeat-seconds", "1", "--missed-heartbeats", "2"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        command
    }

    /// Starts one more worker that talks to the cluster through `kubeconfig`, and returns its
    /// index for `kill_worker`.
    pub fn start_worker(&mut self, kubeconfig: &Path) -> usize {
        let index = self.workers.len();
        let metrics_port = free_port();
        let mut worker = self.command("visa-worker", kubeconfig, &format!("worker-{index}"));
        worker
            .args(["--worker-name", &format!("{}-worker-{index}", self.queue)])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args([
                "--lease-ttl-seconds",
                &self.options.lease_ttl_seconds.to_string(),
            ])
            .args([
                "--retry-budget-seconds",
                &self.options.retry_budget_seconds.to_string(),
            ])
            .args([
                "--sweep-interval-seconds",
                "2",
                "--sweep-stale-seconds",
                "30",
            ])
            .args(&self.options.worker_args);
        self.workers
            .push(Some(worker.spawn().expect("failed to start visa-worker")));
        self.worker_metrics_urls
            .push(format!("http://127.0.0.1:{metrics_port}"));
        index
    }

    /// Kills a worker with SIGKILL, as a crash or an evicted pod would.
    pub fn kill_worker(&mut self, index: usize) {
        if let Some(mut worker) = self.workers[index].take() {
            worker.kill().unwrap();
            worker.wait().unwrap();
        }
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.api.as_mut().unwrap().try_wait().unwrap() {
                panic!("visa-api exited with {status}:\n{}", self.log("api"));
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
                .map(|response| response.status().is_success())
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "visa-api not ready after 60 s:\n{}",
                self.log("api")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("X-Auth-Token", TEST_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(path))
            .header("X-Auth-Token", TEST_TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .header("X-Auth-Token", TEST_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// Creates an instance from the example request and returns its id.
    pub async fn create(&self, name: &str) -> String {
        let response = self
            .post("/api/instances", Some(&example_request(name)))
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "create failed: {body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn instance(&self, id: &str) -> (u16, Value) {
        let response = self.get(&format!("/api/instances/{id}")).await;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Polls the instance until its state is `state`, and returns the instance.
    pub async fn wait_for_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let (status, body) = self.instance(id).await;
            if status == 200 && body["state"] == state {
                return body;
            }
            last = serde_json::json!({ "status": status, "body": body });
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "instance {id} not {state} after {} s; last answer {last}\n--- api log ---\n{}\n--- worker log ---\n{}",
            timeout.as_secs(),
            tail(&self.log("api"), 40),
            tail(&self.log("worker-0"), 40)
        );
    }

    /// Polls until the instance read returns 404.
    pub async fn wait_for_gone(&self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.instance(id).await.0 == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "instance {id} still answers after {} s:\n{}",
            timeout.as_secs(),
            tail(&self.log("worker-0"), 40)
        );
    }

    /// Deletes this stack's namespace with everything in it, so that its pods stop taking the
    /// KWOK nodes' CPU and memory from later tests.
    pub async fn delete_namespace(&self) {
        let namespaces: Api<Namespace> = Api::all(self.kube.clone());
        namespaces
            .delete(&self.namespace, &Default::default())
            .await
            .unwrap();
    }

    pub fn redis_url(&self) -> String {
        self.options
            .redis_url
            .clone()
            .unwrap_or_else(|| required_env("VISA_TEST_REDIS_URL"))
    }

    /// Returns whether every worker started so far is still running.
    pub fn workers_alive(&mut self) -> bool {
        self.workers
            .iter_mut()
            .flatten()
            .all(|worker| matches!(worker.try_wait(), Ok(None)))
    }

    /// Returns the number of jobs waiting in this stack's Redis queue.
    pub async fn queued_jobs(&self) -> i64 {
        let client = redis::Client::open(self.redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let waiting: i64 = redis::cmd("LLEN")
            .arg(format!("{}:active", self.queue))
            .query_async(&mut connection)
            .await
            .unwrap();
        waiting
    }
}

fn start_api_process(mut command: Command) -> Child {
    command.spawn().expect("failed to start visa-api")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Stack {
    fn drop(&mut self) {
        let children = self
            .workers
            .iter_mut()
            .flatten()
            .chain(self.api.iter_mut())
            .chain(self.extra_apis.iter_mut());
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("test stack files are kept in {}", self.dir.display());
            return;
        }

        // Deleting the namespace frees the nodes' capacity for the tests that follow. Drop
        // cannot await, so a thread with a runtime of its own makes the request. A namespace the
        // test passed in is the test's to delete.
        if self.options.namespace.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        let kubeconfig = self.kubeconfig.clone();
        let namespace = self.namespace.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = kube_client(&kubeconfig).await;
                let namespaces: Api<Namespace> = Api::all(client);
                namespaces
                    .delete(&namespace, &Default::default())
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("failed to delete test namespace {}", self.namespace);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates an empty database of `backend` for one test, in `dir` for SQLite, and returns its URL.
pub async fn test_database_url(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => {
            std::fs::create_dir_all(dir).unwrap();
            visa_jobs::store::sqlite_url(&dir.join("provider.db"))
        }
        Backend::MariaDb => create_mariadb_database(&short_id()).await,
    }
}

/// Creates a namespace and returns its name.
pub async fn create_namespace(kube: &kube::Client, name: &str) -> String {
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let mut object = Namespace::default();
    object.metadata.name = Some(name.to_owned());
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    name.to_owned()
}

/// Creates a throw-away MariaDB database and returns its URL.
pub async fn create_mariadb_database(id: &str) -> String {
    let admin_url = required_env("VISA_TEST_MARIADB_URL");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&admin_url).await.unwrap();
    let name = format!("visa_test_{id}");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("MariaDB URL ends with /DATABASE");
    format!("{base}/{name}")
}

/// Writes a copy of the admin kubeconfig whose API server is `server`.
pub fn kubeconfig_with_server(stack: &Stack, server: &str) -> PathBuf {
    let mut config = kube::config::Kubeconfig::read_from(&stack.kubeconfig).unwrap();
    for cluster in &mut config.clusters {
        cluster.cluster.as_mut().unwrap().server = Some(server.to_owned());
    }
    let path = stack.dir.join(format!("kubeconfig-{}", short_id()));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// Starts a server that accepts connections and never responds, like an API server that hangs,
/// and returns its URL.
pub async fn silent_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open_connections = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            open_connections.push(connection);
        }
    });
    format!("https://{address}")
}
