//! Storage of the investigations synced from LDAP, of the sync runs and of the schedule.

use std::collections::{BTreeSet, HashMap};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Database, StoreError, StoreResult, from_json, optional_text, text, to_json};
use crate::investigations::{DirectoryContents, Investigation};
use crate::model::Millis;

/// Rows per `IN (...)` list, well below SQLite's default limit of 32766 bound parameters
/// (SQLite 3.32 and later).
const IN_LIST_CHUNK: usize = 500;

/// Name of the LDAP sync in the `schedules` table.
pub const LDAP_SYNC_SCHEDULE: &str = "ldap-sync";

/// An investigation as stored, with when the directory last listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInvestigation {
    pub investigation: Investigation,
    pub first_seen: Millis,
    pub last_seen: Millis,
    /// Set when a complete search no longer returned the investigation. Its data is kept.
    pub gone_at: Option<Millis>,
    /// When the paths, the group id or `gone_at` last changed.
    pub updated_at: Millis,
}

/// Changes that one sync made to the `investigations` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryChanges {
    /// Valid investigations written, added, changed or unchanged.
    pub synced: u64,
    pub added: u64,
    /// Investigations whose paths or group id changed, or that came back after being gone.
    pub changed: u64,
    /// Investigations marked gone by this sync.
    pub gone: u64,
}

/// Outcome of an LDAP sync run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncResult {
    Running,
    Succeeded,
    Failed,
}

impl SyncResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Counts of one sync run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// Entries the search returned, usable or not.
    pub entries: u64,
    /// Search requests made, one per page of results.
    pub pages: u64,
    pub synced: u64,
    pub added: u64,
    pub changed: u64,
    pub gone: u64,
    /// Entries skipped for a missing or invalid identifier, group id or path.
    pub skipped: u64,
    /// Invalid path values dropped from entries that were synced with their other paths.
    pub skipped_paths: u64,
}

/// One LDAP sync run, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSyncRun {
    pub id: String,
    /// `schedule` for the worker's schedule, `manual` for `visa-worker ldap-sync`.
    pub origin: String,
    pub worker: Option<String>,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub result: SyncResult,
    /// Attempts made, each a connection, bind and complete search.
    pub attempts: i64,
    pub counts: SyncCounts,
    /// The last attempt's error when the run failed.
    pub error: Option<String>,
}

const RUN_COLUMNS: &str = "id, origin, worker, started_at, finished_at, result, attempts, \
    entries, pages, synced, added, changed, gone, skipped, skipped_paths, error";

struct KnownInvestigation {
    paths: Vec<String>,
    group_id: i64,
    gone: bool,
}

