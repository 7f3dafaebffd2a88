use super::*;
use crate::crd::DebugSessionSpec;
use crate::debug_container::build_ephemeral_container;
use crate::target::MIRROR_POD_ANNOTATION;
use k8s_openapi::api::core::v1::{
    Container, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, PodSpec, PodStatus,
};
use std::collections::BTreeMap;

const UID: &str = "abcde123-4567";
const T0: i64 = 1_800_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn session(attempt: i32, status: Option<DebugSessionStatus>) -> DebugSession {
    let spec: DebugSessionSpec = serde_json::from_value(serde_json::json!({
        "target": { "pod": "web" },
        "image": "busybox",
        "attempt": attempt,
        "startTimeoutSeconds": 60,
    }))
    .unwrap();
    let mut s = DebugSession::new("s1", spec);
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some(UID.into());
    s.metadata.generation = Some(attempt as i64 + 1);
    s.status = status;
    s
}

/// A Running pod `web` with container `app`, holding our debug containers in the given kubelet states.
fn pod(phase: &str, ours: &[(&str, Option<k8s_openapi::api::core::v1::ContainerState>)]) -> Pod {
    let s = session(0, None);
    let mut p = Pod::default();
    p.metadata.name = Some("web".into());
    p.metadata.namespace = Some("ns".into());
    p.metadata.uid = Some("pod-uid".into());
    p.spec = Some(PodSpec {
        containers: vec![Container { name: "app".into(), ..Default::default() }],
        ephemeral_containers: Some(ours.iter().map(|(n, _)| build_ephemeral_container(&s, n, "app")).collect()),
        ..Default::default()
    });
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        ephemeral_container_statuses: Some(
            ours.iter()
                .filter(|(_, state)| state.is_some())
                .map(|(n, state)| ContainerStatus { name: n.to_string(), state: state.clone(), ..Default::default() })
                .collect(),
        ),
        ..Default::default()
    });
    p
}

fn waiting(reason: &str) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    Some(k8s_openapi::api::core::v1::ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: None }),
        ..Default::default()
    })
}

fn running() -> Option<k8s_openapi::api::core::v1::ContainerState> {
    Some(k8s_openapi::api::core::v1::ContainerState {
        running: Some(ContainerStateRunning { started_at: Some(Time(at(5))) }),
        ..Default::default()
    })
}

