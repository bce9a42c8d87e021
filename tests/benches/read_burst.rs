//! Measures how fast the API serves VISA's minute-by-minute burst of instance reads.
//!
//! VISA reads every instance it knows once a minute, one request each, so a site with 1,000
//! instances sends at least 1,000 `GET /api/instances/{id}` at once, and every answer must come
//! well within VISA's 30 s read time-out. This bench starts the real API and a worker against
//! the local control plane (run it through scripts/bench.sh, which starts the services), creates
//! `VISA_BENCH_INSTANCES` instances (default 100), waits until all are ACTIVE, then sends
//! `VISA_BENCH_READS` reads (default 5,000) spread over the instances with
//! `VISA_BENCH_CONCURRENCY` requests in flight (default 200), and prints latency percentiles.

use std::time::{Duration, Instant};

use futures::StreamExt;

use visa_tests::{Stack, StackOptions, short_id};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let instances = setting("VISA_BENCH_INSTANCES", 100);
    let reads = setting("VISA_BENCH_READS", 5_000);
    let concurrency = setting("VISA_BENCH_CONCURRENCY", 200);

    let stack = Stack::start(StackOptions {
        workers: 2,
        api_args: vec![
            "--max-instances".into(),
            "100000".into(),
            "--max-cores".into(),
            "1000000".into(),
        ],
        ..StackOptions::default()
    })
    .await;

    let mut ids = Vec::with_capacity(instances);
    for _ in 0..instances {
        ids.push(stack.create(&format!("VISA-INSTANCE-{}", short_id())).await);
    }
    let started = Instant::now();
    for id in &ids {
        stack
            .wait_for_state(id, "ACTIVE", Duration::from_secs(600))
            .await;
    }
    println!(
        "{instances} instances ACTIVE {:.1} s after the last create",
        started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let urls: Vec<String> = (0..reads)
        .map(|index| stack.url(&format!("/api/instances/{}", ids[index % ids.len()])))
        .collect();

    let burst = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(urls)
        .map(|url| {
            let client = client.clone();
            async move {
                let sent = Instant::now();
                let response = client
                    .get(url)
                    .header("X-Auth-Token", visa_tests::TEST_TOKEN)
                    .send()
                    .await
                    .expect("read failed");
                assert_eq!(response.status(), 200);
                let body = response.bytes().await.unwrap();
                assert!(body.windows(8).any(|window| window == b"\"ACTIVE\""));
                sent.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let total = burst.elapsed();
    latencies.sort();

    println!(
        "{reads} reads of {instances} instances, {concurrency} in flight: {:.0} reads/s, \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, whole burst {:.2} s",
        reads as f64 / total.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        total.as_secs_f64()
    );
}
