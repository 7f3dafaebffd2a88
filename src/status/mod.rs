//! The phase machine: given the session and what was read (see
//! [`crate::reads`]), what the status says and what to do next. Pure: the
//! controller gathers the inputs and carries out the decision.
//!
//! The pod and the spec are the authority. The session's previous status is
//! only a record: it may make ephemera report a finished session as finished,
//! never write to a pod that the pod and the spec do not call for.

mod conditions;

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, EphemeralContainer, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{
    ContainerState, DebugContainerStatus, DebugSession, DebugSessionStatus, DebugTargetStatus, FailureReason, Phase,
    TargetCounts, TargetMode,
};
use crate::debug_container::{
    Marked, Shaped, attach_command, build_ephemeral_container, choose_container_name, container_bytes,
    ineffective_capabilities, marked_containers, mismatch, shape,
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
    /// Add each container to its pod. The status is the claim, written first and
    /// only if the session is unchanged since it was read.
    Inject(Vec<Injection>),
    /// The session finished more than `ttlSecondsAfterFinished` ago.
    Delete,
    /// Keep the output of finished containers (`captureOutput`), then record it in the status.
    Capture(Vec<Capture>),
}

/// One container to add to one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub pod: Box<Pod>,
    pub container: Box<EphemeralContainer>,
}

/// The output of one finished container to keep in the ConfigMap `config_map`.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub pod: String,
    pub container: String,
    pub config_map: String,
    pub max_bytes: i32,
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
    } else if session.spec.target.mode == TargetMode::All {
        decide_fan_out(session, &prior, status, observed)
    } else {
        decide_with_pods(session, &prior, status, observed)
    };
    finish(session, decision, &prior, observed)
}

/// The ConfigMap that keeps the output of `attempt` (`captureOutput`).
pub fn output_config_map(session: &DebugSession, attempt: i32) -> String {
    let suffix = format!("-output-{attempt}");
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let keep = 253 - suffix.len();
    format!("{}{suffix}", &name[..name.len().min(keep)])
}

