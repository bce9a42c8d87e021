//! The durable queue of instance jobs, in Redis through apalis.

use std::time::Duration;

use apalis::prelude::TaskSink;
use apalis_redis::{ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};

use crate::model::Action;

/// Default name of the Redis queue of instance jobs.
pub const DEFAULT_QUEUE: &str = "visa-instance-jobs";

/// A request to converge one instance's Kubernetes objects to its recorded intent.
///
/// The job carries the action and sequence that caused it only for logs and job rows: the worker
/// always converges to the intent in the database, so a later action wins however jobs interleave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConvergeInstance {
    pub job_id: String,
    pub instance_id: String,
    pub action: Action,
    pub seq: i64,
}

/// Heartbeat timing of workers: a worker silent for `heartbeat * missed_heartbeats` is dead,
/// and other workers put its jobs back in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTiming {
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
}

impl Default for QueueTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            missed_heartbeats: 3,
        }
    }
}

pub type InstanceStorage = RedisStorage<ConvergeInstance, ConnectionManager>;

/// Connects to Redis and opens the instance queue `queue`.
pub async fn connect(
    redis_url: &str,
    queue: &str,
    timing: QueueTiming,
) -> Result<InstanceStorage, apalis_redis::RedisError> {
    let connection = apalis_redis::connect(redis_url).await?;
    let config = apalis_redis::Config::default()
        .queue(queue)
        .heartbeat_interval(timing.heartbeat)
        .missed_heartbeats(timing.missed_heartbeats);
    Ok(RedisStorage::new(connection).with_config(config))
}

/// Maximum wait for Redis to take a job. The intent is already in the database, so a request
/// that waits longer only delays VISA: the drift sweep enqueues the intent later.
pub const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds a job to the queue, failing after `ENQUEUE_TIMEOUT`.
pub async fn enqueue(storage: &mut InstanceStorage, job: ConvergeInstance) -> anyhow::Result<()> {
    match tokio::time::timeout(ENQUEUE_TIMEOUT, storage.push(job)).await {
        Ok(result) => {
            result.map_err(|error| anyhow::anyhow!("failed to enqueue the instance job: {error}"))
        }
        Err(_) => Err(anyhow::anyhow!(
            "timed out after {} s enqueueing the instance job",
            ENQUEUE_TIMEOUT.as_secs()
        )),
    }
}
