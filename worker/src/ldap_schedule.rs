//! The scheduled LDAP sync. Every worker checks the schedule in the database, and the one that
//! moves its due time forward first runs the sync, so several workers sync once per interval.
//! A tokio interval drives the checks rather than apalis-cron: the setting is a period in
//! seconds, which a cron expression cannot express in general, and the database already decides
//! which worker runs, which apalis-cron's per-process scheduler does not.

use std::time::Duration;

use tracing::warn;

use visa_jobs::ldap::{LdapConfig, run_sync};
use visa_jobs::model::now_millis;
use visa_jobs::store::{Database, LDAP_SYNC_SCHEDULE};

/// Maximum wait between two checks of the schedule, so that a worker notices a due sync soon
/// after another worker stopped.
const MAX_CHECK_PERIOD: Duration = Duration::from_secs(30);

/// Runs the LDAP sync whenever it is due, forever. The first check is at once, so a new
/// deployment syncs at start.
pub async fn run(database: Database, config: LdapConfig, worker_name: String) {
    let interval_ms = config.interval.as_millis() as i64;
    let mut ticker = tokio::time::interval(config.interval.min(MAX_CHECK_PERIOD));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    loop {
        ticker.tick().await;
        let now = now_millis();
        match database
            .take_due_schedule(LDAP_SYNC_SCHEDULE, now, now + interval_ms)
            .await
        {
            Ok(true) => failures = 0,
            Ok(false) => {
                failures = 0;
                continue;
            }
            Err(error) => {
                failures += 1;
                // One line for the first failure and then one per ten, so an outage does not flood.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(%error, failures, "failed to read the LDAP sync schedule");
                }
                continue;
            }
        }

        // run_sync logs the outcome. An error here means that the run could not be recorded.
        // NOTE: a run that retries for longer than the interval can overlap the next one on
        // another worker. Both write the same directory in transactions, and a write that
        // collides fails and is retried.
        if let Err(error) = run_sync(&config, &database, "schedule", Some(&worker_name)).await {
            warn!(%error, "failed to record the LDAP sync run");
        }
    }
}
