//! The operators' side: pages behind their own credentials, the instance overview and its
//! filters, Prometheus metrics of the API and the workers, the LDAP sync's status in both,
//! readiness, and the pages as headless Chromium renders them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use ldap3::{Ldap, LdapConnAsync, Scope, SearchEntry};
use serde_json::{Value, json};

use visa_jobs::ldap::run_sync;
use visa_jobs::objects::{MAIN_CONTAINER, pod_name};
use visa_jobs::settings::LdapArgs;
use visa_jobs::store::SyncResult;
use visa_tests::{
    Backend, OPERATOR_PASSWORD, OPERATOR_USER, Stack, StackOptions, TEST_TOKEN, example_request,
    kubeconfig_with_server, required_env, short_id, silent_server, target_dir,
};

const WAIT: Duration = Duration::from_secs(90);

async fn operator_get(stack: &Stack, path: &str) -> reqwest::Response {
    stack
        .http
        .get(stack.url(path))
        .basic_auth(OPERATOR_USER, Some(OPERATOR_PASSWORD))
        .send()
        .await
        .unwrap()
}

async fn operator_page(stack: &Stack, path: &str) -> String {
    let response = operator_get(stack, path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.unwrap()
}

/// Creates an instance from the example request with `owner` in its metadata. The name carries
/// HTML, which the pages must escape; owners are POSIX user names, so they cannot.
async fn create_owned(stack: &Stack, owner: &str) -> String {
    let mut request = example_request(&format!("VISA-INSTANCE-{} <b>&'", short_id()));
    request["metadata"]["owner"] = Value::String(owner.to_owned());
    let response = stack.post("/api/instances", Some(&request)).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn shut_down(stack: &Stack, id: &str) {
    let status = stack
        .post(&format!("/api/instances/{id}/shutdown"), None)
        .await
        .status();
    assert_eq!(status, 202);
    stack.wait_for_state(id, "STOPPED", WAIT).await;
}

/// Writes the pod status a kubelet reports when it cannot pull the image, so that the instance
/// reads as ERROR. KWOK leaves a Running pod's status alone.
async fn report_image_pull_back_off(stack: &Stack, id: &str) {
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let status = json!({
        "status": {
            "conditions": [
                { "type": "Ready", "status": "False", "reason": "ContainersNotReady" },
                { "type": "PodScheduled", "status": "True" }
            ],
            "containerStatuses": [{
                "name": MAIN_CONTAINER,
                "image": "registry.example.org/visa/missing:1",
                "imageID": "",
                "ready": false,
                "restartCount": 0,
                "started": false,
                "state": { "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"registry.example.org/visa/missing:1\""
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

fn row_marker(id: &str) -> String {
    format!("id=\"instance-{id}\"")
}

#[tokio::test]
async fn operator_pages_need_operator_credentials() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;

    for path in [
        "/operator/instances",
        "/operator/jobs/",
        "/operator/no-such-page",
    ] {
        let anonymous = stack.http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "anonymous {path}");
        let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic "), "{challenge}");

        let with_token = stack
            .http
            .get(stack.url(path))
            .header("X-Auth-Token", TEST_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(with_token.status(), 401, "VISA's token on {path}");

        let token_as_password = stack
            .http
            .get(stack.url(path))
            .basic_auth(OPERATOR_USER, Some(TEST_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(
            token_as_password.status(),
            401,
            "token as password on {path}"
        );

        let wrong_user = stack
            .http
            .get(stack.url(path))
            .basic_auth("admin", Some(OPERATOR_PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_user.status(), 401, "wrong user on {path}");
    }

    for path in ["/operator/instances", "/operator/jobs/"] {
        let response = operator_get(&stack, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let policy = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
    }
    assert_eq!(
        operator_get(&stack, "/operator/no-such-page")
            .await
            .status(),
        404
    );

    // The operator's credentials do not open VISA's API either.
    let visa_api = operator_get(&stack, "/api/instances").await;
    assert_eq!(visa_api.status(), 401);

    let metrics = stack.http.get(stack.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200, "/metrics needs no credentials");
}

#[tokio::test]
async fn overview_filters_on_sqlite() {
    overview_filters_by_state_and_owner(Backend::Sqlite).await;
}

#[tokio::test]
async fn overview_filters_on_mariadb() {
    overview_filters_by_state_and_owner(Backend::MariaDb).await;
}

async fn overview_filters_by_state_and_owner(backend: Backend) {
    let stack = Stack::start(StackOptions {
        backend,
        ..StackOptions::default()
    })
    .await;
    let second_owner = "o.brien-2";
    let running = create_owned(&stack, "alice").await;
    let stopped = create_owned(&stack, second_owner).await;
    stack.wait_for_state(&running, "ACTIVE", WAIT).await;
    stack.wait_for_state(&stopped, "ACTIVE", WAIT).await;
    shut_down(&stack, &stopped).await;

    let all = operator_page(&stack, "/operator/instances").await;
    assert!(all.contains(&row_marker(&running)), "{all}");
    assert!(all.contains(&row_marker(&stopped)), "{all}");
    assert!(
        all.contains("kwok-node-"),
        "the node of the running pod: {all}"
    );
    assert!(all.contains("create succeeded"), "the last job: {all}");
    assert!(all.contains("stop succeeded"), "the last job: {all}");
    assert!(all.contains("o.brien-2"), "owner: {all}");
    assert!(all.contains("&lt;b&gt;&amp;&#39;"), "escaped name: {all}");
    assert!(!all.contains("<b>&"), "raw name in the page: {all}");

    let active = operator_page(&stack, "/operator/instances?state=ACTIVE").await;
    assert!(active.contains(&row_marker(&running)), "{active}");
    assert!(!active.contains(&row_marker(&stopped)), "{active}");

    let stopped_page = operator_page(&stack, "/operator/instances?state=stopped").await;
    assert!(
        stopped_page.contains(&row_marker(&stopped)),
        "{stopped_page}"
    );
    assert!(
        !stopped_page.contains(&row_marker(&running)),
        "{stopped_page}"
    );

    let alice = operator_page(&stack, "/operator/instances?owner=alice").await;
    assert!(alice.contains(&row_marker(&running)), "{alice}");
    assert!(!alice.contains(&row_marker(&stopped)), "{alice}");

    let response = stack
        .http
        .get(stack.url("/operator/instances"))
        .query(&[("owner", second_owner)])
        .basic_auth(OPERATOR_USER, Some(OPERATOR_PASSWORD))
        .send()
        .await
        .unwrap();
    let hostile = response.text().await.unwrap();
    assert!(hostile.contains(&row_marker(&stopped)), "{hostile}");
    assert!(!hostile.contains(&row_marker(&running)), "{hostile}");

    let both = operator_page(&stack, "/operator/instances?state=ACTIVE&owner=alice").await;
    assert!(both.contains(&row_marker(&running)), "{both}");
    let none = operator_page(&stack, "/operator/instances?state=ERROR&owner=alice").await;
    assert!(none.contains("No instance matches."), "{none}");

    let jobs = operator_page(&stack, &format!("/operator/jobs/?instance={stopped}")).await;
    assert_eq!(
        jobs.matches("<td class=\"job-succeeded\">").count(),
        2,
        "{jobs}"
    );
    assert!(!jobs.contains(&format!(">{running}</a>")), "{jobs}");

    stack.delete_namespace().await;
}

/// Returns the value of the series `name{labels}`, where `labels` may be a subset of the
/// series' labels.
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.contains(&format!("{key}=\"{value}\"")));
            if matches { value.parse().ok() } else { None }
        })
}

async fn scrape(stack: &Stack, url: &str) -> String {
    let response = stack.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_after_create_to_active() {
    let stack = Stack::start(StackOptions::default()).await;
    let started = Instant::now();
    let id = stack.create(&format!("VISA-INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;
    let waited = started.elapsed().as_secs_f64();

    let api = scrape(&stack, &stack.url("/metrics")).await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        metric_value(&api, name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{api}"))
    };
    assert_eq!(value("visa_instances", &[("state", "ACTIVE")]), 1.0);
    assert_eq!(value("visa_instances", &[("state", "ERROR")]), 0.0);
    assert_eq!(value("visa_instances", &[("state", "BUILDING")]), 0.0);

    let create = [
        ("method", "POST"),
        ("route", "/api/instances"),
        ("status", "201"),
    ];
    assert_eq!(value("visa_http_requests_total", &create), 1.0);
    let reads = [
        ("method", "GET"),
        ("route", "/api/instances/{id}"),
        ("status", "200"),
    ];
    assert!(value("visa_http_requests_total", &reads) >= 1.0);
    assert!(
        !api.contains(&id),
        "routes are templates, not paths with ids:\n{api}"
    );
    assert_eq!(
        value("visa_http_request_duration_seconds_count", &create),
        1.0
    );
    let mut create_inf = create.to_vec();
    create_inf.push(("le", "+Inf"));
    assert_eq!(
        value("visa_http_request_duration_seconds_bucket", &create_inf),
        1.0
    );

    assert_eq!(
        value("visa_instance_create_to_ready_seconds_count", &[]),
        1.0
    );
    let to_ready = value("visa_instance_create_to_ready_seconds_sum", &[]);
    assert!(
        to_ready > 0.0 && to_ready <= waited + 1.0,
        "create to ACTIVE took {to_ready} s, the test waited {waited} s"
    );
    assert_eq!(value("visa_watch_restarts_total", &[]), 0.0);

    let worker_url = format!("{}/metrics", stack.worker_metrics_urls[0]);
    let worker = scrape(&stack, &worker_url).await;
    let job = [("action", "create"), ("outcome", "succeeded")];
    assert_eq!(
        metric_value(&worker, "visa_jobs_total", &job),
        Some(1.0),
        "{worker}"
    );
    assert_eq!(
        metric_value(&worker, "visa_job_duration_seconds_count", &job),
        Some(1.0),
        "{worker}"
    );
    let failed = [("outcome", "failed")];
    assert_eq!(
        metric_value(&worker, "visa_jobs_total", &failed),
        None,
        "{worker}"
    );

    stack.delete_namespace().await;
}

#[tokio::test]
async fn readiness_waits_for_first_sync() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let synced = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(synced.status(), 200);
    assert_eq!(synced.json::<Value>().await.unwrap()["ready"], true);

    let hanging = kubeconfig_with_server(&stack, &silent_server().await);
    let unsynced = stack.spawn_api(&hanging, "api-hanging");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = stack.http.get(format!("{unsynced}/healthz")).send().await;
        if live.is_ok_and(|response| response.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second API never answered /healthz:\n{}",
            stack.log("api-hanging")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The records load at once, but the watches never list, so the API must stay unready.
    for _ in 0..6 {
        let response = stack
            .http
            .get(format!("{unsynced}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.json::<Value>().await.unwrap()["ready"], false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs headless Chromium with a fresh profile and the given extra arguments, and returns its
/// standard output.
fn chromium(profile: &Path, arguments: &[String]) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(arguments)
        .output()
        .expect("chromium not found: install it with scripts/install-prerequisites.sh");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Loads `path` as the operator in a fresh Chromium profile, writes a screenshot to
/// `screenshot` and returns the page's DOM.
fn render_page(stack: &Stack, path: &str, screenshot: &Path) -> String {
    // Chromium accepts credentials in the URL of a top-level navigation.
    let url = stack.base_url.replacen(
        "http://",
        &format!("http://{OPERATOR_USER}:{OPERATOR_PASSWORD}@"),
        1,
    ) + path;
    let dom_profile = stack.dir.join(format!("chromium-{}", short_id()));
    let dom = chromium(&dom_profile, &["--dump-dom".to_owned(), url.clone()]);

    let shot_profile = stack.dir.join(format!("chromium-{}", short_id()));
    chromium(
        &shot_profile,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,900".to_owned(),
            url,
        ],
    );
    let image = std::fs::read(screenshot).unwrap();
    assert!(
        image.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        screenshot.display()
    );
    dom
}

#[tokio::test]
async fn pages_render_in_chromium() {
    let stack = Stack::start(StackOptions::default()).await;
    let active = create_owned(&stack, "alice").await;
    let stopped = create_owned(&stack, "bob").await;
    let failed = create_owned(&stack, "carol").await;
    for id in [&active, &stopped, &failed] {
        stack.wait_for_state(id, "ACTIVE", WAIT).await;
    }
    shut_down(&stack, &stopped).await;
    report_image_pull_back_off(&stack, &failed).await;
    stack.wait_for_state(&failed, "ERROR", WAIT).await;

    let folder = target_dir().join("screenshots");
    std::fs::create_dir_all(&folder).unwrap();

    let overview = render_page(
        &stack,
        "/operator/instances",
        &folder.join("operator-instances.png"),
    );
    for state in ["ACTIVE", "STOPPED", "ERROR"] {
        assert!(
            overview.contains(&format!(
                "<span class=\"state state-{state}\">{state}</span>"
            )),
            "{state} missing from the rendered overview:\n{overview}"
        );
    }
    for id in [&active, &stopped, &failed] {
        assert!(overview.contains(&row_marker(id)), "{id}:\n{overview}");
    }
    assert!(overview.contains("ImagePullBackOff"), "{overview}");

    let jobs = render_page(&stack, "/operator/jobs/", &folder.join("operator-jobs.png"));
    assert!(jobs.contains("Redis queue"), "{jobs}");
    let worker = format!("{}-worker-0", stack.queue);
    assert!(
        jobs.contains(&format!("<tr><td>{worker}</td>")),
        "the worker's heartbeat row:
{jobs}"
    );
    for id in [&active, &stopped, &failed] {
        assert!(jobs.contains(&format!(">{id}</a>")), "{id}:\n{jobs}");
    }

    stack.delete_namespace().await;
}

const LDAP_ADMIN_DN: &str = "cn=admin,dc=visa,dc=test";

/// Creates an organizational unit of its own under the shared slapd's suffix, with three
/// investigations and one entry without a group id, and returns the sync settings for it,
/// bound as the admin, with no retries.
async fn sample_directory() -> (Ldap, String, LdapArgs) {
    let url = required_env("VISA_TEST_LDAP_URL");
    let password_file = PathBuf::from(required_env("VISA_TEST_LDAP_PASSWORD_FILE"));
    let password = std::fs::read_to_string(&password_file).unwrap();
    let (connection, mut ldap) = LdapConnAsync::new(&url).await.unwrap();
    ldap3::drive!(connection);
    ldap.simple_bind(LDAP_ADMIN_DN, &password)
        .await
        .unwrap()
        .success()
        .unwrap();

    let name = format!("dashboard-{}", short_id());
    let ou = format!("ou={name},dc=visa,dc=test");
    let mut entries = vec![(
        ou.clone(),
        vec![
            ("objectClass", HashSet::from(["organizationalUnit"])),
            ("ou", HashSet::from([name.as_str()])),
        ],
    )];
    for (proposal, group_id) in [
        ("2025096612", "5001"),
        ("2025097120", "5002"),
        ("2025000101", "5003"),
    ] {
        entries.push((
            format!("cn={proposal},{ou}"),
            vec![
                ("objectClass", HashSet::from(["posixGroup"])),
                ("cn", HashSet::from([proposal])),
                ("gidNumber", HashSet::from([group_id])),
                ("description", HashSet::from(["/data/2025/sample"])),
            ],
        ));
    }
    // An investigation without a group id is skipped and counted.
    entries.push((
        format!("cn=2025000102,{ou}"),
        vec![
            ("objectClass", HashSet::from(["organizationalRole"])),
            ("cn", HashSet::from(["2025000102"])),
            ("description", HashSet::from(["/data/2025/no-group"])),
        ],
    ));
    for (dn, attributes) in entries {
        ldap.add(&dn, attributes)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|error| panic!("adding {dn} failed: {error}"));
    }

    let args = LdapArgs {
        ldap_url: Some(url),
        ldap_base_dn: Some(ou.clone()),
        ldap_filter: "(|(objectClass=posixGroup)(objectClass=organizationalRole))".to_owned(),
        ldap_identifier_attribute: "cn".to_owned(),
        ldap_path_attribute: "description".to_owned(),
        ldap_group_id_attribute: "gidNumber".to_owned(),
        ldap_bind_dn: Some(LDAP_ADMIN_DN.to_owned()),
        ldap_password_file: Some(password_file),
        ldap_starttls: false,
        ldap_ca_file: None,
        ldap_timeout_seconds: 10,
        ldap_page_size: 500,
        ldap_sync_interval_seconds: 3600,
        ldap_retry_budget_seconds: 0,
    };
    (ldap, ou, args)
}

/// Deletes the unit and every entry under it.
async fn remove_directory(mut ldap: Ldap, ou: &str) {
    let (entries, _) = ldap
        .search(ou, Scope::OneLevel, "(objectClass=*)", vec!["1.1"])
        .await
        .unwrap()
        .success()
        .unwrap();
    for entry in entries {
        let dn = SearchEntry::construct(entry).dn;
        ldap.delete(&dn).await.unwrap().success().unwrap();
    }
    ldap.delete(ou).await.unwrap().success().unwrap();
    let _ = ldap.unbind().await;
}

fn unix_seconds(millis: i64) -> f64 {
    millis as f64 / 1000.0
}

#[tokio::test]
async fn ldap_sync_shows_in_metrics_and_overview() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;

    let before = scrape(&stack, &stack.url("/metrics")).await;
    assert!(
        !before.contains("visa_ldap_"),
        "LDAP gauges before any sync:\n{before}"
    );
    let never = operator_page(&stack, "/operator/instances").await;
    assert!(never.contains("<h3>LDAP sync</h3>"), "{never}");
    assert!(never.contains("never ran"), "{never}");

    let (ldap, ou, args) = sample_directory().await;
    let config = args.config_with_password(None).unwrap().unwrap();
    let good = run_sync(&config, &stack.database, "manual", None)
        .await
        .unwrap();
    assert_eq!(good.result, SyncResult::Succeeded, "{:?}", good.error);
    let good_finished = good.finished_at.unwrap();

    let metrics = scrape(&stack, &stack.url("/metrics")).await;
    let value = |text: &str, name: &str, labels: &[(&str, &str)]| {
        metric_value(text, name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{text}"))
    };
    assert_eq!(value(&metrics, "visa_ldap_last_sync_success", &[]), 1.0);
    for (count, expected) in [
        ("synced", 3.0),
        ("added", 3.0),
        ("changed", 0.0),
        ("gone", 0.0),
        ("skipped", 1.0),
    ] {
        assert_eq!(
            value(&metrics, "visa_ldap_last_sync_entries", &[("count", count)]),
            expected,
            "count {count}"
        );
    }
    let finished = value(&metrics, "visa_ldap_last_sync_timestamp_seconds", &[]);
    assert!(
        (finished - unix_seconds(good_finished)).abs() < 0.002,
        "{finished} is not the run's end {good_finished} ms"
    );
    let succeeded = value(
        &metrics,
        "visa_ldap_last_successful_sync_timestamp_seconds",
        &[],
    );
    assert!(
        (succeeded - unix_seconds(good_finished)).abs() < 0.002,
        "{succeeded}"
    );

    let page = operator_page(&stack, "/operator/instances").await;
    assert!(
        page.contains("<span class=\"sync-succeeded\">succeeded</span>"),
        "{page}"
    );
    assert!(
        page.contains("synced 3, added 3, changed 0, gone 0, skipped 1"),
        "{page}"
    );
    assert!(!page.contains("never ran"), "{page}");

    // A wrong password makes the next run fail. The stored investigations stay.
    let dir = stack.dir.join("wrong-ldap-password");
    std::fs::create_dir_all(&dir).unwrap();
    let wrong_password = "wrong-test-password-4b9d";
    std::fs::write(dir.join("password"), format!("{wrong_password}\n")).unwrap();
    let mut wrong_args = args.clone();
    wrong_args.ldap_password_file = Some(dir.join("password"));
    let wrong_config = wrong_args.config_with_password(None).unwrap().unwrap();
    let failed = run_sync(&wrong_config, &stack.database, "manual", None)
        .await
        .unwrap();
    assert_eq!(failed.result, SyncResult::Failed);
    let failed_finished = failed.finished_at.unwrap();

    let metrics = scrape(&stack, &stack.url("/metrics")).await;
    assert_eq!(value(&metrics, "visa_ldap_last_sync_success", &[]), 0.0);
    let finished = value(&metrics, "visa_ldap_last_sync_timestamp_seconds", &[]);
    assert!(
        (finished - unix_seconds(failed_finished)).abs() < 0.002,
        "{finished} is not the failed run's end {failed_finished} ms"
    );
    let succeeded = value(
        &metrics,
        "visa_ldap_last_successful_sync_timestamp_seconds",
        &[],
    );
    assert!(
        (succeeded - unix_seconds(good_finished)).abs() < 0.002,
        "the last success is still the first run: {succeeded}"
    );
    assert_eq!(
        value(
            &metrics,
            "visa_ldap_last_sync_entries",
            &[("count", "synced")]
        ),
        0.0,
        "a failed run records no entries"
    );
    assert!(!metrics.contains(wrong_password), "{metrics}");

    let page = operator_page(&stack, "/operator/instances").await;
    assert!(
        page.contains("<span class=\"sync-failed\">failed</span>"),
        "{page}"
    );
    assert!(page.contains("invalidCredentials"), "{page}");
    // The error quotes the bind DN, escaped.
    assert!(
        page.contains(&format!("bind as &quot;{LDAP_ADMIN_DN}&quot;")),
        "{page}"
    );
    assert!(
        page.contains(&format!("Last success: {}", format_utc(good_finished))),
        "{page}"
    );
    assert!(!page.contains(wrong_password), "{page}");
    let admin_password =
        std::fs::read_to_string(required_env("VISA_TEST_LDAP_PASSWORD_FILE")).unwrap();
    assert!(!page.contains(admin_password.trim()), "{page}");

    // Without the runs table the scrape still succeeds with the last values, and the page
    // shows that the status is unavailable.
    sqlx::query("DROP TABLE ldap_sync_runs")
        .execute(stack.database.pool())
        .await
        .unwrap();
    let metrics = scrape(&stack, &stack.url("/metrics")).await;
    assert_eq!(value(&metrics, "visa_ldap_last_sync_success", &[]), 0.0);
    let page = operator_page(&stack, "/operator/instances").await;
    assert!(
        page.contains("unavailable: the database did not answer"),
        "{page}"
    );

    remove_directory(ldap, &ou).await;
}

/// Formats a time like the operator pages do: ISO-8601 in UTC, to the second.
fn format_utc(millis: i64) -> String {
    let text = visa_jobs::model::format_visa_time(millis);
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => text,
    }
}
