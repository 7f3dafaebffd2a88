//! What each request on the way into the pod spec costs the API server and
//! etcd in CPU time: ephemera's (the user's create, the pod read, the claim,
//! the pod write) against the floor's (the pod read, the pod write).
//!
//! In a burst on this machine the requests wait for the API server's CPU (and
//! for the kubelet starting the containers already added), so the CPU each
//! container costs on its way is what a burst's create→in-spec ratio tends to
//! when that CPU is the only bottleneck. Each kind of request is sent `n`
//! times in a row by the bench's own client, with the body the operator (or
//! the floor) sends, built by the operator's own code; the CPU time the two
//! processes used meanwhile (from /proc, less their idle rate) is divided by
//! `n`. The kinds follow the order of a session's life; each round does them
//! all again on new sessions, and the median of the rounds is kept.

use std::time::{Duration, Instant};

use ephemera::controller::{FIELD_MANAGER, status_patch};
use ephemera::crd::{DebugSession, DebugSessionStatus};
use ephemera::ephemeral_api::{ApiShape, Availability, add_ephemeral_containers};
use ephemera::policy::ActiveSessions;
use ephemera::status::{self, Injection, NO_POLICY, Next, Observed, PodView};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus, EphemeralContainer, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::cluster::{Bench, session};
use crate::common;
use crate::requests::percentile;

pub const NAMESPACE: &str = "bench-cost";

/// The requests of a debug container's life, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RequestKind {
    SessionCreate,
    PodGet,
    Claim,
    PodPatch,
    RunningStatus,
    Event,
}

impl RequestKind {
    const ALL: [RequestKind; 6] = [
        RequestKind::SessionCreate,
        RequestKind::PodGet,
        RequestKind::Claim,
        RequestKind::PodPatch,
        RequestKind::RunningStatus,
        RequestKind::Event,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            RequestKind::SessionCreate => "DebugSession create (the user's)",
            RequestKind::PodGet => "pod GET",
            RequestKind::Claim => "claim: status apply guarded by resourceVersion",
            RequestKind::PodPatch => "pods/ephemeralcontainers strategic merge patch",
            RequestKind::RunningStatus => "status apply (Running)",
            RequestKind::Event => "Event create",
        }
    }
}

/// On the way into the pod spec: what `kubectl debug` sends.
pub const FLOOR_PATH: [RequestKind; 2] = [RequestKind::PodGet, RequestKind::PodPatch];
/// On the way into the pod spec: the user's create, then the operator's read, claim and write.
pub const EPHEMERA_PATH: [RequestKind; 4] =
    [RequestKind::SessionCreate, RequestKind::PodGet, RequestKind::Claim, RequestKind::PodPatch];

/// One kind's CPU per request, in ms: the median of the rounds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RequestCost {
    pub kind: RequestKind,
    pub apiserver_ms: f64,
    pub etcd_ms: f64,
    /// Time per request as the bench saw it, one after another.
    pub wall_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerCost {
    /// Requests of each kind per round.
    pub requests: usize,
    pub rounds: usize,
    /// CPU ms per second that the API server and etcd spend with nothing sent.
    pub idle_ms_per_s: (f64, f64),
    pub kinds: Vec<RequestCost>,
}

impl ServerCost {
    /// API server and etcd CPU ms of one request of `kind`.
    pub fn cpu_ms(&self, kind: RequestKind) -> f64 {
        self.kinds.iter().find(|c| c.kind == kind).map_or(0.0, |c| c.apiserver_ms + c.etcd_ms)
    }

    pub fn path_ms(&self, path: &[RequestKind]) -> f64 {
        path.iter().map(|&kind| self.cpu_ms(kind)).sum()
    }
}

fn component_pid(component: &str) -> u32 {
    let path = common::cluster_dir().join(format!("pids/{component}.pid"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.trim().parse().unwrap_or_else(|_| panic!("{} holds no pid", path.display()))
}

struct Servers {
    apiserver: u32,
    etcd: u32,
}

impl Servers {
    /// CPU ms each has used so far.
    fn cpu(&self) -> (f64, f64) {
        let ms = |pid| common::cpu_time(pid).as_secs_f64() * 1000.0;
        (ms(self.apiserver), ms(self.etcd))
    }
}

/// One target pod and the session that debugs it, carried through the kinds of a round.
struct Target {
    pod: Pod,
    session: DebugSession,
    container: Option<EphemeralContainer>,
}

pub async fn run(bench: &Bench, requests: usize, rounds: usize, keep: bool) -> ServerCost {
    say!("server cost: {rounds} round(s) of {requests} requests of each kind");
    bench.fresh_namespace(NAMESPACE).await;
    let client = bench.client.clone();
    let servers = Servers { apiserver: component_pid("kube-apiserver"), etcd: component_pid("etcd") };
    let pods = create_idle_pods(&client, requests).await;
    let idle = idle_rate(&servers, Duration::from_secs(3)).await;
    let mut samples: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); RequestKind::ALL.len()];
    for round in 0..rounds {
        let mut targets: Vec<Target> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| Target {
                pod: pod.clone(),
                session: session(&format!("cost-{round}-{i}"), pod.metadata.name.as_deref().unwrap(), &["sleep", "5"]),
                container: None,
            })
            .collect();
        for (k, &kind) in RequestKind::ALL.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (api0, etcd0) = servers.cpu();
            let started = Instant::now();
            for target in &mut targets {
                send(&client, kind, target).await;
            }
            let wall = started.elapsed().as_secs_f64();
            let (api1, etcd1) = servers.cpu();
            let per = |spent: f64, idle_per_s: f64| ((spent - idle_per_s * wall) / requests as f64).max(0.0);
            samples[k].push((per(api1 - api0, idle.0), per(etcd1 - etcd0, idle.1), wall * 1000.0 / requests as f64));
        }
    }
    let median = |values: Vec<f64>| percentile(&values, 0.5).unwrap_or(0.0);
    let kinds = RequestKind::ALL
        .iter()
        .zip(samples)
        .map(|(&kind, rounds)| RequestCost {
            kind,
            apiserver_ms: median(rounds.iter().map(|r| r.0).collect()),
            etcd_ms: median(rounds.iter().map(|r| r.1).collect()),
            wall_ms: median(rounds.iter().map(|r| r.2).collect()),
        })
        .collect();
    if !keep {
        bench.remove_namespace(NAMESPACE, false).await;
    }
    ServerCost { requests, rounds, idle_ms_per_s: idle, kinds }
}