impl Database {
    /// Writes the result of a complete directory search in one transaction. Investigations not
    /// in `contents` are marked gone, except those in `contents.kept_proposals`, and none is
    /// deleted.
    ///
    /// NOTE: the rows are read first and then inserted or updated. Two syncs that write at once
    /// can therefore make one of them fail on a duplicate key (MariaDB) or a busy database
    /// (SQLite), and the caller retries the failed sync.
    pub async fn apply_directory(
        &self,
        contents: &DirectoryContents,
        now: Millis,
    ) -> StoreResult<DirectoryChanges> {
        let mut transaction = self.pool.begin().await?;
        let rows = sqlx::query("SELECT proposal, paths, group_id, gone_at FROM investigations")
            .fetch_all(&mut *transaction)
            .await?;
        let mut known = HashMap::with_capacity(rows.len());
        for row in &rows {
            let paths = text(row, "paths")?;
            known.insert(
                text(row, "proposal")?,
                KnownInvestigation {
                    paths: from_json("paths", &paths)?,
                    group_id: row.try_get("group_id")?,
                    gone: row.try_get::<Option<i64>, _>("gone_at")?.is_some(),
                },
            );
        }

        let mut changes = DirectoryChanges::default();
        let mut unchanged = Vec::new();
        for investigation in &contents.investigations {
            changes.synced += 1;
            let group_id = i64::from(investigation.group_id);
            match known.get(&investigation.proposal) {
                None => {
                    sqlx::query(
                        "INSERT INTO investigations (proposal, paths, group_id, first_seen, \
                         last_seen, gone_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                    )
                    .bind(&investigation.proposal)
                    .bind(to_json(&investigation.paths))
                    .bind(group_id)
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await?;
                    changes.added += 1;
                }
                Some(stored)
                    if !stored.gone
                        && stored.group_id == group_id
                        && stored.paths == investigation.paths =>
                {
                    unchanged.push(investigation.proposal.as_str());
                }
                Some(_) => {
                    sqlx::query(
                        "UPDATE investigations SET paths = ?, group_id = ?, last_seen = ?, \
                         gone_at = NULL, updated_at = ? WHERE proposal = ?",
                    )
                    .bind(to_json(&investigation.paths))
                    .bind(group_id)
                    .bind(now)
                    .bind(now)
                    .bind(&investigation.proposal)
                    .execute(&mut *transaction)
                    .await?;
                    changes.changed += 1;
                }
            }
        }

        for chunk in unchanged.chunks(IN_LIST_CHUNK) {
            let sql = format!(
                "UPDATE investigations SET last_seen = ? WHERE proposal IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(now);
            for proposal in chunk {
                query = query.bind(*proposal);
            }
            query.execute(&mut *transaction).await?;
        }

        let listed: BTreeSet<&str> = contents
            .investigations
            .iter()
            .map(|investigation| investigation.proposal.as_str())
            .collect();
        for (proposal, stored) in &known {
            if stored.gone
                || listed.contains(proposal.as_str())
                || contents.kept_proposals.contains(proposal)
            {
                continue;
            }
            sqlx::query(
                "UPDATE investigations SET gone_at = ?, updated_at = ? \
                 WHERE proposal = ? AND gone_at IS NULL",
            )
            .bind(now)
            .bind(now)
            .bind(proposal)
            .execute(&mut *transaction)
            .await?;
            changes.gone += 1;
        }

        transaction.commit().await?;
        Ok(changes)
    }

    /// Returns the investigations of `proposals` that are not gone, in the order of
    /// `proposals`. Unknown and gone proposals are left out.
    pub async fn investigations_for_proposals(
        &self,
        proposals: &[String],
    ) -> StoreResult<Vec<Investigation>> {
        let mut found = HashMap::new();
        for chunk in proposals.chunks(IN_LIST_CHUNK) {
            let sql = format!(
                "SELECT proposal, paths, group_id FROM investigations \
                 WHERE gone_at IS NULL AND proposal IN ({})",
                placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for proposal in chunk {
                query = query.bind(proposal);
            }
            for row in query.fetch_all(&self.pool).await? {
                let investigation = investigation_from_row(&row)?;
                found.insert(investigation.proposal.clone(), investigation);
            }
        }
        Ok(proposals
            .iter()
            .filter_map(|proposal| found.remove(proposal))
            .collect())
    }

    /// Returns one investigation, gone or not.
    pub async fn investigation(&self, proposal: &str) -> StoreResult<Option<StoredInvestigation>> {
        let row = sqlx::query(
            "SELECT proposal, paths, group_id, first_seen, last_seen, gone_at, updated_at \
             FROM investigations WHERE proposal = ?",
        )
        .bind(proposal)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(StoredInvestigation {
                investigation: investigation_from_row(&row)?,
                first_seen: row.try_get("first_seen")?,
                last_seen: row.try_get("last_seen")?,
                gone_at: row.try_get("gone_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// Counts the stored investigations: those in use, and those marked gone.
    pub async fn count_investigations(&self) -> StoreResult<(i64, i64)> {
        let row =
            sqlx::query("SELECT COUNT(*) AS total, COUNT(gone_at) AS gone FROM investigations")
                .fetch_one(&self.pool)
                .await?;
        let total: i64 = row.try_get("total")?;
        let gone: i64 = row.try_get("gone")?;
        Ok((total - gone, gone))
    }

    /// Records the start of a sync run.
    pub async fn start_ldap_sync(
        &self,
        id: &str,
        origin: &str,
        worker: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO ldap_sync_runs (id, origin, worker, started_at, finished_at, result, \
             attempts, entries, pages, synced, added, changed, gone, skipped, skipped_paths, \
             error) VALUES (?, ?, ?, ?, NULL, 'running', 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL)",
        )
        .bind(id)
        .bind(origin)
        .bind(worker.map(str::to_owned))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the end of a sync run.
    pub async fn finish_ldap_sync(
        &self,
        id: &str,
        result: SyncResult,
        attempts: i64,
        counts: &SyncCounts,
        error: Option<&str>,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE ldap_sync_runs SET finished_at = ?, result = ?, attempts = ?, entries = ?, \
             pages = ?, synced = ?, added = ?, changed = ?, gone = ?, skipped = ?, \
             skipped_paths = ?, error = ? WHERE id = ?",
        )
        .bind(now)
        .bind(result.as_str())
        .bind(attempts)
        .bind(counts.entries as i64)
        .bind(counts.pages as i64)
        .bind(counts.synced as i64)
        .bind(counts.added as i64)
        .bind(counts.changed as i64)
        .bind(counts.gone as i64)
        .bind(counts.skipped as i64)
        .bind(counts.skipped_paths as i64)
        .bind(error.map(str::to_owned))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Returns the latest sync run, finished or not, for operators and status endpoints.
    pub async fn last_ldap_sync(&self) -> StoreResult<Option<LdapSyncRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM ldap_sync_runs ORDER BY started_at DESC, id DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Returns the latest sync run that has finished, successfully or not.
    pub async fn last_finished_ldap_sync(&self) -> StoreResult<Option<LdapSyncRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM ldap_sync_runs WHERE result <> 'running' \
             ORDER BY started_at DESC, id DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Returns the latest sync run that succeeded.
    pub async fn last_successful_ldap_sync(&self) -> StoreResult<Option<LdapSyncRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM ldap_sync_runs WHERE result = 'succeeded' \
             ORDER BY started_at DESC, id DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Takes the scheduled job `name` when it is due at `now`, and sets its next due time.
    /// One UPDATE does both, so of several workers only one gets `true` per due time.
    pub async fn take_due_schedule(
        &self,
        name: &str,
        now: Millis,
        next_due: Millis,
    ) -> StoreResult<bool> {
        let taken = sqlx::query("UPDATE schedules SET due_at = ? WHERE name = ? AND due_at <= ?")
            .bind(next_due)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(taken.rows_affected() == 1)
    }
}

fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

fn investigation_from_row(row: &AnyRow) -> StoreResult<Investigation> {
    let proposal = text(row, "proposal")?;
    let paths = text(row, "paths")?;
    let group_id: i64 = row.try_get("group_id")?;
    Ok(Investigation {
        group_id: u32::try_from(group_id).map_err(|_| StoreError::Corrupt {
            column: "group_id",
            message: format!("group id {group_id} of {proposal} is out of range"),
        })?,
        paths: from_json("paths", &paths)?,
        proposal,
    })
}

fn count(row: &AnyRow, column: &'static str) -> StoreResult<u64> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        column,
        message: format!("negative count {value}"),
    })
}

fn run_from_row(row: &AnyRow) -> StoreResult<LdapSyncRun> {
    let result = text(row, "result")?;
    Ok(LdapSyncRun {
        id: text(row, "id")?,
        origin: text(row, "origin")?,
        worker: optional_text(row, "worker")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        result: SyncResult::parse(&result).ok_or_else(|| StoreError::Corrupt {
            column: "result",
            message: format!("unknown sync result {result:?}"),
        })?,
        attempts: row.try_get::<i64, _>("attempts")?,
        counts: SyncCounts {
            entries: count(row, "entries")?,
            pages: count(row, "pages")?,
            synced: count(row, "synced")?,
            added: count(row, "added")?,
            changed: count(row, "changed")?,
            gone: count(row, "gone")?,
            skipped: count(row, "skipped")?,
            skipped_paths: count(row, "skipped_paths")?,
        },
        error: optional_text(row, "error")?,
    })
}
