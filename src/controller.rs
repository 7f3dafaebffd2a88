//! The reconcile loop: resolve the target pod, plan (pure, in `status`),
//! inject if the plan says so, then publish status and events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

use crate::crd::{DebugSession, DebugSessionStatus, FailureReason, Phase};
use crate::debug_container::has_container_from_session;
use crate::ephemeral_api::{Availability, AvailabilityCache, Refusal, add_ephemeral_container, classify_refusal};
use crate::metrics::Metrics;
use crate::status::{self, Plan, TargetLookup};
use crate::target::{Failure, pick_pod};

/// Field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "ephemera";
/// How often availability of ephemeral containers is asked again.
const AVAILABILITY_TTL: Duration = Duration::from_secs(300);
/// Conflicting writers to one pod are retried this often, each time from fresh state.
const CONFLICT_RETRIES: u32 = 5;
/// A look at sessions that nothing else woke up, as a safety net.
const RESYNC: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("DebugSession has no {0}")]
    MissingField(&'static str),
    #[error("DebugSession changed while it was being reconciled")]
    StaleSession,
}

impl Error {
    /// Label of `ephemera_reconcile_errors_total`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) => format!("api_{}", status.code),
            Error::Kube(_) => "kube".into(),
            Error::MissingField(_) => "missing_field".into(),
            Error::StaleSession => "stale_session".into(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub availability: Arc<AvailabilityCache>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Arc<Self> {
        let reporter: Reporter = "ephemera".into();
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            availability: AvailabilityCache::new(client.clone(), AVAILABILITY_TTL),
            client,
            metrics,
        })
    }
}

/// Runs the controller until a termination signal arrives.
pub async fn run(client: Client, namespace: Option<String>, metrics: Arc<Metrics>) {
    let (sessions, pods): (Api<DebugSession>, Api<PartialObjectMeta<Pod>>) = match &namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let controller = Controller::new(sessions, watcher::Config::default().any_semantic());
    let store = controller.store();
    // Pod metadata only, and no cache of it: a pod event is mapped to the
    // sessions that target the pod and then dropped.
    let pod_events = watcher::watcher(pods, watcher::Config::default()).touched_objects();
    controller
        .watches_stream(pod_events, move |pod| sessions_for_pod(&store, &pod))
        .shutdown_on_signal()
        .run(reconcile, error_policy, Context::new(client, metrics))
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile loop");
            }
        })
        .await;
}

fn sessions_for_pod(store: &Store<DebugSession>, pod: &PartialObjectMeta<Pod>) -> Vec<ObjectRef<DebugSession>> {
    let (Some(namespace), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else {
        return Vec::new();
    };
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    store
        .state()
        .iter()
        .filter(|session| targets_pod(session, namespace, name, labels))
        .map(|session| ObjectRef::from_obj(session.as_ref()))
        .collect()
}

/// Whether a change of the pod `namespace/name` may matter to `session`.
pub fn targets_pod(session: &DebugSession, namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
    if session.metadata.namespace.as_deref() != Some(namespace) {
        return false;
    }
    let status = session.status.as_ref();
    if status.and_then(|s| s.pod_name.as_deref()) == Some(name) {
        return true;
    }
    let target = &session.spec.target;
    if target.pod.as_deref() == Some(name) {
        return true;
    }
    let pinned = status.is_some_and(|s| !s.containers.is_empty());
    !pinned && target.selector.clone().and_then(|s| Selector::try_from(s).ok()).is_some_and(|s| s.matches(labels))
}

/// The target pod as found, or why not.
enum Resolved {
    Pod(Box<Pod>),
    Failed(Failure),
}

impl Resolved {
    fn lookup(&self) -> TargetLookup<'_> {
        match self {
            Resolved::Pod(pod) => TargetLookup::Found(pod),
            Resolved::Failed(failure) => TargetLookup::Failed(failure),
        }
    }
}

