//! Helm and kubectl for the chart tests: rendering the chart, server-side dry runs, and a
//! kubeconfig that authenticates as the chart's ServiceAccount instead of the cluster admin.
//!
//! Both tools come from `tests/cluster/build-binaries.sh`; `scripts/test.sh` exports their folder
//! in `VISA_TEST_BIN_DIR`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::{repository_root, required_env, short_id};

/// Chart name, which the chart appends to release names that do not contain it.
pub const CHART_NAME: &str = "visa-k8s-provider";

pub fn chart_dir() -> PathBuf {
    repository_root().join("deploy/helm").join(CHART_NAME)
}

/// Returns the path of a tool built by `tests/cluster/build-binaries.sh`.
pub fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(required_env("VISA_TEST_BIN_DIR")).join(name);
    assert!(
        path.exists(),
        "{} not found: run tests/cluster/build-binaries.sh, which builds helm and kubectl",
        path.display()
    );
    path
}

/// Folder for the tools' caches and settings, so that the tests write nothing under `$HOME`.
fn tool_home() -> PathBuf {
    let path = std::env::temp_dir().join("visa-test-tools");
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// Runs a command with `input` on its standard input and returns its output, whatever its exit
/// status, so that callers can check failures too.
fn run(mut command: Command, input: Option<&str>) -> Output {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {command:?}: {error}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs helm with its cache, settings and data folders outside `$HOME`.
pub fn helm(args: &[&str]) -> Output {
    let home = tool_home();
    let mut command = Command::new(tool("helm"));
    command
        .args(args)
        .env("HELM_CACHE_HOME", home.join("helm-cache"))
        .env("HELM_CONFIG_HOME", home.join("helm-config"))
        .env("HELM_DATA_HOME", home.join("helm-data"));
    run(command, None)
}

/// Runs kubectl against the cluster of `kubeconfig`, with `input` as standard input.
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Output {
    let mut command = Command::new(tool("kubectl"));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("KUBECACHEDIR", tool_home().join("kubectl-cache"));
    run(command, input)
}

/// Returns the standard output of a command, or panics with `description` and the output when
/// the command failed.
pub fn success_output(output: &Output, description: &str) -> String {
    assert!(
        output.status.success(),
        "{description} failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Renders the chart with `helm template` as release `release` in `namespace`, with extra
/// arguments such as `-f FILE` or `--set KEY=VALUE`.
pub fn render(release: &str, namespace: &str, args: &[&str]) -> Output {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    all.extend_from_slice(args);
    helm(&all)
}

/// Applies `manifest` with a server-side dry run and strict field validation, and returns the
/// objects as the API server would store them.
pub fn server_dry_run(kubeconfig: &Path, manifest: &str) -> Vec<Value> {
    let output = kubectl(
        kubeconfig,
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(manifest),
    );
    let text = success_output(&output, "kubectl apply --dry-run=server");
    let value: Value = serde_json::from_str(&text).unwrap();
    if value["kind"] == "List" {
        value["items"].as_array().unwrap().clone()
    } else {
        vec![value]
    }
}

/// Creates a namespace with kubectl.
pub fn create_namespace(kubeconfig: &Path, name: &str) {
    let output = kubectl(kubeconfig, &["create", "namespace", name], None);
    success_output(&output, &format!("kubectl create namespace {name}"));
}

/// The chart's ServiceAccount and RBAC objects, applied for real to the test cluster, and a
/// kubeconfig that authenticates with a token of that ServiceAccount.
pub struct ProviderAccount {
    pub release: String,
    /// Release namespace, which holds the ServiceAccount.
    pub namespace: String,
    pub instances_namespace: String,
    pub service_account: String,
    pub kubeconfig: PathBuf,
    admin_kubeconfig: PathBuf,
    /// Temporary folder of the kubeconfig, which contains the token.
    dir: PathBuf,
}

impl ProviderAccount {
    /// Creates a release namespace and an instances' namespace, applies the chart's
    /// ServiceAccount, Role, RoleBinding, ClusterRole and ClusterRoleBinding for them, and
    /// writes a kubeconfig for that ServiceAccount into a new temporary folder.
    pub fn create(admin_kubeconfig: &Path) -> ProviderAccount {
        let id = short_id();
        let dir = std::env::temp_dir().join(format!("visa-account-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let release = format!("visa-{id}");
        let namespace = format!("visa-p-{id}");
        let instances_namespace = format!("visa-t-{id}");
        create_namespace(admin_kubeconfig, &namespace);
        create_namespace(admin_kubeconfig, &instances_namespace);

        let instances_setting = format!("instances.namespace={instances_namespace}");
        let required_values = chart_dir().join("ci/required-values.yaml");
        let rendered = render(
            &release,
            &namespace,
            &[
                "-f",
                required_values.to_str().unwrap(),
                "--set",
                &instances_setting,
                "--set",
                "instances.createNamespace=false",
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
            ],
        );
        let manifest = success_output(&rendered, "helm template of the RBAC objects");
        let applied = kubectl(admin_kubeconfig, &["apply", "-f", "-"], Some(&manifest));
        success_output(&applied, "kubectl apply of the chart's RBAC objects");

        let service_account = format!("{release}-{CHART_NAME}");
        let token = kubectl(
            admin_kubeconfig,
            &[
                "create",
                "token",
                &service_account,
                "--namespace",
                &namespace,
                "--duration",
                "2h",
            ],
            None,
        );
        let token = success_output(&token, "kubectl create token");
        let kubeconfig = dir.join("provider-kubeconfig");
        write_token_kubeconfig(
            admin_kubeconfig,
            &kubeconfig,
            token.trim(),
            &service_account,
        );

        ProviderAccount {
            release,
            namespace,
            instances_namespace,
            service_account,
            kubeconfig,
            admin_kubeconfig: admin_kubeconfig.to_owned(),
            dir,
        }
    }

    /// Returns `kubectl auth can-i VERB RESOURCE` for this account, with extra arguments such as
    /// `--namespace NAME` or `--all-namespaces`. A resource `pods/exec` is passed as `pods` with
    /// `--subresource exec`.
    pub fn can_i(&self, verb: &str, resource: &str, args: &[&str]) -> bool {
        let mut all = vec!["auth", "can-i", verb];
        match resource.split_once('/') {
            Some((resource, subresource)) => all.extend([resource, "--subresource", subresource]),
            None => all.push(resource),
        }
        all.extend_from_slice(args);
        let output = kubectl(&self.kubeconfig, &all, None);
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        match answer.as_str() {
            "yes" => true,
            "no" => false,
            _ => panic!(
                "kubectl auth can-i {verb} {resource} {args:?} printed {answer:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

impl Drop for ProviderAccount {
    /// Deletes the ClusterRole and ClusterRoleBinding, which outlive the test's namespaces, and
    /// the kubeconfig with the token.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let selector = format!("app.kubernetes.io/instance={}", self.release);
        let output = kubectl(
            &self.admin_kubeconfig,
            &[
                "delete",
                "clusterrole,clusterrolebinding",
                "--selector",
                &selector,
                "--ignore-not-found",
            ],
            None,
        );
        if !output.status.success() {
            eprintln!(
                "failed to delete the cluster objects of release {}: {}",
                self.release,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Writes a kubeconfig that reaches the admin kubeconfig's cluster with a bearer token, readable
/// by the owner only.
fn write_token_kubeconfig(admin_kubeconfig: &Path, path: &Path, token: &str, user: &str) {
    let admin = kube::config::Kubeconfig::read_from(admin_kubeconfig).unwrap();
    let cluster = admin
        .clusters
        .first()
        .and_then(|named| named.cluster.clone())
        .expect("the admin kubeconfig has a cluster");
    let server = cluster
        .server
        .expect("the admin kubeconfig has a server URL");
    let authority = cluster.certificate_authority_data.expect(
        "the admin kubeconfig embeds the cluster's CA, as tests/cluster/start.sh writes it",
    );

    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: test-cluster
    cluster:
      server: {server}
      certificate-authority-data: {authority}
users:
  - name: {user}
    user:
      token: {token}
contexts:
  - name: provider
    context:
      cluster: test-cluster
      user: {user}
current-context: provider
"
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
