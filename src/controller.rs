//! The reconcile shell around the pure steps: decide what to read from the
//! session ([`reads`]), read it, decide ([`status::decide`]), then carry the
//! decision out (claim, inject, publish status and events, delete).

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::core::Selector;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus::IntGauge;

use crate::crd::{DebugSession, DebugSessionStatus, FailureReason, Phase};
use crate::ephemeral_api::{ApiShape, Availability, AvailabilityCache, Refusal, classify_refusal};
use crate::events::EventQueue;
use crate::first_report::{Began, FirstReports};
use crate::index::{GuardedSession, TargetIndex};
use crate::injector::Injector;
use crate::metrics::Metrics;
use crate::own_writes::OwnWrites;
use crate::pod_watch;
use crate::pods::PodReader;
use crate::policy::{ActiveSessions, Policy};
use crate::reads::{PodReads, Reads, reads_for};
use crate::requester::{Requester, requester};
use crate::server::Health;
use crate::status::{self, Decision, Injection, Next, Observed, PodView};
use crate::target::Failure;
use crate::wakes::PodWakes;

/// Field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "ephemera";
/// How long a "not served" answer about ephemeral containers is believed.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(30);
/// How long one request may go without an answer before it is abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A reconcile that takes longer is abandoned (and retried): one hung request must not hold a session.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);
/// The server ends each watch after this long; a dead connection is noticed by then.
pub const WATCH_TIMEOUT_SECONDS: u32 = 50;
/// How often one reconcile reads again after its write met a pod that had changed.
const STALE_POD_RETRIES: u32 = 5;
/// Reconciles at once: bounds the connections and memory of a burst (a restart with many sessions).
const CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("DebugSession has no {0}")]
    MissingField(&'static str),
    #[error("DebugSession changed while it was being reconciled")]
    StaleSession,
    #[error("reconcile did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the pod kept changing under {0} writes in a row")]
    BusyPod(u32),
}

impl Error {
    /// Label of `ephemera_reconcile_errors_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) => format!("api_{}", status.code),
            Error::Kube(_) => "kube".into(),
            Error::MissingField(_) => "missing_field".into(),
            Error::StaleSession => "stale_session".into(),
            Error::Timeout(_) => "timeout".into(),
            Error::BusyPod(_) => "busy_pod".into(),
        }
    }
}

/// Per-session exponential backoff after errors: 0.25 s doubling up to 5 minutes.
#[derive(Default)]
struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    fn next(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let count = failures.entry(uid.to_string()).or_default();
        *count = count.saturating_add(1);
        let base = Duration::from_millis(250).saturating_mul(1 << (*count - 1).min(11)).min(Duration::from_secs(300));
        // Up to 10 % jitter, so that sessions that failed together do not retry together.
        let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs()) % 100;
        base + base.mul_f64(jitter as f64 / 1000.0)
    }

    fn reset(&self, uid: &str) {
        self.failures.lock().expect("backoff lock").remove(uid);
    }

    fn len(&self) -> usize {
        self.failures.lock().expect("backoff lock").len()
    }
}

/// Counts one thing under way on a gauge, for as long as it lives.
struct InFlight(IntGauge);

impl InFlight {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Context {
    pub client: Client,
    pub policy: Policy,
    /// Every session, as the watch knows them (to count active ones for the policy).
    pub sessions: Store<GuardedSession>,
    pub metrics: Arc<Metrics>,
    pub availability: Arc<AvailabilityCache>,
    pub index: TargetIndex,
    pub pods: PodReader,
    pub wakes: PodWakes,
    own: OwnWrites,
    first_reports: FirstReports,
    injector: Injector,
    backoff: Backoffs,
    /// (uid, error) of undecodable sessions already reported, so each is reported once.
    undecodable: Mutex<HashSet<(String, String)>>,
    events: EventQueue,
}

impl Context {
    /// `session` as its reconcile sees it: with our own status writes, even
    /// before their echo, and the record of the pod that a status held back for
    /// the kubelet's first word keeps. (A record is held only for an unfinished
    /// session, and [`reads_for`] asks whether the status is our own only of
    /// finished ones.)
    fn as_reconciled(&self, session: &DebugSession) -> DebugSession {
        let mut view = self.own.caught_up(session).unwrap_or_else(|| session.clone());
        self.first_reports.hold_record(&mut view);
        view
    }

    pub fn new(client: Client, metrics: Arc<Metrics>, policy: Policy, sessions: Store<GuardedSession>) -> Arc<Self> {
        Arc::new(Self {
            policy,
            sessions,
            availability: AvailabilityCache::new(client.clone(), RETRY_UNAVAILABLE),
            index: TargetIndex::default(),
            pods: PodReader::default(),
            wakes: PodWakes::default(),
            own: OwnWrites::default(),
            first_reports: FirstReports::default(),
            injector: Injector::new(client.clone(), metrics.clone()),
            backoff: Backoffs::default(),
            undecodable: Mutex::default(),
            events: EventQueue::start(client.clone(), metrics.events_queued.clone()),
            client,
            metrics,
        })
    }

    /// No unfinished session listens to the pod any more: nothing of it is kept.
    /// The sessions a change of `pod` wakes: those that listen to it and for
    /// which it changed something; the others are counted and left asleep.
    fn woken_by(&self, pod: &Pod) -> Vec<ObjectRef<GuardedSession>> {
        let meta = &pod.metadata;
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            return Vec::new();
        };
        self.metrics.listening_sessions.set(self.index.len() as i64);
        let listening = self.index.sessions_for(namespace, name, meta.labels.as_ref());
        if listening.is_empty() {
            self.release_pod(namespace, name);
            return Vec::new();
        }
        self.pods.saw(namespace, name, meta.resource_version.as_deref());
        let as_reconciled = |listener: &ObjectRef<GuardedSession>| {
            let object = self.sessions.get(listener)?;
            Some(self.as_reconciled(object.0.as_ref().ok()?))
        };
        let wakes = self.wakes.wake(pod, listening, as_reconciled);
        let counted = |outcome: &str, n: usize| {
            self.metrics.pod_event_wakes.with_label_values(&[outcome]).inc_by(n as u64);
        };
        // What woke them may be the kubelet's word on a held status.
        for woken in &wakes.woken {
            if let Some(uid) = self.sessions.get(woken).and_then(|s| s.0.as_ref().ok()?.metadata.uid.clone()) {
                self.first_reports.news(&uid);
            }
        }
        counted("woken", wakes.woken.len());
        counted("unchanged", wakes.unchanged);
        wakes.woken
    }

