//! The phase machine: given the session and what was read (see
//! [`crate::reads`]), what the status says and what to do next. Pure: the
//! controller gathers the inputs and carries out the decision.
//!
//! The pod and the spec are the authority. The session's previous status is
//! only a record: it may make ephemera report a finished session as finished,
//! never write to a pod that the pod and the spec do not call for.

mod conditions;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, EphemeralContainer, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{ContainerState, DebugContainerStatus, DebugSession, DebugSessionStatus, FailureReason, Phase};
use crate::debug_container::{
    Marked, attach_command, build_ephemeral_container, choose_container_name, container_bytes, marked_containers,
    mismatch,
};
use crate::ephemeral_api::{ApiShape, Availability};
use crate::policy::{ActiveSessions, Policy};
use crate::reads::is_settled;
use crate::requester::requester;
use crate::target::{Failure, check_target, describe_phase, is_terminating, pick_pod, satisfies};
use crate::validation::{self, MAX_CONTAINER_BYTES};

pub use conditions::conditions;

/// The pods a reconcile read, as [`crate::reads::PodReads`] asked.
#[derive(Debug, Clone, Copy)]
pub enum PodView<'a> {
    /// Nothing was read.
    NotRead,
    /// The pod of that name, or `None` when there is none.
    Named { name: &'a str, pod: Option<&'a Pod> },
    /// The pods the session's selector matched.
    Selected(&'a [Pod]),
}

/// What a reconcile knows besides the session.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub pods: PodView<'a>,
    /// Asked only when a container may be added.
    pub availability: Option<&'a Availability>,
    pub now: Timestamp,
    /// The platform's rules, and the other sessions they count.
    pub policy: &'a Policy,
    pub active: ActiveSessions,
}

/// No rules at all (tests, and `ephemera run` without policy flags).
pub static NO_POLICY: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

/// What to do after publishing [`Decision::status`].
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing until something changes, or [`requeue_after`] passes.
    Wait,
    /// Look again at once: the status was corrected (a pinned pod that no longer fits).
    LookAgain,
    /// Add the container to the pod. The status is the claim, written first and
    /// only if the session is unchanged since it was read.
    Inject { pod: Box<Pod>, container: Box<EphemeralContainer> },
    /// The session finished more than `ttlSecondsAfterFinished` ago.
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: DebugSessionStatus,
    pub next: Next,
}

pub const NOT_ATTACHABLE_HINT: &str = "ephemeral containers cannot be restarted or removed, so it can no longer be attached to; raise spec.attempt to start a fresh debug container";

/// Kubelet waiting reasons that no amount of waiting will change.
const DEFINITE_WAITING_REASONS: [&str; 3] = ["InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"];

/// Where the session's pod stands, after checking what was read against the spec.
enum Resolved<'a> {
    Pod(&'a Pod),
    /// No pod to work with (and none was ever worked with).
    Missing(Failure),
    /// The pod that holds (or held) the session's containers was deleted or replaced.
    Gone(String),
    /// A selector's pinned pod no longer fits: choose again.
    Unpin(String),
}

/// Decides what the status of `session` is, and what to do next.
pub fn decide(session: &DebugSession, observed: &Observed) -> Decision {
    let prior = session.status.clone().unwrap_or_default();
    let mut status = prior.clone();
    status.observed_generation = session.metadata.generation;
    status.requester = requester(session).map(|r| r.username);

    let decision = if session.metadata.deletion_timestamp.is_some() {
        // Deletion has begun: nothing more is added anywhere.
        Decision { status, next: Next::Wait }
    } else if let Err(problem) = validation::check_spec(&session.spec) {
        status.attempt = session.spec.attempt;
        clear_current(&mut status);
        Decision { status: fail(status, Failure::new(FailureReason::Invalid, problem)), next: Next::Wait }
    } else if let PodView::NotRead = observed.pods {
        Decision { status, next: Next::Wait }
    } else {
        decide_with_pods(session, &prior, status, observed)
    };
    finish(session, decision, &prior, observed)
}

