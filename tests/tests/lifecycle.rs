//! The whole life of an instance, driven over HTTP as VISA drives it, against the local control
//! plane, Redis and each database backend.

use visa_tests::lifecycle::run_lifecycle;
use visa_tests::{Backend, Stack, StackOptions};

async fn run_on(backend: Backend) {
    let stack = Stack::start(StackOptions {
        backend,
        ..StackOptions::default()
    })
    .await;
    run_lifecycle(&stack).await;
}

#[tokio::test]
async fn lifecycle_on_sqlite() {
    run_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn lifecycle_on_mariadb() {
    run_on(Backend::MariaDb).await;
}
