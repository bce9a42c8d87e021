//! The router, its shared state and the token check.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Redirect;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use visa_jobs::catalogue::Catalogue;
use visa_jobs::queue::InstanceStorage;
use visa_jobs::store::Database;

use crate::capacity::QuotaSettings;
use crate::error::ApiError;
use crate::operator_auth::OperatorCredentials;
use crate::view::View;
use crate::{capacity, catalogue, instances, job_board, operator_auth, overview, telemetry};

#[derive(Clone)]
pub struct AppState {
    pub database: Database,
    pub catalogue: Arc<Catalogue>,
    pub queue: InstanceStorage,
    pub view: Arc<View>,
    pub token: Arc<str>,
    pub quota: QuotaSettings,
    /// False turns `POST /api/instances/{id}/migrate` into a 404.
    pub migration_enabled: bool,
    /// Held while a create checks names and quota and records the instance.
    pub create_lock: Arc<tokio::sync::Mutex<()>>,
    /// Credentials of the operator pages; `None` disables them.
    pub operator: Option<Arc<OperatorCredentials>>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/instances", get(instances::list).post(instances::create))
        .route("/instances/identifiers", get(instances::identifiers))
        .route(
            "/instances/{id}",
            get(instances::get).delete(instances::delete),
        )
        .route("/instances/{id}/start", post(instances::start))
        .route("/instances/{id}/shutdown", post(instances::shutdown))
        .route("/instances/{id}/reboot", post(instances::reboot))
        .route(
            "/instances/{id}/security_groups",
            get(instances::security_groups).post(instances::add_security_group),
        )
        .route(
            "/instances/{id}/security_groups/remove",
            post(instances::remove_security_group),
        )
        .route("/instances/{id}/migrate", post(instances::migrate))
        .route("/flavours", get(catalogue::flavours))
        .route("/flavours/{id}", get(catalogue::flavour))
        .route("/images", get(catalogue::images))
        .route("/images/{id}", get(catalogue::image))
        .route("/security_groups", get(catalogue::security_groups))
        .route(
            "/flavours/{id}/device_allocations",
            get(capacity::flavour_device_allocations),
        )
        .route("/metrics", get(capacity::metrics))
        .route("/devices", get(capacity::devices))
        .route("/device/{device_type}/{*identifier}", get(capacity::device))
        .route("/device_allocations", get(capacity::all_device_allocations))
        .route(
            "/custom_resource_classes",
            get(capacity::custom_resource_classes),
        )
        .route(
            "/hypervisor_inventories",
            get(capacity::hypervisor_inventories),
        )
        .route("/hypervisor_usages", get(capacity::hypervisor_usages))
        .route(
            "/hypervisor_allocations",
            get(capacity::hypervisor_allocations),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_owned()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed(
                "method not allowed on this path: see /openapi.json".to_owned(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token));

    let operator = Router::new()
        .route("/", get(|| async { Redirect::to("/operator/instances") }))
        .route("/instances", get(overview::instances))
        .route(
            "/jobs",
            get(|| async { Redirect::permanent("/operator/jobs/") }),
        )
        .route("/jobs/", get(job_board::jobs))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such operator page\n") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            operator_auth::require_operator,
        ));

    Router::new()
        .nest("/api", api)
        .nest("/operator", operator)
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        .route("/readyz", get(readiness))
        .route("/metrics", get(telemetry::scrape))
        .with_state(state)
        .layer(middleware::from_fn(telemetry::track_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The OpenAPI document of `/api`, kept true by a test that checks real responses against it.
const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Rejects a request whose `X-Auth-Token` is missing or differs from the configured token.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-auth-token")
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if constant_time_equal(given, state.token.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Compares without an early exit, so the time taken reveals nothing about the token.
fn constant_time_equal(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(0));
    }
    difference == 0
}

/// Returns 200 once the watches have listed and the records have loaded. Until then a replica
/// would serve VISA from an empty view, so it must not receive traffic.
async fn readiness(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.view.ready() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_equal;

    #[test]
    fn token_comparison() {
        assert!(constant_time_equal(b"secret-value", b"secret-value"));
        assert!(!constant_time_equal(b"secret-valuE", b"secret-value"));
        assert!(!constant_time_equal(b"secret", b"secret-value"));
        assert!(!constant_time_equal(
            b"secret-value-longer",
            b"secret-value"
        ));
        assert!(!constant_time_equal(b"", b"secret-value"));
    }
}
