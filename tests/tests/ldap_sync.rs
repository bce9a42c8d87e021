//! The LDAP sync of investigations against a real OpenLDAP server, and the NFS mounts that an
//! instance created through the API gets from the synced data.
//!
//! Each test works in its own organizational unit under `dc=visa,dc=test` and its own database,
//! so the tests run in parallel against the one slapd that `scripts/test.sh` starts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::Api;
use ldap3::{Ldap, LdapConnAsync, Mod, Scope, SearchEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use visa_jobs::ldap::{LdapConfig, run_sync};
use visa_jobs::objects::{MAIN_CONTAINER, pod_name};
use visa_jobs::settings::LdapArgs;
use visa_jobs::store::{Database, LDAP_SYNC_SCHEDULE, LdapSyncRun, SyncResult};
use visa_tests::{
    Backend, Stack, StackOptions, binary, free_port, required_env, short_id, test_database_url,
};

const SUFFIX: &str = "dc=visa,dc=test";
const ADMIN_DN: &str = "cn=admin,dc=visa,dc=test";
const WAIT: Duration = Duration::from_secs(90);

fn password_file() -> PathBuf {
    PathBuf::from(required_env("VISA_TEST_LDAP_PASSWORD_FILE"))
}

fn admin_password() -> String {
    std::fs::read_to_string(password_file()).unwrap()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("visa-ldap-{name}-{}", short_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An organizational unit of one test, with an admin connection to its server.
struct Directory {
    url: String,
    ou: String,
    ldap: Ldap,
}

impl Directory {
    async fn create(url: &str) -> Directory {
        let (connection, mut ldap) = LdapConnAsync::new(url).await.unwrap();
        ldap3::drive!(connection);
        ldap.simple_bind(ADMIN_DN, &admin_password())
            .await
            .unwrap()
            .success()
            .unwrap();
        let name = format!("t-{}", short_id());
        let ou = format!("ou={name},{SUFFIX}");
        ldap.add(
            &ou,
            vec![
                ("objectClass", HashSet::from(["organizationalUnit"])),
                ("ou", HashSet::from([name.as_str()])),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
        Directory {
            url: url.to_owned(),
            ou,
            ldap,
        }
    }

    fn dn(&self, proposal: &str) -> String {
        format!("cn={proposal},{}", self.ou)
    }

    /// Adds an investigation as a posixGroup with its paths in `description`.
    async fn add_investigation(&mut self, proposal: &str, group_id: u32, paths: &[&str]) {
        let group_id = group_id.to_string();
        let mut attributes = vec![
            ("objectClass", HashSet::from(["posixGroup"])),
            ("cn", HashSet::from([proposal])),
            ("gidNumber", HashSet::from([group_id.as_str()])),
        ];
        if !paths.is_empty() {
            attributes.push(("description", paths.iter().copied().collect()));
        }
        self.add(&self.dn(proposal), attributes).await;
    }

    async fn add(&mut self, dn: &str, attributes: Vec<(&str, HashSet<&str>)>) {
        self.ldap
            .add(dn, attributes)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|error| panic!("adding {dn} failed: {error}"));
    }

    async fn replace(&mut self, proposal: &str, attribute: &str, values: &[&str]) {
        let dn = self.dn(proposal);
        self.ldap
            .modify(
                &dn,
                vec![Mod::Replace(attribute, values.iter().copied().collect())],
            )
            .await
            .unwrap()
            .success()
            .unwrap();
    }

    async fn delete(&mut self, dn: &str) {
        self.ldap.delete(dn).await.unwrap().success().unwrap();
    }

    /// Deletes the unit and every entry under it.
    async fn remove(mut self) {
        let (entries, _) = self
            .ldap
            .search(&self.ou, Scope::OneLevel, "(objectClass=*)", vec!["1.1"])
            .await
            .unwrap()
            .success()
            .unwrap();
        for entry in entries {
            let dn = SearchEntry::construct(entry).dn;
            self.delete(&dn).await;
        }
        let ou = self.ou.clone();
        self.delete(&ou).await;
        let _ = self.ldap.unbind().await;
    }

    /// Sync settings for this unit, bound as the admin.
    fn args(&self) -> LdapArgs {
        LdapArgs {
            ldap_url: Some(self.url.clone()),
            ldap_base_dn: Some(self.ou.clone()),
            ..admin_args()
        }
    }

    fn config(&self) -> LdapConfig {
        config(self.args())
    }
}

fn config(args: LdapArgs) -> LdapConfig {
    args.config_with_password(None).unwrap().unwrap()
}

fn proposal(index: usize) -> String {
    format!("2025{index:06}")
}

fn data_path(index: usize) -> String {
    format!("/data/2025/{}", proposal(index))
}

/// Adds investigations `0..count`, each with one path and group id `10000 + index`.
async fn add_many(directory: &mut Directory, count: usize) {
    for index in 0..count {
        let path = data_path(index);
        directory
            .add_investigation(&proposal(index), 10_000 + index as u32, &[&path])
            .await;
    }
}

async fn open_database(backend: Backend, dir: &Path) -> Database {
    Database::connect(&test_database_url(backend, dir).await)
        .await
        .unwrap()
}

async fn sync(config: &LdapConfig, database: &Database) -> LdapSyncRun {
    run_sync(config, database, "manual", None).await.unwrap()
}

fn assert_succeeded(run: &LdapSyncRun) {
    assert_eq!(run.result, SyncResult::Succeeded, "error: {:?}", run.error);
    assert_eq!(run.error, None);
}

async fn sync_follows_directory(backend: Backend) {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_many(&mut directory, 300).await;
    let database = open_database(backend, &scratch_dir("follows")).await;
    let mut config = directory.config();
    config.page_size = 50;

    let first = sync(&config, &database).await;
    assert_succeeded(&first);
    assert_eq!(first.counts.entries, 300);
    assert_eq!(first.counts.synced, 300);
    assert_eq!(first.counts.added, 300);
    assert_eq!(first.counts.changed, 0);
    assert_eq!(first.counts.gone, 0);
    assert_eq!(first.counts.skipped, 0);
    assert_eq!(first.counts.pages, 6, "300 entries in pages of 50");
    assert_eq!(database.count_investigations().await.unwrap(), (300, 0));
    let stored = database.investigation(&proposal(7)).await.unwrap().unwrap();
    assert_eq!(stored.investigation.paths, [data_path(7)]);
    assert_eq!(stored.investigation.group_id, 10_007);
    assert_eq!(stored.gone_at, None);

    // A changed path, a changed group id, an added and a removed investigation.
    directory
        .replace(
            &proposal(1),
            "description",
            &["/data/moved/p1", "/data/extra/p1"],
        )
        .await;
    directory
        .replace(&proposal(2), "gidNumber", &["20002"])
        .await;
    directory
        .add_investigation(&proposal(300), 10_300, &["/data/2025/new"])
        .await;
    let removed_dn = directory.dn(&proposal(3));
    directory.delete(&removed_dn).await;

    let second = sync(&config, &database).await;
    assert_succeeded(&second);
    assert_eq!(second.counts.entries, 300);
    assert_eq!(second.counts.synced, 300);
    assert_eq!(second.counts.added, 1);
    assert_eq!(second.counts.changed, 2);
    assert_eq!(second.counts.gone, 1);

    let moved = database.investigation(&proposal(1)).await.unwrap().unwrap();
    assert_eq!(
        moved.investigation.paths,
        ["/data/extra/p1", "/data/moved/p1"]
    );
    let regrouped = database.investigation(&proposal(2)).await.unwrap().unwrap();
    assert_eq!(regrouped.investigation.group_id, 20_002);
    let added = database
        .investigation(&proposal(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(added.investigation.paths, ["/data/2025/new"]);
    let removed = database.investigation(&proposal(3)).await.unwrap().unwrap();
    assert!(
        removed.gone_at.is_some(),
        "a removed investigation is marked gone"
    );
    assert_eq!(
        removed.investigation.paths,
        [data_path(3)],
        "its data is kept"
    );
    assert_eq!(removed.first_seen, stored.first_seen);
    assert_eq!(database.count_investigations().await.unwrap(), (300, 1));

    // Instances resolve only investigations that are not gone, in the order asked.
    let resolved = database
        .investigations_for_proposals(&[
            proposal(2),
            proposal(3),
            "unknown".to_owned(),
            proposal(1),
        ])
        .await
        .unwrap();
    let names: Vec<&str> = resolved.iter().map(|i| i.proposal.as_str()).collect();
    assert_eq!(names, [proposal(2), proposal(1)]);

    // An investigation that comes back is in use again, and an unchanged sync changes nothing.
    directory
        .add_investigation(&proposal(3), 10_003, &[&data_path(3)])
        .await;
    let third = sync(&config, &database).await;
    assert_succeeded(&third);
    assert_eq!(third.counts.changed, 1);
    assert_eq!(third.counts.gone, 0);
    let back = database.investigation(&proposal(3)).await.unwrap().unwrap();
    assert_eq!(back.gone_at, None);

    let fourth = sync(&config, &database).await;
    assert_succeeded(&fourth);
    assert_eq!(
        (
            fourth.counts.added,
            fourth.counts.changed,
            fourth.counts.gone
        ),
        (0, 0, 0)
    );
    assert_eq!(fourth.counts.synced, 301);
    let unchanged = database.investigation(&proposal(7)).await.unwrap().unwrap();
    assert!(unchanged.last_seen >= fourth.started_at);
    assert_eq!(unchanged.updated_at, stored.updated_at);

    let last = database.last_ldap_sync().await.unwrap().unwrap();
    assert_eq!(last.id, fourth.id);
    assert_eq!(last.counts, fourth.counts);
    assert_eq!(last.attempts, 1);
    directory.remove().await;
}

#[tokio::test]
async fn sync_follows_directory_on_sqlite() {
    sync_follows_directory(Backend::Sqlite).await;
}

#[tokio::test]
async fn sync_follows_directory_on_mariadb() {
    sync_follows_directory(Backend::MariaDb).await;
}

#[tokio::test]
async fn paging_returns_whole_directory() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_many(&mut directory, 120).await;
    let database = open_database(Backend::Sqlite, &scratch_dir("paging")).await;

    for (page_size, pages) in [(11, 11), (1, 120), (120, 1), (1000, 1)] {
        let mut config = directory.config();
        config.page_size = page_size;
        let run = sync(&config, &database).await;
        assert_succeeded(&run);
        assert_eq!(run.counts.entries, 120, "page size {page_size}");
        assert_eq!(run.counts.synced, 120, "page size {page_size}");
        assert_eq!(run.counts.pages, pages, "page size {page_size}");
    }
    assert_eq!(database.count_investigations().await.unwrap(), (120, 0));
    directory.remove().await;
}

/// Adds an organizationalRole entry, which unlike a posixGroup may lack a group id.
async fn add_role(directory: &mut Directory, cn: &str, attributes: &[(&str, &[&str])]) {
    let mut all = vec![
        (
            "objectClass",
            HashSet::from(["organizationalRole", "extensibleObject"]),
        ),
        ("cn", HashSet::from([cn])),
    ];
    for (name, values) in attributes {
        all.push((*name, values.iter().copied().collect()));
    }
    let dn = directory.dn(cn);
    directory.add(&dn, all).await;
}

/// Entries whose group id is in `roomNumber`, a string attribute, so that the directory
/// accepts the non-numeric values that `gidNumber` would reject.
#[tokio::test]
async fn malformed_entries_are_skipped_and_counted() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_role(
        &mut directory,
        "good-1",
        &[
            ("roomNumber", &["5001"]),
            ("description", &["/data/good-1"]),
        ],
    )
    .await;
    add_role(
        &mut directory,
        "good-2",
        &[
            ("roomNumber", &["5002"]),
            (
                "description",
                &["/data/good-2", "../../etc", "/data/good-2/\u{1b}x"],
            ),
        ],
    )
    .await;
    add_role(
        &mut directory,
        "later-broken",
        &[("roomNumber", &["5003"]), ("description", &["/data/later"])],
    )
    .await;
    add_role(
        &mut directory,
        "no-group",
        &[("description", &["/data/no-group"])],
    )
    .await;
    add_role(
        &mut directory,
        "letters",
        &[
            ("roomNumber", &["abc"]),
            ("description", &["/data/letters"]),
        ],
    )
    .await;
    add_role(
        &mut directory,
        "negative",
        &[
            ("roomNumber", &["-5"]),
            ("description", &["/data/negative"]),
        ],
    )
    .await;
    add_role(
        &mut directory,
        "root-group",
        &[("roomNumber", &["0"]), ("description", &["/data/root"])],
    )
    .await;
    add_role(
        &mut directory,
        "too-big",
        &[
            ("roomNumber", &["4294967296"]),
            ("description", &["/data/big"]),
        ],
    )
    .await;
    add_role(
        &mut directory,
        "two-groups",
        &[
            ("roomNumber", &["5004", "5005"]),
            ("description", &["/data/two"]),
        ],
    )
    .await;
    add_role(&mut directory, "no-path", &[("roomNumber", &["5006"])]).await;
    add_role(
        &mut directory,
        "bad-paths",
        &[
            ("roomNumber", &["5007"]),
            ("description", &["relative/path", "/data/../../etc"]),
        ],
    )
    .await;

    let database = open_database(Backend::Sqlite, &scratch_dir("malformed")).await;
    let mut args = directory.args();
    args.ldap_filter = "(objectClass=organizationalRole)".to_owned();
    args.ldap_group_id_attribute = "roomNumber".to_owned();
    let config = config(args);

    let run = sync(&config, &database).await;
    assert_succeeded(&run);
    assert_eq!(run.counts.entries, 11);
    assert_eq!(run.counts.synced, 3);
    assert_eq!(run.counts.skipped, 8);
    assert_eq!(run.counts.skipped_paths, 2, "the two dropped from good-2");
    let good = database.investigation("good-2").await.unwrap().unwrap();
    assert_eq!(good.investigation.paths, ["/data/good-2"]);
    assert_eq!(good.investigation.group_id, 5002);
    for skipped in [
        "no-group",
        "letters",
        "negative",
        "root-group",
        "too-big",
        "two-groups",
        "no-path",
        "bad-paths",
    ] {
        assert!(
            database.investigation(skipped).await.unwrap().is_none(),
            "{skipped} was stored"
        );
    }

    // An entry that becomes malformed keeps its last good data and is not marked gone.
    directory
        .replace("later-broken", "roomNumber", &["not-a-number"])
        .await;
    let second = sync(&config, &database).await;
    assert_succeeded(&second);
    assert_eq!(second.counts.synced, 2);
    assert_eq!(second.counts.skipped, 9);
    assert_eq!(second.counts.gone, 0);
    let kept = database
        .investigation("later-broken")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.gone_at, None);
    assert_eq!(kept.investigation.group_id, 5003);
    assert_eq!(kept.investigation.paths, ["/data/later"]);
    directory.remove().await;
}

/// A private slapd of one test, on its own port and state folder, stopped when dropped.
struct PrivateSlapd {
    state_dir: PathBuf,
    port: u16,
    /// Extra environment of slapd.sh, for the TLS settings.
    env: Vec<(&'static str, String)>,
}

impl PrivateSlapd {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("services/slapd.sh")
    }

    fn command(&self, action: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(Self::script())
            .arg(action)
            .env("VISA_STATE_DIR", &self.state_dir)
            .env("VISA_LDAP_PORT", self.port.to_string())
            .envs(self.env.iter().map(|(name, value)| (*name, value)));
        command
    }

    fn run(&self, action: &str) -> String {
        let output = self.command(action).output().unwrap();
        assert!(
            output.status.success(),
            "slapd.sh {action} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn start(env: Vec<(&'static str, String)>) -> (PrivateSlapd, String) {
        let slapd = PrivateSlapd {
            state_dir: scratch_dir("slapd"),
            port: free_port(),
            env,
        };
        let url = slapd.run("start");
        (slapd, url)
    }

    fn password_file(&self) -> PathBuf {
        self.state_dir.join("slapd/password")
    }

    /// Connects as the admin and creates a unit of investigations for the test.
    async fn directory(&self, url: &str) -> Directory {
        let (connection, mut ldap) = LdapConnAsync::new(url).await.unwrap();
        ldap3::drive!(connection);
        let password = std::fs::read_to_string(self.password_file()).unwrap();
        ldap.simple_bind(ADMIN_DN, &password)
            .await
            .unwrap()
            .success()
            .unwrap();
        let name = format!("t-{}", short_id());
        let ou = format!("ou={name},{SUFFIX}");
        ldap.add(
            &ou,
            vec![
                ("objectClass", HashSet::from(["organizationalUnit"])),
                ("ou", HashSet::from([name.as_str()])),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
        Directory {
            url: url.to_owned(),
            ou,
            ldap,
        }
    }

    /// Sync settings for `directory` on this server.
    fn args(&self, directory: &Directory) -> LdapArgs {
        LdapArgs {
            ldap_password_file: Some(self.password_file()),
            ..directory.args()
        }
    }
}

impl Drop for PrivateSlapd {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

#[tokio::test]
async fn stopped_server_keeps_last_good_data() {
    let (slapd, url) = PrivateSlapd::start(Vec::new());
    let password = std::fs::read_to_string(slapd.password_file()).unwrap();
    let mut directory = slapd.directory(&url).await;
    add_many(&mut directory, 50).await;

    let mut args = slapd.args(&directory);
    args.ldap_retry_budget_seconds = 3;
    args.ldap_timeout_seconds = 2;
    let config = config(args);
    let database = open_database(Backend::Sqlite, &scratch_dir("stopped")).await;

    let first = sync(&config, &database).await;
    assert_succeeded(&first);
    assert_eq!(first.counts.synced, 50);

    directory
        .replace(&proposal(0), "gidNumber", &["30000"])
        .await;
    let removed_dn = directory.dn(&proposal(1));
    directory.delete(&removed_dn).await;
    slapd.run("stop");

    let started = Instant::now();
    let failed = sync(&config, &database).await;
    assert_eq!(failed.result, SyncResult::Failed);
    assert!(
        failed.attempts >= 2,
        "retried with backoff, attempts {}",
        failed.attempts
    );
    let error = failed.error.clone().unwrap();
    assert!(error.contains("failed to connect"), "{error}");
    assert!(
        !error.contains(password.trim()),
        "the error holds the password"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the retry budget bounds the run"
    );

    let recorded = database.last_ldap_sync().await.unwrap().unwrap();
    assert_eq!(recorded.id, failed.id);
    assert_eq!(recorded.result, SyncResult::Failed);
    assert_eq!(recorded.error.as_deref(), Some(error.as_str()));
    let last_good = database.last_successful_ldap_sync().await.unwrap().unwrap();
    assert_eq!(last_good.id, first.id);

    let unchanged = database.investigation(&proposal(0)).await.unwrap().unwrap();
    assert_eq!(
        unchanged.investigation.group_id, 10_000,
        "the last good data stays"
    );
    let still_there = database.investigation(&proposal(1)).await.unwrap().unwrap();
    assert_eq!(
        still_there.gone_at, None,
        "a failed sync marks nothing gone"
    );
    assert_eq!(database.count_investigations().await.unwrap(), (50, 0));

    // After a restart the next sync catches up.
    assert_eq!(slapd.run("start"), url);
    let caught_up = sync(&config, &database).await;
    assert_succeeded(&caught_up);
    assert_eq!(caught_up.counts.changed, 1);
    assert_eq!(caught_up.counts.gone, 1);
    let regrouped = database.investigation(&proposal(0)).await.unwrap().unwrap();
    assert_eq!(regrouped.investigation.group_id, 30_000);
    let gone = database.investigation(&proposal(1)).await.unwrap().unwrap();
    assert!(gone.gone_at.is_some());
}

/// Action of the proxy after the set number of bytes from the server.
#[derive(Clone, Copy)]
enum Cut {
    /// Closes the connection, as a server that dies mid-answer would.
    Close,
    /// Keeps the connection open and forwards nothing more, as a hung server would.
    Stall,
}

/// Forwards connections to `target` until `cut_after` bytes came from the server, then cuts
/// each connection as `cut` selects.
async fn cutting_proxy(target: &str, cut_after: usize, cut: Cut) -> SocketAddr {
    let target = target.trim_start_matches("ldap://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&target).await.unwrap();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut forwarded = 0;
                let mut buffer = [0u8; 1024];
                while forwarded < cut_after {
                    let read = match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => read.min(cut_after - forwarded),
                    };
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                    forwarded += read;
                }
                if let Cut::Stall = cut {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                upstream.abort();
                drop(client_write);
            });
        }
    });
    address
}

#[tokio::test]
async fn connection_cut_mid_search_changes_nothing() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_many(&mut directory, 300).await;
    let database = open_database(Backend::Sqlite, &scratch_dir("cut")).await;
    let mut config = directory.config();
    config.page_size = 20;

    let first = sync(&config, &database).await;
    assert_succeeded(&first);
    assert_eq!(first.counts.synced, 300);

    // The directory loses half its entries, but the response breaks off after a few pages.
    for index in 150..300 {
        let dn = directory.dn(&proposal(index));
        directory.delete(&dn).await;
    }
    let proxy = cutting_proxy(&url, 6000, Cut::Close).await;
    let mut cut = config.clone();
    cut.url = format!("ldap://{proxy}");
    let failed = sync(&cut, &database).await;
    assert_eq!(failed.result, SyncResult::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("search under"), "{error}");
    assert_eq!(
        database.count_investigations().await.unwrap(),
        (300, 0),
        "nothing marked gone"
    );

    // A server that stops responding mid-search times out, with the same result.
    let proxy = cutting_proxy(&url, 6000, Cut::Stall).await;
    let mut stalled = config.clone();
    stalled.url = format!("ldap://{proxy}");
    stalled.timeout = Duration::from_secs(1);
    let failed = sync(&stalled, &database).await;
    assert_eq!(failed.result, SyncResult::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("timed out after 1 s while searching"),
        "{error}"
    );
    assert_eq!(
        database.count_investigations().await.unwrap(),
        (300, 0),
        "nothing marked gone"
    );

    let complete = sync(&config, &database).await;
    assert_succeeded(&complete);
    assert_eq!(complete.counts.gone, 150);
    assert_eq!(database.count_investigations().await.unwrap(), (150, 150));
    directory.remove().await;
}

#[tokio::test]
async fn refused_bind_is_recorded_without_password() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_many(&mut directory, 3).await;
    let database = open_database(Backend::Sqlite, &scratch_dir("bind")).await;
    let first = sync(&directory.config(), &database).await;
    assert_succeeded(&first);

    let dir = scratch_dir("wrong-password");
    let wrong_password = "wrong-test-password-7c1e";
    std::fs::write(dir.join("password"), format!("{wrong_password}\n")).unwrap();
    let mut args = directory.args();
    args.ldap_password_file = Some(dir.join("password"));
    let failed = sync(&config(args), &database).await;

    assert_eq!(failed.result, SyncResult::Failed);
    assert_eq!(failed.attempts, 1, "a retry budget of 0 makes one attempt");
    let error = failed.error.unwrap();
    assert!(error.contains("bind as"), "{error}");
    assert!(error.contains("invalidCredentials"), "{error}");
    assert!(
        !error.contains(wrong_password),
        "the error holds the password: {error}"
    );
    assert_eq!(database.count_investigations().await.unwrap(), (3, 0));
    directory.remove().await;
}

#[tokio::test]
async fn silent_server_times_out() {
    // A server that accepts connections and never responds.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    let mut args = LdapArgs {
        ldap_url: Some(format!("ldap://{address}")),
        ldap_base_dn: Some(SUFFIX.to_owned()),
        ..admin_args()
    };
    args.ldap_timeout_seconds = 1;
    let database = open_database(Backend::Sqlite, &scratch_dir("timeout")).await;

    let started = Instant::now();
    let failed = sync(&config(args), &database).await;
    let elapsed = started.elapsed();
    assert_eq!(failed.result, SyncResult::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("timed out after 1 s while binding"),
        "{error}"
    );
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // Over ldaps:// the TLS handshake waits for the server, within the connection time-out.
    let mut args = LdapArgs {
        ldap_url: Some(format!("ldaps://{address}")),
        ldap_base_dn: Some(SUFFIX.to_owned()),
        ..admin_args()
    };
    args.ldap_timeout_seconds = 1;
    let failed = sync(&config(args), &database).await;
    let error = failed.error.unwrap();
    assert!(
        error.contains("timed out after 1 s while connecting"),
        "{error}"
    );
}

