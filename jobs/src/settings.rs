//! Command-line and environment settings shared by the API and the workers.

use std::path::PathBuf;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::catalogue::Catalogue;
use crate::investigations::{NfsSettings, validate_mount_path_template};
use crate::objects::ObjectSettings;
use crate::queue::QueueTiming;
use crate::store::Database;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Database URL: `sqlite://PATH?mode=rwc` (embedded) or `mysql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, env = "VISA_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Redis URL of the job queue, for example `redis://127.0.0.1:6379/`.
    #[arg(long, env = "VISA_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,

    /// Redis queue of instance jobs; sites that run several providers on one Redis give each
    /// its own.
    #[arg(long, env = "VISA_QUEUE", default_value = crate::queue::DEFAULT_QUEUE)]
    pub queue: String,

    /// Catalogue YAML file of flavours, images and security groups.
    #[arg(long, env = "VISA_CATALOGUE")]
    pub catalogue: PathBuf,

    /// Kubernetes namespace of the instances.
    #[arg(long, env = "VISA_NAMESPACE", default_value = "visa-instances")]
    pub namespace: String,

    /// Value of the environment label on every instance object.
    #[arg(long, env = "VISA_ENVIRONMENT", default_value = "local")]
    pub environment: String,

    /// StorageClass of users' volumes; the cluster's default class when unset.
    #[arg(long, env = "VISA_STORAGE_CLASS")]
    pub storage_class: Option<String>,

    /// Time zone given to instances in `TZ`.
    #[arg(long, env = "VISA_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,

    /// Image pull Secret in the instances' namespace; repeat for several.
    #[arg(
        long = "image-pull-secret",
        env = "VISA_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub image_pull_secrets: Vec<String>,

    /// Mount path of the user's volume in the main container.
    #[arg(long, env = "VISA_VOLUME_MOUNT_PATH", default_value = "/home")]
    pub volume_mount_path: String,

    /// Numeric user id the owner gets inside instances.
    #[arg(long, env = "VISA_OWNER_UID", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=2_147_483_647))]
    pub owner_uid: i64,

    /// Seconds between worker heartbeats in Redis.
    #[arg(long, env = "VISA_HEARTBEAT_SECONDS", default_value_t = 5)]
    pub heartbeat_seconds: u64,

    /// Heartbeats a worker may miss before its jobs go back to the queue.
    #[arg(long, env = "VISA_MISSED_HEARTBEATS", default_value_t = 3)]
    pub missed_heartbeats: usize,
}

impl CommonArgs {
    pub fn object_settings(&self) -> ObjectSettings {
        ObjectSettings {
            namespace: self.namespace.clone(),
            environment: self.environment.clone(),
            storage_class: self.storage_class.clone().filter(|class| !class.is_empty()),
            time_zone: self.time_zone.clone(),
            image_pull_secrets: self
                .image_pull_secrets
                .iter()
                .filter(|name| !name.is_empty())
                .cloned()
                .collect(),
            volume_mount_path: self.volume_mount_path.clone(),
            owner_uid: self.owner_uid,
        }
    }

    /// Connects to Redis and opens the instance queue.
    pub async fn open_queue(&self) -> anyhow::Result<crate::queue::InstanceStorage> {
        crate::queue::connect(&self.redis_url, &self.queue, self.queue_timing())
            .await
            .map_err(|error| anyhow::anyhow!("failed to connect to Redis: {error}"))
    }

    /// Checks the settings that reach instances as data, so a bad value stops the process at
    /// start rather than every instance at its next start.
    pub fn validate(&self) -> anyhow::Result<()> {
        let zone = &self.time_zone;
        let valid_zone = !zone.is_empty()
            && !zone.starts_with('/')
            && !zone.ends_with('/')
            && !zone.contains("//")
            && zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '/'));
        if !valid_zone {
            anyhow::bail!("invalid time zone {zone:?}: use an IANA zone such as Europe/Madrid");
        }
        Ok(())
    }

    pub fn queue_timing(&self) -> QueueTiming {
        QueueTiming {
            heartbeat: Duration::from_secs(self.heartbeat_seconds.max(1)),
            missed_heartbeats: self.missed_heartbeats.max(1),
        }
    }

    /// Connects to the database, migrates it and stores the catalogue file in it.
    pub async fn open_database(&self) -> anyhow::Result<(Database, Catalogue)> {
        self.validate()?;
        let catalogue = Catalogue::load(&self.catalogue)?;
        let database = Database::connect(&self.database_url)
            .await
            .map_err(|error| anyhow::anyhow!("failed to open the database: {error}"))?;
        // API replicas and workers that start together all store the catalogue. A transaction
        // that loses that race fails on a unique key, so it is tried again.
        let save = || database.save_catalogue(&catalogue);
        save.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(8)
                .with_jitter(),
        )
        .await
        .map_err(|error| anyhow::anyhow!("failed to store the catalogue: {error}"))?;
        Ok((database, catalogue))
    }
}

/// Builds a Kubernetes client from `KUBECONFIG`, `~/.kube/config` or the in-cluster account.
pub async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.map_err(|error| {
        anyhow::anyhow!(
            "failed to configure the Kubernetes client: {error}; set KUBECONFIG to a kubeconfig \
             file or run inside a cluster"
        )
    })
}

/// Starts logging to standard error, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Settings of the LDAP sync of investigations. The sync is off unless `--ldap-url` is set.
#[derive(Debug, Clone, clap::Args)]
pub struct LdapArgs {
    /// LDAP server: `ldap://HOST:PORT` (plain or with --ldap-starttls) or `ldaps://HOST:PORT`.
    /// The LDAP sync of investigations is off when this is unset.
    #[arg(long, env = "VISA_LDAP_URL")]
    pub ldap_url: Option<String>,