    fn release_pod(&self, namespace: &str, name: &str) {
        self.pods.forget(namespace, name);
        self.wakes.forget(namespace, name);
    }
}

/// Fails unless the DebugSession CRD is served, with what to do about it.
pub async fn check_crd_served(client: &Client, namespace: Option<&str>) -> Result<(), String> {
    let sessions: Api<PartialObjectMeta<DebugSession>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match sessions.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(format!(
            "the API server does not serve {}/{} debugsessions: install the CRD first (`ephemera crd | kubectl apply --server-side -f -`, or `ephemera crd --kubernetes-version X.Y` for clusters older than 1.28)",
            DebugSession::group(&()),
            DebugSession::version(&())
        )),
        Err(error) => Err(format!("cannot list DebugSessions: {error}")),
    }
}

/// Logs each distinct watch error once (at warn), never a response body.
#[derive(Default)]
struct WatchErrors {
    seen: Mutex<HashSet<String>>,
}

impl WatchErrors {
    fn report(&self, stream: &str, error: &dyn std::fmt::Display) {
        let mut text = error.to_string();
        if text.len() > 300 {
            let mut end = 300;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        let mut seen = self.seen.lock().expect("watch errors lock");
        if seen.len() < 1000 && seen.insert(format!("{stream}: {text}")) {
            tracing::warn!(stream, error = %text, "watch failed; retrying with backoff (each distinct error is logged once)");
        }
    }
}

/// How watches back off after an error: quickly, so that work resumes within
/// seconds of an API server coming back (kube's default waits up to 30 s; at
/// 4 s a watch could still wait 4.8 s after the server was back, and then
/// list), yet never more often than every 2 s while it stays away. A watch that the
/// server ended with 410 Expired lists again at once: the server answered,
/// only its history moved on (as after a restart), and waiting a step there
/// would delay new work by seconds more.
#[derive(Default)]
struct WatchBackoff {
    failures: u32,
    /// Set when the last error was 410 Expired.
    expired: Arc<AtomicBool>,
    /// The previous delay was skipped for an expiry: the next one is not.
    skipped: bool,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.expired.swap(false, Ordering::Relaxed) && !self.skipped {
            self.skipped = true;
            return Some(Duration::ZERO);
        }
        self.skipped = false;
        let base = Duration::from_millis(250).saturating_mul(1 << self.failures.min(3)).min(Duration::from_secs(2));
        self.failures = self.failures.saturating_add(1);
        // Up to 20 % jitter, so that both watches do not retry in step.
        let jitter = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs()) % 200;
        Some(base + base.mul_f64(jitter as f64 / 1000.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
        self.skipped = false;
    }
}

/// `watch` with [`WatchBackoff`].
fn backed_off<K>(
    watch: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send {
    let backoff = WatchBackoff::default();
    let expired = backoff.expired.clone();
    watch
        .inspect(move |event| {
            if let Err(watcher::Error::WatchError(status)) = event
                && status.code == 410
            {
                expired.store(true, Ordering::Relaxed);
            }
        })
        .backoff(ResetTimerBackoff::new(backoff, Duration::from_secs(30)))
}

/// What a watch yields to the Controller: its objects, and never its errors.
/// They were reported above and each watch retries on its own backoff (within
/// 2 s); passed on, they would also charge the Controller's trigger backoff
/// (up to 30 s, reset only after 2 quiet minutes), which stops both watches
/// at once: after an API server restart no event would arrive for half a
/// minute or more, while the server is long back.
fn only_objects<K, E>(item: Result<K, E>) -> future::Ready<Option<Result<K, E>>> {
    future::ready(item.ok().map(Ok))
}

/// Logs how long each (re)list of a watch took and how many objects it
/// held: a slow `/readyz` then says which list it waited for.
struct ListLog {
    resource: &'static str,
    started: std::time::Instant,
    objects: usize,
}

impl ListLog {
    fn new(resource: &'static str) -> Self {
        ListLog { resource, started: std::time::Instant::now(), objects: 0 }
    }

    fn observe<K>(&mut self, event: &Result<watcher::Event<K>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Init) => (self.started, self.objects) = (std::time::Instant::now(), 0),
            Ok(watcher::Event::InitApply(_)) => self.objects += 1,
            Ok(watcher::Event::InitDone) => tracing::info!(
                resource = self.resource,
                objects = self.objects,
                seconds = format_args!("{:.3}", self.started.elapsed().as_secs_f64()),
                "listed"
            ),
            _ => {}
        }
    }
}

/// Runs the controller until a termination signal arrives. `watch_client`
/// serves the long-lived watches, `client` every other request.
pub async fn run(
    client: Client,
    watch_client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    policy: Policy,
) {
    let (sessions, pods): (Api<GuardedSession>, Api<Pod>) = match &namespace {
        Some(ns) => (Api::namespaced(watch_client.clone(), ns), Api::namespaced(watch_client.clone(), ns)),
        None => (Api::all(watch_client.clone()), Api::all(watch_client)),
    };
    let errors = Arc::new(WatchErrors::default());
    let (reader, writer) = reflector::store::<GuardedSession>();
    let ctx = Context::new(client, metrics.clone(), policy, reader.clone());
    sample_records(&metrics, &ctx, reader.clone());
    let session_events = session_events(&ctx, sessions, writer, reader.clone(), health.clone(), errors.clone());
    // No cache of pods: a pod event is mapped to the sessions that still care
    // about the pod, and the pod kept for them if it is (see PodReader), then
    // dropped. The watch starts from the pods' version as of now, taken before
    // any reconcile reads a pod, so that no change after those reads is missed.
    let mut retries = WatchBackoff::default();
    let pods_from = loop {
        match pod_watch::current_version(&pods).await {
            Ok(version) => break version,
            Err(error) => {
                errors.report("pods", &error);
                tokio::time::sleep(retries.next().unwrap_or(Duration::from_secs(2))).await;
            }
        }
    };
    tracing::info!(resource = "pods", resource_version = %pods_from, "watching pod changes from now on (nothing to list)");
    health.pods_synced.store(true, Ordering::Relaxed);
    let (resync, resyncs) = tokio::sync::mpsc::unbounded_channel::<()>();
    let pod_events = pod_events(&ctx, pods, pods_from, resync, errors);
    let listening_sessions = {
        let index_ctx = ctx.clone();
        futures::stream::unfold(resyncs, |mut resyncs| async move { resyncs.recv().await.map(|()| ((), resyncs)) })
            .flat_map(move |()| {
                let listening = index_ctx.index.listening();
                index_ctx.first_reports.news_for_all();
                tracing::info!(
                    sessions = listening.len(),
                    "the pod watch started again from now; waking every session that listens to pods"
                );
                futures::stream::iter(listening)
            })
    };
    let mapper_ctx = ctx.clone();
    Controller::for_stream(session_events, reader)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(listening_sessions)
        .watches_stream(pod_events, move |pod: Pod| mapper_ctx.woken_by(&pod))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(error) = result {
                match error {
                    controller::Error::ObjectNotFound(_) => {}
                    other => tracing::debug!(error = %other, "reconcile loop"),
                }
            }
            future::ready(())
        })
        .await;
}

