//! Benchmark: operator memory with many unrelated pods in the cluster.
//!
//! The operator watches pod *metadata* and keeps no cache of pods, so its
//! memory should not grow with the pods it does not debug. This creates
//! 10,000 pods (for a scheduler that does not exist, so they stay Pending and
//! cost the node and the scheduler nothing)
//! on the local cluster and reports the operator's resident memory, its peak,
//! and how fast it still serves a session, next to the size of what a cache of
//! full pod objects would hold.
//!
//!   cargo bench --bench unrelated_pods            (EPHEMERA_BENCH_PODS=10000)

#[path = "../tests/e2e/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::{Operator, TestEnv};
use ephemera::crd::Phase;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};

/// (resident, peak) memory of a process in MiB, from /proc.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

async fn create_unrelated_pods(pods: &Api<Pod>, count: usize) -> Duration {
    let started = Instant::now();
    stream::iter(0..count)
        .for_each_concurrent(64, |i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": { "name": format!("unrelated-{i:05}"), "labels": { "app": "unrelated", "shard": (i % 10).to_string() } },
                    "spec": {
                        // No scheduler serves this name: the pods stay Pending and cost the scheduler nothing.
                        "schedulerName": "ephemera-bench-nobody",
                        "containers": [{ "name": "app", "image": "localhost/busybox:1.36", "command": ["sleep", "3600"] }],
                    }
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await.expect("create pod");
            }
        })
        .await;
    started.elapsed()
}

/// Starts an operator on all namespaces, waits for it to settle, and serves one session.
async fn measure(env: &TestEnv, label: &str, session: &str) -> (f64, f64, Duration) {
    let operator =
        Operator::start_with_args("", &common::kubeconfig(), "admin", "127.0.0.1:0", &[], &format!("bench-{label}"));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let started = Instant::now();
    env.create_session(&common::sleeping_session(session, "{ pod: web }", "")).await;
    env.wait_phase(session, Phase::Running).await;
    let latency = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = memory_mib(operator.pid());
    (rss, peak, latency)
}

/// What caching every pod would cost: this process's RSS growth for a
/// reflector store of all pods (the usual `Controller::owns`/`watches` cache).
async fn pod_cache_cost(pods: Api<Pod>) -> (f64, usize) {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let before = memory_mib(std::process::id()).0;
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(pods, watcher::Config::default())).applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = memory_mib(std::process::id()).0 - before;
    let cached = reader.state().len();
    task.abort();
    (grown, cached)
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("EPHEMERA_BENCH_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let env = TestEnv::without_operator("bench", &[]).await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    remove_namespace(&namespaces, UNRELATED).await;
    env.running_pod("web", &["app"], &[]).await;

    let before = measure(&env, "before", "before").await;

    let ns = serde_json::from_value(serde_json::json!({ "metadata": { "name": UNRELATED } })).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let unrelated: Api<Pod> = Api::namespaced(env.client.clone(), UNRELATED);
    let created_in = create_unrelated_pods(&unrelated, count).await;
    let all_pods: Api<Pod> = Api::all(env.client.clone());
    let full = all_pods.list(&ListParams::default()).await.unwrap();
    let full_bytes = serde_json::to_vec(&full.items).unwrap().len() as f64 / (1024.0 * 1024.0);
    let total = full.items.len();

    let after = measure(&env, "after", "after").await;
    let (cache_mib, cached) = pod_cache_cost(all_pods).await;

    println!("\nephemera operator with {total} pods in the cluster ({count} unrelated, Pending)");
    println!("  created {count} pods in {:.1}s", created_in.as_secs_f64());
    println!("  {:<34} {:>10} {:>10} {:>16}", "", "RSS MiB", "peak MiB", "session Running");
    for (name, (rss, peak, latency)) in
        [("without the unrelated pods", before), ("with them (initial list included)", after)]
    {
        println!("  {name:<34} {rss:>10.1} {peak:>10.1} {:>15.2}s", latency.as_secs_f64());
    }
    println!("  full pod objects (what a pod cache would hold, as JSON): {full_bytes:.1} MiB");
    println!(
        "  for comparison, a kube-runtime reflector caching all {cached} pods grows a process by {cache_mib:.1} MiB"
    );
    println!("  RSS growth: {:.1} MiB for {count} pods", after.0 - before.0);
    remove_namespace(&namespaces, UNRELATED).await;
}

const UNRELATED: &str = "bench-unrelated";

async fn remove_namespace(namespaces: &Api<Namespace>, name: &str) {
    while namespaces.get_opt(name).await.unwrap().is_some() {
        let _ = namespaces.delete(name, &Default::default()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