fn terminated(code: i32) -> Option<k8s_openapi::api::core::v1::ContainerState> {
    Some(k8s_openapi::api::core::v1::ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
            started_at: Some(Time(at(5))),
            finished_at: Some(Time(at(9))),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn record(name: &str, attempt: i32, state: ContainerState) -> DebugContainerStatus {
    DebugContainerStatus { name: name.into(), attempt, state, injected_at: Some(Time(at(0))), ..Default::default() }
}

/// Status after a successful injection of attempt `attempt` at T0.
fn injected(records: Vec<DebugContainerStatus>, attempt: i32, phase: Phase) -> DebugSessionStatus {
    DebugSessionStatus {
        phase: Some(phase),
        attempt,
        pod_name: Some("web".into()),
        pod_uid: Some("pod-uid".into()),
        containers: records,
        ..Default::default()
    }
}

fn condition(status: &DebugSessionStatus, type_: &str) -> String {
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone()).unwrap_or_default()
}

/// What one case expects of the plan.
#[derive(Debug)]
struct Want {
    inject: Option<&'static str>,
    phase: Phase,
    reason: Option<FailureReason>,
    container: Option<&'static str>,
    attempt: i32,
}

const fn want(phase: Phase, container: Option<&'static str>) -> Want {
    Want { inject: None, phase, reason: None, container, attempt: 0 }
}

const fn failed(reason: FailureReason) -> Want {
    Want { inject: None, phase: Phase::Failed, reason: Some(reason), container: None, attempt: 0 }
}

#[test]
#[allow(clippy::type_complexity)]
fn plans_follow_the_pod_and_the_kubelet() {
    use ContainerState as S;
    use FailureReason as R;
    let not_found = Failure::new(R::TargetNotFound, "pod web does not exist");
    let gone = Failure::new(R::TargetGone, "pod web was deleted");
    let unavailable = Failure::new(R::EphemeralContainersUnavailable, "off");
    let mut mirror = pod("Running", &[]);
    mirror.metadata.annotations = Some(BTreeMap::from([(MIRROR_POD_ANNOTATION.into(), "x".into())]));
    let failed_attempt_0 =
        DebugSessionStatus { phase: Some(Phase::Failed), reason: Some(R::TargetNotRunning), ..Default::default() };
    let one_terminated = injected(vec![record("debugger-abcde", 0, S::Terminated)], 0, Phase::Terminated);
    let one_running = injected(vec![record("debugger-abcde", 0, S::Running)], 0, Phase::Running);
    let gone_status = DebugSessionStatus { reason: Some(R::TargetGone), ..injected(vec![], 0, Phase::Failed) };

    #[rustfmt::skip]
    let cases: Vec<(&str, DebugSession, Result<Pod, Failure>, Option<&Failure>, i64, Want)> = vec![
        ("fresh session injects the default name",
            session(0, None), Ok(pod("Running", &[])), None, 0,
            Want { inject: Some("debugger-abcde"), ..want(Phase::Pending, Some("debugger-abcde")) }),
        ("ephemeral containers unavailable",
            session(0, None), Ok(pod("Running", &[])), Some(&unavailable), 0, failed(R::EphemeralContainersUnavailable)),
        ("pod not found",
            session(0, None), Err(not_found.clone()), None, 0, failed(R::TargetNotFound)),
        ("pod pending",
            session(0, None), Ok(pod("Pending", &[])), None, 0, failed(R::TargetNotRunning)),
        ("static pod",
            session(0, None), Ok(mirror.clone()), None, 0, failed(R::StaticPodUnsupported)),
        ("injected, no kubelet status yet",
            session(0, Some(injected(vec![record("debugger-abcde", 0, S::Unknown)], 0, Phase::Injected))),
            Ok(pod("Running", &[("debugger-abcde", None)])), None, 10,
            want(Phase::Injected, Some("debugger-abcde"))),
        ("no kubelet status past the start timeout",
            session(0, Some(injected(vec![record("debugger-abcde", 0, S::Unknown)], 0, Phase::Injected))),
            Ok(pod("Running", &[("debugger-abcde", None)])), None, 61, failed(R::StartTimeout)),
        ("image pull failing past the start timeout",
            session(0, Some(injected(vec![record("debugger-abcde", 0, S::Unknown)], 0, Phase::Injected))),
            Ok(pod("Running", &[("debugger-abcde", waiting("ErrImagePull"))])), None, 60, failed(R::StartTimeout)),
        ("running",
            session(0, Some(injected(vec![record("debugger-abcde", 0, S::Unknown)], 0, Phase::Injected))),
            Ok(pod("Running", &[("debugger-abcde", running())])), None, 10,
            want(Phase::Running, Some("debugger-abcde"))),
        ("terminated",
            session(0, Some(one_running.clone())),
            Ok(pod("Running", &[("debugger-abcde", terminated(3))])), None, 10,
            want(Phase::Terminated, Some("debugger-abcde"))),
        ("container of ours found without a record is adopted, not injected again",
            session(0, None), Ok(pod("Running", &[("debugger-abcde", running())])), None, 10,
            want(Phase::Running, Some("debugger-abcde"))),
        ("raised attempt after termination injects the next name",
            session(1, Some(one_terminated.clone())),
            Ok(pod("Running", &[("debugger-abcde", terminated(0))])), None, 10,
            Want { inject: Some("debugger-abcde-1"), attempt: 1, ..want(Phase::Pending, Some("debugger-abcde-1")) }),
        ("raised attempt waits while the previous container runs",
            session(1, Some(one_running.clone())),
            Ok(pod("Running", &[("debugger-abcde", running())])), None, 10,
            want(Phase::Running, Some("debugger-abcde"))),
        ("a failure stands for its attempt",
            session(0, Some(failed_attempt_0.clone())), Ok(pod("Running", &[])), None, 10,
            failed(R::TargetNotRunning)),
        ("a raised attempt retries after a failure",
            session(1, Some(failed_attempt_0)), Ok(pod("Running", &[])), None, 10,
            Want { inject: Some("debugger-abcde-1"), attempt: 1, ..want(Phase::Pending, Some("debugger-abcde-1")) }),
        ("pinned pod deleted",
            session(0, Some(one_running.clone())), Err(gone.clone()), None, 10,
            want(Phase::Failed, Some("debugger-abcde"))),
        ("a start timeout overtaken by the kubelet reports the running container",
            session(0, Some(DebugSessionStatus { reason: Some(R::StartTimeout),
                ..injected(vec![record("debugger-abcde", 0, S::Waiting)], 0, Phase::Failed) })),
            Ok(pod("Running", &[("debugger-abcde", running())])), None, 90,
            want(Phase::Running, Some("debugger-abcde"))),
        ("a start timeout still waiting stands",
            session(0, Some(DebugSessionStatus { reason: Some(R::StartTimeout),
                ..injected(vec![record("debugger-abcde", 0, S::Waiting)], 0, Phase::Failed) })),
            Ok(pod("Running", &[("debugger-abcde", waiting("ErrImagePull"))])), None, 90,
            failed(R::StartTimeout)),
        ("a finished session stays Terminated when its pod is deleted later",
            session(0, Some(one_terminated.clone())), Err(gone.clone()), None, 10,
            want(Phase::Terminated, Some("debugger-abcde"))),
        ("raising the attempt after the pod was deleted is TargetGone",
            session(1, Some(one_terminated.clone())), Err(gone.clone()), None, 10,
            Want { attempt: 1, ..failed(R::TargetGone) }),
        ("target gone is permanent",
            session(3, Some(gone_status)), Ok(pod("Running", &[])), None, 10,
            failed(R::TargetGone)),
        ("pod finished before the container started",
            session(0, Some(injected(vec![record("debugger-abcde", 0, S::Unknown)], 0, Phase::Injected))),
            Ok(pod("Succeeded", &[("debugger-abcde", None)])), None, 10, failed(R::TargetNotRunning)),
    ];
    for (what, session, lookup, unavailable, secs, want) in cases {
        let lookup = match &lookup {
            Ok(pod) => TargetLookup::Found(pod),
            Err(failure) => TargetLookup::Failed(failure),
        };
        let plan = plan(&session, lookup, unavailable, at(secs));
        let status = plan.status();
        match (&plan, want.inject) {
            (Plan::Inject { container, .. }, Some(name)) => assert_eq!(container.name, name, "{what}"),
            (Plan::Report(_), None) => {}
            _ => panic!("{what}: expected inject {:?}, got {plan:?}", want.inject),
        }
        assert_eq!(status.phase, Some(want.phase), "{what}: {status:?}");
        if want.phase == Phase::Failed {
            assert_eq!(status.reason, want.reason.or(Some(R::TargetGone)), "{what}");
        } else {
            assert_eq!(status.reason, None, "{what}");
        }
        if want.container.is_some() {
            assert_eq!(status.container_name.as_deref(), want.container, "{what}");
        }
        assert_eq!(status.attempt, want.attempt, "{what}");
        assert_eq!(status.observed_generation, session.metadata.generation, "{what}");
        assert_eq!(
            condition(status, "Attachable"),
            if want.phase == Phase::Running { "True" } else { "False" },
            "{what}"
        );
        assert_eq!(condition(status, "Stalled"), if want.phase == Phase::Failed { "True" } else { "False" }, "{what}");
    }
}

#[test]
fn running_status_carries_the_attach_command() {
    let s = session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Unknown)], 0, Phase::Injected)));
    let p = pod("Running", &[("debugger-abcde", running())]);
    let status = plan(&s, TargetLookup::Found(&p), None, at(6)).status().clone();
    assert_eq!(status.attach_command.as_deref(), Some("kubectl attach -it -n ns web -c debugger-abcde"));
    assert_eq!(status.started_at, Some(Time(at(5))));
    assert_eq!(status.target_container_name.as_deref(), Some("app"));
    assert_eq!(condition(&status, "Ready"), "True");
    assert_eq!(condition(&status, "Reconciling"), "False");
}