/// The same for one pod of a `mode: All` session.
pub fn output_config_map_of_pod(session: &DebugSession, pod: &str, attempt: i32) -> String {
    let suffix = format!("-{pod}-output-{attempt}");
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let keep = 253usize.saturating_sub(suffix.len());
    format!("{}{suffix}", &name[..name.len().min(keep)]).chars().take(253).collect()
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
            status.ephemeral_containers_at_injection.clear();
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
            status.ephemeral_containers_at_injection.clear();
            clear_current(&mut status);
            return report(fail(status, failure));
        }
    };

    status.pod_name = pod.metadata.name.clone();
    status.pod_uid = pod.metadata.uid.clone();
    let attempt = session.spec.attempt;
    // A predecessor's later attempts are its own business (see docs/gitops.md).
    let marked: Vec<Marked> =
        marked_containers(session, pod).into_iter().filter(|m| !m.predecessor || m.attempt <= attempt).collect();
    status.containers = records(&marked, pod, prior, session, now);
    status.ephemeral_containers_at_injection = marked
        .iter()
        .find(|m| m.attempt == attempt)
        .map(|current| at_injection(pod, &current.container.name, &prior.ephemeral_containers_at_injection))
        .unwrap_or_default();

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
        if let Some(failure) = container_mismatch(session, pod, current, observed.policy) {
            clear_current(&mut status);
            return report(fail(status, failure));
        }
        status.capabilities_warning = ineffective_capabilities(current.container, pod, session.spec.profile);
        let status = describe_container(status, session, pod, &record, now);
        if let Some(capture) = session.spec.capture_output
            && record.state == ContainerState::Terminated
            && record.output.is_none()
            && observed.policy.max_capture_bytes > 0
        {
            let config_map = match session.spec.target.mode {
                TargetMode::One => output_config_map(session, attempt),
                TargetMode::All => output_config_map_of_pod(session, pod_name(pod), attempt),
            };
            let next = Next::Capture(vec![Capture {
                pod: pod_name(pod).to_string(),
                container: record.name.clone(),
                config_map,
                max_bytes: capture.max_bytes.min(observed.policy.max_capture_bytes),
            }]);
            return Decision { status, next };
        }
        return report(status);
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
        Ok((shaped, target_container)) => {
            let container = shaped.container;
            status.omitted_from_target = shaped.omitted;
            status.capabilities_warning = ineffective_capabilities(&container, pod, session.spec.profile);
            status.phase = Some(Phase::Pending);
            status.target_container_name = Some(target_container);
            status.container_name = Some(container.name.clone());
            status.message = Some(format!("adding debug container {} to pod {}", container.name, pod_name(pod)));
            let injection = Injection { pod: Box::new(pod.clone()), container: Box::new(container) };
            Decision { status, next: Next::Inject(vec![injection]) }
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

/// A `mode: All` session: every pod of its set decided on its own, as a
/// one-pod session pinned to it would be, then summed up. The set is the pods
/// that hold the session's containers (the pods say so) and those the claim
/// picked before the containers went in; the first time, the Running pods the
/// selector matches, Ready first, then newest, up to `maxPods`.
fn decide_fan_out(
    session: &DebugSession,
    prior: &DebugSessionStatus,
    mut status: DebugSessionStatus,
    observed: &Observed,
) -> Decision {
    let report = |status| Decision { status, next: Next::Wait };
    let PodView::Selected(candidates) = observed.pods else { return report(status) };
    let max_pods = session.spec.target.max_pods.unwrap_or(1).max(1) as usize;
    if let Some(cap) = observed.policy.max_fan_out
        && max_pods > cap
    {
        status.attempt = session.spec.attempt;
        let failure = Failure::new(
            FailureReason::PolicyViolation,
            format!("target.maxPods {max_pods} is more than this cluster allows ({cap}) (rule policy.maxFanOut)"),
        );
        return report(fail(status, failure));
    }
    let holds_ours = |pod: &Pod| marked_containers(session, pod).iter().any(|m| !m.predecessor);
    let mut set: Vec<(String, Option<&Pod>)> =
        candidates.iter().filter(|p| holds_ours(p)).map(|p| (pod_name(p).to_string(), Some(p))).collect();
    for row in &prior.targets {
        if set.iter().any(|(name, _)| *name == row.pod_name) {
            continue;
        }
        let same = candidates.iter().find(|p| pod_name(p) == row.pod_name && p.metadata.uid == row.pod_uid);
        let injected_before = !row.containers.is_empty();
        if same.is_some() || injected_before {
            set.push((row.pod_name.clone(), same));
        }
    }
    let mut picked_note = None;
    if set.is_empty() {
        let mut running: Vec<&Pod> = candidates.iter().filter(|p| crate::target::is_running(p)).collect();
        running.sort_by(|a, b| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            crate::target::is_ready(b)
                .cmp(&crate::target::is_ready(a))
                .then(created(b).cmp(&created(a)))
                .then(pod_name(a).cmp(pod_name(b)))
        });
        if running.is_empty() {
            let shown = session.spec.target.selector.as_ref().map(selector_text).unwrap_or_default();
            let failure = match pick_pod(candidates, &shown) {
                Err(failure) => failure,
                Ok(_) => Failure::new(FailureReason::TargetNotRunning, "no pod runs"),
            };
            if stands(session, prior) {
                return report(status);
            }
            status.attempt = session.spec.attempt;
            status.targets.clear();
            clear_current(&mut status);
            return report(fail(status, failure));
        }
        set = running.into_iter().take(max_pods).map(|p| (pod_name(p).to_string(), Some(p))).collect();
    }
    set.sort_by(|a, b| a.0.cmp(&b.0));
    // Say why Running pods that match are not debugged: the cap, or the set fixed before they came.
    let running = candidates.iter().filter(|p| crate::target::is_running(p)).count();
    let outside: Vec<&str> = candidates
        .iter()
        .filter(|p| crate::target::is_running(p) && !set.iter().any(|(name, _)| name == pod_name(p)))
        .map(pod_name)
        .collect();
    if !outside.is_empty() {
        let chosen = set.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ");
        picked_note = Some(if set.len() >= max_pods {
            format!(
                "{running} Running pods match; target.maxPods is {max_pods}, so the debug containers go to {chosen}"
            )
        } else {
            format!(
                "the set of pods was fixed when the first containers went in; {} came later and are left out",
                outside.join(", ")
            )
        });
    }

    let mut rows = Vec::new();
    let mut injections = Vec::new();
    let mut captures = Vec::new();
    for (name, pod) in &set {
        let previous = prior.targets.iter().find(|r| r.pod_name == *name);
        let row_prior = previous.map(row_to_status).unwrap_or_else(|| DebugSessionStatus {
            pod_name: Some(name.clone()),
            pod_uid: pod.and_then(|p| p.metadata.uid.clone()),
            ..Default::default()
        });
        let row_observed = Observed { pods: PodView::Named { name, pod: *pod }, ..*observed };
        let mut one = session.clone();
        one.status = Some(row_prior.clone());
        let decision = decide_with_pods(&one, &row_prior, row_prior.clone(), &row_observed);
        match decision.next {
            Next::Inject(found) => injections.extend(found),
            Next::Capture(found) => captures.extend(found),
            // A picked pod that left the selector before anything went in: not in the set any more.
            Next::LookAgain => continue,
            Next::Wait | Next::Delete => {}
        }
        rows.push(status_to_row(name, &decision.status));
    }
    status.targets = rows;
    summarize(session, &mut status, picked_note);
    let next = if !injections.is_empty() {
        Next::Inject(injections)
    } else if !captures.is_empty() {
        Next::Capture(captures)
    } else {
        Next::Wait
    };
    Decision { status, next }
}