/// Reads one LDAP message (a BER sequence) and returns its message ID, which this test's
/// client keeps below 128 so that it is one byte.
async fn read_message_id(stream: &mut TcpStream) -> Option<u8> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.ok()?;
    let length = if header[1] < 0x80 {
        usize::from(header[1])
    } else {
        let mut bytes = vec![0u8; usize::from(header[1] & 0x7f)];
        stream.read_exact(&mut bytes).await.ok()?;
        bytes
            .iter()
            .fold(0, |length, byte| length << 8 | usize::from(*byte))
    };
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    (body[0] == 0x02 && body[1] == 0x01).then_some(body[2])
}

/// An LDAP result message with result code 0 and empty texts, of the operation `tag`.
fn success(id: u8, tag: u8) -> Vec<u8> {
    vec![
        0x30, 0x0c, 0x02, 0x01, id, tag, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
    ]
}

#[tokio::test]
async fn invalid_entry_fails_the_sync() {
    // A server that accepts any bind and returns a search entry without its attribute list.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(bind) = read_message_id(&mut stream).await else {
                    return;
                };
                stream.write_all(&success(bind, 0x61)).await.unwrap();
                let Some(search) = read_message_id(&mut stream).await else {
                    return;
                };
                let entry = [
                    0x30, 0x0b, 0x02, 0x01, search, 0x64, 0x06, 0x04, 0x04, b'c', b'n', b'=', b'x',
                ];
                stream.write_all(&entry).await.unwrap();
                stream.write_all(&success(search, 0x65)).await.unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    let args = LdapArgs {
        ldap_url: Some(format!("ldap://{address}")),
        ldap_base_dn: Some(SUFFIX.to_owned()),
        ..admin_args()
    };
    let database = open_database(Backend::Sqlite, &scratch_dir("invalid-entry")).await;

    let failed = sync(&config(args), &database).await;
    assert_eq!(failed.result, SyncResult::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("failed on an invalid response"), "{error}");
    let recorded = database.last_ldap_sync().await.unwrap().unwrap();
    assert_eq!(
        recorded.result,
        SyncResult::Failed,
        "the run is recorded, not left running"
    );
}