/// The sizes of what the operator keeps per session, sampled for /metrics.
fn sample_records(metrics: &Metrics, ctx: &Arc<Context>, store: Store<GuardedSession>) {
    let sampled = Arc::downgrade(ctx);
    metrics.sample_with(move |metrics| {
        let Some(ctx) = sampled.upgrade() else { return };
        metrics.listening_sessions.set(ctx.index.len() as i64);
        metrics.pods_cached.set(ctx.pods.len() as i64);
        metrics.sessions_known.set(store.state().len() as i64);
        let records = |kind: &str, len: usize| metrics.session_records.with_label_values(&[kind]).set(len as i64);
        records("own_writes", ctx.own.len());
        records("first_reports", ctx.first_reports.len());
        records("pod_writes", ctx.injector.len());
        records("backoffs", ctx.backoff.len());
        records("pod_wakes", ctx.wakes.len());
        records("undecodable", ctx.undecodable.lock().expect("undecodable lock").len());
    });
}

/// The sessions to reconcile, from their watch: kept in the store, indexed by
/// the pods they listen to, and without the echoes of our own status writes.
fn session_events(
    ctx: &Arc<Context>,
    sessions: Api<GuardedSession>,
    writer: reflector::store::Writer<GuardedSession>,
    reader: Store<GuardedSession>,
    health: Arc<Health>,
    errors: Arc<WatchErrors>,
) -> impl Stream<Item = Result<GuardedSession, watcher::Error>> + Send + 'static {
    let config = watcher::Config::default().any_semantic().timeout(WATCH_TIMEOUT_SECONDS);
    let (index_ctx, filter_ctx) = (ctx.clone(), ctx.clone());
    let mut listing = ListLog::new("debugsessions");
    backed_off(watcher(sessions, config))
        // Nothing reads who wrote which field, and it is a quarter of a session.
        .modify(|session| session.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |event| listing.observe(event))
        .inspect(move |event| match event {
            // No session listens to the pod's changes any more: its copy goes now.
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                if let Some((namespace, name)) = index_ctx.index.apply(object) {
                    index_ctx.release_pod(&namespace, &name);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                if let Some((namespace, name)) = index_ctx.index.remove(object) {
                    index_ctx.release_pod(&namespace, &name);
                }
                if let Some(uid) = object.meta().uid.as_deref() {
                    index_ctx.own.forget(uid);
                    index_ctx.first_reports.forget(uid);
                    index_ctx.backoff.reset(uid);
                }
            }
            Ok(watcher::Event::InitDone) => {
                index_ctx.index.rebuild(reader.state().iter().map(|o| o.as_ref()));
                health.sessions_synced.store(true, Ordering::Relaxed);
            }
            Ok(watcher::Event::Init) => {}
            Err(error) => errors.report("debugsessions", error),
        })
        .applied_objects()
        // The echo of our own status write brings nothing new.
        .try_filter(move |object| {
            future::ready(object.0.as_ref().map_or(true, |session| !filter_ctx.own.is_echo(session)))
        })
        .filter_map(only_objects)
}

/// Pod changes from `pods_from` on, kept for the sessions that listen to the
/// pod; `resync` hears when the watch's history expired.
fn pod_events(
    ctx: &Arc<Context>,
    pods: Api<Pod>,
    pods_from: String,
    resync: tokio::sync::mpsc::UnboundedSender<()>,
    errors: Arc<WatchErrors>,
) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
    let pods_ctx = ctx.clone();
    backed_off(pod_watch::changes_since(pods, pods_from, WATCH_TIMEOUT_SECONDS))
        // A kept copy needs no record of who wrote which field, and it is copied for every change.
        .modify(|pod| pod.managed_fields_mut().clear())
        .inspect(move |event| match event {
            // The pod watch's history expired: what changed meanwhile is unknown,
            // so no copy of a pod is trusted and every listening session looks again.
            Ok(watcher::Event::InitDone) => {
                pods_ctx.pods.forget_all();
                pods_ctx.wakes.forget_all();
                let _ = resync.send(());
            }
            Ok(watcher::Event::Apply(pod)) => pods_ctx.pods.watched(pod),
            Ok(watcher::Event::Delete(pod)) => {
                pods_ctx.pods.deleted(pod);
                // Its last version may look like the one before: every listener hears of the deletion.
                if let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
                    pods_ctx.wakes.forget(namespace, name);
                }
            }
            Err(error) => errors.report("pods", error),
            Ok(_) => {}
        })
        .touched_objects()
        .filter_map(only_objects)
}

async fn reconcile(object: Arc<GuardedSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _in_flight = InFlight::new(&ctx.metrics.reconciles_in_flight);
    let _timer = ctx.metrics.reconcile_duration.with_label_values(&[] as &[&str]).start_timer();
    ctx.metrics.reconciliations.inc();
    let session = match &object.0 {
        Ok(session) => session,
        Err(invalid) => return report_undecodable(&ctx, invalid).await,
    };
    let uid = session.metadata.uid.clone().unwrap_or_default();
    let action = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_session(session, &ctx))
        .await
        .map_err(|_| Error::Timeout(RECONCILE_TIMEOUT))??;
    ctx.backoff.reset(&uid);
    Ok(action)
}

