//! The worker process: takes instance jobs from Redis and converges Kubernetes to each
//! instance's recorded intent. Any number of workers may run against the same queue.

mod converge;
mod job_metrics;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use clap::Parser;
use tracing::info;

use visa_jobs::queue::ConvergeInstance;
use visa_jobs::settings::{CommonArgs, init_tracing, kube_client};

use crate::converge::Converger;

#[derive(Debug, Parser)]
#[command(
    name = "visa-worker",
    about = "Runs VISA instance jobs against Kubernetes"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Name of this worker in Redis and in job rows; unique per process.
    #[arg(long, env = "VISA_WORKER_NAME")]
    worker_name: Option<String>,

    /// Jobs run at once by this process.
    #[arg(long, env = "VISA_WORKER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,

    /// Seconds a worker's hold on an instance lasts without renewal.
    #[arg(long, env = "VISA_LEASE_TTL_SECONDS", default_value_t = 30)]
    lease_ttl_seconds: u64,

    /// Seconds a job keeps retrying transient failures before it records a fault.
    #[arg(long, env = "VISA_RETRY_BUDGET_SECONDS", default_value_t = 120)]
    retry_budget_seconds: u64,

    /// Seconds between drift sweeps.
    #[arg(long, env = "VISA_SWEEP_INTERVAL_SECONDS", default_value_t = 30)]
    sweep_interval_seconds: u64,

    /// Seconds after which an unfinished intent is enqueued again by the sweep.
    #[arg(long, env = "VISA_SWEEP_STALE_SECONDS", default_value_t = 300)]
    sweep_stale_seconds: u64,

    /// Address and port to serve Prometheus metrics on at /metrics; off when unset.
    #[arg(long, env = "VISA_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

async fn handle(job: ConvergeInstance, converger: Data<Arc<Converger>>) -> Result<(), BoxDynError> {
    converger
        .run(&job)
        .await
        .map_err(|error| Box::new(error) as BoxDynError)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let worker_name = args.worker_name.clone().unwrap_or_else(default_worker_name);
    if let Some(address) = &args.metrics_listen {
        job_metrics::serve(address).await?;
    }

    let (database, _) = args.common.open_database().await?;
    let client = kube_client().await?;
    let storage = args.common.open_queue().await?;

    let converger = Arc::new(Converger {
        database: database.clone(),
        client,
        settings: args.common.object_settings(),
        worker_name: worker_name.clone(),
        lease_ttl: Duration::from_secs(args.lease_ttl_seconds.max(3)),
        retry_budget: Duration::from_secs(args.retry_budget_seconds),
    });

    tokio::spawn(sweep::run(
        database,
        storage.clone(),
        Duration::from_secs(args.sweep_interval_seconds.max(1)),
        Duration::from_secs(args.sweep_stale_seconds),
    ));

    info!(worker = %worker_name, concurrency = args.concurrency, namespace = %args.common.namespace, "worker started");
    let worker = WorkerBuilder::new(worker_name.as_str())
        .backend(storage)
        .data(converger)
        .concurrency(args.concurrency.max(1))
        .build(handle);
    worker
        .run_until(shutdown_signal())
        .await
        .map_err(|error| anyhow::anyhow!("worker stopped with an error: {error}"))?;
    info!(worker = %worker_name, "worker stopped");
    Ok(())
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal() -> Result<(), std::io::Error> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
