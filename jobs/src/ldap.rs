//! The LDAP sync of investigations: one paged search of the directory, parsed into
//! investigations and written to the database, retried with exponential backoff when it fails.
//!
//! A sync writes only after a search that completed with success, so a connection lost
//! mid-search, a time-out or a refused bind leaves the stored investigations as they were.

use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use ldap3::controls::{Control, ControlType, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tracing::{info, warn};
use uuid::Uuid;

use crate::investigations::{AttributeNames, parse_directory};
use crate::model::now_millis;
use crate::settings::LdapArgs;
use crate::store::{Database, LdapSyncRun, StoreError, SyncCounts, SyncResult};

/// Environment variable that may hold the bind password instead of a password file.
pub const PASSWORD_ENV: &str = "VISA_LDAP_PASSWORD";

/// A bind password. Its `Debug` output is redacted so that it cannot reach a log by accident.
#[derive(Clone)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Password(<redacted>)")
    }
}

/// Source of the bind password.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// Read at every attempt, so a rotated password needs no restart.
    File(PathBuf),
    Environment(Password),
}

#[derive(Debug, Clone)]
pub struct BindCredentials {
    pub dn: String,
    pub password: PasswordSource,
}

/// Checked settings of the LDAP sync.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    pub url: String,
    pub base_dn: String,
    pub filter: String,
    pub attributes: AttributeNames,
    /// `None` binds anonymously.
    pub bind: Option<BindCredentials>,
    pub starttls: bool,
    /// TLS settings that trust only the CA file's certificates. `None` keeps ldap3's defaults,
    /// which trust the system's CA certificates.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    pub page_size: i32,
    pub interval: Duration,
    pub retry_budget: Duration,
}

/// Failure of a sync attempt.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("failed to read the LDAP bind password: {0}")]
    Password(String),
    #[error("failed to connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("timed out after {seconds} s while {step} on {url}")]
    TimedOut {
        url: String,
        step: &'static str,
        seconds: u64,
    },
    #[error("bind as {dn:?} on {url} failed: {message}")]
    Bind {
        url: String,
        dn: String,
        message: String,
    },
    #[error("search under {base:?} on {url} failed after {pages} pages: {message}")]
    Search {
        url: String,
        base: String,
        pages: u64,
        message: String,
    },
    #[error("failed to store the investigations: {0}")]
    Database(#[from] StoreError),
    /// ldap3 panics on some malformed responses, for example an entry without attributes.
    #[error("the LDAP client failed on an invalid response from {url}: {message}")]
    InvalidResponse { url: String, message: String },
}

impl LdapArgs {
    /// Checks the LDAP settings. Returns `None` when no LDAP URL is set, which turns the sync off.
    pub fn config(&self) -> anyhow::Result<Option<LdapConfig>> {
        let password = std::env::var(PASSWORD_ENV)
            .ok()
            .filter(|password| !password.is_empty())
            .map(Password);
        self.config_with_password(password)
    }