/// What was read for one reconcile.
struct Inputs {
    pods: Option<Vec<Pod>>,
    named: Option<String>,
    availability: Option<Availability>,
}

impl Inputs {
    /// Puts a pod as a write returned it in place of the one read before.
    fn replace_pod(&mut self, updated: Pod) {
        let pods = self.pods.get_or_insert_default();
        match pods.iter_mut().find(|p| p.metadata.name == updated.metadata.name) {
            Some(pod) => *pod = updated,
            None => pods.push(updated),
        }
    }

    fn observed<'a>(&'a self, now: Timestamp, ctx: &'a Context, active: ActiveSessions) -> Observed<'a> {
        let pods = match (&self.named, &self.pods) {
            (Some(name), Some(pods)) => PodView::Named { name, pod: pods.first() },
            (None, Some(pods)) => PodView::Selected(pods),
            (_, None) => PodView::NotRead,
        };
        Observed { pods, availability: self.availability.as_ref(), now, policy: &ctx.policy, active }
    }
}

/// Whether `requester` may add an ephemeral container to the pod by hand
/// (a SubjectAccessReview): `Some` failure when not.
async fn check_requester(
    ctx: &Context,
    requester: &Requester,
    namespace: &str,
    pod: &str,
) -> Result<Option<Failure>, Error> {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(requester.username.clone()),
            uid: requester.uid.clone(),
            groups: Some(requester.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some("patch".into()),
                resource: Some("pods".into()),
                subresource: Some("ephemeralcontainers".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    ctx.metrics.request("create", "subjectaccessreviews");
    let reviews: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let answer = reviews.create(&kube::api::PostParams::default(), &review).await?;
    let status = answer.status.unwrap_or_default();
    if status.allowed {
        return Ok(None);
    }
    let why = status.reason.filter(|r| !r.is_empty()).map(|r| format!(" ({r})")).unwrap_or_default();
    Ok(Some(Failure::new(
        FailureReason::Forbidden,
        format!(
            "{} may not patch pods/ephemeralcontainers of pod {pod} in namespace {namespace}{why}; checked when the container was to be added, and a DebugSession can only do what its requester may do",
            requester.username
        ),
    )))
}

/// Reads what `reads` asks; `fresh` skips the shared pod read (a write just found it stale).
async fn read(ctx: &Context, pods: &Api<Pod>, reads: &Reads, fresh: bool) -> Result<Inputs, Error> {
    let availability = if reads.availability {
        let cached = ctx.availability.get().await?;
        Some(cached)
    } else {
        None
    };
    let (named, pods) = match &reads.pods {
        PodReads::None => (None, None),
        PodReads::Named(name) => {
            let namespace = pods.namespace().unwrap_or_default().to_string();
            let pod = ctx.pods.read(pods, &namespace, name, &ctx.metrics, fresh).await?;
            (Some(name.clone()), Some(pod.into_iter().collect()))
        }
        PodReads::Selected(selector) => {
            ctx.metrics.request("list", "pods");
            let selector = Selector::try_from(selector.clone()).map_err(|_| Error::MissingField("a valid selector"))?;
            (None, Some(pods.list(&ListParams::default().labels_from(&selector)).await?.items))
        }
    };
    Ok(Inputs { pods, named, availability })
}

/// One reconcile of one session: what it has read, and what it has done so far.
struct SessionReconcile<'a> {
    ctx: &'a Context,
    namespace: String,
    sessions: Api<DebugSession>,
    pods: Api<Pod>,
    now: Timestamp,
    began: Began,
    active: ActiveSessions,
    /// The session as this reconcile last wrote (or found) it.
    current: DebugSession,
    inputs: Inputs,
    /// The events of this reconcile's claim, once it is written: they wait for the pod writes.
    claim_events: Option<ClaimEvents<'a>>,
    stale_pods: u32,
    looked_again: bool,
}

/// After one step of a decision: decide on from here, or end the reconcile.
type Step = ControlFlow<Action, Decision>;

/// What the API server said to adding one container.
enum AddAnswer {
    Added,
    /// The pod changed under the write: read it again and decide again.
    Stale,
    Refused(Failure),
}

async fn reconcile_session(session: &DebugSession, ctx: &Context) -> Result<Action, Error> {
    let namespace = session.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let now = Timestamp::now();
    let current = ctx.as_reconciled(session);
    // A status held back for the kubelet's first word, with no news since: nothing to read.
    let began = match ctx.first_reports.quiet_recheck(&current) {
        Ok(left) => return Ok(Action::requeue(left)),
        Err(began) => began,
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let inputs = read(ctx, &pods, &reads_for(&current, ctx.own.status_is_own(&current)), false).await?;
    let all = ctx.sessions.state();
    let active = ActiveSessions::among(&current, all.iter().filter_map(|o| o.0.as_ref().ok()));
    let mut run = SessionReconcile {
        ctx,
        sessions: Api::namespaced(ctx.client.clone(), &namespace),
        namespace,
        pods,
        now,
        began,
        active,
        current,
        inputs,
        claim_events: None,
        stale_pods: 0,
        looked_again: false,
    };
    let mut decision = run.decide(None);
    loop {
        let step = match decision.next {
            Next::Wait => run.publish(decision.status).await?,
            Next::Capture(captures) => run.capture(&captures, decision.status).await?,
            Next::Delete => run.delete().await?,
            Next::LookAgain => run.look_again(decision.status).await?,
            Next::Inject(injections) => run.inject(injections, decision.status).await?,
        };
        match step {
            ControlFlow::Continue(next) => decision = next,
            ControlFlow::Break(action) => return Ok(action),
        }
    }
}

impl SessionReconcile<'_> {
    fn observed(&self) -> Observed<'_> {
        self.inputs.observed(self.now, self.ctx, self.active)
    }

    /// Decides from what was read, for the session as it stands or with `status` in place of its own.
    fn decide(&self, status: Option<DebugSessionStatus>) -> Decision {
        match status {
            None => status::decide(&self.current, &self.observed()),
            Some(status) => {
                let view = DebugSession { status: Some(status), ..self.current.clone() };
                status::decide(&view, &self.observed())
            }
        }
    }

    /// The attempt fails with `failure`; `status` is what stood before.
    fn refused(&self, status: &DebugSessionStatus, failure: Failure) -> Step {
        ControlFlow::Continue(status::refused(&self.current, status, failure, &self.observed()))
    }

    /// Writes `status` if it is news, and ends the reconcile.
    async fn publish(&mut self, status: DebugSessionStatus) -> Result<Step, Error> {
        let ctx = self.ctx;
        let due = status::requeue_after(&self.current, &status, self.now);
        if let Some(left) = ctx.first_reports.wait_left(&self.current, &status, due, self.began) {
            // The claim stands as the status until the kubelet starts the
            // container, reports a problem, or the wait ends: then one write.
            return Ok(ControlFlow::Break(Action::requeue(left)));
        }
        // The kubelet only creating what is already written as Injected goes out with the next change.
        let routine =
            self.current.status.as_ref().is_some_and(|published| status::only_routine_news(published, &status));
        if !routine {
            let events_since = self.claim_events.take().map(ClaimEvents::into_before);
            publish_status(ctx, &self.sessions, &self.current, &status, false, events_since).await?;
        }
        Ok(ControlFlow::Break(due.map_or_else(Action::await_change, Action::requeue)))
    }

    /// Keeps the output of finished containers, then records it in `status`.
    async fn capture(&self, captures: &[status::Capture], mut status: DebugSessionStatus) -> Result<Step, Error> {
        for capture in captures {
            let output = capture_output(self.ctx, &self.pods, &self.current, capture).await?;
            status::record_output(&mut status, capture, output);
        }
        Ok(ControlFlow::Continue(Decision { status, next: Next::Wait }))
    }

    /// Deletes the finished session, but only the version that was judged finished.
    async fn delete(&self) -> Result<Step, Error> {
        let name = self.current.name_any();
        tracing::info!(session = %name, namespace = %self.namespace, "deleting finished DebugSession after ttlSecondsAfterFinished");
        self.ctx.metrics.request("delete", "debugsessions");
        // A renew in between wins.
        let preconditions = Preconditions {
            uid: self.current.metadata.uid.clone(),
            resource_version: self.current.metadata.resource_version.clone(),
        };
        let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::background() };
        match self.sessions.delete(&name, &params).await {
            Ok(_) => Ok(ControlFlow::Break(Action::await_change())),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::StaleSession),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(ControlFlow::Break(Action::await_change())),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes the corrected `status`, then reads and decides once more (once per reconcile).
    async fn look_again(&mut self, status: DebugSessionStatus) -> Result<Step, Error> {
        let version = publish_status(self.ctx, &self.sessions, &self.current, &status, false, None).await?;
        if self.looked_again {
            return Ok(ControlFlow::Break(Action::requeue(Duration::from_secs(1))));
        }
        self.looked_again = true;
        self.current.metadata.resource_version = version;
        self.current.status = Some(status);
        self.inputs = read(self.ctx, &self.pods, &reads_for(&self.current, true), false).await?;
        Ok(ControlFlow::Continue(self.decide(None)))
    }

    /// Adds the planned containers: only where whoever asked may do it by hand,
    /// and only after the claim.
    async fn inject(&mut self, injections: Vec<Injection>, mut status: DebugSessionStatus) -> Result<Step, Error> {
        let fan_out = !status.targets.is_empty();
        let allowed = match self.allowed(injections, &mut status, fan_out).await? {
            Err(failure) => return Ok(self.refused(&status, failure)),
            Ok(allowed) if allowed.is_empty() => {
                // Every pod refused: the rows say so.
                let mut decision = self.decide(Some(status));
                if matches!(decision.next, Next::Inject(_)) {
                    decision.next = Next::Wait;
                }
                return Ok(ControlFlow::Continue(decision));
            }
            Ok(allowed) => allowed,
        };
        if let Some(action) = self.claim(&status).await? {
            return Ok(ControlFlow::Break(action));
        }
        self.add_all(&allowed, status, fan_out).await
    }

    /// The injections whose requester may add the container to the pod now. A
    /// refused pod becomes a failed row of `status` when there are many (`fan_out`);
    /// the one pod refused is the session's failure.
    async fn allowed(
        &self,
        injections: Vec<Injection>,
        status: &mut DebugSessionStatus,
        fan_out: bool,
    ) -> Result<Result<Vec<Injection>, Failure>, Error> {
        let Some(who) = requester(&self.current) else { return Ok(Ok(injections)) };
        let mut allowed = Vec::new();
        for injection in injections {
            let pod_name = injection.pod.metadata.name.clone().unwrap_or_default();
            match check_requester(self.ctx, &who, &self.namespace, &pod_name).await? {
                None => allowed.push(injection),
                Some(failure) if fan_out => status::refuse_target(status, &pod_name, failure),
                Some(failure) => return Ok(Err(failure)),
            }
        }
        Ok(Ok(allowed))
    }

    /// Writes `claim` as the status, only if the session is unchanged since it was
    /// read: a deleted session, or one another operator claimed, gets nothing.
    /// A retry of this reconcile's own claim (the pod changed under the write)
    /// is the same attempt, already fenced. `Some`: the session is gone.
    async fn claim(&mut self, claim: &DebugSessionStatus) -> Result<Option<Action>, Error> {
        let claim_stands = self.claim_events.is_some() && self.current.status.as_ref() == Some(claim);
        if !claim_stands {
            match publish_status(self.ctx, &self.sessions, &self.current, claim, true, None).await {
                Ok(version) => self.current.metadata.resource_version = version,
                Err(Error::Kube(kube::Error::Api(status))) if status.code == 409 => return Err(Error::StaleSession),
                Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => {
                    return Ok(Some(Action::await_change()));
                }
                Err(error) => return Err(error),
            }
        }
        if self.claim_events.is_none() {
            self.claim_events = Some(ClaimEvents {
                ctx: self.ctx,
                session: DebugSession { status: Some(claim.clone()), ..self.current.clone() },
                before: self.current.status.clone().unwrap_or_default(),
            });
        }
        self.current.status = Some(claim.clone());
        Ok(None)
    }

    /// Adds each container to its pod, then decides again from the pods as the
    /// writes left them, with refused pods standing failed in `claim`.
    async fn add_all(
        &mut self,
        injections: &[Injection],
        mut claim: DebugSessionStatus,
        fan_out: bool,
    ) -> Result<Step, Error> {
        let shape = match &self.inputs.availability {
            Some(Availability::Available(shape)) => *shape,
            _ => unreachable!("a container is only planned where ephemeral containers are served"),
        };
        let mut stale = false;
        for injection in injections {
            match self.add(shape, injection).await? {
                AddAnswer::Added => {}
                AddAnswer::Stale => stale = true,
                AddAnswer::Refused(failure) if fan_out => {
                    let pod_name = injection.pod.metadata.name.as_deref().unwrap_or_default();
                    status::refuse_target(&mut claim, pod_name, failure);
                }
                AddAnswer::Refused(failure) => return Ok(self.refused(&claim, failure)),
            }
        }
        if stale {
            if self.stale_pods >= STALE_POD_RETRIES {
                return Err(Error::BusyPod(self.stale_pods));
            }
            self.stale_pods += 1;
            self.ctx.metrics.injections.with_label_values(&["stale"]).inc();
            tracing::debug!(session = %self.current.name_any(), stale_pods = self.stale_pods, "a pod changed under the write; deciding again");
            self.inputs = read(self.ctx, &self.pods, &reads_for(&self.current, true), true).await?;
        }
        Ok(ControlFlow::Continue(self.decide(Some(claim))))
    }

    /// Adds one container, and judges the API server's answer.
    async fn add(&mut self, shape: ApiShape, injection: &Injection) -> Result<AddAnswer, Error> {
        let ctx = self.ctx;
        let refusal = match ctx.injector.add(shape, &injection.pod, &injection.container).await {
            Ok(updated) => {
                ctx.metrics.injections.with_label_values(&["injected"]).inc();
                if let Some(uid) = &self.current.metadata.uid {
                    let node = injection.pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
                    ctx.first_reports.injected(uid, node);
                }
                self.inputs.replace_pod(ctx.pods.wrote(updated).await);
                return Ok(AddAnswer::Added);
            }
            Err(kube::Error::Api(refusal)) => refusal,
            Err(error) => {
                ctx.metrics.injections.with_label_values(&["error"]).inc();
                return Err(error.into());
            }
        };
        match classify_refusal(&refusal) {
            // A refusal that a fresh read does not explain is no staleness:
            // report it instead of asking again and again.
            Refusal::StalePod if !(refusal.code == 422 && self.stale_pods >= 2) => Ok(AddAnswer::Stale),
            Refusal::StalePod => Ok(AddAnswer::Refused(Failure::new(
                FailureReason::Invalid,
                format!(
                    "the API server refused the debug container again on a fresh read of the pod: {}",
                    refusal.message
                ),
            ))),
            Refusal::Unavailable(advice) => {
                ctx.metrics.injections.with_label_values(&["unavailable"]).inc();
                ctx.availability.refused(advice.clone()).await;
                self.inputs.availability = Some(Availability::Unavailable(advice.clone()));
                Ok(AddAnswer::Refused(Failure::new(FailureReason::EphemeralContainersUnavailable, advice)))
            }
            Refusal::Other => match failure_of_write(&refusal) {
                Some(failure) => {
                    ctx.metrics.injections.with_label_values(&[failure.reason.as_str()]).inc();
                    Ok(AddAnswer::Refused(failure))
                }
                None => {
                    ctx.metrics.injections.with_label_values(&["error"]).inc();
                    Err(kube::Error::Api(refusal).into())
                }
            },
        }
    }
}