#[tokio::test]
async fn missing_base_is_a_failed_search() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let database = open_database(Backend::Sqlite, &scratch_dir("no-base")).await;
    let args = LdapArgs {
        ldap_url: Some(url),
        ldap_base_dn: Some(format!("ou=missing-{},{SUFFIX}", short_id())),
        ..admin_args()
    };
    let failed = sync(&config(args), &database).await;
    assert_eq!(failed.result, SyncResult::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("failed after 0 pages"), "{error}");
    assert!(error.contains("noSuchObject"), "{error}");
}

#[tokio::test]
async fn database_failures_are_reported() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_many(&mut directory, 3).await;
    let database = open_database(Backend::Sqlite, &scratch_dir("db-failure")).await;

    sqlx::query("DROP TABLE investigations")
        .execute(database.pool())
        .await
        .unwrap();
    let failed = sync(&directory.config(), &database).await;
    assert_eq!(failed.result, SyncResult::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("failed to store the investigations"),
        "{error}"
    );

    // Without its table a run cannot be recorded, and run_sync returns the error.
    sqlx::query("DROP TABLE ldap_sync_runs")
        .execute(database.pool())
        .await
        .unwrap();
    let error = run_sync(&directory.config(), &database, "manual", None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("ldap_sync_runs"), "{error}");
    directory.remove().await;
}

