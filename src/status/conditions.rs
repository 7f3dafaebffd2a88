//! Conditions, each with a reason and message of its own. `Ready`,
//! `Reconciling` and `Stalled` follow kstatus (sigs.k8s.io/cli-utils), so Flux,
//! Argo CD and `kubectl wait` read a session's progress without knowing the kind:
//! Reconciling=True while anything is still to happen (a raised attempt
//! included), Stalled=True once the current attempt failed, Ready=True once
//! the current attempt ran (Running, or Terminated: the session did its job).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{DebugSession, DebugSessionStatus, FailureReason, Phase};
use crate::ephemeral_api::Availability;

struct Wanted {
    type_: &'static str,
    /// None keeps the previous condition as it is (nothing new is known).
    status: Option<bool>,
    reason: String,
    message: String,
}

/// The conditions of `status`; `availability` is set when the reconcile asked for it.
pub fn conditions(
    session: &DebugSession,
    status: &DebugSessionStatus,
    prior: &[Condition],
    availability: Option<&Availability>,
    now: Timestamp,
) -> Vec<Condition> {
    let phase = status.phase;
    let message = status.message.clone().unwrap_or_default();
    let failure = status.reason.filter(|_| phase == Some(Phase::Failed));
    let attempt_pending = status.attempt < session.spec.attempt;
    let current = status
        .containers
        .iter()
        .chain(status.targets.iter().flat_map(|t| t.containers.iter()))
        .find(|c| c.attempt == status.attempt);
    let phase_name = phase.map_or("Unknown", Phase::as_str);

    let ready = Wanted {
        type_: "Ready",
        status: Some(matches!(phase, Some(Phase::Running | Phase::Terminated)) && !attempt_pending),
        reason: failure.map_or(phase_name, FailureReason::as_str).to_string(),
        message: message.clone(),
    };
    let reconciling = if attempt_pending {
        Wanted {
            type_: "Reconciling",
            status: Some(true),
            reason: "AttemptPending".into(),
            message: format!("spec.attempt {} is not under way yet: {message}", session.spec.attempt),
        }
    } else {
        let (active, reason) = match phase {
            None | Some(Phase::Pending) => (true, "Injecting"),
            Some(Phase::Injected) => (true, "WaitingForKubelet"),
            Some(other) => (false, other.as_str()),
        };
        Wanted { type_: "Reconciling", status: Some(active), reason: reason.into(), message: message.clone() }
    };
    let stalled = Wanted {
        type_: "Stalled",
        status: Some(failure.is_some()),
        reason: failure.map_or("NoFailure", FailureReason::as_str).into(),
        message: if failure.is_some() { message.clone() } else { String::new() },
    };
    let injected = match current {
        Some(record) => Wanted {
            type_: "Injected",
            status: Some(true),
            reason: "InPodSpec".into(),
            message: format!(
                "debug container {} is in pod {}",
                record.name,
                status.pod_name.as_deref().unwrap_or_default()
            ),
        },
        None => Wanted {
            type_: "Injected",
            status: Some(false),
            reason: "NotInjected".into(),
            message: format!("no debug container of attempt {} is in a pod", status.attempt),
        },
    };
    let attachable = match phase {
        Some(Phase::Running) => Wanted {
            type_: "Attachable",
            status: Some(true),
            reason: "Running".into(),
            message: status.attach_command.clone().unwrap_or_default(),
        },
        Some(Phase::Terminated) => Wanted {
            type_: "Attachable",
            status: Some(false),
            reason: "Terminated".into(),
            message: "the debug container exited; ephemeral containers cannot be restarted".into(),
        },
        _ => Wanted {
            type_: "Attachable",
            status: Some(false),
            reason: failure.map_or("NotRunning", FailureReason::as_str).into(),
            message: "the debug container is not running".into(),
        },
    };
    let available = match availability {
        Some(Availability::Available(shape)) => Wanted {
            type_: "EphemeralContainersAvailable",
            status: Some(true),
            reason: "Served".into(),
            message: format!("the API server serves pods/ephemeralcontainers ({})", shape.describe()),
        },
        Some(Availability::Unavailable(advice)) => Wanted {
            type_: "EphemeralContainersAvailable",
            status: Some(false),
            reason: "NotServed".into(),
            message: advice.clone(),
        },
        None => Wanted {
            type_: "EphemeralContainersAvailable",
            status: None,
            reason: String::new(),
            message: String::new(),
        },
    };

    let capabilities = match &status.capabilities_warning {
        Some(warning) => Wanted {
            type_: "CapabilitiesEffective",
            status: Some(false),
            reason: "NonRootUser".into(),
            message: warning.clone(),
        },
        None => Wanted {
            type_: "CapabilitiesEffective",
            status: Some(true),
            reason: "AsProfiled".into(),
            message: "the debug container gets what its profile adds".into(),
        },
    };

    [ready, reconciling, stalled, injected, attachable, available, capabilities]
        .into_iter()
        .map(|wanted| {
            let previous = prior.iter().find(|c| c.type_ == wanted.type_);
            let Some(true_) = wanted.status else {
                // Nothing new about it: keep what was known, or say it is not known yet.
                return previous.cloned().unwrap_or_else(|| Condition {
                    type_: wanted.type_.into(),
                    status: "Unknown".into(),
                    reason: "NotChecked".into(),
                    message: "not checked yet".into(),
                    last_transition_time: Time(now),
                    observed_generation: status.observed_generation,
                });
            };
            let status_str = if true_ { "True" } else { "False" };
            let last_transition_time = match previous {
                Some(p) if p.status == status_str => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: wanted.type_.to_string(),
                status: status_str.to_string(),
                reason: wanted.reason,
                message: wanted.message,
                last_transition_time,
                observed_generation: status.observed_generation,
            }
        })
        .collect()
}