/// Reads up to `max_bytes` of a debug container's log and keeps it in the
/// ConfigMap `config_map`, owned by the session (so it goes with the session,
/// not with the pod). Text stays text; other bytes go to `binaryData`. Returns
/// the ConfigMap's name; one that exists already (a crash after creating it)
/// is taken as it is.
async fn capture_output(
    ctx: &Context,
    pods: &Api<Pod>,
    session: &DebugSession,
    capture: &status::Capture,
) -> Result<String, Error> {
    let status::Capture { pod, container, config_map, max_bytes } = capture;
    let (pod, container, config_map, max_bytes) = (pod.as_str(), container.as_str(), config_map.as_str(), *max_bytes);
    use futures::AsyncReadExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    let params = kube::api::LogParams {
        container: Some(container.to_string()),
        limit_bytes: Some(i64::from(max_bytes) + 1),
        ..Default::default()
    };
    ctx.metrics.request("get", "pods/log");
    let mut log = Vec::new();
    pods.log_stream(pod, &params)
        .await?
        .read_to_end(&mut log)
        .await
        .map_err(|e| Error::Kube(kube::Error::ReadEvents(e)))?;
    let truncated = log.len() > max_bytes as usize;
    log.truncate(max_bytes as usize);
    // A cut in the middle of a character leaves text text.
    if truncated
        && let Err(error) = std::str::from_utf8(&log)
        && error.error_len().is_none()
    {
        log.truncate(error.valid_up_to());
    }
    let (data, binary_data) = match String::from_utf8(log) {
        Ok(text) => (Some([("output".to_string(), text)].into()), None),
        // Not text: kept byte for byte.
        Err(bytes) => (None, Some([("output".to_string(), k8s_openapi::ByteString(bytes.into_bytes()))].into())),
    };
    let name = session.name_any();
    let object = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(config_map.to_string()),
            labels: Some([("ephemera.dev/session".to_string(), name.chars().take(63).collect())].into()),
            annotations: Some(
                [
                    ("ephemera.dev/pod".to_string(), pod.to_string()),
                    ("ephemera.dev/container".to_string(), container.to_string()),
                    ("ephemera.dev/truncated".to_string(), truncated.to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: DebugSession::api_version(&()).into(),
                kind: DebugSession::kind(&()).into(),
                name: name.clone(),
                uid: session.metadata.uid.clone().unwrap_or_default(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        data,
        binary_data,
        ..Default::default()
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), pods.namespace().unwrap_or_default());
    ctx.metrics.request("create", "configmaps");
    match config_maps.create(&kube::api::PostParams::default(), &object).await {
        Ok(_) => Ok(config_map.to_string()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(config_map.to_string()),
        Err(error) => Err(error.into()),
    }
}

/// Maps a refused write to the session's failure, or `None` for errors worth retrying.
fn failure_of_write(status: &kube::core::Status) -> Option<Failure> {
    let reason = match status.code {
        // RBAC names the user it refused; Pod Security and webhooks name their policy.
        403 if is_rbac_denial(&status.message) => FailureReason::OperatorForbidden,
        403 => FailureReason::Forbidden,
        400 | 413 | 422 => FailureReason::Invalid,
        _ => return None,
    };
    let message = match reason {
        FailureReason::OperatorForbidden => {
            format!("ephemera's own permissions are not enough to add the container: {}", status.message)
        }
        _ => format!("the API server refused the debug container: {}", status.message),
    };
    Some(Failure::new(reason, message))
}

fn is_rbac_denial(message: &str) -> bool {
    message.contains("cannot patch resource")
        || message.contains("cannot update resource")
        || message.contains("cannot get resource")
}

/// The resourceVersion of `session` in the watch cache.
fn cached_version(ctx: &Context, session: &DebugSession) -> Option<String> {
    let key = ObjectRef::<GuardedSession>::new(&session.name_any()).within(session.metadata.namespace.as_deref()?);
    ctx.sessions.get(&key)?.0.as_ref().ok()?.metadata.resource_version.clone()
}

/// Writes `new` as the status of `session` (server-side apply) if it differs
/// from the session's status, with an event for each transition since
/// `events_since` (by default the session's status). With `guarded` the write
/// is always sent, without events, and fails with 409 unless the session is
/// still at the resourceVersion it was read at. Returns the session's new
/// resourceVersion.
async fn publish_status(
    ctx: &Context,
    sessions: &Api<DebugSession>,
    session: &DebugSession,
    new: &DebugSessionStatus,
    guarded: bool,
    events_since: Option<DebugSessionStatus>,
) -> Result<Option<String>, Error> {
    let old = session.status.clone().unwrap_or_default();
    // A claim's events wait for its writes to the pods (see ClaimEvents).
    let events_from = (!guarded).then(|| events_since.unwrap_or_else(|| old.clone()));
    if *new == old && !guarded {
        // Checked against the pod and found true: it may be believed from now on.
        ctx.own.record(session, session.metadata.resource_version.clone(), new, || cached_version(ctx, session));
        if let Some(from) = events_from {
            publish_events(ctx, session, &from, new);
        }
        return Ok(session.metadata.resource_version.clone());
    }
    let guard = guarded.then_some(session.metadata.resource_version.as_deref()).flatten();
    let patch = status_patch(new, guard);
    tracing::trace!(session = %session.name_any(), ?old, ?new, "status write");
    ctx.metrics.request("patch", "debugsessions/status");
    let written = sessions
        .patch_status(&session.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    ctx.own.record(session, written.metadata.resource_version.clone(), new, || cached_version(ctx, session));
    count_transition(ctx, &old, new);
    if let Some(from) = events_from {
        publish_events(ctx, session, &from, new);
    }
    Ok(written.metadata.resource_version)
}

/// The server-side apply of `status`; with `guard`, only onto that
/// resourceVersion of the session (a claim).
pub fn status_patch(status: &DebugSessionStatus, guard: Option<&str>) -> serde_json::Value {
    let mut patch = serde_json::json!({
        "apiVersion": DebugSession::api_version(&()),
        "kind": DebugSession::kind(&()),
        "status": status,
    });
    if let Some(resource_version) = guard {
        patch["metadata"] = serde_json::json!({ "resourceVersion": resource_version });
    }
    patch
}

/// The events of a claim, published once the writes to the pods are done (on
/// every way out): they tell the story, but must not compete with those writes.
struct ClaimEvents<'a> {
    ctx: &'a Context,
    session: DebugSession,
    before: DebugSessionStatus,
}

impl ClaimEvents<'_> {
    /// The status before the claim; the caller publishes the events from it.
    fn into_before(mut self) -> DebugSessionStatus {
        let before = std::mem::take(&mut self.before);
        self.session.status = None;
        before
    }
}

impl Drop for ClaimEvents<'_> {
    fn drop(&mut self) {
        if let Some(claim) = &self.session.status {
            publish_events(self.ctx, &self.session, &self.before, claim);
        }
    }
}

fn count_transition(ctx: &Context, old: &DebugSessionStatus, new: &DebugSessionStatus) {
    if old.phase != new.phase
        && let Some(phase) = new.phase
    {
        let reason = if phase == Phase::Failed { new.reason.map_or("", FailureReason::as_str) } else { "" };
        ctx.metrics.transitions.with_label_values(&[phase.as_str(), reason]).inc();
    }
}

/// Queues the events of a transition: they tell the story, but must not slow down the next write.
fn publish_events(ctx: &Context, session: &DebugSession, old: &DebugSessionStatus, new: &DebugSessionStatus) {
    let events = status::transitions(session.spec.target.selector.is_some(), old, new)
        .into_iter()
        .map(|transition| Event {
            type_: if transition.warning { EventType::Warning } else { EventType::Normal },
            reason: transition.reason,
            note: Some(transition.note),
            action: "Reconcile".into(),
            secondary: None,
        })
        .collect();
    ctx.events.publish(session.object_ref(&()), events);
}

/// A session that does not decode (e.g. written for a newer ephemera, or stored
/// before a bound existed) is reported once, on itself and in the log, and
/// otherwise left alone: it must not stop the others.
async fn report_undecodable(
    ctx: &Context,
    invalid: &kube::core::error_boundary::InvalidObject,
) -> Result<Action, Error> {
    let uid = invalid.metadata.uid.clone().unwrap_or_default();
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let namespace = invalid.metadata.namespace.clone().unwrap_or_default();
    if !ctx.undecodable.lock().expect("undecodable lock").insert((uid, invalid.error.clone())) {
        return Ok(Action::await_change());
    }
    tracing::warn!(session = %name, %namespace, error = %invalid.error, "DebugSession cannot be read; skipping it");
    let message = format!(
        "ephemera cannot read this DebugSession ({}); it does nothing for it. Create a new DebugSession with a valid spec",
        invalid.error
    );
    let sessions: Api<DebugSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": DebugSession::api_version(&()),
        "kind": DebugSession::kind(&()),
        "status": { "phase": "Failed", "reason": "Invalid", "message": message },
    });
    ctx.metrics.request("patch", "debugsessions/status");
    if let Err(error) =
        sessions.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await
    {
        tracing::warn!(session = %name, %namespace, %error, "could not record that the DebugSession cannot be read");
    }
    let mut reference = DebugSession::new(
        &name,
        serde_json::from_value(serde_json::json!({"target": {}, "image": "-"})).expect("a spec"),
    )
    .object_ref(&());
    reference.namespace = Some(namespace);
    reference.uid = invalid.metadata.uid.clone();
    let event = Event {
        type_: EventType::Warning,
        reason: "Undecodable".into(),
        note: Some(message),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.events.publish(reference, vec![event]);
    Ok(Action::await_change())
}