#[tokio::test]
async fn corrupt_group_id_is_reported() {
    let database = open_database(Backend::Sqlite, &scratch_dir("corrupt")).await;
    sqlx::query(
        "INSERT INTO investigations (proposal, paths, group_id, first_seen, last_seen, gone_at, \
         updated_at) VALUES ('p1', '[\"/data/p1\"]', -1, 0, 0, NULL, 0)",
    )
    .execute(database.pool())
    .await
    .unwrap();
    let error = database
        .investigations_for_proposals(&["p1".to_owned()])
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("group id -1 of p1 is out of range"),
        "{error}"
    );
}

/// Sync settings with the defaults of `visa-worker`, bound as the shared slapd's admin, with no
/// server and no retries.
fn admin_args() -> LdapArgs {
    LdapArgs {
        ldap_url: None,
        ldap_base_dn: None,
        ldap_filter: "(objectClass=posixGroup)".to_owned(),
        ldap_identifier_attribute: "cn".to_owned(),
        ldap_path_attribute: "description".to_owned(),
        ldap_group_id_attribute: "gidNumber".to_owned(),
        ldap_bind_dn: Some(ADMIN_DN.to_owned()),
        ldap_password_file: Some(password_file()),
        ldap_starttls: false,
        ldap_ca_file: None,
        ldap_timeout_seconds: 10,
        ldap_page_size: 500,
        ldap_sync_interval_seconds: 3600,
        ldap_retry_budget_seconds: 0,
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not found: install the openssl package");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes a CA named `name` in `dir` and returns the path of its certificate.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=VISA test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// Makes a server certificate for 127.0.0.1 signed by the CA `ca`, and returns the paths of
/// the certificate and its key.
fn make_server_certificate(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    (dir.join("server.pem"), dir.join("server.key"))
}

#[tokio::test]
async fn tls_verifies_server_with_ca_file() {
    let dir = scratch_dir("tls");
    let trusted_ca = make_ca(&dir, "trusted-ca");
    let other_ca = make_ca(&dir, "other-ca");
    let (certificate, key) = make_server_certificate(&dir, "trusted-ca");
    let tls_port = free_port();
    let (slapd, url) = PrivateSlapd::start(vec![
        ("VISA_LDAP_TLS_CERT", certificate.display().to_string()),
        ("VISA_LDAP_TLS_KEY", key.display().to_string()),
        ("VISA_LDAP_TLS_PORT", tls_port.to_string()),
    ]);
    let mut directory = slapd.directory(&url).await;
    add_many(&mut directory, 5).await;
    let database = open_database(Backend::Sqlite, &dir).await;

    let mut starttls = slapd.args(&directory);
    starttls.ldap_starttls = true;
    starttls.ldap_ca_file = Some(trusted_ca.clone());
    let run = sync(&config(starttls.clone()), &database).await;
    assert_succeeded(&run);
    assert_eq!(run.counts.synced, 5);

    let mut ldaps = slapd.args(&directory);
    ldaps.ldap_url = Some(format!("ldaps://127.0.0.1:{tls_port}"));
    ldaps.ldap_ca_file = Some(trusted_ca);
    let run = sync(&config(ldaps.clone()), &database).await;
    assert_succeeded(&run);
    assert_eq!(run.counts.synced, 5);

    // A server certificate from a CA that is not in the CA file is rejected.
    starttls.ldap_ca_file = Some(other_ca.clone());
    let run = sync(&config(starttls), &database).await;
    assert_eq!(run.result, SyncResult::Failed);
    let error = run.error.unwrap();
    assert!(error.contains("failed to connect"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");

    ldaps.ldap_ca_file = Some(other_ca);
    let run = sync(&config(ldaps.clone()), &database).await;
    assert_eq!(run.result, SyncResult::Failed);
    assert!(run.error.unwrap().contains("UnknownIssuer"));

    // Without a CA file the system's CAs are used, and they do not know the test CA either.
    ldaps.ldap_ca_file = None;
    let run = sync(&config(ldaps), &database).await;
    assert_eq!(run.result, SyncResult::Failed);
    assert!(run.error.unwrap().contains("UnknownIssuer"));
}

#[tokio::test]
async fn schedule_is_taken_once_per_due_time() {
    for backend in [Backend::Sqlite, Backend::MariaDb] {
        let database = open_database(backend, &scratch_dir("schedule")).await;
        let now = 1_000_000;
        let claims = take_schedule_concurrently(&database, now).await;
        assert_eq!(
            claims.iter().filter(|taken| **taken).count(),
            1,
            "{backend:?}: {claims:?}"
        );
        assert!(
            !database
                .take_due_schedule(LDAP_SYNC_SCHEDULE, now + 10, now + 100)
                .await
                .unwrap()
        );
        assert!(
            database
                .take_due_schedule(LDAP_SYNC_SCHEDULE, now + 60_000, now + 120_000)
                .await
                .unwrap()
        );
    }
}

/// Four workers try to take the schedule at once.
async fn take_schedule_concurrently(database: &Database, now: i64) -> Vec<bool> {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let database = database.clone();
            tokio::spawn(async move {
                database
                    .take_due_schedule(LDAP_SYNC_SCHEDULE, now, now + 60_000)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claims = Vec::new();
    for task in tasks {
        claims.push(task.await.unwrap());
    }
    claims
}

fn worker_command(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("visa-worker"))
        .args(args)
        .env("VISA_DATABASE_URL", database_url)
        .env_remove("VISA_LDAP_PASSWORD")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn sync_and_status_subcommands() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    add_many(&mut directory, 25).await;
    directory.add_investigation("no-path", 9, &[]).await;
    let database_url = test_database_url(Backend::Sqlite, &scratch_dir("commands")).await;
    let password_file = password_file();
    let ldap_args = [
        "--ldap-url",
        url.as_str(),
        "--ldap-base-dn",
        directory.ou.as_str(),
        "--ldap-bind-dn",
        ADMIN_DN,
        "--ldap-password-file",
        password_file.to_str().unwrap(),
        "--ldap-page-size",
        "10",
    ];

    let status = worker_command(&database_url, &["ldap-status"]);
    assert!(status.status.success());
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(text.contains("last: none"), "{text}");

    let mut args = vec!["ldap-sync"];
    args.extend(ldap_args);
    let synced = worker_command(&database_url, &args);
    let text = String::from_utf8(synced.stdout).unwrap();
    assert!(
        synced.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&synced.stderr)
    );
    assert!(text.contains("sync: succeeded"), "{text}");
    assert!(
        text.contains("sync_counts: entries=26 pages=3 synced=25 added=25 changed=0 gone=0 skipped=1 skipped_paths=0"),
        "{text}"
    );
    assert!(text.contains("sync_origin: manual"), "{text}");

    let status = worker_command(&database_url, &["ldap-status"]);
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(text.contains("last: succeeded"), "{text}");
    assert!(text.contains("investigations: 25"), "{text}");
    assert!(text.contains("investigations_gone: 0"), "{text}");
    assert!(!text.contains("last_success: none"), "{text}");

    // A failed sync exits with 1 and prints the error.
    let mut args = vec!["ldap-sync", "--ldap-retry-budget-seconds", "0"];
    args.extend(ldap_args);
    let unreachable = format!("ldap://127.0.0.1:{}", free_port());
    args[4] = &unreachable;
    let failed = worker_command(&database_url, &args);
    let text = String::from_utf8(failed.stdout).unwrap();
    assert_eq!(failed.status.code(), Some(1), "{text}");
    assert!(text.contains("sync: failed"), "{text}");
    assert!(text.contains("sync_error: failed to connect"), "{text}");

    let status = worker_command(&database_url, &["ldap-status"]);
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(text.contains("last: failed"), "{text}");
    assert!(text.contains("investigations: 25"), "{text}");

    // Without an LDAP URL the sync is off and the command reports it.
    let off = worker_command(&database_url, &["ldap-sync"]);
    assert_eq!(off.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&off.stderr).contains("LDAP sync is off"));

    let missing_dir = scratch_dir("commands-missing").join("no/such/dir/provider.db");
    let unopenable = visa_jobs::store::sqlite_url(&missing_dir);
    let status = worker_command(&unopenable, &["ldap-status"]);
    assert_eq!(status.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("failed to open the database"), "{stderr}");

    // A database that lost its run table fails both commands with a message that names it.
    let database = Database::connect(&database_url).await.unwrap();
    sqlx::query("DROP TABLE ldap_sync_runs")
        .execute(database.pool())
        .await
        .unwrap();
    let status = worker_command(&database_url, &["ldap-status"]);
    assert_eq!(status.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("failed to read the LDAP sync status"),
        "{stderr}"
    );
    let mut args = vec!["ldap-sync"];
    args.extend(ldap_args);
    let synced = worker_command(&database_url, &args);
    assert_eq!(synced.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&synced.stderr);
    assert!(
        stderr.contains("failed to record the LDAP sync run"),
        "{stderr}"
    );
    directory.remove().await;
}

async fn wait_for_sync(database: &Database, stack: &Stack) -> LdapSyncRun {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(run) = database.last_ldap_sync().await.unwrap()
            && run.result != SyncResult::Running
        {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "no LDAP sync finished:\n{}",
            stack.log("worker-0")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn data_volumes(pod: &PodSpec) -> Vec<(String, String, String, Option<bool>)> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|volume| {
            let nfs = volume.nfs.as_ref()?;
            Some((
                volume.name.clone(),
                nfs.server.clone(),
                nfs.path.clone(),
                nfs.read_only,
            ))
        })
        .collect()
}

#[tokio::test]
async fn instance_mounts_synced_investigations() {
    let url = required_env("VISA_TEST_LDAP_URL");
    let mut directory = Directory::create(&url).await;
    // The example request's proposals are 2025096612 and 2025097120. Only the first is synced.
    directory
        .add_investigation(
            "2025096612",
            5001,
            &["/data/2025096612/raw", "/data/2025096612/processed"],
        )
        .await;
    directory
        .add_investigation("2025000001", 5999, &["/data/other"])
        .await;

    let password_file = password_file();
    let worker_args = [
        "--ldap-url",
        url.as_str(),
        "--ldap-base-dn",
        directory.ou.as_str(),
        "--ldap-bind-dn",
        ADMIN_DN,
        "--ldap-password-file",
        password_file.to_str().unwrap(),
        "--nfs-server",
        "nfs.visa.test",
        "--nfs-mount-path",
        "/data/{proposal}",
        "--ldap-sync-interval-seconds",
        "2",
    ];
    let stack = Stack::start(StackOptions {
        worker_args: worker_args.iter().map(|arg| arg.to_string()).collect(),
        ..StackOptions::default()
    })
    .await;

    let run = wait_for_sync(&stack.database, &stack).await;
    assert_succeeded(&run);
    assert_eq!(run.origin, "schedule");
    assert!(run.worker.is_some());
    assert_eq!(run.counts.synced, 2);

    let id = stack.create(&format!("VISA_INSTANCE-{}", short_id())).await;
    stack.wait_for_state(&id, "ACTIVE", WAIT).await;

    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let set = sets.get(&id).await.unwrap();
    let template = set.spec.template.spec.unwrap();
    let volumes = data_volumes(&template);
    assert_eq!(
        volumes,
        [
            (
                "investigation-0".to_owned(),
                "nfs.visa.test".to_owned(),
                "/data/2025096612/processed".to_owned(),
                Some(true)
            ),
            (
                "investigation-1".to_owned(),
                "nfs.visa.test".to_owned(),
                "/data/2025096612/raw".to_owned(),
                Some(true)
            ),
        ]
    );
    let container = template
        .containers
        .iter()
        .find(|container| container.name == MAIN_CONTAINER)
        .unwrap();
    let mounts: Vec<(&str, &str, Option<bool>)> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|mount| mount.name.starts_with("investigation-"))
        .map(|mount| {
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.read_only,
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("investigation-0", "/data/2025096612", Some(true)),
            ("investigation-1", "/data/2025096612-2", Some(true)),
        ]
    );
    let groups = template
        .security_context
        .as_ref()
        .and_then(|context| context.supplemental_groups.clone());
    assert_eq!(groups, Some(vec![5001]));

    // The API server accepted the pod template, and KWOK runs the pod with the volumes.
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    let pod = pods.get(&pod_name(&id)).await.unwrap();
    let pod_spec = pod.spec.unwrap();
    assert_eq!(data_volumes(&pod_spec).len(), 2);
    let pod_groups = pod_spec
        .security_context
        .and_then(|context| context.supplemental_groups);
    assert_eq!(pod_groups, Some(vec![5001]));

    // The schedule's failures are logged and the worker goes on.
    sqlx::query("DROP TABLE ldap_sync_runs")
        .execute(stack.database.pool())
        .await
        .unwrap();
    wait_for_log(&stack, "failed to record the LDAP sync run").await;
    sqlx::query("DROP TABLE schedules")
        .execute(stack.database.pool())
        .await
        .unwrap();
    wait_for_log(&stack, "failed to read the LDAP sync schedule").await;

    drop(stack);
    directory.remove().await;
}

async fn wait_for_log(stack: &Stack, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stack.log("worker-0").contains(text) {
        assert!(
            Instant::now() < deadline,
            "the worker did not log {text:?}:\n{}",
            stack.log("worker-0")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unreadable_investigations_fault_the_instance() {
    let stack = Stack::start(StackOptions {
        retry_budget_seconds: 2,
        worker_args: vec!["--nfs-server".to_owned(), "nfs.visa.test".to_owned()],
        ..StackOptions::default()
    })
    .await;
    sqlx::query("DROP TABLE investigations")
        .execute(stack.database.pool())
        .await
        .unwrap();

    let id = stack.create(&format!("VISA_INSTANCE-{}", short_id())).await;
    let instance = stack.wait_for_state(&id, "ERROR", WAIT).await;
    let message = instance["fault"]["message"].as_str().unwrap();
    assert!(message.contains("investigations"), "{message}");
    let sets: Api<StatefulSet> = Api::namespaced(stack.kube.clone(), &stack.namespace);
    assert!(
        sets.get_opt(&id).await.unwrap().is_none(),
        "no StatefulSet without its data"
    );
}
