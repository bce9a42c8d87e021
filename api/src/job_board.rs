//! `/operator/jobs/`: the job dashboard. It shows the Redis queue of instance jobs: waiting,
//! scheduled for retry, in flight per worker, done and dead. Below it are the jobs recorded in
//! the database with their status, attempts, worker, last error and times, filtered by the
//! `status` and `instance` query parameters.
//!
//! The apalis-board 1.0.0 UI is not used: its prebuilt web app loads its files from `/` and
//! calls its API at `/api/v1`, so it cannot be served under an operator path, and several of
//! its endpoints fail on apalis-redis 1.0.0 (see the README's Operators section).

use std::fmt::Write;

use apalis_redis::ConnectionManager;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use tracing::warn;

use visa_jobs::store::{JobFilter, JobRecord};

use crate::app::AppState;
use crate::html::{encode_query_value, escape, format_time, page};

/// Jobs listed per page load.
const JOBS_SHOWN: i64 = 200;
const STATUSES: [&str; 4] = ["queued", "running", "succeeded", "failed"];

#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    /// One of `queued`, `running`, `succeeded` or `failed`, or empty for any.
    #[serde(default)]
    status: String,
    /// An instance id, or empty for any.
    #[serde(default)]
    instance: String,
}

/// Sizes of the apalis-redis keys of the instance queue.
struct QueueCounts {
    waiting: i64,
    scheduled: i64,
    done: i64,
    dead: i64,
    workers: Vec<WorkerCounts>,
}

struct WorkerCounts {
    name: String,
    /// Unix seconds of the worker's last heartbeat.
    last_seen: i64,
    in_flight: i64,
}

pub async fn jobs(State(state): State<AppState>, Query(query): Query<JobQuery>) -> Response {
    let status = query.status.trim().to_ascii_lowercase();
    let instance = query.instance.trim().to_owned();
    let mut body = String::new();

    match queue_counts(&state).await {
        Ok(counts) => write_queue(&mut body, &counts),
        Err(error) => {
            warn!(%error, "failed to read the Redis queue for the job dashboard");
            body.push_str("<p class=\"fault\">The Redis queue is unavailable.</p>\n");
        }
    }

    let filter = JobFilter {
        status: Some(status.clone()).filter(|status| !status.is_empty()),
        instance_id: Some(instance.clone()).filter(|instance| !instance.is_empty()),
        limit: JOBS_SHOWN,
    };
    let counts = state.database.count_jobs_by_status().await;
    let jobs = state.database.recent_jobs(&filter).await;
    match (counts, jobs) {
        (Ok(counts), Ok(jobs)) => {
            write_status_summary(&mut body, &counts, &instance);
            write_filter_form(&mut body, &status, &instance);
            write_jobs(&mut body, &jobs);
        }
        (Err(error), _) | (_, Err(error)) => {
            warn!(%error, "failed to read the jobs for the job dashboard");
            body.push_str("<p class=\"fault\">The database is unavailable.</p>\n");
        }
    }
    page("Jobs", &body)
}

async fn queue_counts(state: &AppState) -> Result<QueueCounts, redis::RedisError> {
    let mut storage = state.queue.clone();
    let config = storage.get_config().clone();
    let connection: &mut ConnectionManager = storage.get_connection();

    let waiting: i64 = redis::cmd("LLEN")
        .arg(config.active_jobs_list())
        .query_async(connection)
        .await?;
    let scheduled: i64 = redis::cmd("ZCARD")
        .arg(config.scheduled_jobs_set())
        .query_async(connection)
        .await?;
    let done: i64 = redis::cmd("SCARD")
        .arg(config.done_jobs_set())
        .query_async(connection)
        .await?;
    let dead: i64 = redis::cmd("SCARD")
        .arg(config.dead_jobs_set())
        .query_async(connection)
        .await?;
    let heartbeats: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(config.workers_set())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(connection)
        .await?;

    let mut workers = Vec::with_capacity(heartbeats.len());
    for (name, last_seen) in heartbeats {
        // apalis-redis keeps the ids a worker has taken in `<queue>:inflight:<worker>`.
        let in_flight: i64 = redis::cmd("SCARD")
            .arg(format!("{}:{name}", config.inflight_jobs_set()))
            .query_async(connection)
            .await?;
        workers.push(WorkerCounts {
            name,
            last_seen: last_seen as i64,
            in_flight,
        });
    }
    Ok(QueueCounts {
        waiting,
        scheduled,
        done,
        dead,
        workers,
    })
}