fn row_to_status(row: &DebugTargetStatus) -> DebugSessionStatus {
    DebugSessionStatus {
        phase: row.phase,
        attempt: row.attempt,
        reason: row.reason,
        message: row.message.clone(),
        pod_name: Some(row.pod_name.clone()),
        pod_uid: row.pod_uid.clone(),
        target_container_name: row.target_container_name.clone(),
        container_name: row.container_name.clone(),
        exit_code: row.exit_code,
        exit_reason: row.exit_reason.clone(),
        finished_at: row.finished_at.clone(),
        containers: row.containers.clone(),
        ..Default::default()
    }
}

fn status_to_row(pod: &str, status: &DebugSessionStatus) -> DebugTargetStatus {
    DebugTargetStatus {
        pod_name: pod.to_string(),
        pod_uid: status.pod_uid.clone(),
        phase: status.phase,
        attempt: status.attempt,
        reason: status.reason,
        message: status.message.clone(),
        target_container_name: status.target_container_name.clone(),
        container_name: status.container_name.clone(),
        exit_code: status.exit_code,
        exit_reason: status.exit_reason.clone(),
        finished_at: status.finished_at.clone(),
        containers: status.containers.clone(),
    }
}

/// The session's phase from its pods': Running while any runs; then waiting
/// ones; Terminated once every pod's container ended, Failed only if every pod failed.
fn summarize(session: &DebugSession, status: &mut DebugSessionStatus, picked_note: Option<String>) {
    let rows = status.targets.clone();
    let count = |phases: &[Phase]| rows.iter().filter(|r| r.phase.is_some_and(|p| phases.contains(&p))).count() as i32;
    let counts = TargetCounts {
        total: rows.len() as i32,
        pending: count(&[Phase::Pending, Phase::Injected]),
        running: count(&[Phase::Running]),
        terminated: count(&[Phase::Terminated]),
        failed: count(&[Phase::Failed]),
    };
    let attempt = session.spec.attempt;
    let current = rows.iter().all(|r| r.attempt == attempt);
    clear_current(status);
    status.attempt = if current { attempt } else { rows.iter().map(|r| r.attempt).min().unwrap_or(attempt) };
    status.container_name = rows.iter().find_map(|r| r.container_name.clone());
    status.pod_name = None;
    status.pod_uid = None;
    status.containers.clear();
    let phase = if counts.running > 0 {
        Phase::Running
    } else if rows.iter().any(|r| r.phase == Some(Phase::Pending)) {
        Phase::Pending
    } else if counts.pending > 0 {
        Phase::Injected
    } else if counts.failed == counts.total && counts.total > 0 {
        Phase::Failed
    } else {
        Phase::Terminated
    };
    status.phase = Some(phase);
    let mut message = format!(
        "{} pods: {} running, {} waiting, {} terminated, {} failed",
        counts.total, counts.running, counts.pending, counts.terminated, counts.failed
    );
    if let Some(note) = picked_note {
        message = format!("{note}; {message}");
    }
    if phase == Phase::Failed {
        let first = rows.first().and_then(|r| r.reason);
        let same = rows.iter().all(|r| r.reason == first);
        status.reason =
            Some(if same { first.unwrap_or(FailureReason::TargetGone) } else { FailureReason::TargetNotRunning });
        message =
            format!("{message}; {}", rows.iter().filter_map(|r| r.message.clone()).collect::<Vec<_>>().join("; "));
    }
    if phase == Phase::Terminated {
        status.finished_at = rows.iter().filter_map(|r| r.finished_at.clone()).max_by_key(|t| t.0);
    }
    status.message = Some(message);
    status.target_counts = Some(counts);
}

