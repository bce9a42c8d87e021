//! Prometheus metrics shared by the API and the workers: the metric names, their histogram
//! buckets and the process-wide recorder that the `metrics` macros write to.

use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// API requests, labelled `method`, `route` (the route template) and `status`.
pub const HTTP_REQUESTS: &str = "visa_http_requests_total";
/// API request latency in seconds, labelled like [`HTTP_REQUESTS`].
pub const HTTP_REQUEST_DURATION: &str = "visa_http_request_duration_seconds";
/// Instances by `state`, computed from the API's view when scraped.
pub const INSTANCES: &str = "visa_instances";
/// Restarts of the API's StatefulSet and pod watches after an error.
pub const WATCH_RESTARTS: &str = "visa_watch_restarts_total";
/// Seconds from an instance's creation until the API first saw it ready.
pub const CREATE_TO_READY: &str = "visa_instance_create_to_ready_seconds";
/// Finished jobs of a worker, labelled `action` and `outcome`.
pub const JOBS: &str = "visa_jobs_total";
/// Job duration in seconds, from the worker taking the job until it recorded the outcome.
pub const JOB_DURATION: &str = "visa_job_duration_seconds";
/// Unix time in seconds when the last finished LDAP sync run ended.
pub const LDAP_LAST_SYNC_TIMESTAMP: &str = "visa_ldap_last_sync_timestamp_seconds";
/// 1 when the last finished LDAP sync run succeeded, 0 when it failed.
pub const LDAP_LAST_SYNC_SUCCESS: &str = "visa_ldap_last_sync_success";
/// Entries of the last finished LDAP sync run, labelled `count` (`synced`, `added`, `changed`,
/// `gone`, `skipped`).
pub const LDAP_LAST_SYNC_ENTRIES: &str = "visa_ldap_last_sync_entries";
/// Unix time in seconds when the last successful LDAP sync run ended.
pub const LDAP_LAST_SUCCESSFUL_SYNC_TIMESTAMP: &str =
    "visa_ldap_last_successful_sync_timestamp_seconds";

const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const CREATE_TO_READY_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];
const JOB_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Installs the process-wide recorder and returns the handle that renders the text format.
/// Fails when a recorder is already installed.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION.to_owned()),
            HTTP_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(CREATE_TO_READY.to_owned()),
            CREATE_TO_READY_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(JOB_DURATION.to_owned()), JOB_BUCKETS)?
        .install_recorder()
        .map_err(|error| anyhow::anyhow!("failed to install the metrics recorder: {error}"))?;
    describe();

    // The recorder keeps histogram samples until upkeep folds them into the buckets.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "API requests by method, route and status");
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "API request latency by method, route and status"
    );
    metrics::describe_gauge!(INSTANCES, "Instances by state, as VISA reads them");
    metrics::describe_counter!(
        WATCH_RESTARTS,
        "Restarts of the StatefulSet and pod watches after an error"
    );
    metrics::describe_histogram!(
        CREATE_TO_READY,
        Unit::Seconds,
        "Time from an instance's creation until it was first ACTIVE"
    );
    metrics::describe_gauge!(
        LDAP_LAST_SYNC_TIMESTAMP,
        Unit::Seconds,
        "Unix time when the last finished LDAP sync of investigations ended"
    );
    metrics::describe_gauge!(
        LDAP_LAST_SYNC_SUCCESS,
        "1 when the last finished LDAP sync succeeded, 0 when it failed"
    );
    metrics::describe_gauge!(
        LDAP_LAST_SYNC_ENTRIES,
        "Investigations of the last finished LDAP sync by count: synced, added, changed, gone, skipped"
    );
    metrics::describe_gauge!(
        LDAP_LAST_SUCCESSFUL_SYNC_TIMESTAMP,
        Unit::Seconds,
        "Unix time when the last successful LDAP sync of investigations ended"
    );
    metrics::describe_counter!(JOBS, "Finished instance jobs by action and outcome");
    metrics::describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Instance job duration by action and outcome"
    );
}