fn write_queue(body: &mut String, counts: &QueueCounts) {
    let _ = write!(
        body,
        "<h3>Redis queue</h3>\n<div class=\"summary\"><span>waiting: {}</span>\
         <span>scheduled for retry: {}</span><span>done: {}</span><span>dead: {}</span></div>\n",
        counts.waiting, counts.scheduled, counts.done, counts.dead
    );
    if counts.workers.is_empty() {
        body.push_str("<p class=\"muted\">No worker has registered on this queue.</p>\n");
        return;
    }
    body.push_str("<table>\n<tr><th>Worker</th><th>Last heartbeat</th><th>In flight</th></tr>\n");
    for worker in &counts.workers {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&worker.name),
            format_time(worker.last_seen.saturating_mul(1000)),
            worker.in_flight
        );
    }
    body.push_str("</table>\n");
}

fn write_status_summary(body: &mut String, counts: &[(String, i64)], instance: &str) {
    let instance_parameter = if instance.is_empty() {
        String::new()
    } else {
        format!("&amp;instance={}", encode_query_value(instance))
    };
    body.push_str("<h3>Recorded jobs</h3>\n<div class=\"summary\">");
    for (status, count) in counts {
        let _ = write!(
            body,
            "<a class=\"job-{status}\" href=\"/operator/jobs/?status={status}{instance_parameter}\">{status}: {count}</a>",
            status = escape(status),
        );
    }
    body.push_str("</div>\n");
}

fn write_filter_form(body: &mut String, status: &str, instance: &str) {
    body.push_str(
        "<form method=\"get\" action=\"/operator/jobs/\"><label>Status <select name=\"status\">\
         <option value=\"\">any</option>",
    );
    for option in STATUSES {
        let selected = if option == status { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{option}</option>");
    }
    let _ = writeln!(
        body,
        "</select></label> <label>Instance <input name=\"instance\" value=\"{}\" size=\"24\">\
         </label> <button type=\"submit\">Filter</button> <a href=\"/operator/jobs/\">clear</a>\
         </form>",
        escape(instance)
    );
}

fn write_jobs(body: &mut String, jobs: &[JobRecord]) {
    if jobs.is_empty() {
        body.push_str("<p class=\"muted\">No job matches.</p>\n");
        return;
    }
    let _ = writeln!(
        body,
        "<p class=\"muted\">The newest {} jobs that match, newest first.</p>",
        jobs.len()
    );
    body.push_str(
        "<table>\n<tr><th>Job</th><th>Instance</th><th>Action</th><th>Status</th>\
         <th>Attempts</th><th>Worker</th><th>Last error</th><th>Created</th><th>Updated</th></tr>\n",
    );
    for job in jobs {
        let _ = writeln!(
            body,
            "<tr><td>{id}</td><td><a href=\"/operator/jobs/?instance={instance_query}\">{instance}</a></td>\
             <td>{action} #{seq}</td><td class=\"job-{status}\">{status}</td><td>{attempts}</td>\
             <td>{worker}</td><td class=\"fault\">{error}</td><td>{created}</td><td>{updated}</td></tr>",
            id = escape(&job.id),
            instance_query = encode_query_value(&job.instance_id),
            instance = escape(&job.instance_id),
            action = escape(&job.action),
            seq = job.seq,
            status = escape(&job.status),
            attempts = job.attempts,
            worker = escape(job.worker.as_deref().unwrap_or("-")),
            error = escape(job.error.as_deref().unwrap_or("")),
            created = format_time(job.created_at),
            updated = format_time(job.updated_at),
        );
    }
    body.push_str("</table>\n");
}
