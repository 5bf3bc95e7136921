//! Benchmark: account creations per second through `SynapseClient` against a real Synapse,
//! next to a plain reqwest loop sending the same requests. Prints figures; asserts no speed.
//! `cargo bench --bench homeserver_throughput` (needs scripts/install-testbed.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{unique, Synapse};
use matrix_ldap_sync::config::HomeserverConfig;
use matrix_ldap_sync::homeserver::{Homeserver, SynapseClient, Upserted, UserChanges};
use matrix_ldap_sync::secret::Secret;
use serde_json::json;

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    upsert_throughput();
}

/// Throughput of `upsert_user` creations against the real server, for comparison with a
/// plain HTTP loop (TESTBED.md: ~87/s on one connection, ~130/s with 8-16).
/// Run with `cargo bench --bench homeserver_throughput`.
fn upsert_throughput() {
    let synapse = Synapse::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Warm-up, so that the first measured round is not the server's first minutes.
    plain_loop(&rt, synapse, 8, 200);
    for concurrency in [1usize, 8, 16] {
        let cfg = HomeserverConfig {
            url: url::Url::parse(&synapse.url).unwrap(),
            server_name: synapse.server_name.clone(),
            access_token: Secret::new(&synapse.admin_token),
            concurrency,
            timeout: Duration::from_secs(30),
            max_retries: 2,
            retry_refused_after: std::time::Duration::from_secs(86_400),
            breaker_failures: 3,
            run_deadline: std::time::Duration::from_secs(3600),
        };
        let hs = std::sync::Arc::new(SynapseClient::new(&cfg).unwrap());
        let n = 300;
        let prefix = unique("hs-bench");
        let start = std::time::Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let hs = hs.clone();
                    let id = format!("@{prefix}-{i}:{}", synapse.server_name);
                    let mail = format!("b{i}@{prefix}.test");
                    tokio::spawn(async move {
                        let c = UserChanges {
                            displayname: Some("Bench".into()),
                            emails: Some(vec![mail]),
                            ..UserChanges::default()
                        };
                        hs.upsert_user(&id, &c).await
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap(), Upserted::Created);
            }
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "concurrency {concurrency}: {n} creations in {secs:.2}s = {:.0}/s, {} retries",
            n as f64 / secs,
            hs.retries()
        );
        plain_loop(&rt, synapse, concurrency, 300);
    }
}

/// The same creations with a bare reqwest loop (no retries, no semaphore), as a baseline.
fn plain_loop(rt: &tokio::runtime::Runtime, synapse: &Synapse, concurrency: usize, n: usize) {
    use futures::StreamExt;
    let http = reqwest::Client::new();
    let prefix = unique("hs-plain");
    let start = std::time::Instant::now();
    rt.block_on(async {
        futures::stream::iter(0..n)
            .map(|i| {
                let url = format!(
                    "{}/_synapse/admin/v2/users/@{prefix}-{i}:{}",
                    synapse.url, synapse.server_name
                );
                let req = http
                    .put(url)
                    .bearer_auth(&synapse.admin_token)
                    .json(&json!({"displayname": "Bench",
                        "threepids": [{"medium": "email", "address": format!("p{i}@{prefix}.test")}]}));
                async move { req.send().await.unwrap().status().as_u16() }
            })
            .buffer_unordered(concurrency)
            .for_each(|status| async move { assert_eq!(status, 201) })
            .await;
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "plain reqwest, concurrency {concurrency}: {n} creations in {secs:.2}s = {:.0}/s",
        n as f64 / secs
    );
}
