//! What a session should do next and what its status says, derived from the
//! session and the target pod as the API server reports them. Pure: the
//! controller gathers the inputs and carries out the plan.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, EphemeralContainer, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{ContainerState, DebugContainerStatus, DebugSession, DebugSessionStatus, FailureReason, Phase};
use crate::debug_container::{NameOwner, attach_command, build_ephemeral_container, choose_container_name, name_owner};
use crate::target::{Failure, check_target};

/// The outcome of looking up the target pod.
#[derive(Debug, Clone, Copy)]
pub enum TargetLookup<'a> {
    Found(&'a Pod),
    Failed(&'a Failure),
}

/// What the controller should do for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Add this container to the pod, then plan again with the updated pod.
    Inject { container: Box<EphemeralContainer>, status: DebugSessionStatus },
    /// Nothing to write to the pod; publish this status.
    Report(DebugSessionStatus),
}

impl Plan {
    pub fn status(&self) -> &DebugSessionStatus {
        match self {
            Plan::Inject { status, .. } | Plan::Report(status) => status,
        }
    }
}

pub const NOT_ATTACHABLE_HINT: &str = "ephemeral containers cannot be restarted or removed, so it can no longer be attached to; raise spec.attempt to start a fresh debug container";

/// Plans the next step of `session`. `unavailable` is set when the cluster
/// does not serve ephemeral containers.
pub fn plan(session: &DebugSession, target: TargetLookup, unavailable: Option<&Failure>, now: Timestamp) -> Plan {
    let prior = session.status.clone().unwrap_or_default();
    let spec = &session.spec;
    let mut status = prior.clone();
    status.observed_generation = session.metadata.generation;

    if prior.phase == Some(Phase::Failed) && prior.reason.is_some_and(FailureReason::is_permanent) {
        return Plan::Report(finish(status, &prior, now));
    }

    if let TargetLookup::Found(pod) = target {
        status.pod_name = pod.metadata.name.clone();
        status.pod_uid = pod.metadata.uid.clone();
        record_kubelet_states(session, pod, &mut status.containers, now);
    }

    // A failure of this attempt stands until spec.attempt is raised, except a
    // start timeout that the kubelet overtook: a container that did start
    // after all is reported as it is.
    let started_late = prior.reason == Some(FailureReason::StartTimeout)
        && status.containers.iter().any(|c| {
            c.attempt == spec.attempt && matches!(c.state, ContainerState::Running | ContainerState::Terminated)
        });
    if prior.phase == Some(Phase::Failed) && prior.attempt == spec.attempt && !started_late {
        return Plan::Report(finish(status, &prior, now));
    }

    if let Some(current) = status.containers.iter().find(|c| c.attempt == spec.attempt).cloned() {
        status.attempt = spec.attempt;
        return Plan::Report(finish(describe_container(status, session, &current, target, now), &prior, now));
    }

    // The requested attempt has no container yet. An earlier one still running keeps the stage.
    if let Some(previous) = status.containers.last().cloned()
        && previous.state != ContainerState::Terminated
        && prior.phase != Some(Phase::Failed)
    {
        let mut waiting = describe_container(status.clone(), session, &previous, target, now);
        if waiting.phase != Some(Phase::Failed) {
            waiting.message = Some(format!(
                "spec.attempt {} waits for debug container {} (attempt {}) to terminate: ephemeral containers cannot be stopped by the API",
                spec.attempt, previous.name, previous.attempt
            ));
            return Plan::Report(finish(waiting, &prior, now));
        }
    }

    status.attempt = spec.attempt;
    clear_current(&mut status);
    let pod = match target {
        TargetLookup::Found(pod) => pod,
        TargetLookup::Failed(failure) => return Plan::Report(finish(fail(status, failure.clone()), &prior, now)),
    };
    if let Some(failure) = unavailable {
        return Plan::Report(finish(fail(status, failure.clone()), &prior, now));
    }
    let target_container = match check_target(pod, spec.target.container.as_deref()) {
        Ok(name) => name,
        Err(failure) => return Plan::Report(finish(fail(status, failure), &prior, now)),
    };
    let name = match choose_container_name(session, pod, spec.attempt) {
        Ok(name) => name,
        Err(taken) => {
            let failure = Failure::new(
                FailureReason::Invalid,
                format!(
                    "container name {taken} is already used by another container of pod {}",
                    status.pod_name.as_deref().unwrap_or_default()
                ),
            );
            return Plan::Report(finish(fail(status, failure), &prior, now));
        }
    };
    status.phase = Some(Phase::Pending);
    status.target_container_name = Some(target_container.clone());
    status.container_name = Some(name.clone());
    status.message =
        Some(format!("adding debug container {name} to pod {}", status.pod_name.as_deref().unwrap_or_default()));
    let container = Box::new(build_ephemeral_container(session, &name, &target_container));
    Plan::Inject { container, status: finish(status, &prior, now) }
}