async fn resolve_target(pods: &Api<Pod>, session: &DebugSession) -> Result<Resolved, Error> {
    let status = session.status.clone().unwrap_or_default();
    if let (Some(name), Some(uid)) = (&status.pod_name, &status.pod_uid) {
        let pinned = pods.get_opt(name).await?;
        let same_pod = pinned.as_ref().is_some_and(|p| p.metadata.uid.as_ref() == Some(uid));
        let session_uid = session.metadata.uid.as_deref().unwrap_or_default();
        // Once a container is in a pod, the session belongs to that very pod. A
        // container without a record (a crash after the patch) counts too.
        let injected = !status.containers.is_empty()
            || (same_pod && pinned.as_ref().is_some_and(|p| has_container_from_session(p, session_uid)));
        if injected {
            return Ok(match pinned {
                Some(pod) if same_pod => Resolved::Pod(Box::new(pod)),
                Some(_) => Resolved::Failed(Failure::new(
                    FailureReason::TargetGone,
                    format!(
                        "pod {name} was replaced by a new pod of the same name; its debug containers went with the old one"
                    ),
                )),
                None => Resolved::Failed(Failure::new(FailureReason::TargetGone, format!("pod {name} was deleted"))),
            });
        }
    }
    let target = &session.spec.target;
    if let Some(name) = &target.pod {
        return Ok(match pods.get_opt(name).await? {
            Some(pod) => Resolved::Pod(Box::new(pod)),
            None => Resolved::Failed(Failure::new(FailureReason::TargetNotFound, format!("pod {name} does not exist"))),
        });
    }
    let Some(label_selector) = target.selector.clone() else {
        return Err(Error::MissingField("spec.target.pod or spec.target.selector"));
    };
    let selector = match Selector::try_from(label_selector) {
        Ok(selector) => selector,
        Err(error) => {
            return Ok(Resolved::Failed(Failure::new(
                FailureReason::Invalid,
                format!("invalid target.selector: {error}"),
            )));
        }
    };
    let shown = selector.to_string();
    let candidates = pods.list(&ListParams::default().labels_from(&selector)).await?.items;
    Ok(match pick_pod(&candidates, &shown) {
        Ok(pod) => Resolved::Pod(Box::new(pod.clone())),
        Err(failure) => Resolved::Failed(failure),
    })
}

