//! Schema migrations when several processes start at once against one new database, as the API
//! replicas and the workers of a fresh install do.

use visa_jobs::store::Database;
use visa_tests::{create_mariadb_database, short_id};

#[tokio::test]
async fn concurrent_starts_migrate_mariadb_once() {
    let url = create_mariadb_database(&short_id()).await;
    let mut starts = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        starts.push(tokio::spawn(async move { Database::connect(&url).await }));
    }
    for (index, start) in starts.into_iter().enumerate() {
        let result = start.await.unwrap();
        assert!(
            result.is_ok(),
            "process {index} failed to open the database: {}",
            result.err().unwrap()
        );
    }
}

/// Opens one new SQLite file from six tasks at once, as the API and a worker do when
/// scripts/run-local.sh starts them together. Every task must find the schema applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_migrate_sqlite_once() {
    for round in 0..5 {
        let dir = std::env::temp_dir().join(format!("visa-migrate-{}", short_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = visa_jobs::store::sqlite_url(&dir.join("provider.db"));

        let mut starts = Vec::new();
        for _ in 0..6 {
            let url = url.clone();
            starts.push(tokio::spawn(async move { Database::connect(&url).await }));
        }
        for (index, start) in starts.into_iter().enumerate() {
            let result = start.await.unwrap();
            assert!(
                result.is_ok(),
                "round {round}: start {index} failed to open the database: {}",
                result.err().unwrap()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