/// Records that the container of the current attempt is now in the pod.
pub fn record_injection(status: &mut DebugSessionStatus, name: &str, attempt: i32, now: Timestamp) {
    if !status.containers.iter().any(|c| c.name == name) {
        status.containers.push(DebugContainerStatus {
            name: name.to_string(),
            attempt,
            injected_at: Some(Time(now)),
            ..Default::default()
        });
    }
}

/// Status for a failure of the current attempt that happened while writing (403, 422, ...).
pub fn failed_status(
    session: &DebugSession,
    status: DebugSessionStatus,
    failure: Failure,
    now: Timestamp,
) -> DebugSessionStatus {
    let prior = session.status.clone().unwrap_or_default();
    finish(fail(status, failure), &prior, now)
}

/// Updates the records of our containers from the pod, and adopts containers
/// of ours that the records miss (e.g. the operator crashed after injecting);
/// their start timeout counts from the adoption.
fn record_kubelet_states(session: &DebugSession, pod: &Pod, records: &mut Vec<DebugContainerStatus>, now: Timestamp) {
    let uid = session.metadata.uid.as_deref().unwrap_or_default();
    for attempt in 0..=session.spec.attempt {
        if records.iter().any(|r| r.attempt == attempt) {
            continue;
        }
        if let Ok(name) = choose_container_name(session, pod, attempt)
            && name_owner(pod, &name, uid) == NameOwner::ThisSession
        {
            records.push(DebugContainerStatus { name, attempt, injected_at: Some(Time(now)), ..Default::default() });
        }
    }
    records.sort_by_key(|r| r.attempt);
    let statuses = pod.status.as_ref().and_then(|s| s.ephemeral_container_statuses.as_ref());
    for record in records.iter_mut() {
        if let Some(kubelet) = statuses.and_then(|all| all.iter().find(|s| s.name == record.name)) {
            apply_kubelet_state(record, kubelet);
        }
    }
}

fn apply_kubelet_state(record: &mut DebugContainerStatus, kubelet: &ContainerStatus) {
    let Some(state) = &kubelet.state else { return };
    if let Some(t) = &state.terminated {
        record.state = ContainerState::Terminated;
        record.exit_code = Some(t.exit_code);
        record.reason = t.reason.clone();
        record.started_at = t.started_at.clone().or(record.started_at.clone());
        record.finished_at = t.finished_at.clone();
    } else if let Some(r) = &state.running {
        record.state = ContainerState::Running;
        record.reason = None;
        record.started_at = r.started_at.clone();
    } else if let Some(w) = &state.waiting {
        // Terminated never goes back (it is a restartPolicy Never container).
        if record.state != ContainerState::Terminated {
            record.state = ContainerState::Waiting;
            record.reason = w.reason.clone();
        }
    }
}

