//! What a reconcile must read, decided from the session alone before any IO
//! (the "dereference" step): the reconcile then reads exactly that, and the
//! planner in [`crate::status`] works on what was read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::{DebugSession, FailureReason, Phase};
use crate::validation;

/// The pod reads of one reconcile: at most one request.
#[derive(Debug, Clone, PartialEq)]
pub enum PodReads {
    /// Nothing: the session is finished, or cannot act at all.
    None,
    /// GET this pod of the session's namespace.
    Named(String),
    /// LIST the pods of the session's namespace that this selector matches.
    Selected(LabelSelector),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reads {
    pub pods: PodReads,
    /// Whether ephemeral containers must be known to be served (a container may be added).
    /// Answered from memory, except the first time and after a write said they are off.
    pub availability: bool,
}

impl Reads {
    pub const NOTHING: Reads = Reads { pods: PodReads::None, availability: false };
}

/// Whether the current attempt has settled for good, by the session's status.
/// Only a status that this operator wrote itself may say so ([`reads_for`]):
/// a finished session must not be woken, nor read, by every pod event.
pub fn is_settled(session: &DebugSession) -> bool {
    let Some(status) = &session.status else { return false };
    if status.phase == Some(Phase::Failed) && status.reason.is_some_and(FailureReason::is_permanent) {
        return true;
    }
    if status.attempt != session.spec.attempt {
        return false;
    }
    match status.phase {
        Some(Phase::Terminated) => true,
        // A start timeout gives way when the kubelet starts the container after all.
        Some(Phase::Failed) => status.reason != Some(FailureReason::StartTimeout),
        _ => false,
    }
}

/// The reads one reconcile of `session` needs. `status_is_own` says that the
/// session's status is the one this operator last wrote; any other status
/// (written by someone else, or from before a restart) is checked against
/// the pod once before it is believed.
pub fn reads_for(session: &DebugSession, status_is_own: bool) -> Reads {
    if session.metadata.deletion_timestamp.is_some() || validation::check_spec(&session.spec).is_err() {
        return Reads::NOTHING;
    }
    if status_is_own && is_settled(session) {
        return Reads::NOTHING;
    }
    let target = &session.spec.target;
    let pinned = session.status.as_ref().and_then(|s| s.pod_name.clone());
    let pods = match (&target.pod, &target.selector, pinned) {
        // Every pod of a fan-out, in one list.
        (None, Some(selector), _) if target.mode == crate::crd::TargetMode::All => PodReads::Selected(selector.clone()),
        (Some(name), _, _) => PodReads::Named(name.clone()),
        // Once picked, a selector's pod is read by name, then checked against the selector.
        (None, Some(_), Some(pinned)) if validation::is_dns1123_subdomain(&pinned) => PodReads::Named(pinned),
        (None, Some(selector), _) => PodReads::Selected(selector.clone()),
        (None, None, _) => return Reads::NOTHING,
    };
    Reads { pods, availability: !is_settled(session) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DebugSessionSpec, DebugSessionStatus};

    fn session(target: serde_json::Value, status: Option<DebugSessionStatus>) -> DebugSession {
        let spec: DebugSessionSpec =
            serde_json::from_value(serde_json::json!({ "target": target, "image": "busybox" })).unwrap();
        let mut s = DebugSession::new("s", spec);
        s.status = status;
        s
    }

    fn status(phase: Phase, reason: Option<FailureReason>, pod: Option<&str>) -> Option<DebugSessionStatus> {
        Some(DebugSessionStatus { phase: Some(phase), reason, pod_name: pod.map(String::from), ..Default::default() })
    }

    #[test]
    fn reads_follow_from_the_session_alone() {
        let by_name = serde_json::json!({ "pod": "web" });
        let by_selector = serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } });
        let selector = || PodReads::Selected(serde_json::from_value(by_selector["selector"].clone()).unwrap());
        let named = |n: &str| PodReads::Named(n.into());
        let cases = [
            ("new by name", session(by_name.clone(), None), true, named("web"), true),
            ("new by selector", session(by_selector.clone(), None), true, selector(), true),
            (
                "selector pinned",
                session(by_selector.clone(), status(Phase::Running, None, Some("web-2"))),
                true,
                named("web-2"),
                true,
            ),
            (
                "pin that is no pod name",
                session(by_selector.clone(), status(Phase::Running, None, Some("../x"))),
                true,
                selector(),
                true,
            ),
            (
                "by name, status points elsewhere",
                session(by_name.clone(), status(Phase::Running, None, Some("other"))),
                true,
                named("web"),
                true,
            ),
            (
                "terminated, own status",
                session(by_name.clone(), status(Phase::Terminated, None, Some("web"))),
                true,
                PodReads::None,
                false,
            ),
            (
                "terminated, status not ours",
                session(by_name.clone(), status(Phase::Terminated, None, Some("web"))),
                false,
                named("web"),
                false,
            ),
            (
                "standing failure",
                session(by_name.clone(), status(Phase::Failed, Some(FailureReason::Forbidden), None)),
                true,
                PodReads::None,
                false,
            ),
            (
                "start timeout still watches the kubelet",
                session(by_name.clone(), status(Phase::Failed, Some(FailureReason::StartTimeout), Some("web"))),
                true,
                named("web"),
                true,
            ),
            ("invalid spec", session(serde_json::json!({ "pod": "a b" }), None), true, PodReads::None, false),
        ];
        for (what, s, own, pods, availability) in cases {
            assert_eq!(reads_for(&s, own), Reads { pods, availability }, "{what}");
        }
        let mut deleting = session(by_name, None);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(reads_for(&deleting, true), Reads::NOTHING, "a session being deleted acts no more");
    }

    #[test]
    fn a_raised_attempt_is_not_settled() {
        let mut s = session(serde_json::json!({ "pod": "web" }), status(Phase::Terminated, None, Some("web")));
        assert!(is_settled(&s));
        s.spec.attempt = 1;
        assert!(!is_settled(&s));
        assert_eq!(reads_for(&s, true).pods, PodReads::Named("web".into()));
    }
}