#[test]
fn terminated_status_says_it_cannot_be_attached_again() {
    let s = session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Running)], 0, Phase::Running)));
    let p = pod("Running", &[("debugger-abcde", terminated(3))]);
    let status = plan(&s, TargetLookup::Found(&p), None, at(10)).status().clone();
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.attach_command, None);
    assert_eq!(status.finished_at, Some(Time(at(9))));
    let message = status.message.unwrap();
    assert!(message.contains("exited with code 3 (Error)"), "{message}");
    assert!(message.contains("cannot be restarted or removed"), "{message}");
    assert!(message.contains("raise spec.attempt"), "{message}");
    assert_eq!(status.containers[0].state, ContainerState::Terminated);
    assert_eq!(status.containers[0].exit_code, Some(3));
}

#[test]
fn waiting_reason_is_reported_while_injected() {
    let s = session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Unknown)], 0, Phase::Injected)));
    let p = pod("Running", &[("debugger-abcde", waiting("ErrImagePull"))]);
    let status = plan(&s, TargetLookup::Found(&p), None, at(10)).status().clone();
    assert_eq!(status.waiting_reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(status.containers[0].state, ContainerState::Waiting);
}

#[test]
fn renewal_keeps_every_earlier_container() {
    let s =
        session(1, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Terminated)], 0, Phase::Terminated)));
    let p = pod("Running", &[("debugger-abcde", terminated(0)), ("debugger-abcde-1", running())]);
    let status = plan(&s, TargetLookup::Found(&p), None, at(10)).status().clone();
    let names: Vec<_> = status.containers.iter().map(|c| (c.name.as_str(), c.attempt, c.state)).collect();
    assert_eq!(
        names,
        vec![("debugger-abcde", 0, ContainerState::Terminated), ("debugger-abcde-1", 1, ContainerState::Running)]
    );
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.attempt, 1);
}