/// Marks the row of `pod` in a claim as failed: the API server refused its container.
pub fn refuse_target(claim: &mut DebugSessionStatus, pod: &str, failure: Failure) {
    if let Some(row) = claim.targets.iter_mut().find(|r| r.pod_name == pod) {
        let failed = fail(row_to_status(row), failure);
        *row = status_to_row(pod, &failed);
    }
}

/// Records where a container's output was kept.
pub fn record_output(status: &mut DebugSessionStatus, capture: &Capture, output: String) {
    let records = if status.targets.is_empty() {
        &mut status.containers
    } else {
        match status.targets.iter_mut().find(|r| r.pod_name == capture.pod) {
            Some(row) => &mut row.containers,
            None => return,
        }
    };
    if let Some(record) = records.iter_mut().find(|r| r.name == capture.container) {
        record.output = Some(output);
    }
}

/// The names of the pod's ephemeral containers, oldest first, up to and including `last`.
/// The pod's ephemeral containers when `own` was added, `own` last. Read from
/// the pod the write answered with (nobody can have added one after it yet),
/// and kept from then on while the pod bears it out: every name in it, `own`
/// last. The order in the pod keeps no history: a strategic merge patch
/// (`kubectl debug`'s, ours) puts its container first.
fn at_injection(pod: &Pod, own: &str, recorded: &[String]) -> Vec<String> {
    if borne_out(pod, own, recorded) {
        return recorded.to_vec();
    }
    let mut names: Vec<String> =
        pod.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()).map(|c| c.name.clone()).collect();
    names.retain(|name| name != own);
    names.push(own.to_string());
    names
}

/// Whether the record of the containers in the pod when `own` went in can be
/// true. Once it is, it stays so: containers are never removed from a pod.
fn borne_out(pod: &Pod, own: &str, recorded: &[String]) -> bool {
    let in_pod: HashSet<&str> =
        pod.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()).map(|c| c.name.as_str()).collect();
    let unique: HashSet<&str> = recorded.iter().map(String::as_str).collect();
    recorded.last().is_some_and(|last| last == own)
        && unique.len() == recorded.len()
        && recorded.iter().all(|name| in_pod.contains(name.as_str()))
}