/// Maps a refused write to the session's failure, or `None` for errors worth retrying.
fn failure_of_write(error: &kube::Error) -> Option<Failure> {
    let kube::Error::Api(status) = error else { return None };
    match classify_refusal(status) {
        Refusal::Unavailable(message) => Some(Failure::new(FailureReason::EphemeralContainersUnavailable, message)),
        Refusal::StalePod => None,
        Refusal::Other => {
            let reason = match status.code {
                403 => FailureReason::Forbidden,
                400 | 422 => FailureReason::Invalid,
                _ => return None,
            };
            Some(Failure::new(reason, format!("the API server refused the debug container: {}", status.message)))
        }
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Whether the pod changed or went away since it was read, so the plan is made again.
fn is_stale_pod(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if classify_refusal(status) == Refusal::StalePod)
}

async fn reconcile(session: Arc<DebugSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_duration.with_label_values(&[] as &[&str]).start_timer();
    ctx.metrics.reconciliations.inc();
    let namespace = session.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = session.name_any();
    let sessions: Api<DebugSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let old_status = session.status.clone().unwrap_or_default();

    if let Some(deadline) = status::ttl_deadline(&session, &old_status)
        && now >= deadline
    {
        tracing::info!(session = %name, %namespace, "deleting finished DebugSession after ttlSecondsAfterFinished");
        sessions.delete(&name, &DeleteParams::background()).await?;
        return Ok(Action::await_change());
    }

    let (published, new_status) = decide(&session, &sessions, &pods, &ctx, now).await?;
    publish_status(&ctx, &sessions, &session, &published, &new_status, false).await?;
    let requeue = status::requeue_after(&session, &new_status, now).unwrap_or(RESYNC);
    Ok(Action::requeue(requeue.min(RESYNC)))
}

/// Writes `new` as the status of `session` (server-side apply) if it differs from `old`,
/// with an event for each transition. With `precondition`, the write fails with 409
/// unless the session is still at the resourceVersion it was read at. Returns the
/// session's new resourceVersion.
async fn publish_status(
    ctx: &Context,
    sessions: &Api<DebugSession>,
    session: &DebugSession,
    old: &DebugSessionStatus,
    new: &DebugSessionStatus,
    precondition: bool,
) -> Result<Option<String>, Error> {
    if new == old {
        return Ok(session.metadata.resource_version.clone());
    }
    let mut patch = serde_json::json!({
        "apiVersion": DebugSession::api_version(&()),
        "kind": DebugSession::kind(&()),
        "status": new,
    });
    if precondition {
        patch["metadata"] = serde_json::json!({ "resourceVersion": session.metadata.resource_version });
    }
    let written = sessions
        .patch_status(&session.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    publish_events(ctx, session, old, new).await;
    Ok(written.metadata.resource_version)
}

/// Resolves, plans and injects until the plan needs nothing more written to the
/// pod. Returns the status last published on the way, and the new one.
async fn decide(
    session: &DebugSession,
    sessions: &Api<DebugSession>,
    pods: &Api<Pod>,
    ctx: &Context,
    now: Timestamp,
) -> Result<(DebugSessionStatus, DebugSessionStatus), Error> {
    let (unavailable, shape) = match ctx.availability.get().await? {
        Availability::Available(shape) => (None, Some(shape)),
        Availability::Unavailable(message) => {
            (Some(Failure::new(FailureReason::EphemeralContainersUnavailable, message)), None)
        }
    };
    let mut resolved = resolve_target(pods, session).await?;
    let mut current = session.clone();
    let mut published = session.status.clone().unwrap_or_default();
    let mut conflicts = 0;
    loop {
        let (container, mut status) = match status::plan(&current, resolved.lookup(), unavailable.as_ref(), now) {
            Plan::Report(status) => return Ok((published, status)),
            Plan::Inject { container, status } => (container, status),
        };
        // Pending is written before the pod is, so the status tells the whole story.
        // It is written only if the session is unchanged since it was read: a stale
        // cache (or a second operator) must not inject what was already injected.
        current.metadata.resource_version =
            publish_status(ctx, sessions, &current, &published, &status, true).await.map_err(|error| match error {
                Error::Kube(ref e) if is_conflict(e) => Error::StaleSession,
                other => other,
            })?;
        published = status.clone();
        current.status = Some(status.clone());
        let (Resolved::Pod(pod), Some(shape)) = (&resolved, shape) else {
            unreachable!("plan injects only into a found pod of a cluster with ephemeral containers");
        };
        match add_ephemeral_container(&ctx.client, shape, pod, &container).await {
            Ok(updated) => {
                ctx.metrics.injections.with_label_values(&["injected"]).inc();
                status::record_injection(&mut status, &container.name, session.spec.attempt, now);
                current.status = Some(status);
                resolved = Resolved::Pod(Box::new(updated));
            }
            Err(error) if is_stale_pod(&error) && conflicts < CONFLICT_RETRIES => {
                ctx.metrics.injections.with_label_values(&["conflict"]).inc();
                conflicts += 1;
                tracing::debug!(session = %session.name_any(), conflicts, "pod changed under us; deciding again from fresh state");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(conflicts))).await;
                resolved = resolve_target(pods, &current).await?;
            }
            Err(error) => {
                let Some(failure) = failure_of_write(&error) else {
                    ctx.metrics.injections.with_label_values(&["error"]).inc();
                    return Err(error.into());
                };
                ctx.metrics.injections.with_label_values(&[failure.reason.as_str()]).inc();
                if failure.reason == FailureReason::EphemeralContainersUnavailable {
                    ctx.availability.invalidate().await;
                }
                return Ok((published, status::failed_status(session, status, failure, now)));
            }
        }
    }
}