#[test]
fn failure_time_and_condition_times_stay_put() {
    let s = session(0, None);
    let not_found = Failure::new(FailureReason::TargetNotFound, "gone");
    let first = plan(&s, TargetLookup::Failed(&not_found), None, at(1)).status().clone();
    let again = plan(&session(0, Some(first.clone())), TargetLookup::Failed(&not_found), None, at(50)).status().clone();
    assert_eq!(first, again, "a reconcile without news must not change the status");
    assert_eq!(again.finished_at, Some(Time(at(1))));
}

#[test]
fn requeue_waits_for_start_deadline_and_ttl() {
    let mut s = session(0, None);
    let injected_status = injected(vec![record("c", 0, ContainerState::Unknown)], 0, Phase::Injected);
    assert_eq!(requeue_after(&s, &injected_status, at(20)), Some(Duration::from_millis(40_100)));
    let mut done = injected(vec![record("c", 0, ContainerState::Terminated)], 0, Phase::Terminated);
    done.finished_at = Some(Time(at(9)));
    assert_eq!(requeue_after(&s, &done, at(20)), None, "no TTL, no requeue");
    s.spec.ttl_seconds_after_finished = Some(30);
    assert_eq!(ttl_deadline(&s, &done), Some(at(39)));
    assert_eq!(requeue_after(&s, &done, at(20)), Some(Duration::from_millis(19_100)));
    s.spec.attempt = 1;
    assert_eq!(ttl_deadline(&s, &done), None, "a raised attempt is not finished");
}

#[test]
fn transitions_tell_the_story() {
    let pending = DebugSessionStatus { phase: Some(Phase::Pending), ..Default::default() };
    let injected_status = injected(vec![record("c", 0, ContainerState::Unknown)], 0, Phase::Injected);
    let running_status = injected(vec![record("c", 0, ContainerState::Running)], 0, Phase::Running);
    let failed_status = DebugSessionStatus {
        phase: Some(Phase::Failed),
        reason: Some(FailureReason::Forbidden),
        message: Some("denied".into()),
        ..Default::default()
    };
    let reasons = |old: &DebugSessionStatus, new: &DebugSessionStatus| {
        transitions(old, new).into_iter().map(|t| (t.reason, t.warning)).collect::<Vec<_>>()
    };
    assert_eq!(
        reasons(&DebugSessionStatus::default(), &injected_status),
        vec![("TargetSelected".to_string(), false), ("Injected".to_string(), false)]
    );
    assert_eq!(reasons(&injected_status, &running_status), vec![("Running".to_string(), false)]);
    assert_eq!(reasons(&running_status, &running_status), vec![]);
    assert_eq!(reasons(&pending, &failed_status), vec![("Forbidden".to_string(), true)]);
}

#[test]
fn terminated_status_keeps_its_times_when_the_pod_goes_away() {
    let mut finished = record("debugger-abcde", 0, ContainerState::Terminated);
    finished.exit_code = Some(3);
    finished.reason = Some("Error".into());
    finished.finished_at = Some(Time(at(9)));
    let s = session(0, Some(injected(vec![finished], 0, Phase::Terminated)));
    let gone = Failure::new(FailureReason::TargetGone, "pod web was deleted");
    let status = plan(&s, TargetLookup::Failed(&gone), None, at(500)).status().clone();
    assert_eq!(status.phase, Some(Phase::Terminated));
    assert_eq!((status.exit_code, status.exit_reason.as_deref()), (Some(3), Some("Error")));
    assert_eq!(status.finished_at, Some(Time(at(9))), "ttlSecondsAfterFinished counts from the exit, not from now");
    assert_eq!(status.reason, None);
    assert!(status.message.unwrap().ends_with("since then, pod web was deleted"));
}
