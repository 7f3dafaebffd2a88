//! Ephemera against the floor, interleaved: sequential, bursts, all at once,
//! a hot pod, and the cost per session against the number of sessions per pod.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ephemera::crd::Profile;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::cluster::{Bench, MetricSet, OperatorProcess, client_through, session};
use crate::proxy::RequestLog;
use crate::requests::{Counts, CriticalPath};
use crate::timeline::Timeline;
use crate::{Plan, common};

pub const NAMESPACE: &str = "bench-latency";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Who {
    Ephemera,
    Floor,
}

impl Who {
    fn letter(self) -> char {
        match self {
            Who::Ephemera => 'e',
            Who::Floor => 'f',
        }
    }

    /// Both kinds, the first one alternating with `round`.
    fn order(round: usize) -> [Who; 2] {
        if round % 2 == 0 { [Who::Ephemera, Who::Floor] } else { [Who::Floor, Who::Ephemera] }
    }
}

/// One debug container asked for, by ephemera or by the floor.
struct Trial {
    who: Who,
    /// The container's name, and the session's.
    name: String,
    pod: String,
    /// Which round of a scenario run in rounds the trial belongs to.
    round: Option<usize>,
    start: Instant,
    /// When the API server answered the session's create (ephemera only).
    created: Option<Instant>,
    error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrialResult {
    pub who: Who,
    pub name: String,
    pub pod: String,
    /// Which round of a scenario run in rounds (bursts, at once, hot pod).
    pub round: Option<usize>,
    pub in_spec_ms: Option<f64>,
    pub running_ms: Option<f64>,
    /// Ephemera only: until the session itself said Running (what `kubectl get dbgs` shows).
    pub session_running_ms: Option<f64>,
    pub error: Option<String>,
}

/// One scenario: its trials and what it cost.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScenarioResult {
    pub key: String,
    pub title: String,
    pub trials: Vec<TrialResult>,
    /// Ephemera's sessions, and how many of their containers reached the pod spec.
    pub sessions: usize,
    pub containers: usize,
    pub floor_containers: usize,
    /// The operator's requests (through its proxy) and the floor's.
    pub operator: Counts,
    pub floor: Counts,
    /// What grew in the operator's own /metrics.
    pub metrics: MetricSet,
    /// Events of the scenario's pods, as a watch sees them.
    pub pod_events: usize,
    pub seconds: f64,
    /// Load average (1 min) at the start and at the end.
    pub load: (f64, f64),
    pub path: CriticalPath,
    /// The most connections the operator had open at once.
    pub connections_max: usize,
    /// Sessions with more status writes than the normal path's three (Injected,
    /// Running, Terminated) plus one for each waiting reason the kubelet reported.
    pub status_writes_over_budget: usize,
}

/// What the normal path may write for a session whose container went through
/// `waiting_reasons` different waiting reasons.
pub fn status_write_budget(waiting_reasons: usize) -> usize {
    3 + waiting_reasons
}

/// Requests per session against sessions per pod.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PerPodPoint {
    /// Sessions on the pod (all at once), or the k-th session added to it.
    pub k: usize,
    pub sessions: usize,
    pub operator: Counts,
    pub pod_events: usize,
}