fn decide_with_pods(
    session: &DebugSession,
    prior: &DebugSessionStatus,
    mut status: DebugSessionStatus,
    observed: &Observed,
) -> Decision {
    let now = observed.now;
    let report = |status| Decision { status, next: Next::Wait };
    if prior.phase == Some(Phase::Failed) && prior.reason.is_some_and(FailureReason::is_permanent) {
        return report(status);
    }
    let resolved = resolve(session, prior, observed.pods);
    let pod = match resolved {
        Resolved::Pod(pod) => pod,
        Resolved::Unpin(why) => {
            status.pod_name = None;
            status.pod_uid = None;
            status.containers.clear();
            status.ephemeral_containers_in_pod.clear();
            clear_current(&mut status);
            status.phase = Some(Phase::Pending);
            status.message = Some(format!("{why}; choosing a pod again"));
            return Decision { status, next: Next::LookAgain };
        }
        Resolved::Gone(why) => return report(gone(session, prior, status, why, now)),
        Resolved::Missing(failure) => {
            if stands(session, prior) {
                return report(status);
            }
            // Without ephemeral containers no pod would do: say what matters most.
            let failure = match observed.availability {
                Some(Availability::Unavailable(advice)) => {
                    Failure::new(FailureReason::EphemeralContainersUnavailable, advice.clone())
                }
                _ => failure,
            };
            status.attempt = session.spec.attempt;
            status.pod_uid = None;
            status.pod_name = session.spec.target.pod.clone();
            status.containers.clear();
            status.ephemeral_containers_in_pod.clear();
            clear_current(&mut status);
            return report(fail(status, failure));
        }
    };

    status.pod_name = pod.metadata.name.clone();
    status.pod_uid = pod.metadata.uid.clone();
    status.ephemeral_containers_in_pod =
        pod.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()).map(|c| c.name.clone()).collect();
    let attempt = session.spec.attempt;
    // A predecessor's later attempts are its own business (see docs/gitops.md).
    let marked: Vec<Marked> =
        marked_containers(session, pod).into_iter().filter(|m| !m.predecessor || m.attempt <= attempt).collect();
    status.containers = records(&marked, pod, prior, session, now);

    // Only where no CEL rule refused it (Kubernetes before 1.25).
    if let Some(later) = marked.iter().find(|m| m.attempt > attempt) {
        status.attempt = attempt;
        clear_current(&mut status);
        let failure = Failure::new(
            FailureReason::Invalid,
            format!(
                "spec.attempt is {attempt}, but pod {} already holds debug container {} of attempt {}: attempts may only be raised",
                pod_name(pod),
                later.container.name,
                later.attempt
            ),
        );
        return report(fail(status, failure));
    }
    if let Some(current) = marked.iter().find(|m| m.attempt == attempt) {
        let record = status.containers.iter().find(|r| r.attempt == attempt).cloned().unwrap_or_default();
        if stands(session, prior) && !started_late(prior, &record) {
            return report(status);
        }
        status.attempt = attempt;
        if let Some(failure) = container_mismatch(session, pod, current) {
            clear_current(&mut status);
            return report(fail(status, failure));
        }
        return report(describe_container(status, session, pod, &record, now));
    }

    if stands(session, prior) {
        return report(status);
    }
    // An earlier container that still runs keeps the stage: the API cannot stop it.
    if let Some(previous) = status.containers.last().cloned()
        && previous.state != ContainerState::Terminated
        && !(prior.phase == Some(Phase::Failed) && prior.attempt == previous.attempt)
    {
        status.attempt = previous.attempt;
        let mut waiting = describe_container(status, session, pod, &previous, now);
        if waiting.phase != Some(Phase::Failed) {
            waiting.message = Some(format!(
                "spec.attempt {attempt} waits for debug container {} (attempt {}) to terminate: ephemeral containers cannot be stopped by the API",
                previous.name, previous.attempt
            ));
        }
        return report(waiting);
    }

    status.attempt = attempt;
    clear_current(&mut status);
    match plan_injection(session, pod, observed) {
        Ok((container, target_container)) => {
            status.phase = Some(Phase::Pending);
            status.target_container_name = Some(target_container);
            status.container_name = Some(container.name.clone());
            status.message = Some(format!("adding debug container {} to pod {}", container.name, pod_name(pod)));
            Decision { status, next: Next::Inject { pod: Box::new(pod.clone()), container: Box::new(container) } }
        }
        Err(failure) => report(fail(status, failure)),
    }
}