    /// Like [`LdapArgs::config`], with the value of `VISA_LDAP_PASSWORD` passed in.
    pub fn config_with_password(
        &self,
        env_password: Option<Password>,
    ) -> anyhow::Result<Option<LdapConfig>> {
        let Some(url) = self.ldap_url.clone().filter(|url| !url.is_empty()) else {
            return Ok(None);
        };
        let tls_url = url.starts_with("ldaps://");
        if !tls_url && !url.starts_with("ldap://") && !url.starts_with("ldapi://") {
            anyhow::bail!(
                "invalid --ldap-url {url:?}: expected ldap://HOST:PORT, ldaps://HOST:PORT or ldapi://"
            );
        }
        if tls_url && self.ldap_starttls {
            anyhow::bail!(
                "--ldap-starttls is set with the ldaps:// URL {url:?}, which is TLS already, so remove one of them"
            );
        }
        let base_dn = self
            .ldap_base_dn
            .clone()
            .filter(|base| !base.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--ldap-url is set but --ldap-base-dn is missing"))?;
        ldap3::parse_filter(&self.ldap_filter).map_err(|_| {
            anyhow::anyhow!(
                "invalid --ldap-filter {:?}: not an LDAP filter (RFC 4515)",
                self.ldap_filter
            )
        })?;
        for (option, name) in [
            (
                "--ldap-identifier-attribute",
                &self.ldap_identifier_attribute,
            ),
            ("--ldap-path-attribute", &self.ldap_path_attribute),
            ("--ldap-group-id-attribute", &self.ldap_group_id_attribute),
        ] {
            if name.is_empty() {
                anyhow::bail!("{option} is empty");
            }
        }

        let bind = match (&self.ldap_bind_dn, &self.ldap_password_file, env_password) {
            (None, None, None) => None,
            (None, _, _) => anyhow::bail!(
                "a bind password is set (--ldap-password-file or {PASSWORD_ENV}) but --ldap-bind-dn is missing"
            ),
            (Some(dn), Some(file), _) => Some(BindCredentials {
                dn: dn.clone(),
                password: PasswordSource::File(file.clone()),
            }),
            (Some(dn), None, Some(password)) => Some(BindCredentials {
                dn: dn.clone(),
                password: PasswordSource::Environment(password),
            }),
            (Some(_), None, None) => anyhow::bail!(
                "--ldap-bind-dn is set but no password: set --ldap-password-file or {PASSWORD_ENV}"
            ),
        };

        let tls = match &self.ldap_ca_file {
            None => None,
            Some(_) if !tls_url && !self.ldap_starttls => anyhow::bail!(
                "--ldap-ca-file is set but the connection to {url:?} is not TLS: use an ldaps:// URL or --ldap-starttls"
            ),
            Some(path) => Some(tls_config(path)?),
        };

        if self.ldap_timeout_seconds == 0 {
            anyhow::bail!("--ldap-timeout-seconds must be at least 1");
        }
        if self.ldap_page_size == 0 {
            anyhow::bail!("--ldap-page-size must be at least 1");
        }
        if self.ldap_sync_interval_seconds == 0 {
            anyhow::bail!("--ldap-sync-interval-seconds must be at least 1");
        }

        Ok(Some(LdapConfig {
            url,
            base_dn,
            filter: self.ldap_filter.clone(),
            attributes: AttributeNames {
                identifier: self.ldap_identifier_attribute.clone(),
                paths: self.ldap_path_attribute.clone(),
                group_id: self.ldap_group_id_attribute.clone(),
            },
            bind,
            starttls: self.ldap_starttls,
            tls,
            timeout: Duration::from_secs(self.ldap_timeout_seconds),
            page_size: i32::try_from(self.ldap_page_size).unwrap_or(i32::MAX),
            interval: Duration::from_secs(self.ldap_sync_interval_seconds),
            retry_budget: Duration::from_secs(self.ldap_retry_budget_seconds),
        }))
    }
}

/// Builds TLS settings that trust only the CA certificates in the PEM file `path`.
fn tls_config(path: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            anyhow::anyhow!("failed to read the CA file {}: {error}", path.display())
        })?;
    if certificates.is_empty() {
        anyhow::bail!("the CA file {} contains no PEM certificate", path.display());
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|error| {
            anyhow::anyhow!(
                "invalid certificate in the CA file {}: {error}",
                path.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| anyhow::anyhow!("failed to set up TLS: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl PasswordSource {
    fn read(&self) -> Result<String, SyncError> {
        let password = match self {
            Self::Environment(Password(password)) => password.clone(),
            Self::File(path) => {
                let mut password = std::fs::read_to_string(path)
                    .map_err(|error| SyncError::Password(format!("{}: {error}", path.display())))?;
                if password.ends_with('\n') {
                    password.pop();
                    if password.ends_with('\r') {
                        password.pop();
                    }
                }
                password
            }
        };
        // An empty password makes a simple bind unauthenticated (RFC 4513, section 5.1.2),
        // which would read the directory with anonymous rights and no error.
        if password.is_empty() {
            return Err(SyncError::Password(match self {
                Self::File(path) => format!("{} is empty", path.display()),
                Self::Environment(_) => format!("{PASSWORD_ENV} is empty"),
            }));
        }
        Ok(password)
    }
}

/// The entries of one complete search.
#[derive(Debug, Clone)]
pub struct DirectoryRead {
    pub entries: Vec<SearchEntry>,
    /// Search requests made, one per page.
    pub pages: u64,
}

/// Connects, binds and reads every entry that the filter selects, page by page.
pub async fn read_directory(config: &LdapConfig) -> Result<DirectoryRead, SyncError> {
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(config.timeout)
        .set_starttls(config.starttls);
    if let Some(tls) = &config.tls {
        settings = settings.set_config(Arc::clone(tls));
    }
    let (connection, mut ldap) = LdapConnAsync::with_settings(settings, &config.url)
        .await
        .map_err(|error| match error {
            LdapError::Timeout { .. } => timed_out(config, "connecting"),
            error => SyncError::Connect {
                url: config.url.clone(),
                message: error.to_string(),
            },
        })?;
    // The connection task ends when the server closes the connection or after the unbind, and
    // the guard ends it when this future is dropped or unwinds.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = connection.drive().await {
            warn!(%error, "LDAP connection ended with an error");
        }
    }));

    let result = search_all(config, &mut ldap).await;
    if !ldap.is_closed() {
        let _ = ldap.unbind().await;
    }
    result
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn search_all(
    config: &LdapConfig,
    ldap: &mut ldap3::Ldap,
) -> Result<DirectoryRead, SyncError> {
    if let Some(bind) = &config.bind {
        let password = bind.password.read()?;
        let bind_error = |message: String| SyncError::Bind {
            url: config.url.clone(),
            dn: bind.dn.clone(),
            message,
        };
        ldap.with_timeout(config.timeout)
            .simple_bind(&bind.dn, &password)
            .await
            .map_err(|error| match error {
                LdapError::Timeout { .. } => timed_out(config, "binding"),
                error => bind_error(error.to_string()),
            })?
            .success()
            .map_err(|error| bind_error(error.to_string()))?;
    }

    let attributes = [
        config.attributes.identifier.as_str(),
        config.attributes.paths.as_str(),
        config.attributes.group_id.as_str(),
    ];
    let mut entries = Vec::new();
    let mut pages = 0;
    let mut cookie = Vec::new();
    loop {
        let search_error = |pages: u64, message: String| SyncError::Search {
            url: config.url.clone(),
            base: config.base_dn.clone(),
            pages,
            message,
        };
        let control = PagedResults {
            size: config.page_size,
            cookie: std::mem::take(&mut cookie),
        };
        let (page, result) = ldap
            .with_timeout(config.timeout)
            .with_controls(control)
            .search(&config.base_dn, Scope::Subtree, &config.filter, attributes)
            .await
            .map_err(|error| match error {
                LdapError::Timeout { .. } => timed_out(config, "searching"),
                error => search_error(pages, error.to_string()),
            })?
            .success()
            .map_err(|error| search_error(pages, error.to_string()))?;
        pages += 1;
        entries.extend(
            page.into_iter()
                .filter(|entry| !entry.is_ref() && !entry.is_intermediate())
                .map(SearchEntry::construct),
        );

        // A server that ignores the control returns everything at once and no cookie.
        let next = result.ctrls.iter().find_map(|control| match control {
            Control(Some(ControlType::PagedResults), raw) if raw.val.is_some() => {
                Some(raw.parse::<PagedResults>().cookie)
            }
            _ => None,
        });
        match next {
            Some(next) if !next.is_empty() => cookie = next,
            _ => break,
        }
    }
    Ok(DirectoryRead { entries, pages })
}

