//! The drift sweep: enqueues a job for every recorded intent that no worker has finished and
//! that has no recent job, so that an intent survives a queue outage or a lost job.

use std::time::Duration;

use tracing::{info, warn};
use uuid::Uuid;

use visa_jobs::model::now_millis;
use visa_jobs::queue::{self, ConvergeInstance, InstanceStorage};
use visa_jobs::store::Database;

/// Runs the sweep every `interval`, for intents enqueued more than `stale_after` ago.
pub async fn run(
    database: Database,
    mut storage: InstanceStorage,
    interval: Duration,
    stale_after: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u64 = 0;
    loop {
        ticker.tick().await;
        match sweep_once(&database, &mut storage, stale_after).await {
            Ok(0) => failures = 0,
            Ok(count) => {
                failures = 0;
                info!(count, "drift sweep enqueued jobs for unfinished intents");
            }
            Err(error) => {
                failures += 1;
                // One line for the first failure and then one per ten, so an outage does not flood.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(%error, failures, "drift sweep failed");
                }
            }
        }
    }
}

async fn sweep_once(
    database: &Database,
    storage: &mut InstanceStorage,
    stale_after: Duration,
) -> anyhow::Result<usize> {
    let now = now_millis();
    let pending = database
        .take_pending_intents(now - stale_after.as_millis() as i64, now)
        .await?;
    for intent in &pending {
        let job = ConvergeInstance {
            job_id: Uuid::new_v4().to_string(),
            instance_id: intent.instance_id.clone(),
            action: intent.action,
            seq: intent.seq,
        };
        database
            .add_job(&job.job_id, &job.instance_id, job.action, job.seq, now)
            .await?;
        queue::enqueue(storage, job).await?;
    }
    Ok(pending.len())
}