/// The decision when the container that `claim` announces may not be added
/// after all (the API server refused it, or its requester may not add it).
pub fn refused(session: &DebugSession, claim: &DebugSessionStatus, failure: Failure, observed: &Observed) -> Decision {
    let prior = session.status.clone().unwrap_or_default();
    let mut status = claim.clone();
    clear_current(&mut status);
    finish(session, Decision { status: fail(status, failure), next: Next::Wait }, &prior, observed)
}

/// Checks what was read against the spec. The previous status only names the
/// pod to look at first, and says whether containers were injected before.
fn resolve<'a>(session: &DebugSession, prior: &DebugSessionStatus, pods: PodView<'a>) -> Resolved<'a> {
    let target = &session.spec.target;
    let holds_ours = |pod: &Pod| marked_containers(session, pod).iter().any(|m| !m.predecessor);
    // The record of earlier injections, if it can be true: a by-name session only ever had that pod.
    let consistent = target.pod.is_none() || prior.pod_name == target.pod;
    let injected_before = consistent && !prior.containers.is_empty();
    // The claim of this attempt named a pod: a by-name session adds nothing to another pod of that name.
    let claimed = consistent
        && target.pod.is_some()
        && prior.phase == Some(Phase::Pending)
        && prior.attempt == session.spec.attempt
        && prior.pod_uid.is_some();
    let replaced = |pod: &Pod| {
        let name = pod_name(pod);
        format!("pod {name} was replaced by a new pod of the same name; the debug containers went with the old one")
    };
    match pods {
        PodView::NotRead => Resolved::Missing(Failure::new(FailureReason::TargetNotFound, "no pod was read")),
        PodView::Named { name, pod: None } if injected_before => Resolved::Gone(format!("pod {name} was deleted")),
        PodView::Named { name, pod: None } if target.pod.is_some() => {
            Resolved::Missing(Failure::new(FailureReason::TargetNotFound, format!("pod {name} does not exist")))
        }
        PodView::Named { name, pod: None } => Resolved::Unpin(format!("pod {name}, picked earlier, no longer exists")),
        PodView::Named { pod: Some(pod), .. } => {
            let same_pod = prior.pod_uid.is_none() || prior.pod_uid == pod.metadata.uid;
            if holds_ours(pod) {
                Resolved::Pod(pod)
            } else if injected_before && !same_pod {
                Resolved::Gone(replaced(pod))
            } else if claimed && !same_pod {
                Resolved::Missing(Failure::new(
                    FailureReason::TargetNotFound,
                    format!(
                        "pod {} was deleted before the debug container was added, and a new pod of the same name took its place; nothing is added to the new pod within an attempt",
                        pod_name(pod)
                    ),
                ))
            } else if satisfies(pod, target) {
                Resolved::Pod(pod)
            } else {
                Resolved::Unpin(format!("pod {} does not match target.selector", pod_name(pod)))
            }
        }
        PodView::Selected(candidates) => {
            let ours = candidates.iter().find(|p| holds_ours(p));
            let predecessors = candidates.iter().find(|p| !marked_containers(session, p).is_empty());
            match ours.or(predecessors) {
                Some(pod) => Resolved::Pod(pod),
                None => {
                    let shown = target.selector.as_ref().map(selector_text).unwrap_or_default();
                    match pick_pod(candidates, &shown) {
                        Ok(pod) => Resolved::Pod(pod),
                        Err(failure) => Resolved::Missing(failure),
                    }
                }
            }
        }
    }
}