/// The session's own containers in `pod` ([`marked_containers`]), when they
/// are all that [`decide`] reads of the pod's ephemeral containers (with their
/// statuses). So it is once the current attempt's container is in the pod and
/// the record of the containers before it is borne out: other containers only
/// matter for naming and sizing a container yet to be added, and for that
/// record while it is not. A `mode: All` session keeps no such record (its
/// rows do not), so for it the container in the pod is enough; what it weighs
/// of its other pods comes with their own changes.
pub fn reads_only_own_containers<'a>(session: &DebugSession, pod: &'a Pod) -> Option<Vec<&'a EphemeralContainer>> {
    if session.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let marked = marked_containers(session, pod);
    let current = marked.iter().find(|m| m.attempt == session.spec.attempt)?;
    let fan_out = session.spec.target.mode == TargetMode::All;
    let recorded = session.status.as_ref().map(|s| s.ephemeral_containers_at_injection.as_slice()).unwrap_or_default();
    (fan_out || borne_out(pod, &current.container.name, recorded)).then(|| marked.iter().map(|m| m.container).collect())
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
                // What was captured is only recorded here (the ConfigMap carries the session's name).
                output: previous.and_then(|r| r.output.clone()),
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
fn container_mismatch(session: &DebugSession, pod: &Pod, found: &Marked, policy: &Policy) -> Option<Failure> {
    let target_container = found.container.target_container_name.clone().unwrap_or_default();
    let name = &found.container.name;
    let wanted = shape(session, pod, name, &target_container, found.attempt, policy.allow_secret_mounts)
        .map(|shaped| shaped.container)
        .unwrap_or_else(|_| build_ephemeral_container(session, name, &target_container, found.attempt));
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
fn plan_injection(session: &DebugSession, pod: &Pod, observed: &Observed) -> Result<(Shaped, String), Failure> {
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
    let shaped =
        shape(session, pod, &name, &target_container, session.spec.attempt, observed.policy.allow_secret_mounts)
            .map_err(|why| Failure::new(FailureReason::Invalid, why))?;
    let bytes = container_bytes(&shaped.container);
    if bytes > MAX_CONTAINER_BYTES {
        return Err(Failure::new(
            FailureReason::Invalid,
            format!(
                "the debug container would add {bytes} bytes to pod {}; at most {MAX_CONTAINER_BYTES} are allowed per attempt, since every attempt stays in the pod",
                pod_name(pod)
            ),
        ));
    }
    Ok((shaped, target_container))
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

/// The waiting reason the kubelet gives a container it is starting normally.
pub const ROUTINE_WAITING_REASON: &str = "ContainerCreating";

/// The status adds nothing to the claim but that the current attempt's
/// container is in the pod and on its way: the kubelet has not reported on
/// it yet, or is creating it as it does every container. (Sessions on one pod
/// only; a fan-out's rows move on their own.)
pub fn awaits_kubelet(status: &DebugSessionStatus) -> bool {
    let on_its_way = |record: &DebugContainerStatus| match (&record.state, status.waiting_reason.as_deref()) {
        (ContainerState::Unknown, None) => true,
        (ContainerState::Waiting, Some(reason)) => reason == ROUTINE_WAITING_REASON,
        _ => false,
    };
    status.targets.is_empty()
        && status.phase == Some(Phase::Injected)
        && status.containers.iter().any(|r| r.attempt == status.attempt && on_its_way(r))
}

/// Whether the kubelet has reported on the current attempt's container: any
/// state, ContainerCreating included. (Sessions on one pod only.)
pub fn kubelet_spoke(status: &DebugSessionStatus) -> bool {
    status.targets.is_empty()
        && status.containers.iter().any(|r| r.attempt == status.attempt && r.state != ContainerState::Unknown)
}

/// Whether `new` tells nothing beyond `published` but that the kubelet has
/// begun creating the container `published` already says is in the pod, on
/// its way: routine, not worth a write of its own. It is written with the
/// next real change (a start, a problem, a timeout), which keeps the normal
/// path at one write per phase however long the kubelet takes to report.
pub fn only_routine_news(published: &DebugSessionStatus, new: &DebugSessionStatus) -> bool {
    if !(awaits_kubelet(published)
        && published.waiting_reason.is_none()
        && awaits_kubelet(new)
        && new.waiting_reason.as_deref() == Some(ROUTINE_WAITING_REASON))
    {
        return false;
    }
    let mut as_published = new.clone();
    as_published.waiting_reason = None;
    as_published.message.clone_from(&published.message);
    as_published.conditions.clone_from(&published.conditions);
    for record in &mut as_published.containers {
        let before = published.containers.iter().find(|r| r.name == record.name && r.attempt == record.attempt);
        if record.attempt == new.attempt
            && record.state == ContainerState::Waiting
            && before.is_some_and(|b| b.state == ContainerState::Unknown)
        {
            record.state = ContainerState::Unknown;
            record.reason = None;
            record.kubelet_message = None;
        }
    }
    as_published == *published
}

/// When the session needs another look even if nothing it watches changes.
pub fn requeue_after(session: &DebugSession, status: &DebugSessionStatus, now: Timestamp) -> Option<Duration> {
    let until = |deadline: Timestamp| {
        let left = deadline.duration_since(now);
        Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_millis(100)
    };
    let start_deadline = |records: &[DebugContainerStatus], attempt: i32| {
        let record = records.iter().find(|c| c.attempt == attempt)?;
        let injected_at = record.injected_at.as_ref().map_or(now, |t| t.0);
        Some(until(injected_at + SignedDuration::from_secs(session.spec.start_timeout_seconds.into())))
    };
    // A fan-out waits for the earliest start deadline among its pods that wait.
    if !status.targets.is_empty() && status.phase.is_some_and(|p| !p.is_finished()) {
        return status
            .targets
            .iter()
            .filter(|t| t.phase == Some(Phase::Injected))
            .filter_map(|t| start_deadline(&t.containers, t.attempt))
            .min();
    }
    match status.phase? {
        Phase::Injected => start_deadline(&status.containers, status.attempt),
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

/// The events that tell the story of going from `old` to `new`. Which pod a
/// selector chose is news; a pod the spec names is not (`Injected` names it).
pub fn transitions(chosen_by_selector: bool, old: &DebugSessionStatus, new: &DebugSessionStatus) -> Vec<Transition> {
    let mut events = Vec::new();
    if chosen_by_selector && new.pod_uid.is_some() && old.pod_uid != new.pod_uid {
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