async fn publish_events(ctx: &Context, session: &DebugSession, old: &DebugSessionStatus, new: &DebugSessionStatus) {
    if old.phase != new.phase
        && let Some(phase) = new.phase
    {
        let reason = if phase == Phase::Failed { new.reason.map_or("", FailureReason::as_str) } else { "" };
        ctx.metrics.transitions.with_label_values(&[phase.as_str(), reason]).inc();
    }
    let reference = session.object_ref(&());
    for transition in status::transitions(old, new) {
        let event = Event {
            type_: if transition.warning { EventType::Warning } else { EventType::Normal },
            reason: transition.reason,
            note: Some(transition.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "could not publish event");
        }
    }
}

fn error_policy(session: Arc<DebugSession>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[error.metric_label()]).inc();
    if matches!(error, Error::StaleSession) {
        // Expected when a reconcile races our own status write; the next read is fresh.
        tracing::debug!(session = %session.name_any(), %error, "retrying");
        return Action::requeue(Duration::from_millis(250));
    }
    tracing::warn!(session = %session.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DebugSessionSpec, Target};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn session(target: Target, status: Option<DebugSessionStatus>) -> DebugSession {
        let spec: DebugSessionSpec =
            serde_json::from_value(serde_json::json!({"target": target, "image": "busybox"})).unwrap();
        let mut s = DebugSession::new("s", spec);
        s.metadata.namespace = Some("ns".into());
        s.status = status;
        s
    }

    #[test]
    fn pod_events_map_to_the_sessions_that_target_them() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let by_name = session(Target { pod: Some("web-1".into()), ..Default::default() }, None);
        let selector = Target {
            selector: Some(LabelSelector { match_labels: Some(labels.clone()), ..Default::default() }),
            ..Default::default()
        };
        let by_selector = session(selector.clone(), None);
        let pinned_elsewhere = session(
            selector,
            Some(DebugSessionStatus {
                pod_name: Some("web-2".into()),
                containers: vec![Default::default()],
                ..Default::default()
            }),
        );
        let cases = [
            ("named pod", &by_name, "ns", "web-1", true),
            ("other pod", &by_name, "ns", "web-9", false),
            ("other namespace", &by_name, "other", "web-1", false),
            ("selector matches", &by_selector, "ns", "web-9", true),
            ("pinned to another pod", &pinned_elsewhere, "ns", "web-9", false),
            ("pinned pod", &pinned_elsewhere, "ns", "web-2", true),
        ];
        for (what, s, ns, pod, want) in cases {
            assert_eq!(targets_pod(s, ns, pod, &labels), want, "{what}");
        }
        assert!(!targets_pod(&by_selector, "ns", "x", &BTreeMap::new()), "labels must match");
    }

    #[test]
    fn refused_writes_map_to_failure_reasons() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status { code, message: "nope".into(), ..Default::default() }))
        };
        assert_eq!(failure_of_write(&api(403)).unwrap().reason, FailureReason::Forbidden);
        assert_eq!(failure_of_write(&api(422)).unwrap().reason, FailureReason::Invalid);
        assert_eq!(failure_of_write(&api(404)).unwrap().reason, FailureReason::EphemeralContainersUnavailable);
        assert!(failure_of_write(&api(500)).is_none());
        assert!(failure_of_write(&api(409)).is_none());
        assert!(is_conflict(&api(409)));
        assert!(is_stale_pod(&api(409)));
        // a 404 that names the pod: the pod went away, which the next plan reports
        let pod_gone: kube::core::Status = serde_json::from_value(serde_json::json!({
            "code": 404, "reason": "NotFound", "message": "pods \"web\" not found",
            "details": { "name": "web", "kind": "pods" },
        }))
        .unwrap();
        let pod_gone = kube::Error::Api(Box::new(pod_gone));
        assert!(failure_of_write(&pod_gone).is_none());
        assert!(is_stale_pod(&pod_gone));
        assert!(!is_stale_pod(&api(404)), "a 404 naming nothing means the subresource is not served");
        assert!(failure_of_write(&api(403)).unwrap().message.contains("nope"));
    }
}
