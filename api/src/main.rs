//! The API process: serves VISA's web provider API.

mod app;
mod capacity;
mod catalogue;
mod error;
mod html;
mod instances;
mod job_board;
mod ldap_status;
mod operator_auth;
mod overview;
mod telemetry;
mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing::info;

use visa_jobs::settings::{CommonArgs, init_tracing, kube_client};

use crate::app::AppState;
use crate::operator_auth::OperatorCredentials;
use crate::view::View;

#[derive(Debug, Parser)]
#[command(
    name = "visa-api",
    about = "Serves VISA's web provider API for Kubernetes"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Address and port to listen on.
    #[arg(long, env = "VISA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,

    /// File whose first line is the token VISA sends in X-Auth-Token.
    #[arg(long, env = "VISA_TOKEN_FILE")]
    token_file: PathBuf,

    /// Seconds a running instance may stay not ready after an action before it is an ERROR.
    #[arg(long, env = "VISA_START_GRACE_SECONDS", default_value_t = 600)]
    start_grace_seconds: u64,

    /// Maximum number of instances; from the namespace's ResourceQuota or the nodes when unset.
    #[arg(long, env = "VISA_MAX_INSTANCES")]
    max_instances: Option<i64>,

    /// Maximum cores of running instances; from the ResourceQuota or the nodes when unset.
    #[arg(long, env = "VISA_MAX_CORES")]
    max_cores: Option<i64>,

    /// Maximum memory of running instances in MiB; from the ResourceQuota or the nodes when unset.
    #[arg(long, env = "VISA_MAX_RAM_MIB")]
    max_ram_mib: Option<i64>,

    /// Returns 404 for migration requests, for clusters where instances must not move.
    #[arg(long, env = "VISA_DISABLE_MIGRATION")]
    disable_migration: bool,

    /// Milliseconds between reloads of changed instance records from the database.
    #[arg(long, env = "VISA_REFRESH_INTERVAL_MS", default_value_t = 1000)]
    refresh_interval_ms: u64,

    /// User name that operators give, with the password, to open the pages under /operator.
    #[arg(long, env = "VISA_OPERATOR_USER", default_value = "operator")]
    operator_user: String,

    /// File whose first line is the operators' password, 12 characters or more. Without it
    /// the pages under /operator return 404.
    #[arg(long, env = "VISA_OPERATOR_PASSWORD_FILE")]
    operator_password_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let token = read_token(&args.token_file)?;
    let operator = match &args.operator_password_file {
        Some(path) => Some(Arc::new(OperatorCredentials::load(
            &args.operator_user,
            path,
        )?)),
        None => {
            info!("operator pages disabled: set --operator-password-file to enable them");
            None
        }
    };
    let metrics = visa_jobs::prometheus::install_recorder()?;

    let (database, catalogue) = args.common.open_database().await?;
    let client = kube_client().await?;
    let queue = args.common.open_queue().await?;

    let view = View::start(
        client,
        database.clone(),
        &args.common.namespace,
        Duration::from_secs(args.start_grace_seconds),
        Duration::from_millis(args.refresh_interval_ms.max(100)),
    );
    let state = AppState {
        database,
        catalogue: Arc::new(catalogue),
        queue,
        view,
        token: token.into(),
        quota: capacity::QuotaSettings {
            max_instances: args.max_instances,
            max_cores: args.max_cores,
            max_ram_mib: args.max_ram_mib,
        },
        migration_enabled: !args.disable_migration,
        create_lock: Arc::new(tokio::sync::Mutex::new(())),
        operator,
        metrics,
    };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| anyhow::anyhow!("failed to listen on {}: {error}", args.listen))?;
    info!(address = %listener.local_addr()?, namespace = %args.common.namespace, "API listening");
    axum::serve(listener, app::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        anyhow::anyhow!("failed to read the token file {}: {error}", path.display())
    })?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.len() < 16 {
        anyhow::bail!(
            "the token in {} is missing or shorter than 16 characters: write a long random token on its first line",
            path.display()
        );
    }
    Ok(token)
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
