//! Many sessions among many unrelated pods: the operator's memory and its
//! connections to the API server while it serves the sessions and after a
//! restart, the time to /readyz and to every session reconciled, and then
//! the traffic of an idle operator.
//!
//! The operator talks to the API server directly here (TLS, as in a cluster),
//! so its memory and connections are the real ones; its requests are read
//! from its /metrics. Only the idle operator sits behind the counting proxy,
//! which sees every request (watches, discovery, events, the lease).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::cluster::{Bench, MetricSet, OperatorProcess, client_through, session};
use crate::requests::Counts;
use crate::timeline::Timeline;
use crate::{Plan, common};

pub const NAMESPACE: &str = "bench-scale";

/// What one operator process did and cost.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct OperatorFigures {
    /// From the spawn to /readyz 200.
    pub ready_s: Option<f64>,
    /// From the spawn until it had reconciled as many times as there are sessions.
    pub reconciled_s: Option<f64>,
    /// Resident memory once quiet, and the peak.
    pub memory: crate::cluster::Memory,
    /// Established connections to the API server: the most seen (sampled every 50 ms), and once quiet.
    pub connections_max: usize,
    pub connections_quiet: usize,
    /// What grew in its /metrics.
    pub metrics: MetricSet,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IdleResult {
    pub seconds: f64,
    /// Everything the restarted operator sent until it was quiet.
    pub startup: Counts,
    pub startup_seconds: f64,
    /// Everything it sent while idle.
    pub idle: Counts,
    pub metrics: MetricSet,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScaleResult {
    pub sessions: usize,
    pub pods: usize,
    pub unrelated_pods: usize,
    pub unrelated_created_s: f64,
    /// Sessions by the phase they ended in.
    pub finished: BTreeMap<String, usize>,
    /// From the first create until every session had finished.
    pub all_finished_s: f64,
    /// The operator that served them all.
    pub serving: OperatorFigures,
    /// A new operator process on the same sessions and pods.
    pub restarted: OperatorFigures,
    /// For comparison: what a reflector caching all the namespace's pods adds to a process,
    /// (MiB, pods cached, MiB of pod JSON).
    pub pod_cache: (f64, usize, f64),
    pub idle: Option<IdleResult>,
}

/// Samples a process's connections to a port and its memory every 50 ms.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Sampler {
    fn start(pid: u32, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut most = 0;
            while !flag.load(Ordering::Relaxed) {
                most = most.max(crate::cluster::connections_to(pid, port));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        });
        Sampler { stop, task }
    }

    async fn most(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

/// Waits until the operator has reconciled at least `count` times (time from its spawn),
/// then until its reconcile count stays put for two seconds.
async fn reconciled(operator: &OperatorProcess, count: usize, timeout: Duration) -> Option<f64> {
    let deadline = Instant::now() + timeout;
    let mut reached = None;
    while Instant::now() < deadline {
        let done = operator.metrics().await.sum("ephemera_reconciliations_total");
        if done >= count as f64 {
            reached = Some(operator.spawned.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = -1.0;
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        let done = operator.metrics().await.sum("ephemera_reconciliations_total");
        if done != last {
            last = done;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reached
}

/// Memory and connections once quiet, and what grew in /metrics since `before`.
async fn figures(
    settle: Duration,
    operator: &OperatorProcess,
    sampler: Sampler,
    api_port: u16,
    before: &MetricSet,
    ready_s: Option<f64>,
    reconciled_s: Option<f64>,
) -> OperatorFigures {
    tokio::time::sleep(settle).await;
    OperatorFigures {
        ready_s,
        reconciled_s,
        memory: operator.memory(),
        connections_quiet: operator.connections_to(api_port),
        connections_max: sampler.most().await,
        metrics: operator.metrics().await.since(before),
    }
}

async fn create_unrelated_pods(pods: &Api<Pod>, count: usize) -> Duration {
    let started = Instant::now();
    stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": { "name": format!("unrelated-{i:05}"), "labels": { "app": "unrelated", "shard": (i % 10).to_string() } },
                    "spec": {
                        // No scheduler serves this name: the pods stay Pending and cost the node nothing.
                        "schedulerName": "ephemera-bench-nobody",
                        "containers": [{ "name": "app", "image": common::IMAGE, "command": ["sleep", "3600"] }],
                    }
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await.expect("create pod");
            }
        })
        .await;
    started.elapsed()
}

/// What caching every pod of the namespace would cost: this process's RSS
/// growth for a reflector store of them (the usual `Controller::owns` cache).
async fn pod_cache_cost(pods: Api<Pod>) -> (f64, usize, f64) {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let json_mib = match pods.list(&ListParams::default()).await {
        Ok(list) => serde_json::to_vec(&list.items).map_or(0, |b| b.len()) as f64 / (1024.0 * 1024.0),
        Err(_) => 0.0,
    };
    let before = crate::cluster::memory(std::process::id()).resident;
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(pods, watcher::Config::default())).applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    let _ = reader.wait_until_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = crate::cluster::memory(std::process::id()).resident - before;
    let cached = reader.state().len();
    task.abort();
    (grown, cached, json_mib)
}

pub async fn run(bench: &Bench, plan: &Plan, keep: bool) -> ScaleResult {
    let (sessions, unrelated) = (plan.scale_sessions, plan.unrelated_pods);
    say!(
        "scale: {sessions} sessions on {} pods among {unrelated} unrelated pods; restart; {} s idle",
        plan.scale_pods,
        plan.idle_secs
    );
    let settle = Duration::from_secs(plan.settle_secs);
    bench.fresh_namespace(NAMESPACE).await;
    let timeline = Timeline::start(&bench.client, NAMESPACE, false).await;
    let targets: Vec<String> = (0..plan.scale_pods.max(1)).map(|i| format!("t-{i}")).collect();
    bench.running_pods(NAMESPACE, &targets).await;
    let pods: Api<Pod> = Api::namespaced(bench.client.clone(), NAMESPACE);
    let unrelated_created = create_unrelated_pods(&pods, unrelated).await;
    say!("  {unrelated} unrelated pods created in {:.1} s", unrelated_created.as_secs_f64());

    // The operator that serves them, straight to the API server.
    let kubeconfig = common::kubeconfig();
    let mut serving = OperatorProcess::spawn(NAMESPACE, &kubeconfig, Some("admin"), "scale-serving", &[]);
    let sampler = Sampler::start(serving.pid(), bench.api_port);
    let ready = serving.wait_ready(Duration::from_secs(300)).await.map(|d| d.as_secs_f64());
    let before = serving.metrics().await;
    let started = Instant::now();
    let names: Vec<String> = (0..sessions).map(|i| format!("s-{i:04}")).collect();
    stream::iter(names.iter().enumerate())
        .for_each_concurrent(32, |(i, name)| {
            let target = targets[i % targets.len()].clone();
            async move {
                let session = session(name, &target, &["true"]);
                if let Err(error) = bench.create_session(NAMESPACE, &session).await {
                    say!("  cannot create session {name}: {error}");
                }
            }
        })
        .await;
    let limit = Duration::from_secs(300 + 2 * sessions as u64);
    let all = timeline.wait(limit, |state| names.iter().all(|n| state.session_finished(n))).await;
    let all_finished = started.elapsed();
    if !all {
        say!("  not every session finished within {limit:?}");
    }
    let finished = timeline.with(|state| {
        let mut by_phase = BTreeMap::new();
        for name in &names {
            let phase = ["Terminated", "Failed", "Running", "Injected", "Pending"]
                .into_iter()
                .find(|p| state.session_phase(name, p).is_some())
                .unwrap_or("none");
            *by_phase.entry(phase.to_string()).or_insert(0) += 1;
        }
        by_phase
    });
    say!("  all finished in {:.1} s: {finished:?}", all_finished.as_secs_f64());
    let _ = reconciled(&serving, 0, Duration::from_secs(120)).await;
    let serving_figures = figures(settle, &serving, sampler, bench.api_port, &before, ready, None).await;
    say!("  serving operator: {serving_figures:?}");
    serving.kill();

    // A restart: a new process lists the sessions again.
    let mut restarted = OperatorProcess::spawn(NAMESPACE, &kubeconfig, Some("admin"), "scale-restarted", &[]);
    let sampler = Sampler::start(restarted.pid(), bench.api_port);
    let ready = restarted.wait_ready(Duration::from_secs(300)).await.map(|d| d.as_secs_f64());
    let done = reconciled(&restarted, sessions, Duration::from_secs(600)).await;
    let restarted_figures =
        figures(settle, &restarted, sampler, bench.api_port, &MetricSet::default(), ready, done).await;
    say!("  restarted operator: {restarted_figures:?}");
    restarted.kill();
    let pod_cache = pod_cache_cost(pods.clone()).await;

    // Idle: behind the counting proxy, with leader election as the chart runs it.
    let idle = if plan.idle_secs > 0 {
        let params = DeleteParams::background();
        let _ = pods.delete_collection(&params, &ListParams::default().labels("app=unrelated")).await;
        let (port, log) = crate::proxy::serve(crate::cluster::upstream_client().await).await;
        let (_, proxied) = client_through(port, "idle").await;
        let election = ["--leader-elect", "--leader-election-namespace", NAMESPACE];
        let mut idle = OperatorProcess::spawn(NAMESPACE, &proxied, None, "scale-idle", &election);
        idle.wait_ready(Duration::from_secs(300)).await;
        reconciled(&idle, sessions, Duration::from_secs(600)).await;
        while log.last_request_at().is_some_and(|at| at.elapsed() < Duration::from_secs(3)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let startup = Counts::of(&log.since(0));
        let startup_seconds = idle.spawned.elapsed().as_secs_f64();
        let from = log.len();
        let before = idle.metrics().await;
        say!("  idle for {} s (restart cost: {})", plan.idle_secs, startup.describe());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(plan.idle_secs) {
            let left = Duration::from_secs(plan.idle_secs).saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(300))).await;
            if !left.is_zero() && plan.idle_secs > 300 {
                say!("  idle {:.0} s: {}", started.elapsed().as_secs_f64(), Counts::of(&log.since(from)).describe());
            }
        }
        let result = IdleResult {
            seconds: started.elapsed().as_secs_f64(),
            startup,
            startup_seconds,
            idle: Counts::of(&log.since(from)),
            metrics: idle.metrics().await.since(&before),
        };
        say!("  idle: {}", result.idle.describe());
        idle.kill();
        let _ = std::fs::remove_file(proxied);
        Some(result)
    } else {
        None
    };
    timeline.stop();
    if !keep {
        // Waited for in a full run: its 10,000 pods must be gone before anything else starts.
        bench.remove_namespace(NAMESPACE, plan.unrelated_pods > 1000).await;
    }
    ScaleResult {
        sessions,
        pods: targets.len(),
        unrelated_pods: unrelated,
        unrelated_created_s: unrelated_created.as_secs_f64(),
        finished,
        all_finished_s: all_finished.as_secs_f64(),
        serving: serving_figures,
        restarted: restarted_figures,
        pod_cache,
        idle,
    }
}
