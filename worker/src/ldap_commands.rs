//! The operators' subcommands `ldap-sync` and `ldap-status`.

use visa_jobs::ldap::run_sync;
use visa_jobs::model::format_visa_time;
use visa_jobs::settings::LdapArgs;
use visa_jobs::store::{Database, LdapSyncRun, SyncResult};

#[derive(Debug, clap::Args)]
pub struct LdapSyncArgs {
    /// Database URL: `sqlite://PATH?mode=rwc` (embedded) or `mysql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, env = "VISA_DATABASE_URL", hide_env_values = true)]
    database_url: String,

    #[command(flatten)]
    ldap: LdapArgs,
}

#[derive(Debug, clap::Args)]
pub struct LdapStatusArgs {
    /// Database URL: `sqlite://PATH?mode=rwc` (embedded) or `mysql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, env = "VISA_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

async fn open(database_url: &str) -> anyhow::Result<Database> {
    Database::connect(database_url)
        .await
        .map_err(|error| anyhow::anyhow!("failed to open the database: {error}"))
}

/// Runs one sync now, prints it, and fails when the sync failed.
pub async fn sync(args: LdapSyncArgs) -> anyhow::Result<()> {
    let Some(config) = args.ldap.config()? else {
        anyhow::bail!("LDAP sync is off: set --ldap-url (VISA_LDAP_URL) and --ldap-base-dn");
    };
    let database = open(&args.database_url).await?;
    let run = run_sync(&config, &database, "manual", None)
        .await
        .map_err(|error| anyhow::anyhow!("failed to record the LDAP sync run: {error}"))?;
    print_run("sync", &run);
    if run.result != SyncResult::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}

/// Prints the last sync, the last successful one and the investigation counts.
pub async fn status(args: LdapStatusArgs) -> anyhow::Result<()> {
    let database = open(&args.database_url).await?;
    let read_failed = |error| anyhow::anyhow!("failed to read the LDAP sync status: {error}");
    match database.last_ldap_sync().await.map_err(read_failed)? {
        Some(run) => print_run("last", &run),
        None => println!("last: none"),
    }
    match database
        .last_successful_ldap_sync()
        .await
        .map_err(read_failed)?
    {
        Some(run) => println!(
            "last_success: {}",
            format_visa_time(run.finished_at.unwrap_or(run.started_at))
        ),
        None => println!("last_success: none"),
    }
    let (in_use, gone) = database.count_investigations().await.map_err(read_failed)?;
    println!("investigations: {in_use}");
    println!("investigations_gone: {gone}");
    Ok(())
}

/// Prints a run as `key: value` lines, each key prefixed with `prefix`.
fn print_run(prefix: &str, run: &LdapSyncRun) {
    let counts = &run.counts;
    println!("{prefix}: {}", run.result.as_str());
    println!("{prefix}_id: {}", run.id);
    println!("{prefix}_origin: {}", run.origin);
    println!("{prefix}_started: {}", format_visa_time(run.started_at));
    match run.finished_at {
        Some(at) => println!("{prefix}_finished: {}", format_visa_time(at)),
        None => println!("{prefix}_finished: not yet"),
    }
    println!("{prefix}_attempts: {}", run.attempts);
    println!(
        "{prefix}_counts: entries={} pages={} synced={} added={} changed={} gone={} skipped={} skipped_paths={}",
        counts.entries,
        counts.pages,
        counts.synced,
        counts.added,
        counts.changed,
        counts.gone,
        counts.skipped,
        counts.skipped_paths
    );
    if let Some(error) = &run.error {
        println!("{prefix}_error: {error}");
    }
}