    /// Search base of the investigation entries, for example `ou=proposals,dc=example,dc=org`.
    #[arg(long, env = "VISA_LDAP_BASE_DN")]
    pub ldap_base_dn: Option<String>,

    /// Search filter that selects the investigation entries under the base (subtree scope).
    #[arg(
        long,
        env = "VISA_LDAP_FILTER",
        default_value = "(objectClass=posixGroup)"
    )]
    pub ldap_filter: String,

    /// Attribute that contains the proposal identifier VISA sends in `proposals`.
    #[arg(long, env = "VISA_LDAP_IDENTIFIER_ATTRIBUTE", default_value = "cn")]
    pub ldap_identifier_attribute: String,

    /// Multi-valued attribute that contains the investigation's data paths, one absolute path
    /// per value.
    #[arg(long, env = "VISA_LDAP_PATH_ATTRIBUTE", default_value = "description")]
    pub ldap_path_attribute: String,

    /// Attribute that contains the numeric group id that grants access to the data paths.
    #[arg(
        long,
        env = "VISA_LDAP_GROUP_ID_ATTRIBUTE",
        default_value = "gidNumber"
    )]
    pub ldap_group_id_attribute: String,

    /// DN to bind as. The sync binds anonymously when this is unset.
    #[arg(long, env = "VISA_LDAP_BIND_DN")]
    pub ldap_bind_dn: Option<String>,

    /// File whose content (one trailing newline removed) is the bind password. It is read at
    /// every sync, so a rotated password needs no restart. Alternatively set VISA_LDAP_PASSWORD.
    #[arg(long, env = "VISA_LDAP_PASSWORD_FILE")]
    pub ldap_password_file: Option<PathBuf>,

    /// Upgrades an `ldap://` connection with StartTLS before binding.
    #[arg(long, env = "VISA_LDAP_STARTTLS")]
    pub ldap_starttls: bool,

    /// PEM file of the CA certificates that verify the server for `ldaps://` and StartTLS. The
    /// system's CA certificates are used when this is unset.
    #[arg(long, env = "VISA_LDAP_CA_FILE")]
    pub ldap_ca_file: Option<PathBuf>,

    /// Seconds each step (connecting with TLS, binding, each page of the search) may take.
    #[arg(long, env = "VISA_LDAP_TIMEOUT_SECONDS", default_value_t = 30)]
    pub ldap_timeout_seconds: u64,

    /// Entries per page of the search (simple paged results control, RFC 2696).
    #[arg(long, env = "VISA_LDAP_PAGE_SIZE", default_value_t = 500)]
    pub ldap_page_size: u32,

    /// Seconds between scheduled syncs. Of several workers, one syncs per interval.
    #[arg(long, env = "VISA_LDAP_SYNC_INTERVAL_SECONDS", default_value_t = 900)]
    pub ldap_sync_interval_seconds: u64,

    /// Seconds a failing sync keeps retrying, with exponential backoff, before it records the
    /// failure. With 0 the first failure is recorded.
    #[arg(long, env = "VISA_LDAP_RETRY_BUDGET_SECONDS", default_value_t = 300)]
    pub ldap_retry_budget_seconds: u64,
}

/// Settings of the NFS mounts of investigation data in instances.
#[derive(Debug, Clone, clap::Args)]
pub struct NfsArgs {
    /// NFS server that exports the investigations' data paths. Instances get no data mounts
    /// and no supplemental groups when this is unset.
    #[arg(long, env = "VISA_NFS_SERVER")]
    pub nfs_server: Option<String>,

    /// Mounts the data paths read-write instead of read-only.
    #[arg(long, env = "VISA_NFS_READ_WRITE")]
    pub nfs_read_write: bool,

    /// Mount path in the main container, in which `{path}` is replaced by the data path and
    /// `{proposal}` by the proposal identifier, for example `/data/{proposal}`. A repeated mount
    /// path gets `-2`, `-3`... appended.
    #[arg(long, env = "VISA_NFS_MOUNT_PATH", default_value = "{path}")]
    pub nfs_mount_path: String,
}

impl NfsArgs {
    /// Returns the NFS settings, `None` when no server is set.
    pub fn nfs_settings(&self) -> anyhow::Result<Option<NfsSettings>> {
        let Some(server) = self.nfs_server.clone().filter(|server| !server.is_empty()) else {
            return Ok(None);
        };
        validate_mount_path_template(&self.nfs_mount_path)
            .map_err(|message| anyhow::anyhow!("invalid --nfs-mount-path: {message}"))?;
        Ok(Some(NfsSettings {
            server,
            read_only: !self.nfs_read_write,
            mount_path: self.nfs_mount_path.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        nfs: NfsArgs,
    }

    fn nfs(args: &[&str]) -> anyhow::Result<Option<NfsSettings>> {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Command::try_parse_from(argv).unwrap().nfs.nfs_settings()
    }

    #[test]
    fn nfs_settings() {
        assert_eq!(nfs(&[]).unwrap(), None);
        let settings = nfs(&["--nfs-server", "nfs.example.org"]).unwrap().unwrap();
        assert!(settings.read_only);
        assert_eq!(settings.mount_path, "{path}");
        let settings = nfs(&["--nfs-server", "nfs.example.org", "--nfs-read-write"])
            .unwrap()
            .unwrap();
        assert!(!settings.read_only);
        let error = nfs(&["--nfs-server", "x", "--nfs-mount-path", "data/{proposal}"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid --nfs-mount-path"), "{error}");
    }
}
