//! `/metrics` and the request metrics: requests and their latency by route template and
//! status, instances by state and watch restarts read from the view at scrape time, and the
//! last LDAP sync read from the database at scrape time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use visa_jobs::model::{InstanceState, Millis};
use visa_jobs::prometheus::{
    HTTP_REQUEST_DURATION, HTTP_REQUESTS, INSTANCES, LDAP_LAST_SUCCESSFUL_SYNC_TIMESTAMP,
    LDAP_LAST_SYNC_ENTRIES, LDAP_LAST_SYNC_SUCCESS, LDAP_LAST_SYNC_TIMESTAMP, TEXT_CONTENT_TYPE,
    WATCH_RESTARTS,
};
use visa_jobs::store::{Database, SyncResult};

use crate::app::AppState;
use crate::ldap_status::{self, finished_at};

/// Scrapes in a row that failed to read the LDAP sync status, for rate-limiting the log.
static LDAP_STATUS_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Every state word, so that a state with no instance reads 0 rather than vanishing.
const STATES: [InstanceState; 12] = [
    InstanceState::Unknown,
    InstanceState::Building,
    InstanceState::Starting,
    InstanceState::Active,
    InstanceState::ActiveMigrating,
    InstanceState::Stopping,
    InstanceState::Stopped,
    InstanceState::Rebooting,
    InstanceState::Migrating,
    InstanceState::Unavailable,
    InstanceState::Error,
    InstanceState::Deleted,
];

/// Counts a request and its latency under its route template, such as
/// `/api/instances/{id}`, so that ids in paths do not create a series each. Requests that
/// match no route count under `unmatched`.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let started = Instant::now();

    let response = next.run(request).await;

    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Returns the method's name, or `other` for extension methods, which clients choose freely.
fn method_label(method: &Method) -> String {
    let known = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ];
    if known.contains(method) {
        method.as_str().to_owned()
    } else {
        "other".to_owned()
    }
}

/// Renders every metric in the Prometheus text format, after setting the ones that the view
/// computes.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let mut counts: HashMap<InstanceState, u32> = HashMap::new();
    for instance in state.view.instances() {
        *counts.entry(instance.state).or_default() += 1;
    }
    for instance_state in STATES {
        let count = counts.get(&instance_state).copied().unwrap_or(0);
        metrics::gauge!(INSTANCES, "state" => instance_state.as_str()).set(f64::from(count));
    }
    metrics::counter!(WATCH_RESTARTS).absolute(state.view.watch_restarts.load(Ordering::Relaxed));
    set_ldap_sync_gauges(&state.database).await;

    (
        [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Sets the LDAP sync gauges from the runs recorded in the database. A gauge is first set when
/// its run exists, so nothing is exported before the first sync. When the database fails, the
/// gauges keep their previous values and the scrape still succeeds.
async fn set_ldap_sync_gauges(database: &Database) {
    let status = match ldap_status::load(database).await {
        Ok(status) => {
            LDAP_STATUS_FAILURES.store(0, Ordering::Relaxed);
            status
        }
        Err(error) => {
            let failures = LDAP_STATUS_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
            // One line for the first failure and then one per ten, so an outage does not flood.
            if failures == 1 || failures.is_multiple_of(10) {
                warn!(%error, failures, "failed to read the LDAP sync status for /metrics, so the LDAP gauges keep their previous values");
            }
            return;
        }
    };

    if let Some(run) = &status.finished {
        metrics::gauge!(LDAP_LAST_SYNC_TIMESTAMP).set(unix_seconds(finished_at(run)));
        let success = if run.result == SyncResult::Succeeded {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(LDAP_LAST_SYNC_SUCCESS).set(success);
        let counts = &run.counts;
        for (label, value) in [
            ("synced", counts.synced),
            ("added", counts.added),
            ("changed", counts.changed),
            ("gone", counts.gone),
            ("skipped", counts.skipped),
        ] {
            metrics::gauge!(LDAP_LAST_SYNC_ENTRIES, "count" => label).set(value as f64);
        }
    }
    if let Some(run) = &status.last_success {
        metrics::gauge!(LDAP_LAST_SUCCESSFUL_SYNC_TIMESTAMP).set(unix_seconds(finished_at(run)));
    }
}

fn unix_seconds(millis: Millis) -> f64 {
    millis as f64 / 1000.0
}
