//! The state of the LDAP sync of investigations as the operators' overview and `/metrics`
//! show it. The workers run the sync and record each run in the database, and the API only
//! reads those records.

use visa_jobs::model::Millis;
use visa_jobs::store::{Database, LdapSyncRun, StoreResult, SyncResult};

/// The recorded LDAP sync runs that operators need to judge the sync.
#[derive(Debug, Clone, Default)]
pub struct LdapSyncStatus {
    /// The run in progress, when the latest recorded run has not finished.
    pub running: Option<LdapSyncRun>,
    /// The latest finished run, successful or failed.
    pub finished: Option<LdapSyncRun>,
    /// The latest successful run.
    pub last_success: Option<LdapSyncRun>,
}

impl LdapSyncStatus {
    /// Returns true when no sync run was ever recorded.
    pub fn never_ran(&self) -> bool {
        self.running.is_none() && self.finished.is_none()
    }
}

/// Reads the sync status with two queries, or three while a run is in progress.
pub async fn load(database: &Database) -> StoreResult<LdapSyncStatus> {
    let (running, finished) = match database.last_ldap_sync().await? {
        Some(run) if run.result == SyncResult::Running => {
            (Some(run), database.last_finished_ldap_sync().await?)
        }
        latest => (None, latest),
    };
    let last_success = match &finished {
        Some(run) if run.result == SyncResult::Succeeded => Some(run.clone()),
        _ => database.last_successful_ldap_sync().await?,
    };
    Ok(LdapSyncStatus {
        running,
        finished,
        last_success,
    })
}

/// Returns the end of a finished run, or its start for a run recorded without an end.
pub fn finished_at(run: &LdapSyncRun) -> Millis {
    run.finished_at.unwrap_or(run.started_at)
}
