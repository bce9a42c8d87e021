//! The worker's job metrics and the listener that serves them at `/metrics`.

use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{error, info};

use visa_jobs::model::Action;
use visa_jobs::prometheus::{JOB_DURATION, JOBS, TEXT_CONTENT_TYPE};

/// Counts a finished job and records its duration. Without `--metrics-listen` no recorder is
/// installed and this does nothing.
pub fn record_job(action: Action, outcome: &'static str, duration: Duration) {
    let labels = [("action", action.as_str()), ("outcome", outcome)];
    metrics::counter!(JOBS, &labels).increment(1);
    metrics::histogram!(JOB_DURATION, &labels).record(duration.as_secs_f64());
}

/// Installs the recorder and serves `/metrics` on `address` until the process ends.
pub async fn serve(address: &str) -> anyhow::Result<()> {
    let handle = visa_jobs::prometheus::install_recorder()?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("failed to listen for metrics on {address}: {error}"))?;
    info!(address = %listener.local_addr()?, "metrics listening");

    let router = Router::new().route("/metrics", get(move || render(handle.clone())));
    tokio::spawn(async move {
        if let Err(failure) = axum::serve(listener, router).await {
            error!(error = %failure, "metrics listener stopped");
        }
    });
    Ok(())
}

async fn render(handle: PrometheusHandle) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], handle.render())
}
