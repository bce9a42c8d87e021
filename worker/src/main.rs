//! The worker process: takes instance jobs from Redis and converges Kubernetes to each
//! instance's recorded intent, and runs the scheduled LDAP sync of investigations. Any number
//! of workers may run against the same queue. The `ldap-sync` and `ldap-status` subcommands let
//! operators run a sync now and read the last one.

mod converge;
mod job_metrics;
mod ldap_commands;
mod ldap_schedule;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use clap::{Args as _, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::{info, warn};

use visa_jobs::queue::ConvergeInstance;
use visa_jobs::settings::{CommonArgs, LdapArgs, NfsArgs, init_tracing, kube_client};

use crate::converge::Converger;
use crate::ldap_commands::{LdapStatusArgs, LdapSyncArgs};

#[derive(Debug, Parser)]
#[command(
    name = "visa-worker",
    about = "Runs VISA instance jobs against Kubernetes and the scheduled LDAP sync",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one LDAP sync of investigations now, with the worker's LDAP settings, and prints
    /// its result. Exits with 1 when the sync failed.
    LdapSync(Box<LdapSyncArgs>),
    /// Prints the last LDAP sync's time, result and counts, and the stored investigations.
    LdapStatus(LdapStatusArgs),
}

/// Settings of the worker process, which runs when no subcommand is given. They are added to
/// the top-level command by `parse_command_line` rather than flattened into `Cli`, because
/// clap's optional flatten ignores values that come from environment variables.
#[derive(Debug, clap::Args)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    ldap: LdapArgs,

    #[command(flatten)]
    nfs: NfsArgs,

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
    match parse_command_line() {
        Mode::Subcommand(Command::LdapSync(args)) => ldap_commands::sync(*args).await,
        Mode::Subcommand(Command::LdapStatus(args)) => ldap_commands::status(args).await,
        Mode::Worker(args) => run_worker(*args).await,
    }
}

/// Mode that the command line selects.
enum Mode {
    Subcommand(Command),
    Worker(Box<Args>),
}

/// Parses the command line, and exits with clap's message when it is invalid.
fn parse_command_line() -> Mode {
    let matches = Args::augment_args(Cli::command()).get_matches();
    let parsed = Cli::from_arg_matches(&matches).map(|cli| cli.command);
    match parsed {
        Ok(Some(command)) => Mode::Subcommand(command),
        Ok(None) => match Args::from_arg_matches(&matches) {
            Ok(args) => Mode::Worker(Box::new(args)),
            Err(error) => error.exit(),
        },
        Err(error) => error.exit(),
    }
}

async fn run_worker(args: Args) -> anyhow::Result<()> {
    let worker_name = args.worker_name.clone().unwrap_or_else(default_worker_name);
    let ldap = args.ldap.config()?;
    let nfs = args.nfs.nfs_settings()?;
    if let Some(address) = &args.metrics_listen {
        job_metrics::serve(address).await?;
    }

    let (database, _) = args.common.open_database().await?;
    let client = kube_client().await?;
    let storage = args.common.open_queue().await?;

    match (&ldap, &nfs) {
        (Some(_), None) => {
            warn!("LDAP sync is on but --nfs-server is unset, so instances get no data mounts")
        }
        (None, Some(_)) => warn!(
            "--nfs-server is set but LDAP sync is off, so only investigations synced before are mounted"
        ),
        _ => {}
    }

    let converger = Arc::new(Converger {
        database: database.clone(),
        client,
        settings: args.common.object_settings(),
        nfs,
        worker_name: worker_name.clone(),
        lease_ttl: Duration::from_secs(args.lease_ttl_seconds.max(3)),
        retry_budget: Duration::from_secs(args.retry_budget_seconds),
    });

    if let Some(config) = ldap {
        info!(url = %config.url, base = %config.base_dn, interval_s = config.interval.as_secs(), "LDAP sync scheduled");
        tokio::spawn(ldap_schedule::run(
            database.clone(),
            config,
            worker_name.clone(),
        ));
    }

    tokio::spawn(sweep::run(
        database,
        storage.clone(),
        Duration::from_secs(args.sweep_interval_seconds.max(1)),
        Duration::from_secs(args.sweep_stale_seconds),
    ));

    info!(worker = %worker_name, concurrency = args.concurrency, namespace = %args.common.namespace, "worker started");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if shutdown_signal().await.is_ok() {
            let _ = stop.send(true);
        }
    });

    // A lost Redis connection ends apalis's worker with an error. The worker is built again
    // after a backoff, under a new name, so that the jobs the old one held go back to the queue
    // once its heartbeats expire, and the process never stops converging.
    let mut delay = Duration::from_secs(1);
    for run in 0u64.. {
        let name = if run == 0 {
            worker_name.clone()
        } else {
            format!("{worker_name}-r{run}")
        };
        let worker = WorkerBuilder::new(name.as_str())
            .backend(storage.clone())
            .data(Arc::clone(&converger))
            .concurrency(args.concurrency.max(1))
            .build(handle);
        let mut until = stopped.clone();
        let signal = async move {
            let _ = until.wait_for(|stopped| *stopped).await;
            Ok::<(), std::io::Error>(())
        };
        let started = tokio::time::Instant::now();
        let error = match worker.run_until(signal).await {
            Ok(()) => break,
            Err(error) => error,
        };
        if *stopped.borrow() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            delay = Duration::from_secs(1);
        }
        warn!(worker = %name, %error, retry_in_s = delay.as_secs(), "worker lost its queue; starting it again");
        let mut until = stopped.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = until.wait_for(|stopped| *stopped) => break,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
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
