//! Storage of the catalogue, the instances' intent and the jobs, on SQLite or MariaDB.
//!
//! Every query is plain SQL that both backends accept, run through sqlx's `Any` driver, and
//! every time is an integer of milliseconds so that no type needs a per-backend mapping.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::catalogue::{Catalogue, Device, Flavour, Image, SecurityGroup};
use crate::model::{Action, DesiredState, InstanceRecord, Millis, RecordedFault};

mod investigations;

pub use investigations::{
    DirectoryChanges, LDAP_SYNC_SCHEDULE, LdapSyncRun, StoredInvestigation, SyncCounts, SyncResult,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("failed to take the database migration lock: {0}")]
    MigrationLock(String),
    #[error("invalid stored value in {column}: {message}")]
    Corrupt {
        column: &'static str,
        message: String,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Returns whether a unique key rejected the write, as when two requests race to create the
    /// same instance.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(error)) if error.is_unique_violation())
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Seconds a starting process waits for another process to finish migrating a MariaDB database.
const MIGRATION_LOCK_TIMEOUT_SECONDS: i64 = 300;

/// The outcome a worker records for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// One job of an instance, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub instance_id: String,
    pub action: String,
    pub seq: i64,
    pub status: String,
    pub attempts: i64,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Filter of `Database::recent_jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs with this status (`queued`, `running`, `succeeded` or `failed`).
    pub status: Option<String>,
    pub instance_id: Option<String>,
    pub limit: i64,
}

/// An instance whose recorded intent has no job in flight, found by the drift sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIntent {
    pub instance_id: String,
    pub action: Action,
    pub seq: i64,
}

#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
}

/// Runs the migrations of a MariaDB or MySQL database while holding a user lock, so that API
/// replicas and workers that start at once apply each migration once.
///
/// sqlx's own lock calls `GET_LOCK(name, -1)`, for which MariaDB 10.11 returns NULL at once
/// instead of waiting. Without this lock, concurrent starts fail with a duplicate migration row
/// or a partially applied migration.
async fn migrate_with_lock(pool: &AnyPool) -> StoreResult<()> {
    let mut connection = pool.acquire().await?;
    let acquired: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(GET_LOCK(CONCAT('visa-provider-migrations:', DATABASE()), ?) AS SIGNED)",
    )
    .bind(MIGRATION_LOCK_TIMEOUT_SECONDS)
    .fetch_one(&mut *connection)
    .await?;
    match acquired {
        Some(1) => {}
        Some(_) => {
            return Err(StoreError::MigrationLock(format!(
                "timed out after {MIGRATION_LOCK_TIMEOUT_SECONDS} s while another process was \
                 migrating, so check the other API and worker logs for a migration that hangs"
            )));
        }
        None => {
            return Err(StoreError::MigrationLock(
                "GET_LOCK returned NULL".to_owned(),
            ));
        }
    }

    // run_direct takes the connection itself. With run(&mut *connection) the future of
    // Database::connect is not Send ("implementation of Acquire is not general enough").
    let migrated = MIGRATOR.run_direct(&mut *connection).await;
    let released =
        sqlx::query("SELECT RELEASE_LOCK(CONCAT('visa-provider-migrations:', DATABASE()))")
            .execute(&mut *connection)
            .await;
    if let Err(error) = released {
        // The server releases a user lock when its connection ends, so this connection must not
        // go back to the pool still holding it.
        tracing::warn!(%error, "failed to release the database migration lock, so its connection is closed");
        connection.close_on_drop();
    }
    migrated?;
    Ok(())
}
const JOB_COLUMNS: &str =
    "id, instance_id, action, seq, status, attempts, worker, error, created_at, updated_at";

const INSTANCE_COLUMNS: &str = "id, name, image_id, flavour_id, security_groups, metadata, \
    boot_command, node, desired, action, action_at, action_seq, applied_seq, created_at, \
    first_ready_at, deleted_at, fault_message, fault_details, fault_at, updated_at";

impl Database {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `mysql://USER:PASSWORD@HOST/DB`) and
    /// brings the schema up to date.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");

        // SQLite allows one writer at a time, so a small pool avoids waiting on its lock.
        let max_connections = if is_sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if is_sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;

        if is_sqlite {
            // Processes that start together on one new file would otherwise both apply the
            // first migration, and one would fail on "table already exists".
            let _lock = match sqlite_file(url) {
                Some(path) => Some(lock_file(&path).await?),
                None => None,
            };
            MIGRATOR.run(&pool).await?;
        } else {
            migrate_with_lock(&pool).await?;
        }
        Ok(Self { pool })
    }

    /// Replaces the stored catalogue with `catalogue` in one transaction.
    pub async fn save_catalogue(&self, catalogue: &Catalogue) -> StoreResult<()> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("DELETE FROM flavours")
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM images")
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM security_groups")
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM devices")
            .execute(&mut *transaction)
            .await?;

        for (position, flavour) in catalogue.flavours.iter().enumerate() {
            sqlx::query("INSERT INTO flavours (id, position, spec) VALUES (?, ?, ?)")
                .bind(&flavour.id)
                .bind(position as i64)
                .bind(to_json(flavour))
                .execute(&mut *transaction)
                .await?;
        }
        for (position, image) in catalogue.images.iter().enumerate() {
            sqlx::query("INSERT INTO images (id, position, spec) VALUES (?, ?, ?)")
                .bind(&image.id)
                .bind(position as i64)
                .bind(to_json(image))
                .execute(&mut *transaction)
                .await?;
        }
        for (position, group) in catalogue.security_groups.iter().enumerate() {
            sqlx::query("INSERT INTO security_groups (name, position, spec) VALUES (?, ?, ?)")
                .bind(&group.name)
                .bind(position as i64)
                .bind(to_json(group))
                .execute(&mut *transaction)
                .await?;
        }

        for (position, device) in catalogue.devices.iter().enumerate() {
            sqlx::query("INSERT INTO devices (resource, position, spec) VALUES (?, ?, ?)")
                .bind(&device.resource)
                .bind(position as i64)
                .bind(to_json(device))
                .execute(&mut *transaction)
                .await?;
        }

        transaction.commit().await?;
        Ok(())
    }

    pub async fn load_catalogue(&self) -> StoreResult<Catalogue> {
        let flavours = self.load_specs::<Flavour>("flavours").await?;
        let images = self.load_specs::<Image>("images").await?;
        let security_groups = self.load_specs::<SecurityGroup>("security_groups").await?;
        let devices = self.load_specs::<Device>("devices").await?;
        Ok(Catalogue {
            flavours,
            images,
            security_groups,
            devices,
        })
    }

    async fn load_specs<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
    ) -> StoreResult<Vec<T>> {
        let rows = sqlx::query(&format!("SELECT spec FROM {table} ORDER BY position"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let spec = text(row, "spec")?;
                serde_json::from_str(&spec).map_err(|error| StoreError::Corrupt {
                    column: "spec",
                    message: format!("{table}: {error}"),
                })
            })
            .collect()
    }

    /// Inserts a new instance and its first job in one transaction.
    pub async fn insert_instance(&self, record: &InstanceRecord, job_id: &str) -> StoreResult<()> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO instances (id, name, image_id, flavour_id, security_groups, metadata, \
             boot_command, desired, action, action_at, action_seq, applied_seq, enqueued_at, \
             created_at, first_ready_at, deleted_at, fault_message, fault_details, fault_at, \
             lease_owner, lease_until, updated_at, live_name) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, \
             NULL, NULL, ?, ?)",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(&record.image_id)
        .bind(&record.flavour_id)
        .bind(to_json(&record.security_groups))
        .bind(to_json(&record.metadata))
        .bind(record.boot_command.clone())
        .bind(record.desired.as_str())
        .bind(record.action.as_str())
        .bind(record.action_at)
        .bind(record.action_seq)
        .bind(record.applied_seq)
        .bind(record.action_at)
        .bind(record.created_at)
        .bind(record.updated_at)
        .bind(&record.name)
        .execute(&mut *transaction)
        .await?;
        insert_job(
            &mut transaction,
            job_id,
            &record.id,
            record.action.as_str(),
            record.action_seq,
            record.created_at,
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub async fn get_instance(&self, id: &str) -> StoreResult<Option<InstanceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// Returns whether any instance, live or deleted, has this id. Ids are never reused, so a
    /// retained volume claim of a deleted instance never goes to a new one.
    pub async fn id_exists(&self, id: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT id FROM instances WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Returns instances changed at or after `since`, oldest change first.
    pub async fn instances_changed_since(&self, since: Millis) -> StoreResult<Vec<InstanceRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE updated_at >= ? ORDER BY updated_at"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Records an action as the instance's new intent and adds its job row, in one transaction.
    /// Returns the updated record, or `None` when the instance is unknown or already deleted.
    pub async fn record_action(
        &self,
        id: &str,
        action: Action,
        job_id: &str,
        now: Millis,
    ) -> StoreResult<Option<InstanceRecord>> {
        let mut transaction = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE instances SET desired = ?, action = ?, action_at = ?, \
             action_seq = action_seq + 1, enqueued_at = ?, fault_message = NULL, \
             fault_details = NULL, fault_at = NULL, updated_at = ?, \
             live_name = CASE WHEN ? = 'deleted' THEN NULL ELSE live_name END \
             WHERE id = ? AND deleted_at IS NULL AND desired <> 'deleted'",
        )
        .bind(action.desired_state().as_str())
        .bind(action.as_str())
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(action.desired_state().as_str())
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }

        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *transaction)
        .await?;
        let record = record_from_row(&row)?;
        insert_job(
            &mut transaction,
            job_id,
            id,
            action.as_str(),
            record.action_seq,
            now,
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(record))
    }

    /// Records a migration to `node` as the instance's intent, like `record_action`.
    pub async fn record_migration(
        &self,
        id: &str,
        node: &str,
        job_id: &str,
        now: Millis,
    ) -> StoreResult<Option<InstanceRecord>> {
        let mut transaction = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE instances SET node = ?, action = 'migrate', action_at = ?, \
             action_seq = action_seq + 1, enqueued_at = ?, fault_message = NULL, \
             fault_details = NULL, fault_at = NULL, updated_at = ? \
             WHERE id = ? AND deleted_at IS NULL AND desired = 'running'",
        )
        .bind(node)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let record = select_record(&mut transaction, id).await?;
        insert_job(
            &mut transaction,
            job_id,
            id,
            "migrate",
            record.action_seq,
            now,
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(record))
    }

    /// Replaces the instance's security groups and adds a job that applies them. The last
    /// action stays, so the pod template, and with it the pod, is left alone.
    pub async fn record_security_groups(
        &self,
        id: &str,
        groups: &[String],
        job_id: &str,
        now: Millis,
    ) -> StoreResult<Option<InstanceRecord>> {
        let mut transaction = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE instances SET security_groups = ?, action_seq = action_seq + 1, \
             enqueued_at = ?, updated_at = ? \
             WHERE id = ? AND deleted_at IS NULL AND desired <> 'deleted'",
        )
        .bind(to_json(&groups))
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let record = select_record(&mut transaction, id).await?;
        insert_job(
            &mut transaction,
            job_id,
            id,
            "security_groups",
            record.action_seq,
            now,
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(record))
    }

    /// Returns the instance named `name` whose deletion has not been requested, if any.
    pub async fn find_live_by_name(&self, name: &str) -> StoreResult<Option<InstanceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE name = ? AND deleted_at IS NULL \
             AND desired <> 'deleted' ORDER BY created_at DESC LIMIT 1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    pub async fn mark_first_ready(&self, id: &str, at: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE instances SET first_ready_at = ?, updated_at = ? \
             WHERE id = ? AND first_ready_at IS NULL",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the instance's lease for `owner` until `now + ttl`, unless another owner has a
    /// lease that is still valid. Returns whether `owner` has the lease now.
    pub async fn acquire_lease(
        &self,
        id: &str,
        owner: &str,
        now: Millis,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let until = now + ttl.as_millis() as i64;
        let updated = sqlx::query(
            "UPDATE instances SET lease_owner = ?, lease_until = ? WHERE id = ? AND \
             (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
        )
        .bind(owner)
        .bind(until)
        .bind(id)
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    pub async fn release_lease(&self, id: &str, owner: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE instances SET lease_owner = NULL, lease_until = NULL \
             WHERE id = ? AND lease_owner = ?",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a job as running for `worker` and returns its attempt number, starting at 1.
    pub async fn start_job(&self, job_id: &str, worker: &str, now: Millis) -> StoreResult<i64> {
        sqlx::query(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(worker)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT attempts FROM jobs WHERE id = ?")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.try_get::<i64, _>("attempts")?),
            None => Ok(1),
        }
    }

    /// Records a job's outcome and that the instance's intent up to `converged_seq` is done.
    pub async fn finish_job(
        &self,
        job_id: &str,
        instance_id: &str,
        converged_seq: i64,
        status: JobStatus,
        error: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("UPDATE jobs SET status = ?, error = ?, updated_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(error.map(str::to_owned))
            .bind(now)
            .bind(job_id)
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "UPDATE instances SET applied_seq = ?, updated_at = ? WHERE id = ? AND applied_seq < ?",
        )
        .bind(converged_seq)
        .bind(now)
        .bind(instance_id)
        .bind(converged_seq)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Records a fault for the intent `seq`, unless a newer action has replaced that intent.
    pub async fn record_fault(
        &self,
        instance_id: &str,
        seq: i64,
        message: &str,
        details: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE instances SET fault_message = ?, fault_details = ?, fault_at = ?, \
             updated_at = ? WHERE id = ? AND action_seq = ?",
        )
        .bind(message)
        .bind(details)
        .bind(now)
        .bind(now)
        .bind(instance_id)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_deleted(&self, instance_id: &str, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE instances SET deleted_at = ?, updated_at = ? \
             WHERE id = ? AND desired = 'deleted' AND deleted_at IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Returns intents that no worker has finished and that were enqueued before
    /// `enqueued_before`, and marks them enqueued at `now` so that one sweep takes each.
    pub async fn take_pending_intents(
        &self,
        enqueued_before: Millis,
        now: Millis,
    ) -> StoreResult<Vec<PendingIntent>> {
        let rows = sqlx::query(
            "SELECT id, action, action_seq FROM instances WHERE deleted_at IS NULL \
             AND applied_seq < action_seq AND enqueued_at < ? ORDER BY enqueued_at",
        )
        .bind(enqueued_before)
        .fetch_all(&self.pool)
        .await?;

        let mut pending = Vec::new();
        for row in rows {
            let id = text(&row, "id")?;
            let seq: i64 = row.try_get("action_seq")?;
            let taken = sqlx::query(
                "UPDATE instances SET enqueued_at = ? WHERE id = ? AND action_seq = ? \
                 AND enqueued_at < ?",
            )
            .bind(now)
            .bind(&id)
            .bind(seq)
            .bind(enqueued_before)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                let action = text(&row, "action")?;
                pending.push(PendingIntent {
                    instance_id: id,
                    action: parse_action(&action)?,
                    seq,
                });
            }
        }
        Ok(pending)
    }

    /// Adds a job row for a job enqueued by the drift sweep.
    pub async fn add_job(
        &self,
        job_id: &str,
        instance_id: &str,
        action: Action,
        seq: i64,
        now: Millis,
    ) -> StoreResult<()> {
        let mut transaction = self.pool.begin().await?;
        insert_job(
            &mut transaction,
            job_id,
            instance_id,
            action.as_str(),
            seq,
            now,
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    pub async fn jobs_of_instance(
        &self,
        instance_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE instance_id = ? ORDER BY created_at DESC LIMIT ?"
        ))
        .bind(instance_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Returns the newest jobs that match `filter`, newest first.
    // NOTE: no index covers `jobs.created_at` alone, so without an instance filter this reads
    // the whole jobs table. Its cost grows with the job history, which nothing prunes yet.
    pub async fn recent_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
        if filter.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if filter.instance_id.is_some() {
            sql.push_str(" AND instance_id = ?");
        }
        sql.push_str(" ORDER BY created_at DESC LIMIT ?");

        let mut query = sqlx::query(&sql);
        if let Some(status) = &filter.status {
            query = query.bind(status.clone());
        }
        if let Some(instance_id) = &filter.instance_id {
            query = query.bind(instance_id.clone());
        }
        let rows = query.bind(filter.limit).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Counts the jobs of each status, in alphabetical order of the status.
    pub async fn count_jobs_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((text(row, "status")?, row.try_get::<i64, _>("n")?)))
            .collect()
    }

    /// Counts the rows of each table, for tests that check nothing was left behind.
    pub async fn count_rows(&self, table: &str) -> StoreResult<i64> {
        let allowed = [
            "instances",
            "jobs",
            "flavours",
            "images",
            "security_groups",
            "devices",
            "investigations",
            "ldap_sync_runs",
        ];
        assert!(allowed.contains(&table), "unknown table {table}");
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

async fn select_record(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> StoreResult<InstanceRecord> {
    let row = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?"
    ))
    .bind(id)
    .fetch_one(&mut **transaction)
    .await?;
    record_from_row(&row)
}

async fn insert_job(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    job_id: &str,
    instance_id: &str,
    action: &str,
    seq: i64,
    now: Millis,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO jobs (id, instance_id, action, seq, status, attempts, worker, error, \
         created_at, updated_at) VALUES (?, ?, ?, ?, 'queued', 0, NULL, NULL, ?, ?)",
    )
    .bind(job_id)
    .bind(instance_id)
    .bind(action)
    .bind(seq)
    .bind(now)
    .bind(now)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

fn job_from_row(row: &AnyRow) -> StoreResult<JobRecord> {
    Ok(JobRecord {
        id: text(row, "id")?,
        instance_id: text(row, "instance_id")?,
        action: text(row, "action")?,
        seq: row.try_get("seq")?,
        status: text(row, "status")?,
        attempts: row.try_get::<i64, _>("attempts")?,
        worker: optional_text(row, "worker")?,
        error: optional_text(row, "error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Reads a text column. MariaDB's TEXT columns reach sqlx's `Any` driver as BLOB, so bytes
/// that are valid UTF-8 are accepted as text too.
fn text(row: &AnyRow, column: &'static str) -> StoreResult<String> {
    optional_text(row, column)?.ok_or_else(|| StoreError::Corrupt {
        column,
        message: "unexpected NULL".to_owned(),
    })
}

fn optional_text(row: &AnyRow, column: &'static str) -> StoreResult<Option<String>> {
    if let Ok(value) = row.try_get::<Option<String>, _>(column) {
        return Ok(value);
    }
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|error| StoreError::Corrupt {
                column,
                message: error.to_string(),
            })
        })
        .transpose()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("catalogue and instance values serialise to JSON")
}

fn from_json<T: serde::de::DeserializeOwned>(column: &'static str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt {
        column,
        message: error.to_string(),
    })
}

fn parse_action(value: &str) -> StoreResult<Action> {
    Action::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "action",
        message: format!("unknown action {value:?}"),
    })
}

fn record_from_row(row: &AnyRow) -> StoreResult<InstanceRecord> {
    let desired = text(row, "desired")?;
    let action = text(row, "action")?;
    let security_groups = text(row, "security_groups")?;
    let metadata = text(row, "metadata")?;
    let fault_message = optional_text(row, "fault_message")?;
    let fault_details = optional_text(row, "fault_details")?;
    let fault_at: Option<i64> = row.try_get("fault_at")?;

    let fault = match (fault_message, fault_at) {
        (Some(message), Some(at)) => Some(RecordedFault {
            message,
            details: fault_details.unwrap_or_default(),
            at,
        }),
        _ => None,
    };

    Ok(InstanceRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        image_id: row.try_get("image_id")?,
        flavour_id: row.try_get("flavour_id")?,
        security_groups: from_json("security_groups", &security_groups)?,
        metadata: from_json::<BTreeMap<String, String>>("metadata", &metadata)?,
        boot_command: optional_text(row, "boot_command")?,
        node: optional_text(row, "node")?,
        desired: DesiredState::parse(&desired).ok_or_else(|| StoreError::Corrupt {
            column: "desired",
            message: format!("unknown desired state {desired:?}"),
        })?,
        action: parse_action(&action)?,
        action_at: row.try_get("action_at")?,
        action_seq: row.try_get("action_seq")?,
        applied_seq: row.try_get("applied_seq")?,
        created_at: row.try_get("created_at")?,
        first_ready_at: row.try_get("first_ready_at")?,
        deleted_at: row.try_get("deleted_at")?,
        fault,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Returns the database file of an SQLite URL, or `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(':')).then(|| std::path::PathBuf::from(path))
}

/// Takes an exclusive lock on `<database file>.migrate-lock`, released when the file is dropped.
async fn lock_file(database: &std::path::Path) -> StoreResult<std::fs::File> {
    let mut name = database.as_os_str().to_owned();
    name.push(".migrate-lock");
    let path = std::path::PathBuf::from(name);
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|error| StoreError::MigrationLock(error.to_string()))?;
    locked.map_err(|error| {
        StoreError::MigrationLock(format!(
            "failed to lock {}.migrate-lock: {error}",
            database.display()
        ))
    })
}

/// Builds an SQLite URL for a database file, creating the file when missing.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "queued" => Ok(Self::Queued),
            "running" => Ok(Self::Running),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            other => Err(format!("unknown job status {other:?}")),
        }
    }
}
