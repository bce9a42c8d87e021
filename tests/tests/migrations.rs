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