fn selector_text(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    kube::core::Selector::try_from(selector.clone()).map(|s| s.to_string()).unwrap_or_default()
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// A failure of the current attempt stands until spec.attempt is raised:
/// nothing is retried behind the user's back.
fn stands(session: &DebugSession, prior: &DebugSessionStatus) -> bool {
    prior.phase == Some(Phase::Failed) && prior.attempt == session.spec.attempt
}

/// A start timeout that the kubelet overtook gives way to the container's real state.
fn started_late(prior: &DebugSessionStatus, record: &DebugContainerStatus) -> bool {
    prior.reason == Some(FailureReason::StartTimeout)
        && matches!(record.state, ContainerState::Running | ContainerState::Terminated)
}

/// The pod is gone (or going): what finished stays finished, anything else is TargetGone.
fn gone(
    session: &DebugSession,
    prior: &DebugSessionStatus,
    mut status: DebugSessionStatus,
    why: String,
    now: Timestamp,
) -> DebugSessionStatus {
    if prior.phase == Some(Phase::Failed) && prior.reason.is_some_and(FailureReason::is_permanent) {
        return status;
    }
    let current = prior.containers.iter().find(|r| r.attempt == session.spec.attempt);
    if let Some(record) = current.filter(|r| r.state == ContainerState::Terminated) {
        status.attempt = session.spec.attempt;
        let mut status = describe_terminated(status, record, now);
        status.message = Some(format!("{}; since then, {why}", status.message.unwrap_or_default()));
        return status;
    }
    status.attempt = session.spec.attempt;
    clear_current(&mut status);
    fail(status, Failure::new(FailureReason::TargetGone, why))
}

/// The session's containers as the pod shows them. The time each was added
/// comes from the previous record when there is one, clamped to what can be
/// true; a container without a record is adopted now.
fn records(
    marked: &[Marked],
    pod: &Pod,
    prior: &DebugSessionStatus,
    session: &DebugSession,
    now: Timestamp,
) -> Vec<DebugContainerStatus> {
    let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let statuses = pod.status.as_ref().and_then(|s| s.ephemeral_container_statuses.as_ref());
    marked
        .iter()
        .map(|m| {
            let name = &m.container.name;
            let previous = prior.containers.iter().find(|r| r.name == *name && r.attempt == m.attempt);
            let injected_at = previous
                .and_then(|r| r.injected_at.as_ref())
                .map(|t| t.0)
                .filter(|t| *t <= now && created.is_none_or(|c| *t >= c))
                .unwrap_or(now);
            let mut record = DebugContainerStatus {
                name: name.clone(),
                attempt: m.attempt,
                injected_at: Some(Time(injected_at)),
                ..Default::default()
            };
            if let Some(kubelet) = statuses.and_then(|all| all.iter().find(|s| s.name == *name)) {
                apply_kubelet_state(&mut record, kubelet);
            }
            record
        })
        .collect()
}

fn apply_kubelet_state(record: &mut DebugContainerStatus, kubelet: &ContainerStatus) {
    let Some(state) = &kubelet.state else { return };
    if let Some(t) = &state.terminated {
        record.state = ContainerState::Terminated;
        record.exit_code = Some(t.exit_code);
        record.reason = t.reason.clone();
        record.kubelet_message = t.message.clone();
        record.started_at = t.started_at.clone();
        record.finished_at = t.finished_at.clone();
    } else if let Some(r) = &state.running {
        record.state = ContainerState::Running;
        record.started_at = r.started_at.clone();
    } else if let Some(w) = &state.waiting {
        record.state = ContainerState::Waiting;
        record.reason = w.reason.clone();
        record.kubelet_message = w.message.clone();
    }
}

/// A container carrying the session's marker is only the session's if it is what the spec asks for.
fn container_mismatch(session: &DebugSession, pod: &Pod, found: &Marked) -> Option<Failure> {
    let target_container = found.container.target_container_name.clone().unwrap_or_default();
    let wanted = build_ephemeral_container(session, &found.container.name, &target_container, found.attempt);
    let requested = session.spec.target.container.as_deref();
    let difference = mismatch(found.container, &wanted).or_else(|| {
        requested
            .filter(|r| *r != target_container)
            .map(|r| format!("it shares the processes of container {target_container}, the spec asks for {r}"))
    })?;
    Some(Failure::new(
        FailureReason::ContainerMismatch,
        format!(
            "pod {} holds debug container {} with this session's marker, but {difference}; it is not this session's, so it is reported and left alone",
            pod_name(pod),
            found.container.name
        ),
    ))
}

/// What to add for the current attempt, or why nothing can be added.
fn plan_injection(
    session: &DebugSession,
    pod: &Pod,
    observed: &Observed,
) -> Result<(EphemeralContainer, String), Failure> {
    match observed.availability {
        // Before 1.22 the API server refuses any securityContext on an ephemeral container.
        Some(Availability::Available(ApiShape::LegacyEphemeralContainers))
            if crate::debug_container::security_context(session.spec.profile).is_some() =>
        {
            return Err(Failure::new(
                FailureReason::Invalid,
                format!(
                    "Kubernetes 1.16-1.21 refuse a securityContext on ephemeral containers, and profile {} sets one; use profile: baseline on this cluster",
                    session.spec.profile.as_str()
                ),
            ));
        }
        Some(Availability::Available(_)) => {}
        Some(Availability::Unavailable(message)) => {
            return Err(Failure::new(FailureReason::EphemeralContainersUnavailable, message.clone()));
        }
        None => return Err(Failure::new(FailureReason::EphemeralContainersUnavailable, "not checked")),
    }
    if observed.policy.require_requester && requester(session).is_none() {
        return Err(Failure::new(
            FailureReason::Forbidden,
            "admission recorded no requester on this session, so nobody can be checked for the right to debug; install the chart's admission policies (or set security.requireRequester: false if every DebugSession author may debug)",
        ));
    }
    if let Err(violation) = observed.policy.check(session, observed.active) {
        return Err(Failure::new(
            FailureReason::PolicyViolation,
            format!("{} (rule {})", violation.message, violation.rule),
        ));
    }
    if !satisfies(pod, &session.spec.target) {
        return Err(Failure::new(
            FailureReason::TargetNotFound,
            format!("pod {} no longer matches target.selector", pod_name(pod)),
        ));
    }
    let target_container = check_target(pod, session.spec.target.container.as_deref())?;
    let name = choose_container_name(session, pod, session.spec.attempt).map_err(|taken| {
        Failure::new(
            FailureReason::Invalid,
            format!("container name {taken} is already used by another container of pod {}", pod_name(pod)),
        )
    })?;
    let container = build_ephemeral_container(session, &name, &target_container, session.spec.attempt);
    let bytes = container_bytes(&container);
    if bytes > MAX_CONTAINER_BYTES {
        return Err(Failure::new(
            FailureReason::Invalid,
            format!(
                "the debug container would add {bytes} bytes to pod {}; at most {MAX_CONTAINER_BYTES} are allowed per attempt, since every attempt stays in the pod",
                pod_name(pod)
            ),
        ));
    }
    Ok((container, target_container))
}

/// The status that the container of `record` gives the session.
fn describe_container(
    mut status: DebugSessionStatus,
    session: &DebugSession,
    pod: &Pod,
    record: &DebugContainerStatus,
    now: Timestamp,
) -> DebugSessionStatus {
    clear_current(&mut status);
    status.container_name = Some(record.name.clone());
    let pod_name = pod_name(pod).to_string();
    status.target_container_name = pod
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .find(|c| c.name == record.name)
        .and_then(|c| c.target_container_name.clone());
    if let Some(why) = stopped_with_pod(pod, record) {
        return fail(status, Failure::new(FailureReason::TargetGone, why));
    }
    match record.state {
        ContainerState::Running => {
            status.phase = Some(Phase::Running);
            status.started_at = record.started_at.clone();
            let namespace = session.metadata.namespace.as_deref().unwrap_or_default();
            let attach = attach_command(namespace, &pod_name, &record.name, session.spec.stdin, session.spec.tty);
            status.message = Some(format!("debug container {} is running; attach with: {attach}", record.name));
            status.attach_command = Some(attach);
            status
        }
        ContainerState::Terminated => describe_terminated(status, record, now),
        ContainerState::Unknown | ContainerState::Waiting => describe_waiting(status, session, pod, record, now),
    }
}

/// Why a debug container that ran is over because its pod is being deleted:
/// it still runs (and is about to be stopped), or it stopped after the deletion
/// was asked for. One that ended before that finished on its own.
fn stopped_with_pod(pod: &Pod, record: &DebugContainerStatus) -> Option<String> {
    let deleted_at = pod.metadata.deletion_timestamp.as_ref()?.0;
    let grace = SignedDuration::from_secs(pod.metadata.deletion_grace_period_seconds.unwrap_or_default());
    let (pod, name) = (pod_name(pod), &record.name);
    match record.state {
        ContainerState::Running => {
            Some(format!("pod {pod} is being deleted, so debug container {name} is being stopped with it"))
        }
        ContainerState::Terminated if record.finished_at.as_ref().is_none_or(|t| t.0 >= deleted_at - grace) => {
            Some(format!(
                "pod {pod} is being deleted, and debug container {name} was stopped with it (exit code {})",
                record.exit_code.unwrap_or_default()
            ))
        }
        _ => None,
    }
}

fn describe_waiting(
    mut status: DebugSessionStatus,
    session: &DebugSession,
    pod: &Pod,
    record: &DebugContainerStatus,
    now: Timestamp,
) -> DebugSessionStatus {
    let pod_name = pod_name(pod);
    let name = &record.name;
    let kubelet_says = || {
        let reason = record.reason.as_deref().unwrap_or("waiting");
        match record.kubelet_message.as_deref() {
            Some(message) if !message.is_empty() => format!("{reason}: {message}"),
            _ => reason.to_string(),
        }
    };
    if is_terminating(pod) {
        let failure = Failure::new(
            FailureReason::TargetGone,
            format!("pod {pod_name} is being deleted, so debug container {name} will never start"),
        );
        return fail(status, failure);
    }
    if !crate::target::is_running(pod) {
        let failure = Failure::new(
            FailureReason::TargetNotRunning,
            format!("pod {pod_name} is {}, so debug container {name} will never start", describe_phase(pod)),
        );
        return fail(status, failure);
    }
    if record.reason.as_deref().is_some_and(|r| DEFINITE_WAITING_REASONS.contains(&r)) {
        let failure = Failure::new(
            FailureReason::CannotStart,
            format!("the kubelet cannot start debug container {name}: {}", kubelet_says()),
        );
        status.waiting_reason = record.reason.clone();
        return fail(status, failure);
    }
    let timeout = SignedDuration::from_secs(session.spec.start_timeout_seconds.into());
    let injected_at = record.injected_at.as_ref().map_or(now, |t| t.0);
    if now.duration_since(injected_at) >= timeout {
        let waiting = match &record.reason {
            Some(_) => format!("it is still waiting ({})", kubelet_says()),
            None => "the kubelet never reported it; is the EphemeralContainers feature gate on for this node's kubelet (needed before 1.23)?".to_string(),
        };
        let failure = Failure::new(
            FailureReason::StartTimeout,
            format!("debug container {name} did not start within {}s: {waiting}", session.spec.start_timeout_seconds),
        );
        status.waiting_reason = record.reason.clone();
        return fail(status, failure);
    }
    status.phase = Some(Phase::Injected);
    status.waiting_reason = record.reason.clone();
    status.message = Some(match &record.reason {
        Some(_) => format!("debug container {name} is in pod {pod_name}, waiting: {}", kubelet_says()),
        None => format!("debug container {name} is in pod {pod_name}; waiting for the kubelet to start it"),
    });
    status
}

fn describe_terminated(
    mut status: DebugSessionStatus,
    record: &DebugContainerStatus,
    now: Timestamp,
) -> DebugSessionStatus {
    clear_current(&mut status);
    status.container_name = Some(record.name.clone());
    status.phase = Some(Phase::Terminated);
    status.exit_code = record.exit_code;
    status.exit_reason = record.reason.clone();
    status.started_at = record.started_at.clone();
    status.finished_at = record.finished_at.clone().or(Some(Time(now)));
    status.message = Some(format!(
        "debug container {} exited with code {}{}; {NOT_ATTACHABLE_HINT}",
        record.name,
        record.exit_code.unwrap_or_default(),
        record.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    ));
    status
}

fn clear_current(status: &mut DebugSessionStatus) {
    status.reason = None;
    status.attach_command = None;
    status.waiting_reason = None;
    status.exit_code = None;
    status.exit_reason = None;
    status.started_at = None;
    status.finished_at = None;
}

fn fail(mut status: DebugSessionStatus, failure: Failure) -> DebugSessionStatus {
    status.attach_command = None;
    status.phase = Some(Phase::Failed);
    status.reason = Some(failure.reason);
    status.message = Some(format!("{}; {}", failure.message, failure.reason.hint()));
    if failure.reason == FailureReason::Invalid
        && !status.containers.iter().any(|c| Some(&c.name) == status.container_name.as_ref())
    {
        // e.g. a name collision: the name belongs to someone else's container.
        status.container_name = None;
    }
    status
}

/// Fills in what follows from the decision: failure time, conditions, TTL.
fn finish(session: &DebugSession, mut decision: Decision, prior: &DebugSessionStatus, observed: &Observed) -> Decision {
    let now = observed.now;
    let status = &mut decision.status;
    if status.phase == Some(Phase::Failed) {
        let same_failure =
            prior.phase == Some(Phase::Failed) && prior.attempt == status.attempt && prior.reason == status.reason;
        status.finished_at = if same_failure { prior.finished_at.clone() } else { None }.or(Some(Time(now)));
    }
    status.conditions = conditions(session, status, &prior.conditions, observed.availability, now);
    if decision.next == Next::Wait {
        let mut settled = session.clone();
        settled.status = Some(status.clone());
        if ttl_deadline(&settled, status).is_some_and(|deadline| now >= deadline) && is_settled(&settled) {
            decision.next = Next::Delete;
        }
    }
    decision
}

/// When the session needs another look even if nothing it watches changes.
pub fn requeue_after(session: &DebugSession, status: &DebugSessionStatus, now: Timestamp) -> Option<Duration> {
    let until = |deadline: Timestamp| {
        let left = deadline.duration_since(now);
        Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_millis(100)
    };
    match status.phase? {
        Phase::Injected => {
            let record = status.containers.iter().find(|c| c.attempt == status.attempt)?;
            let injected_at = record.injected_at.as_ref().map_or(now, |t| t.0);
            Some(until(injected_at + SignedDuration::from_secs(session.spec.start_timeout_seconds.into())))
        }
        Phase::Terminated | Phase::Failed => ttl_deadline(session, status).map(until),
        Phase::Pending | Phase::Running => None,
    }
}

/// When a finished session is to be deleted, if it has a TTL.
pub fn ttl_deadline(session: &DebugSession, status: &DebugSessionStatus) -> Option<Timestamp> {
    let ttl = session.spec.ttl_seconds_after_finished?;
    if !status.phase?.is_finished() || status.attempt != session.spec.attempt {
        return None;
    }
    let finished = status.finished_at.as_ref()?.0;
    Some(finished + SignedDuration::from_secs(ttl.into()))
}

/// An event to publish about a change of a session's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The events that tell the story of going from `old` to `new`.
pub fn transitions(old: &DebugSessionStatus, new: &DebugSessionStatus) -> Vec<Transition> {
    let mut events = Vec::new();
    if new.pod_uid.is_some() && old.pod_uid != new.pod_uid {
        events.push(Transition {
            warning: false,
            reason: "TargetSelected".into(),
            note: format!("target pod {}", new.pod_name.as_deref().unwrap_or_default()),
        });
    }
    for record in &new.containers {
        if !old.containers.iter().any(|c| c.name == record.name) {
            events.push(Transition {
                warning: false,
                reason: "Injected".into(),
                note: format!(
                    "debug container {} (attempt {}) is in pod {}",
                    record.name,
                    record.attempt,
                    new.pod_name.as_deref().unwrap_or_default()
                ),
            });
        }
    }
    let changed = old.phase != new.phase || old.attempt != new.attempt || old.reason != new.reason;
    if changed && let Some(phase) = new.phase {
        let note = new.message.clone().unwrap_or_default();
        match phase {
            Phase::Running => events.push(Transition { warning: false, reason: "Running".into(), note }),
            Phase::Terminated => events.push(Transition { warning: false, reason: "Terminated".into(), note }),
            Phase::Failed => events.push(Transition {
                warning: true,
                reason: new.reason.map_or("Failed", FailureReason::as_str).into(),
                note,
            }),
            Phase::Pending | Phase::Injected => {}
        }
    }
    events
}

#[cfg(test)]
mod tests;