impl PerPodPoint {
    pub fn requests_per_session(&self) -> f64 {
        self.operator.requests() as f64 / self.sessions.max(1) as f64
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PerPod {
    /// k sessions created at once on a fresh pod; their whole life, per session.
    pub at_once: Vec<PerPodPoint>,
    /// The k-th session added to a pod that holds k - 1 running ones: from its create until it runs and all is quiet.
    pub added: Vec<PerPodPoint>,
}

struct WindowStart {
    at: Instant,
    operator: usize,
    floor: usize,
    metrics: MetricSet,
    load: f64,
}

pub struct Latency<'a> {
    bench: &'a Bench,
    plan: Plan,
    timeline: Arc<Timeline>,
    operator: OperatorProcess,
    operator_log: RequestLog,
    floor: Client,
    floor_log: RequestLog,
    kubeconfigs: Vec<PathBuf>,
    /// Pods created and not deleted yet.
    created: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The operator's open connections (to its proxy: one per request in flight, as to the
    /// API server, since it speaks HTTP/1.1 either way), sampled every 100 ms.
    connections: Arc<std::sync::Mutex<Vec<(Instant, usize)>>>,
    sampler: tokio::task::JoinHandle<()>,
}

pub fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

impl<'a> Latency<'a> {
    /// A namespace, an operator watching it through a counting proxy, and a floor client through another.
    pub async fn start(bench: &'a Bench, plan: &Plan) -> Latency<'a> {
        bench.fresh_namespace(NAMESPACE).await;
        let timeline = Timeline::start(&bench.client, NAMESPACE, true).await;
        let (operator_port, operator_log) = crate::proxy::serve(crate::cluster::upstream_client().await).await;
        let (floor_port, floor_log) = crate::proxy::serve(crate::cluster::upstream_client().await).await;
        let (_, operator_kubeconfig) = client_through(operator_port, "operator").await;
        let (floor, floor_kubeconfig) = client_through(floor_port, "floor").await;
        let mut operator = OperatorProcess::spawn(NAMESPACE, &operator_kubeconfig, None, "latency", &[]);
        operator.wait_ready(Duration::from_secs(60)).await.expect("the operator became ready");
        let connections: Arc<std::sync::Mutex<Vec<(Instant, usize)>>> = Arc::default();
        let (samples, pid) = (connections.clone(), operator.pid());
        let sampler = tokio::spawn(async move {
            loop {
                let open = crate::cluster::connections_to(pid, operator_port);
                samples.lock().unwrap().push((Instant::now(), open));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Latency {
            bench,
            plan: plan.clone(),
            timeline,
            operator,
            operator_log,
            floor,
            floor_log,
            kubeconfigs: vec![operator_kubeconfig, floor_kubeconfig],
            created: Default::default(),
            connections,
            sampler,
        }
    }

    /// The most connections the operator had open since `from`.
    fn connections_since(&self, from: Instant) -> usize {
        let samples = self.connections.lock().unwrap();
        samples.iter().filter(|(at, _)| *at >= from).map(|(_, n)| *n).max().unwrap_or(0)
    }

    /// The pods of these scenarios, created all at once when they are few (a smoke run),
    /// so that each scenario does not wait for its own.
    pub async fn prepare(&self, scenarios: &[String]) {
        let plan = &self.plan;
        let wants = |name: &str| scenarios.iter().any(|s| s == name);
        let mut pods = vec!["warm".to_string()];
        if wants("seq") {
            pods.extend(plan.seq.iter().flat_map(|&n| seq_pods(n)));
        }
        if wants("burst") {
            pods.extend(burst_pods(plan.burst));
        }
        if wants("once") {
            pods.extend(once_pods(plan.once));
        }
        if wants("hot") {
            pods.extend(hot_pods(plan.hot_rounds));
        }
        if wants("perpod") {
            pods.extend(per_pod_pods(&plan.per_pod));
        }
        if pods.len() <= 20 {
            self.pods(&pods).await;
        }
    }

    /// Creates those of `names` that do not exist yet and waits until all run.
    async fn pods(&self, names: &[String]) {
        let missing: Vec<String> = {
            let created = self.created.lock().unwrap();
            names.iter().filter(|n| !created.contains(*n)).cloned().collect()
        };
        self.bench.running_pods(NAMESPACE, &missing).await;
        self.created.lock().unwrap().extend(missing);
    }

    async fn delete_pods(&self, names: &[String]) {
        self.bench.delete_pods(NAMESPACE, names).await;
        let mut created = self.created.lock().unwrap();
        for name in names {
            created.remove(name);
        }
    }

    /// One trial of each kind, uncounted: connections open, availability known.
    pub async fn warm_up(&self) {
        let pods = vec!["warm".to_string()];
        self.pods(&pods).await;
        for who in [Who::Ephemera, Who::Floor] {
            let trials = self.burst(who, &[(format!("warm-{}", who.letter()), pods[0].clone())], 5).await;
            self.wait_running(&trials, Duration::from_secs(120)).await;
        }
        self.delete_pods(&pods).await;
    }

    /// Opens `n` connections on the bench's clients (kept alive by their pools), so
    /// that a burst of `n` finds them open, as a kept-alive `kubectl` would.
    async fn warm_clients(&self, n: usize) {
        let version = |client: Client| async move {
            let _ = client.apiserver_version().await;
        };
        join_all((0..n).flat_map(|_| [version(self.bench.client.clone()), version(self.floor.clone())])).await;
    }

    async fn start_trial(&self, who: Who, name: String, pod: String, hold: u64) -> Trial {
        let hold = hold.to_string();
        match who {
            Who::Ephemera => {
                let session = session(&name, &pod, &["sleep", &hold]);
                let start = Instant::now();
                let error = self.bench.create_session(NAMESPACE, &session).await.err().map(|e| e.to_string());
                Trial { who, name, pod, round: None, start, created: Some(Instant::now()), error }
            }
            Who::Floor => {
                let start = Instant::now();
                let error = floor_debug(&self.floor, &pod, &name, &hold).await.err().map(|e| e.to_string());
                Trial { who, name, pod, round: None, start, created: None, error }
            }
        }
    }

    /// Starts all these trials at once.
    async fn burst(&self, who: Who, targets: &[(String, String)], hold: u64) -> Vec<Trial> {
        join_all(targets.iter().map(|(name, pod)| self.start_trial(who, name.clone(), pod.clone(), hold))).await
    }

    /// Until every trial's container runs (and, for ephemera, the session says so), or failed.
    async fn wait_running(&self, trials: &[Trial], timeout: Duration) {
        self.wait_each(trials, timeout, "run", |state, t| {
            let marks = state.marks(&t.name);
            marks.terminated.is_some()
                || match t.who {
                    Who::Floor => marks.running.is_some(),
                    Who::Ephemera => {
                        state.session_failed(&t.name)
                            || (marks.running.is_some() && state.session_phase(&t.name, "Running").is_some())
                    }
                }
        })
        .await
    }

    /// Until every trial's container has exited (and, for ephemera, the session says it
    /// ended), or failed: the kubelet's and the operator's work for them is done.
    async fn wait_exited(&self, trials: &[Trial], timeout: Duration) {
        self.wait_each(trials, timeout, "exit", |state, t| match t.who {
            Who::Floor => state.marks(&t.name).terminated.is_some(),
            Who::Ephemera => state.session_finished(&t.name),
        })
        .await
    }

    /// Until `reached` holds for every trial that did not fail to start.
    async fn wait_each(
        &self,
        trials: &[Trial],
        timeout: Duration,
        verb: &str,
        reached: impl Fn(&crate::timeline::State, &Trial) -> bool,
    ) {
        let done = |state: &crate::timeline::State| trials.iter().all(|t| t.error.is_some() || reached(state, t));
        if !self.timeline.wait(timeout, done).await {
            say!("  some containers did not {verb} within {timeout:?}");
        }
    }

    /// Until the operator has sent nothing but watches for `quiet` (at most `max`).
    async fn quiesce(&self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            if self.operator_log.last_request_at().is_none_or(|at| at.elapsed() >= quiet) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn window_start(&self) -> WindowStart {
        WindowStart {
            at: Instant::now(),
            operator: self.operator_log.len(),
            floor: self.floor_log.len(),
            metrics: self.operator.metrics().await,
            load: load_average(),
        }
    }

    /// Waits until ephemera's sessions have finished and the operator is quiet, then sums up.
    async fn window_end(
        &self,
        window: WindowStart,
        key: String,
        title: String,
        trials: &[Trial],
        pods: &[String],
    ) -> ScenarioResult {
        let sessions: Vec<&Trial> = trials.iter().filter(|t| t.who == Who::Ephemera && t.error.is_none()).collect();
        let finish = Duration::from_secs(self.plan.hold_secs + 180);
        let finished =
            self.timeline.wait(finish, |state| sessions.iter().all(|t| state.session_finished(&t.name))).await;
        if !finished {
            say!("  some sessions did not finish within {finish:?}");
        }
        self.quiesce(Duration::from_secs(1), Duration::from_secs(30)).await;
        let end = Instant::now();
        let log = self.operator_log.since(window.operator);
        let dump = common::repo_root().join(format!("target/bench-logs/requests-{key}.log"));
        let _ = std::fs::write(&dump, crate::requests::dump(&log, window.at));
        let operator = Counts::of(&log);
        let floor_log = self.floor_log.since(window.floor);
        let created: Vec<(String, Instant, Instant)> = sessions
            .iter()
            .filter(|t| t.error.is_none())
            .map(|t| (t.name.clone(), t.start, t.created.unwrap_or(t.start)))
            .collect();
        let path = CriticalPath::of(&created, &log, &floor_log);
        let mut floor = Counts::of(&floor_log);
        // The bench's own warm-up of the floor's connections (`warm_clients`), not the floor's.
        floor.by_kind.remove("get discovery /version");
        let metrics = self.operator.metrics().await.since(&window.metrics);
        let (results, pod_events, status_writes_over_budget) = self.timeline.with(|state| {
            let results: Vec<TrialResult> = trials.iter().map(|t| result_of(t, state)).collect();
            // A session and its container are both named like the trial.
            let over_budget = sessions
                .iter()
                .filter(|t| {
                    let writes = operator.status_writes.get(&t.name).copied().unwrap_or(0);
                    writes > status_write_budget(state.waiting_reasons(&t.name))
                })
                .count();
            (results, state.pod_events_between(pods, window.at, end), over_budget)
        });
        let in_spec = |who: Who| results.iter().filter(|r| r.who == who && r.in_spec_ms.is_some()).count();
        ScenarioResult {
            key,
            title,
            sessions: trials.iter().filter(|t| t.who == Who::Ephemera).count(),
            containers: in_spec(Who::Ephemera),
            floor_containers: in_spec(Who::Floor),
            trials: results,
            operator,
            floor,
            metrics,
            pod_events,
            seconds: (end - window.at).as_secs_f64(),
            load: (window.load, load_average()),
            path,
            connections_max: self.connections_since(window.at),
            status_writes_over_budget,
        }
    }

    /// N sessions one after the other, ephemera and the floor alternating, on N/10 pods.
    pub async fn sequential(&self, n: usize) -> ScenarioResult {
        let key = format!("seq{n}");
        let pods = seq_pods(n);
        say!("{key}: {n} sessions one at a time on {} pods, each kind", pods.len());
        self.pods(&pods).await;
        let window = self.window_start().await;
        let mut trials = Vec::new();
        for i in 0..n {
            for who in Who::order(i) {
                tokio::time::sleep(kubelet_phase()).await;
                let name = format!("q{n}-{}-{i:03}", who.letter());
                let trial = self.start_trial(who, name, pods[i % pods.len()].clone(), self.plan.hold_secs).await;
                self.wait_running(std::slice::from_ref(&trial), Duration::from_secs(120)).await;
                trials.push(trial);
                self.quiesce(Duration::from_millis(100), Duration::from_secs(2)).await;
            }
        }
        let title = format!("sequential, N={n} on {} pods", pods.len());
        let result = self.window_end(window, key, title, &trials, &pods).await;
        self.delete_pods(&pods).await;
        result
    }

    /// Bursts of `size` at once on 10 pods, `rounds` of each kind, alternating.
    pub async fn bursts(&self, size: usize, rounds: usize) -> ScenarioResult {
        let key = format!("burst{size}");
        let pods = burst_pods(size);
        say!("{key}: {rounds} bursts of {size} on {} pods, each kind", pods.len());
        self.pods(&pods).await;
        let trials = self.rounds("b", size, rounds, |_, _, j| pods[j % pods.len()].clone()).await;
        let title = format!("bursts of {size} on {} pods, {rounds} of each", pods.len());
        let result = self.window_end(trials.0, key, title, &trials.1, &pods).await;
        self.delete_pods(&pods).await;
        result
    }

    /// `n` sessions at once on n/10 pods, then the floor's `n` (alternating over rounds).
    pub async fn at_once(&self, n: usize, rounds: usize) -> ScenarioResult {
        let key = format!("once{n}");
        let pods = once_pods(n);
        say!("{key}: {n} at once on {} pods, {rounds} round(s) of each kind", pods.len());
        self.pods(&pods).await;
        let trials = self.rounds("o", n, rounds, |_, _, j| pods[j % pods.len()].clone()).await;
        let title = format!("{n} at once on {} pods", pods.len());
        let result = self.window_end(trials.0, key, title, &trials.1, &pods).await;
        self.delete_pods(&pods).await;
        result
    }

    /// `k` sessions at once on one pod; each round and kind on a fresh pod.
    pub async fn hot(&self, k: usize, rounds: usize) -> ScenarioResult {
        let key = format!("hot{k}");
        let pod = |round: usize, who: Who| format!("h{round}-{}", who.letter());
        let pods: Vec<String> = (0..rounds).flat_map(|r| [pod(r, Who::Ephemera), pod(r, Who::Floor)]).collect();
        say!("{key}: {k} at once on one pod, {rounds} round(s) of each kind");
        self.pods(&pods).await;
        let trials = self.rounds("h", k, rounds, |r, who, _| pod(r, who)).await;
        let title = format!("hot pod: {k} at once on one pod, {rounds} round(s)");
        let result = self.window_end(trials.0, key, title, &trials.1, &pods).await;
        self.delete_pods(&pods).await;
        result
    }

    /// `rounds` of `size` trials at once per kind; `target(round, who, j)` is the j-th trial's pod.
    async fn rounds(
        &self,
        prefix: &str,
        size: usize,
        rounds: usize,
        target: impl Fn(usize, Who, usize) -> String,
    ) -> (WindowStart, Vec<Trial>) {
        let window = self.window_start().await;
        let mut trials = Vec::new();
        for round in 0..rounds {
            for who in Who::order(round) {
                // A burst's containers exit `hold` seconds after they start, with a wave of
                // kubelet and operator writes; no later burst may share the cluster with it.
                self.wait_exited(&trials, Duration::from_secs(self.plan.hold_secs + 300)).await;
                self.warm_clients(size).await;
                self.quiesce(Duration::from_millis(300), Duration::from_secs(10)).await;
                tokio::time::sleep(kubelet_phase()).await;
                let targets: Vec<(String, String)> = (0..size)
                    .map(|j| (format!("{prefix}{round}-{}-{j:03}", who.letter()), target(round, who, j)))
                    .collect();
                let mut burst = self.burst(who, &targets, self.plan.hold_secs).await;
                burst.iter_mut().for_each(|t| t.round = Some(round));
                self.wait_running(&burst, Duration::from_secs(300)).await;
                trials.extend(burst);
            }
        }
        (window, trials)
    }

    /// Requests per session against sessions per pod: `ks` at once on fresh
    /// pods, and sessions added one by one to one pod up to the largest k.
    pub async fn per_pod(&self, ks: &[usize]) -> PerPod {
        let most = ks.iter().copied().max().unwrap_or(1);
        let pods = per_pod_pods(ks);
        say!("perpod: k = {ks:?} at once on one pod each, then 1..={most} added one by one to one pod");
        self.pods(&pods).await;
        let mut at_once = Vec::new();
        for &k in ks {
            self.quiesce(Duration::from_millis(300), Duration::from_secs(10)).await;
            let pod = vec![format!("pk{k}")];
            let targets: Vec<(String, String)> = (0..k).map(|j| (format!("pk{k}-e-{j:03}"), pod[0].clone())).collect();
            let window = self.window_start().await;
            let trials = self.burst(Who::Ephemera, &targets, self.plan.hold_secs).await;
            self.wait_running(&trials, Duration::from_secs(300)).await;
            let result =
                self.window_end(window, format!("pk{k}"), format!("{k} at once on one pod"), &trials, &pod).await;
            at_once.push(PerPodPoint { k, sessions: k, operator: result.operator, pod_events: result.pod_events });
        }
        // Added one by one: each must still run when the last one comes.
        let hold = self.plan.hold_secs + 3 * most as u64;
        let pod = vec!["ps".to_string()];
        let mut added = Vec::new();
        let mut all = Vec::new();
        for k in 1..=most {
            self.quiesce(Duration::from_millis(500), Duration::from_secs(10)).await;
            let window = self.window_start().await;
            let trial = self.start_trial(Who::Ephemera, format!("ps-e-{k:03}"), pod[0].clone(), hold).await;
            self.wait_running(std::slice::from_ref(&trial), Duration::from_secs(120)).await;
            self.quiesce(Duration::from_millis(500), Duration::from_secs(10)).await;
            let operator = Counts::of(&self.operator_log.since(window.operator));
            let pod_events = self.timeline.with(|s| s.pod_events_between(&pod, window.at, Instant::now()));
            say!("  session {k} added to one pod: {} requests ({})", operator.requests(), operator.describe());
            added.push(PerPodPoint { k, sessions: 1, operator, pod_events });
            all.push(trial);
        }
        let finish = Duration::from_secs(hold + 180);
        self.timeline.wait(finish, |state| all.iter().all(|t| state.session_finished(&t.name))).await;
        self.delete_pods(&pods).await;
        PerPod { at_once, added }
    }

    /// Stops the operator and removes the namespace (unless kept).
    pub async fn finish(mut self, keep: bool) {
        self.sampler.abort();
        self.operator.kill();
        self.timeline.stop();
        for path in &self.kubeconfigs {
            let _ = std::fs::remove_file(path);
        }
        if !keep {
            self.bench.remove_namespace(NAMESPACE, false).await;
        }
    }
}

/// A random wait of up to a second before a trial. The kubelet notices a
/// started container when it next lists them (every second), and a trial that
/// starts right after the previous one was seen running would otherwise start
/// at the same point of that cycle every time: ephemera's trials (which wait
/// for the session's own status too) at another point than the floor's.
fn kubelet_phase() -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    Duration::from_millis(hasher.finish() % 1000)
}

fn pod_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// The pods of each scenario: about ten sessions of each kind per pod.
fn seq_pods(n: usize) -> Vec<String> {
    pod_names(&format!("q{n}"), n.div_ceil(10))
}

fn burst_pods(size: usize) -> Vec<String> {
    pod_names("b", size.clamp(1, 10))
}

fn once_pods(n: usize) -> Vec<String> {
    pod_names("o", n.div_ceil(10))
}

fn hot_pods(rounds: usize) -> Vec<String> {
    (0..rounds).flat_map(|r| [format!("h{r}-e"), format!("h{r}-f")]).collect()
}

fn per_pod_pods(ks: &[usize]) -> Vec<String> {
    ks.iter().map(|k| format!("pk{k}")).chain(["ps".to_string()]).collect()
}

fn result_of(trial: &Trial, state: &crate::timeline::State) -> TrialResult {
    let marks = state.marks(&trial.name);
    let since = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(trial.start).as_secs_f64() * 1000.0);
    TrialResult {
        who: trial.who,
        name: trial.name.clone(),
        pod: trial.pod.clone(),
        round: trial.round,
        in_spec_ms: since(marks.in_spec),
        running_ms: since(marks.running),
        session_running_ms: match trial.who {
            Who::Ephemera => since(state.session_phase(&trial.name, "Running")),
            Who::Floor => None,
        },
        error: trial.error.clone(),
    }
}

/// What `kubectl debug POD --image IMAGE --profile general -c NAME -- sleep HOLD`
/// sends: GET the pod, then one strategic-merge PATCH of
/// `pods/ephemeralcontainers` that adds the container (no resourceVersion).
async fn floor_debug(client: &Client, pod: &str, name: &str, hold: &str) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let current = pods.get(pod).await?;
    let target = current.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone());
    let container = EphemeralContainer {
        name: name.to_string(),
        image: Some(common::IMAGE.into()),
        image_pull_policy: Some("Never".into()),
        command: Some(vec!["sleep".into(), hold.into()]),
        stdin: Some(false),
        tty: Some(false),
        target_container_name: target,
        security_context: ephemera::debug_container::security_context(Profile::General),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };
    let patch = serde_json::json!({ "spec": { "ephemeralContainers": [container] } });
    pods.patch_ephemeral_containers(pod, &PatchParams::default(), &Patch::Strategic(patch)).await?;
    Ok(())
}