fn timed_out(config: &LdapConfig, step: &'static str) -> SyncError {
    SyncError::TimedOut {
        url: config.url.clone(),
        step,
        seconds: config.timeout.as_secs(),
    }
}

/// Makes one sync attempt: reads the whole directory, then writes it to the database.
pub async fn sync_once(config: &LdapConfig, database: &Database) -> Result<SyncCounts, SyncError> {
    let read = read_directory(config).await?;
    let contents = parse_directory(&read.entries, &config.attributes);
    let changes = database.apply_directory(&contents, now_millis()).await?;
    Ok(SyncCounts {
        entries: contents.entries,
        pages: read.pages,
        synced: changes.synced,
        added: changes.added,
        changed: changes.changed,
        gone: changes.gone,
        skipped: contents.skipped_entries,
        skipped_paths: contents.skipped_paths,
    })
}

/// Runs one sync, retrying failures with exponential backoff within the retry budget, and
/// records it in `ldap_sync_runs`. `origin` is `schedule` or `manual`. Returns the recorded run,
/// or an error when the run could not be recorded.
pub async fn run_sync(
    config: &LdapConfig,
    database: &Database,
    origin: &str,
    worker: Option<&str>,
) -> Result<LdapSyncRun, StoreError> {
    let id = Uuid::new_v4().to_string();
    let started_at = now_millis();
    database
        .start_ldap_sync(&id, origin, worker, started_at)
        .await?;
    info!(run = %id, origin, url = %config.url, base = %config.base_dn, "LDAP sync started");

    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .with_total_delay(Some(config.retry_budget))
        .without_max_times()
        .with_jitter();
    let attempts = AtomicI64::new(0);
    let outcome = (|| async {
        attempts.fetch_add(1, Ordering::Relaxed);
        // A panic is turned into a failed attempt, so that the run is recorded and a worker's
        // schedule survives a server that sends what ldap3 cannot parse.
        AssertUnwindSafe(sync_once(config, database))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(SyncError::InvalidResponse {
                    url: config.url.clone(),
                    message: panic_message(panic.as_ref()),
                })
            })
    })
    .retry(backoff)
    .notify(|error, delay| {
        warn!(run = %id, %error, retry_in_ms = delay.as_millis() as u64, "LDAP sync attempt failed");
    })
    .await;
    let attempts = attempts.load(Ordering::Relaxed);

    let finished_at = now_millis();
    let (result, counts, error) = match outcome {
        Ok(counts) => {
            info!(run = %id, attempts, entries = counts.entries, pages = counts.pages, synced = counts.synced, added = counts.added, changed = counts.changed, gone = counts.gone, skipped = counts.skipped, skipped_paths = counts.skipped_paths, "LDAP sync succeeded");
            (SyncResult::Succeeded, counts, None)
        }
        Err(error) => {
            warn!(run = %id, attempts, %error, "LDAP sync failed; the stored investigations are unchanged");
            (
                SyncResult::Failed,
                SyncCounts::default(),
                Some(error.to_string()),
            )
        }
    };
    database
        .finish_ldap_sync(
            &id,
            result,
            attempts,
            &counts,
            error.as_deref(),
            finished_at,
        )
        .await?;
    Ok(LdapSyncRun {
        id,
        origin: origin.to_owned(),
        worker: worker.map(str::to_owned),
        started_at,
        finished_at: Some(finished_at),
        result,
        attempts,
        counts,
        error,
    })
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        ldap: LdapArgs,
    }

    fn args(extra: &[&str]) -> LdapArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(extra);
        Command::try_parse_from(argv).unwrap().ldap
    }

    fn config_error(extra: &[&str]) -> String {
        args(extra)
            .config_with_password(None)
            .unwrap_err()
            .to_string()
    }

    const BASE: [&str; 4] = [
        "--ldap-url",
        "ldap://127.0.0.1:1",
        "--ldap-base-dn",
        "dc=visa,dc=test",
    ];

    #[test]
    fn sync_is_off_without_url() {
        assert!(args(&[]).config_with_password(None).unwrap().is_none());
    }

    #[test]
    fn anonymous_config_with_defaults() {
        let config = args(&BASE).config_with_password(None).unwrap().unwrap();
        assert!(config.bind.is_none());
        assert_eq!(config.filter, "(objectClass=posixGroup)");
        assert_eq!(config.attributes.group_id, "gidNumber");
        assert_eq!(config.page_size, 500);
        assert!(config.tls.is_none());
    }

    #[test]
    fn password_from_environment_is_redacted() {
        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-bind-dn", "cn=reader,dc=visa,dc=test"]);
        let config = args(&extra)
            .config_with_password(Some(Password("s3cret-value".to_owned())))
            .unwrap()
            .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret-value"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(config_error(&["--ldap-url", "http://x"]).contains("invalid --ldap-url"));
        assert!(config_error(&["--ldap-url", "ldap://x"]).contains("--ldap-base-dn is missing"));

        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-filter", "(cn=unbalanced"]);
        assert!(config_error(&extra).contains("invalid --ldap-filter"));

        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-bind-dn", "cn=reader"]);
        assert!(config_error(&extra).contains("no password"));

        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-password-file", "/nonexistent"]);
        assert!(config_error(&extra).contains("--ldap-bind-dn is missing"));

        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-ca-file", "/nonexistent"]);
        assert!(config_error(&extra).contains("is not TLS"));

        let extra = [
            "--ldap-url",
            "ldaps://x",
            "--ldap-base-dn",
            "dc=x",
            "--ldap-starttls",
        ];
        assert!(config_error(&extra).contains("TLS already"));

        let extra = [
            "--ldap-url",
            "ldaps://x",
            "--ldap-base-dn",
            "dc=x",
            "--ldap-ca-file",
            "/nonexistent/ca.pem",
        ];
        assert!(config_error(&extra).contains("failed to read the CA file"));

        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-page-size", "0"]);
        assert!(config_error(&extra).contains("--ldap-page-size"));

        let mut extra = BASE.to_vec();
        extra.extend(["--ldap-timeout-seconds", "0"]);
        assert!(config_error(&extra).contains("--ldap-timeout-seconds"));
    }

    #[test]
    fn ca_file_without_certificates_is_rejected() {
        let dir = std::env::temp_dir().join(format!("visa-ldap-ca-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let extra = [
            "--ldap-url",
            "ldaps://x",
            "--ldap-base-dn",
            "dc=x",
            "--ldap-ca-file",
            path.to_str().unwrap(),
        ];
        assert!(config_error(&extra).contains("contains no PEM certificate"));

        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(config_error(&extra).contains("invalid certificate in the CA file"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn password_file_rules() {
        let dir = std::env::temp_dir().join(format!("visa-ldap-pw-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");

        std::fs::write(&path, "line\r\n").unwrap();
        let source = PasswordSource::File(path.clone());
        assert_eq!(source.read().unwrap(), "line");

        std::fs::write(&path, "keeps inner\nnewline\n").unwrap();
        assert_eq!(source.read().unwrap(), "keeps inner\nnewline");

        std::fs::write(&path, "\n").unwrap();
        let error = source.read().unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");

        let missing = PasswordSource::File(dir.join("missing"));
        let error = missing.read().unwrap_err().to_string();
        assert!(error.contains("missing"), "{error}");

        std::fs::remove_dir_all(dir).unwrap();
    }
}