/// The status that the container of `record` gives the session.
fn describe_container(
    mut status: DebugSessionStatus,
    session: &DebugSession,
    record: &DebugContainerStatus,
    target: TargetLookup,
    now: Timestamp,
) -> DebugSessionStatus {
    clear_current(&mut status);
    status.container_name = Some(record.name.clone());
    let pod_name = status.pod_name.clone().unwrap_or_default();
    let pod = match target {
        TargetLookup::Found(pod) => pod,
        // A container that finished stays finished when its pod goes away later.
        TargetLookup::Failed(failure) if record.state == ContainerState::Terminated => {
            let mut status = describe_terminated(status, record, now);
            status.message = Some(format!("{}; since then, {}", status.message.unwrap_or_default(), failure.message));
            return status;
        }
        TargetLookup::Failed(failure) => return fail(status, failure.clone()),
    };
    if status.target_container_name.is_none() {
        status.target_container_name = pod
            .spec
            .iter()
            .flat_map(|s| s.ephemeral_containers.iter().flatten())
            .find(|c| c.name == record.name)
            .and_then(|c| c.target_container_name.clone());
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
        ContainerState::Unknown | ContainerState::Waiting => {
            if pod.metadata.uid.is_some() && !crate::target::is_running(pod) {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
                return fail(
                    status,
                    Failure::new(
                        FailureReason::TargetNotRunning,
                        format!("pod {pod_name} is {phase}, so debug container {} will never start", record.name),
                    ),
                );
            }
            let timeout = SignedDuration::from_secs(session.spec.start_timeout_seconds.into());
            let injected_at = record.injected_at.as_ref().map_or(now, |t| t.0);
            if now.duration_since(injected_at) >= timeout {
                let waiting = match &record.reason {
                    Some(reason) => format!("it is still waiting ({reason})"),
                    None => "the kubelet never reported it; is the EphemeralContainers feature gate on for this node's kubelet (needed on 1.16-1.22)?".to_string(),
                };
                return fail(
                    status,
                    Failure::new(
                        FailureReason::StartTimeout,
                        format!(
                            "debug container {} did not start within {}s: {waiting}",
                            record.name, session.spec.start_timeout_seconds
                        ),
                    ),
                );
            }
            status.phase = Some(Phase::Injected);
            status.waiting_reason = record.reason.clone();
            status.message = Some(match &record.reason {
                Some(reason) => format!("debug container {} is in pod {pod_name}, waiting: {reason}", record.name),
                None => {
                    format!("debug container {} is in pod {pod_name}; waiting for the kubelet to start it", record.name)
                }
            });
            status
        }
    }
}

fn describe_terminated(
    mut status: DebugSessionStatus,
    record: &DebugContainerStatus,
    now: Timestamp,
) -> DebugSessionStatus {
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
    status.waiting_reason = None;
    status.phase = Some(Phase::Failed);
    status.reason = Some(failure.reason);
    let hint = if failure.reason.is_permanent() {
        "create a new DebugSession to debug another pod"
    } else {
        "raise spec.attempt to try again"
    };
    status.message = Some(format!("{}; {hint}", failure.message));
    status
}

/// Fills in the timestamps and conditions that follow from the phase, keeping
/// those of `prior` that did not change.
fn finish(mut status: DebugSessionStatus, prior: &DebugSessionStatus, now: Timestamp) -> DebugSessionStatus {
    if status.phase == Some(Phase::Failed) {
        let same_failure = prior.phase == Some(Phase::Failed) && prior.attempt == status.attempt;
        status.finished_at = if same_failure { prior.finished_at.clone() } else { None }.or(Some(Time(now)));
    }
    status.conditions = conditions(&status, &prior.conditions, now);
    status
}

fn conditions(status: &DebugSessionStatus, prior: &[Condition], now: Timestamp) -> Vec<Condition> {
    let phase = status.phase.unwrap_or(Phase::Pending);
    let reason = status.reason.map_or(phase.as_str(), FailureReason::as_str);
    let message = status.message.clone().unwrap_or_default();
    let unavailable = status.reason == Some(FailureReason::EphemeralContainersUnavailable);
    let injected = matches!(phase, Phase::Injected | Phase::Running | Phase::Terminated)
        || status.containers.iter().any(|c| c.attempt == status.attempt);
    let wanted = [
        ("Ready", matches!(phase, Phase::Running | Phase::Terminated)),
        ("Reconciling", matches!(phase, Phase::Pending | Phase::Injected)),
        ("Stalled", phase == Phase::Failed),
        ("Injected", injected),
        ("Attachable", phase == Phase::Running),
        ("EphemeralContainersAvailable", !unavailable),
    ];
    wanted
        .into_iter()
        .map(|(type_, true_)| {
            let status_str = if true_ { "True" } else { "False" };
            let previous = prior.iter().find(|c| c.type_ == type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status_str => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: type_.to_string(),
                status: status_str.to_string(),
                reason: reason.to_string(),
                message: message.clone(),
                last_transition_time,
                observed_generation: status.observed_generation,
            }
        })
        .collect()
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
    if old.pod_uid.is_none() && new.pod_uid.is_some() {
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
                    "added debug container {} (attempt {}) to pod {}",
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