/// What to do when the installed CRD is older than this operator: the API
/// server refuses status fields it does not know.
fn stale_crd_advice(error: &Error) -> Option<String> {
    let Error::Kube(kube::Error::Api(status)) = error else { return None };
    let before = status.message.split_once("field not declared in schema")?.0;
    let field = before.trim_end().trim_end_matches(':').rsplit(": ").next()?.trim().to_string();
    Some(format!(
        "the DebugSession CRD in the cluster is older than this ephemera: it does not know {field}; apply this version's CRD (`ephemera crd | kubectl apply --server-side -f -`)"
    ))
}

fn error_policy(object: Arc<GuardedSession>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[error.metric_label()]).inc();
    let name = object.meta().name.clone().unwrap_or_default();
    let delay = ctx.backoff.next(object.meta().uid.as_deref().unwrap_or_default());
    if matches!(error, Error::StaleSession) {
        // Expected when a reconcile races a change of the session: the watch brings the
        // fresh version, and with it a reconcile at once. Backed off all the same, so
        // that a watch that brings nothing (a dead connection) does not make it spin.
        tracing::debug!(session = %name, %error, retry_in = ?delay, "retrying");
        return Action::requeue(delay);
    }
    if let Some(advice) = stale_crd_advice(error) {
        // Every session will fail the same way: say what to do, loudly, once per field.
        if ctx.undecodable.lock().expect("undecodable lock").insert((String::new(), advice.clone())) {
            tracing::error!("{advice}");
        }
    }
    tracing::warn!(session = %name, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_map_to_failure_reasons() {
        let status =
            |code: u16, message: &str| kube::core::Status { code, message: message.into(), ..Default::default() };
        let reason = |code, message| failure_of_write(&status(code, message)).map(|f| f.reason);
        let rbac = r#"pods "web" is forbidden: User "system:serviceaccount:ephemera:ephemera" cannot patch resource "pods/ephemeralcontainers" in API group "" in the namespace "ns""#;
        let psa = r#"pods "web" is forbidden: violates PodSecurity "baseline:latest": privileged (container "debugger-x" must not set securityContext.privileged=true)"#;
        assert_eq!(reason(403, rbac), Some(FailureReason::OperatorForbidden));
        assert_eq!(reason(403, psa), Some(FailureReason::Forbidden));
        assert_eq!(reason(422, "Pod \"web\" is invalid"), Some(FailureReason::Invalid));
        assert_eq!(reason(500, "etcd"), None);
        assert!(failure_of_write(&status(403, psa)).unwrap().message.contains("violates PodSecurity"));
        assert!(failure_of_write(&status(403, rbac)).unwrap().message.contains("ephemera's own permissions"));
    }

    #[test]
    fn watches_retry_within_seconds() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next().unwrap()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] < Duration::from_millis(300), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(2400)), "{delays:?}");
        assert!(delays[7] >= Duration::from_secs(2), "{delays:?}");
        kube::runtime::utils::Backoff::reset(&mut backoff);
        assert!(backoff.next().unwrap() < Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_session_changed_under_its_claim_backs_off() {
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "ns");
        let (sessions, _) = reflector::store::<GuardedSession>();
        let ctx = Context::new(client, Arc::new(Metrics::new()), Policy::default(), sessions);
        let mut session = DebugSession::new(
            "s",
            serde_json::from_value(serde_json::json!({ "target": { "pod": "web" }, "image": "busybox" })).unwrap(),
        );
        session.metadata.uid = Some("u1".into());
        let object = Arc::new(kube::core::DeserializeGuard(Ok(session)));
        let delays: Vec<Action> =
            (0..4).map(|_| error_policy(object.clone(), &Error::StaleSession, ctx.clone())).collect();
        // A watch that brings no fresh version must not make the session spin:
        // each retry waits longer (0.25 s doubling), none is a fixed 250 ms.
        assert!(delays.windows(2).all(|w| w[0] != w[1]), "{delays:?}");
        assert!(!delays[1..].contains(&Action::requeue(Duration::from_millis(250))), "{delays:?}");
    }

    #[test]
    fn an_expired_watch_lists_again_at_once() {
        let mut backoff = WatchBackoff::default();
        for _ in 0..6 {
            backoff.next();
        }
        backoff.expired.store(true, Ordering::Relaxed);
        assert_eq!(backoff.next(), Some(Duration::ZERO), "the server answered: no step for a 410");
        backoff.expired.store(true, Ordering::Relaxed);
        assert!(backoff.next().unwrap() >= Duration::from_secs(2), "but not twice in a row");
        backoff.expired.store(true, Ordering::Relaxed);
        assert_eq!(backoff.next(), Some(Duration::ZERO));
    }

    #[test]
    fn an_old_crd_is_named_as_the_cause() {
        let message = "failed to create typed patch object (/; ephemera.dev/v1alpha1, Kind=DebugSession): .status.requester: field not declared in schema";
        let error = Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code: 500,
            message: message.into(),
            ..Default::default()
        })));
        let advice = stale_crd_advice(&error).unwrap();
        assert!(advice.contains("does not know .status.requester"), "{advice}");
        assert!(stale_crd_advice(&Error::StaleSession).is_none());
    }

    #[test]
    fn backoff_doubles_per_session_and_resets() {
        let backoffs = Backoffs::default();
        let first = backoffs.next("a");
        let second = backoffs.next("a");
        assert!(first >= Duration::from_millis(250) && first < Duration::from_millis(300), "{first:?}");
        assert!(second >= Duration::from_millis(500) && second < Duration::from_millis(600), "{second:?}");
        assert!(backoffs.next("b") < Duration::from_millis(300), "per session");
        for _ in 0..20 {
            backoffs.next("a");
        }
        assert!(backoffs.next("a") <= Duration::from_secs(330));
        backoffs.reset("a");
        assert!(backoffs.next("a") < Duration::from_millis(300));
    }
}