/// Pods that no scheduler serves: they stay Pending, so no kubelet reacts to a
/// container added to them and adds its own requests to the figures.
async fn create_idle_pods(client: &Client, count: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": { "name": format!("cost-{i:04}") },
                    "spec": {
                        "schedulerName": "ephemera-bench-nobody",
                        "containers": [{ "name": "app", "image": common::IMAGE, "command": ["sleep", "3600"] }],
                    }
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await.expect("create pod")
            }
        })
        .buffered(16)
        .collect()
        .await
}

/// CPU ms per second the API server and etcd use while the bench sends nothing.
async fn idle_rate(servers: &Servers, over: Duration) -> (f64, f64) {
    let (api0, etcd0) = servers.cpu();
    tokio::time::sleep(over).await;
    let (api1, etcd1) = servers.cpu();
    let seconds = over.as_secs_f64();
    ((api1 - api0) / seconds, (etcd1 - etcd0) / seconds)
}

/// The operator's decision for `session` on `pod`, as its reconcile takes it.
/// The pod never runs; the decision is taken as for a running one.
fn decide(session: &DebugSession, pod: &Pod) -> status::Decision {
    let mut running = pod.clone();
    running.status.get_or_insert_default().phase = Some("Running".into());
    let available = Availability::Available(ApiShape::PodSubresource);
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let observed = Observed {
        pods: PodView::Named { name, pod: Some(&running) },
        availability: Some(&available),
        now: Timestamp::now(),
        policy: &NO_POLICY,
        active: ActiveSessions::default(),
    };
    status::decide(session, &observed)
}

/// Applies `new` as the operator does; with `guard`, only onto that resourceVersion (a claim).
async fn apply_status(
    client: &Client,
    session: &DebugSession,
    new: &DebugSessionStatus,
    guard: Option<&str>,
) -> DebugSession {
    let sessions: Api<DebugSession> = Api::namespaced(client.clone(), NAMESPACE);
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    sessions.patch_status(name, &params, &Patch::Apply(status_patch(new, guard))).await.expect("status apply")
}

/// Sends one request of `kind` for `target`, and keeps what the next kinds need.
async fn send(client: &Client, kind: RequestKind, target: &mut Target) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod_name = target.pod.metadata.name.clone().unwrap_or_default();
    match kind {
        RequestKind::SessionCreate => {
            let sessions: Api<DebugSession> = Api::namespaced(client.clone(), NAMESPACE);
            target.session = sessions.create(&PostParams::default(), &target.session).await.expect("create session");
        }
        RequestKind::PodGet => target.pod = pods.get(&pod_name).await.expect("get pod"),
        RequestKind::Claim => {
            let decision = decide(&target.session, &target.pod);
            let Next::Inject(injections) = decision.next else {
                panic!("the operator would not add a container to {pod_name}: {:?}", decision.status.message);
            };
            let [Injection { container, .. }] = &injections[..] else { panic!("one container per session") };
            target.container = Some((**container).clone());
            let guard = target.session.metadata.resource_version.clone();
            target.session = apply_status(client, &target.session, &decision.status, guard.as_deref()).await;
        }
        RequestKind::PodPatch => {
            let container = target.container.clone().expect("claimed first");
            target.pod = add_ephemeral_containers(client, ApiShape::PodSubresource, &target.pod, &[container])
                .await
                .expect("add the container");
        }
        RequestKind::RunningStatus => {
            let name = target.container.as_ref().map(|c| c.name.clone()).unwrap_or_default();
            let mut started = target.pod.clone();
            started.status.get_or_insert_default().ephemeral_container_statuses = Some(vec![ContainerStatus {
                name,
                image: common::IMAGE.into(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(Time(Timestamp::now())) }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
            let decision = decide(&target.session, &started);
            target.session = apply_status(client, &target.session, &decision.status, None).await;
        }
        RequestKind::Event => {
            let recorder = Recorder::new(client.clone(), Reporter::from("ephemera"));
            let event = Event {
                type_: EventType::Normal,
                reason: "Running".into(),
                note: Some(format!("debug container running in pod {pod_name}")),
                action: "Reconcile".into(),
                secondary: None,
            };
            recorder.publish(&event, &target.session.object_ref(&())).await.expect("publish event");
        }
    }
}
