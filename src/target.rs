//! Choosing and checking the target pod. Pure functions over pod objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::crd::{FailureReason, Target};

/// Annotation the kubelet puts on the API mirror of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why a session cannot go on, as shown in `status.reason` and `status.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// What the pod is, in words: its phase, or Terminating once deletion has begun.
pub fn describe_phase(pod: &Pod) -> &str {
    if is_terminating(pod) {
        "Terminating"
    } else {
        pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Unknown")
    }
}

/// Whether the label selector matches the labels. An invalid selector matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels.unwrap_or(&empty)))
}

/// Whether `pod` is one that `target` asks for: the named pod, or one its selector matches.
pub fn satisfies(pod: &Pod, target: &Target) -> bool {
    match (&target.pod, &target.selector) {
        (Some(name), _) => pod.metadata.name.as_ref() == Some(name),
        (None, Some(selector)) => selector_matches(selector, pod.metadata.labels.as_ref()),
        (None, None) => false,
    }
}

pub fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One Running pod among those a selector matched: Ready ones first, then the
/// newest, then by name so the choice is deterministic.
pub fn pick_pod<'a>(pods: &'a [Pod], selector: &str) -> Result<&'a Pod, Failure> {
    if pods.is_empty() {
        return Err(Failure::new(FailureReason::TargetNotFound, format!("no pod matches the selector {selector}")));
    }
    pods.iter()
        .filter(|p| is_running(p))
        .max_by(|a, b| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            is_ready(a).cmp(&is_ready(b)).then(created(a).cmp(&created(b))).then(pod_name(b).cmp(pod_name(a)))
        })
        .ok_or_else(|| {
            Failure::new(
                FailureReason::TargetNotRunning,
                format!("{} pod(s) match the selector {selector}, but none is Running", pods.len()),
            )
        })
}

/// Checks that ephemeral containers may be added to `pod` now, and returns the
/// name of the container whose process namespace the debug container shares.
pub fn check_target(pod: &Pod, requested_container: Option<&str>) -> Result<String, Failure> {
    let name = pod_name(pod);
    if pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION)) {
        return Err(Failure::new(
            FailureReason::StaticPodUnsupported,
            format!("pod {name} is the mirror of a static pod, and static pods cannot take ephemeral containers"),
        ));
    }
    if !is_running(pod) {
        return Err(Failure::new(
            FailureReason::TargetNotRunning,
            format!("pod {name} is {}; ephemeral containers can only be added to a Running pod", describe_phase(pod)),
        ));
    }
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    match requested_container {
        None => containers.first().map(|c| c.name.clone()).ok_or_else(|| {
            Failure::new(FailureReason::TargetContainerNotFound, format!("pod {name} has no containers"))
        }),
        Some(wanted) if containers.iter().any(|c| c.name == wanted) => Ok(wanted.to_string()),
        Some(wanted) => Err(Failure::new(
            FailureReason::TargetContainerNotFound,
            format!(
                "pod {name} has no container {wanted}; its containers are: {}",
                containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    pub fn pod(name: &str, phase: &str, ready: bool, created_secs: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created_secs).unwrap()));
        p.spec = Some(PodSpec {
            containers: vec![
                Container { name: "app".into(), ..Default::default() },
                Container { name: "sidecar".into(), ..Default::default() },
            ],
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn picks_ready_then_newest_running_pod() {
        let cases: Vec<(&str, Vec<Pod>, Result<&str, FailureReason>)> = vec![
            ("none", vec![], Err(FailureReason::TargetNotFound)),
            (
                "none running",
                vec![pod("a", "Pending", false, 1), pod("b", "Succeeded", false, 2)],
                Err(FailureReason::TargetNotRunning),
            ),
            ("only running one", vec![pod("a", "Pending", false, 9), pod("b", "Running", false, 1)], Ok("b")),
            ("ready beats newer", vec![pod("old", "Running", true, 1), pod("new", "Running", false, 5)], Ok("old")),
            ("newest among ready", vec![pod("old", "Running", true, 1), pod("new", "Running", true, 5)], Ok("new")),
            ("tie broken by name", vec![pod("b", "Running", true, 1), pod("a", "Running", true, 1)], Ok("a")),
        ];
        for (what, pods, want) in cases {
            let got = pick_pod(&pods, "app=x").map(pod_name).map_err(|f| f.reason);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn terminating_pod_is_not_running() {
        let mut p = pod("a", "Running", true, 1);
        p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(2).unwrap()));
        assert!(!is_running(&p));
        let failure = check_target(&p, None).unwrap_err();
        assert_eq!(failure.reason, FailureReason::TargetNotRunning);
        assert!(failure.message.contains("Terminating"), "{}", failure.message);
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn checks_target_pod_and_container() {
        let mut mirror = pod("kube-apiserver-node", "Running", true, 1);
        mirror.metadata.annotations = Some(BTreeMap::from([(MIRROR_POD_ANNOTATION.to_string(), "x".to_string())]));
        let cases: Vec<(&str, Pod, Option<&str>, Result<&str, FailureReason>)> = vec![
            ("defaults to first container", pod("p", "Running", true, 1), None, Ok("app")),
            ("named container", pod("p", "Running", true, 1), Some("sidecar"), Ok("sidecar")),
            (
                "missing container",
                pod("p", "Running", true, 1),
                Some("nope"),
                Err(FailureReason::TargetContainerNotFound),
            ),
            ("pending pod", pod("p", "Pending", false, 1), None, Err(FailureReason::TargetNotRunning)),
            ("succeeded pod", pod("p", "Succeeded", false, 1), None, Err(FailureReason::TargetNotRunning)),
            ("static pod", mirror, None, Err(FailureReason::StaticPodUnsupported)),
        ];
        for (what, p, container, want) in cases {
            let got = check_target(&p, container);
            assert_eq!(got.as_deref().map_err(|f| f.reason), want, "{what}");
        }
    }

    #[test]
    fn missing_container_message_lists_the_real_ones() {
        let failure = check_target(&pod("p", "Running", true, 1), Some("nope")).unwrap_err();
        assert_eq!(failure.message, "pod p has no container nope; its containers are: app, sidecar");
    }
}
