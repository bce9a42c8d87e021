//! `/metrics` and the request metrics: requests and their latency by route template and
//! status, and instances by state and watch restarts read from the view at scrape time.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use visa_jobs::model::InstanceState;
use visa_jobs::prometheus::{
    HTTP_REQUEST_DURATION, HTTP_REQUESTS, INSTANCES, TEXT_CONTENT_TYPE, WATCH_RESTARTS,
};

use crate::app::AppState;

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

    (
        [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}
