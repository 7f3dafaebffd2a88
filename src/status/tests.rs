use super::*;
use crate::crd::DebugSessionSpec;
use crate::debug_container::build_ephemeral_container;
use crate::ephemeral_api::ApiShape;
use crate::target::MIRROR_POD_ANNOTATION;
use k8s_openapi::api::core::v1::{
    Container, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, EphemeralContainer, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::collections::BTreeMap;

const UID: &str = "abcde123-4567";
const T0: i64 = 1_800_000_000;
const SERVED: Availability = Availability::Available(ApiShape::PodSubresource);

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn session_for(target: serde_json::Value, attempt: i32, status: Option<DebugSessionStatus>) -> DebugSession {
    let spec: DebugSessionSpec = serde_json::from_value(serde_json::json!({
        "target": target,
        "image": "busybox",
        "attempt": attempt,
        "startTimeoutSeconds": 60,
    }))
    .unwrap();
    let mut s = DebugSession::new("s1", spec);
    s.metadata.namespace = Some("ns".into());
    s.metadata.uid = Some(UID.into());
    s.metadata.generation = Some(attempt as i64 + 1);
    s.metadata.creation_timestamp = Some(Time(at(-100)));
    s.status = status;
    s
}

fn session(attempt: i32, status: Option<DebugSessionStatus>) -> DebugSession {
    session_for(serde_json::json!({ "pod": "web" }), attempt, status)
}

type KubeletState = Option<k8s_openapi::api::core::v1::ContainerState>;

/// A pod `name` with container `app`, holding session s1's debug containers in the given kubelet states.
fn named_pod(name: &str, phase: &str, ours: &[(&str, KubeletState)]) -> Pod {
    let s = session(0, None);
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("ns".into());
    p.metadata.uid = Some(format!("{name}-uid"));
    p.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
    let attempt_of = |n: &str| {
        n.rsplit_once('-').and_then(|(_, a)| a.parse().ok()).filter(|_| n.matches('-').count() > 1).unwrap_or(0)
    };
    p.spec = Some(PodSpec {
        containers: vec![Container { name: "app".into(), ..Default::default() }],
        ephemeral_containers: Some(
            ours.iter().map(|(n, _)| build_ephemeral_container(&s, n, "app", attempt_of(n))).collect(),
        ),
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

fn pod(phase: &str, ours: &[(&str, KubeletState)]) -> Pod {
    named_pod("web", phase, ours)
}

fn waiting(reason: &str, message: Option<&str>) -> KubeletState {
    Some(k8s_openapi::api::core::v1::ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: message.map(String::from) }),
        ..Default::default()
    })
}

fn running() -> KubeletState {
    Some(k8s_openapi::api::core::v1::ContainerState {
        running: Some(ContainerStateRunning { started_at: Some(Time(at(5))) }),
        ..Default::default()
    })
}

fn terminated(code: i32) -> KubeletState {
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
        pod_uid: Some("web-uid".into()),
        containers: records,
        ..Default::default()
    }
}

fn failed_status(reason: FailureReason, attempt: i32) -> DebugSessionStatus {
    DebugSessionStatus { reason: Some(reason), ..injected(vec![], attempt, Phase::Failed) }
}

fn condition<'a>(status: &'a DebugSessionStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no condition {type_}"))
}

/// Decides with the pod `web` as read by name (or `None` for a 404).
fn decide_on(session: &DebugSession, pod: Option<&Pod>, availability: Option<&Availability>, secs: i64) -> Decision {
    let observed = Observed {
        pods: PodView::Named { name: "web", pod },
        availability,
        now: at(secs),
        policy: &NO_POLICY,
        active: Default::default(),
    };
    decide(session, &observed)
}

fn injects(decision: &Decision) -> Option<&str> {
    match &decision.next {
        Next::Inject(injections) => Some(injections[0].container.name.as_str()),
        _ => None,
    }
}

/// What one case expects of the decision.
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

const fn injecting(name: &'static str, attempt: i32) -> Want {
    Want { inject: Some(name), phase: Phase::Pending, reason: None, container: Some(name), attempt }
}

#[test]
#[allow(clippy::type_complexity)]
fn decisions_follow_the_pod_and_the_kubelet() {
    use ContainerState as S;
    use FailureReason as R;
    let unavailable = Availability::Unavailable("turn the gate on".into());
    let mut mirror = pod("Running", &[]);
    mirror.metadata.annotations = Some(BTreeMap::from([(MIRROR_POD_ANNOTATION.into(), "x".into())]));
    let mut terminating = pod("Running", &[("debugger-abcde", waiting("ContainerCreating", None))]);
    terminating.metadata.deletion_timestamp = Some(Time(at(5)));
    let deleting = |ours: &[(&str, KubeletState)]| {
        // Deletion asked for at 8 s, with 30 s of grace.
        let mut p = pod("Running", ours);
        p.metadata.deletion_timestamp = Some(Time(at(38)));
        p.metadata.deletion_grace_period_seconds = Some(30);
        p
    };
    let mut terminating_empty = pod("Running", &[]);
    terminating_empty.metadata.deletion_timestamp = Some(Time(at(5)));
    let mut replaced = pod("Running", &[]);
    replaced.metadata.uid = Some("new-uid".into());
    let claimed =
        DebugSessionStatus { container_name: Some("debugger-abcde".into()), ..injected(vec![], 0, Phase::Pending) };
    let one_terminated = injected(vec![record("debugger-abcde", 0, S::Terminated)], 0, Phase::Terminated);
    let one_running = injected(vec![record("debugger-abcde", 0, S::Running)], 0, Phase::Running);
    let one_unknown = injected(vec![record("debugger-abcde", 0, S::Unknown)], 0, Phase::Injected);
    let timed_out = DebugSessionStatus {
        reason: Some(R::StartTimeout),
        ..injected(vec![record("debugger-abcde", 0, S::Waiting)], 0, Phase::Failed)
    };

    #[rustfmt::skip]
    let cases: Vec<(&str, DebugSession, Option<Pod>, Option<&Availability>, i64, Want)> = vec![
        ("fresh session injects the default name",
            session(0, None), Some(pod("Running", &[])), Some(&SERVED), 0, injecting("debugger-abcde", 0)),
        ("ephemeral containers unavailable",
            session(0, None), Some(pod("Running", &[])), Some(&unavailable), 0, failed(R::EphemeralContainersUnavailable)),
        ("unavailable wins over a missing pod",
            session(0, None), None, Some(&unavailable), 0, failed(R::EphemeralContainersUnavailable)),
        ("pod not found",
            session(0, None), None, Some(&SERVED), 0, failed(R::TargetNotFound)),
        ("pod pending",
            session(0, None), Some(pod("Pending", &[])), Some(&SERVED), 0, failed(R::TargetNotRunning)),
        ("pod terminating before injection",
            session(0, None), Some(terminating_empty), Some(&SERVED), 0, failed(R::TargetNotRunning)),
        ("static pod",
            session(0, None), Some(mirror), Some(&SERVED), 0, failed(R::StaticPodUnsupported)),
        ("injected, no kubelet status yet",
            session(0, Some(one_unknown.clone())), Some(pod("Running", &[("debugger-abcde", None)])), Some(&SERVED), 10,
            want(Phase::Injected, Some("debugger-abcde"))),
        ("no kubelet status past the start timeout",
            session(0, Some(one_unknown.clone())), Some(pod("Running", &[("debugger-abcde", None)])), Some(&SERVED), 61,
            failed(R::StartTimeout)),
        ("image pull failing past the start timeout",
            session(0, Some(one_unknown.clone())), Some(pod("Running", &[("debugger-abcde", waiting("ErrImagePull", None))])),
            Some(&SERVED), 60, failed(R::StartTimeout)),
        ("an image that can never be a name fails at once",
            session(0, Some(one_unknown.clone())),
            Some(pod("Running", &[("debugger-abcde", waiting("InvalidImageName", Some("couldn't parse image reference")))])),
            Some(&SERVED), 2, failed(R::CannotStart)),
        ("a missing secret fails at once",
            session(0, Some(one_unknown.clone())),
            Some(pod("Running", &[("debugger-abcde", waiting("CreateContainerConfigError", Some("secret \"x\" not found")))])),
            Some(&SERVED), 2, failed(R::CannotStart)),
        ("running",
            session(0, Some(one_unknown.clone())), Some(pod("Running", &[("debugger-abcde", running())])), Some(&SERVED), 10,
            want(Phase::Running, Some("debugger-abcde"))),
        ("terminated",
            session(0, Some(one_running.clone())), Some(pod("Running", &[("debugger-abcde", terminated(3))])), Some(&SERVED), 10,
            want(Phase::Terminated, Some("debugger-abcde"))),
        ("container of ours found without a record is adopted, not injected again",
            session(0, None), Some(pod("Running", &[("debugger-abcde", running())])), Some(&SERVED), 10,
            want(Phase::Running, Some("debugger-abcde"))),
        ("raised attempt after termination injects the next name",
            session(1, Some(one_terminated.clone())), Some(pod("Running", &[("debugger-abcde", terminated(0))])), Some(&SERVED), 10,
            injecting("debugger-abcde-1", 1)),
        ("raised attempt waits while the previous container runs",
            session(1, Some(one_running.clone())), Some(pod("Running", &[("debugger-abcde", running())])), Some(&SERVED), 10,
            want(Phase::Running, Some("debugger-abcde"))),
        ("a failure stands for its attempt",
            session(0, Some(failed_status(R::TargetNotRunning, 0))), Some(pod("Running", &[])), Some(&SERVED), 10,
            failed(R::TargetNotRunning)),
        ("a raised attempt tries again after a failure",
            session(1, Some(failed_status(R::TargetNotRunning, 0))), Some(pod("Running", &[])), Some(&SERVED), 10,
            injecting("debugger-abcde-1", 1)),
        ("pinned pod deleted while the container runs",
            session(0, Some(one_running.clone())), None, Some(&SERVED), 10, failed(R::TargetGone)),
        ("pinned pod replaced by one of the same name",
            session(0, Some(one_running.clone())), Some(replaced.clone()), Some(&SERVED), 10, failed(R::TargetGone)),
        ("claimed pod replaced by one of the same name before the container went in",
            session(0, Some(claimed.clone())), Some(replaced), Some(&SERVED), 10, failed(R::TargetNotFound)),
        ("a claim of the same pod goes on (an operator died after writing it)",
            session(0, Some(claimed)), Some(pod("Running", &[])), Some(&SERVED), 10, injecting("debugger-abcde", 0)),
        ("pod being deleted while the container runs",
            session(0, Some(one_running.clone())), Some(deleting(&[("debugger-abcde", running())])), Some(&SERVED), 10,
            failed(R::TargetGone)),
        ("container stopped by the deletion of its pod",
            session(0, Some(one_running.clone())), Some(deleting(&[("debugger-abcde", terminated(143))])), Some(&SERVED), 10,
            failed(R::TargetGone)),
        ("container that exited before its pod was deleted",
            session(0, Some(one_running.clone())), Some({
                let mut p = deleting(&[("debugger-abcde", terminated(0))]);
                p.metadata.deletion_timestamp = Some(Time(at(40)));
                p
            }), Some(&SERVED), 10,
            want(Phase::Terminated, Some("debugger-abcde"))),
        ("pod deleted while the container waits",
            session(0, Some(one_unknown.clone())), Some(terminating), Some(&SERVED), 10, failed(R::TargetGone)),
        ("a start timeout overtaken by the kubelet reports the running container",
            session(0, Some(timed_out.clone())), Some(pod("Running", &[("debugger-abcde", running())])), Some(&SERVED), 90,
            want(Phase::Running, Some("debugger-abcde"))),
        ("a start timeout still waiting stands",
            session(0, Some(timed_out.clone())), Some(pod("Running", &[("debugger-abcde", waiting("ErrImagePull", None))])),
            Some(&SERVED), 90, failed(R::StartTimeout)),
        ("a finished session stays Terminated when its pod is deleted later",
            session(0, Some(one_terminated.clone())), None, Some(&SERVED), 10,
            want(Phase::Terminated, Some("debugger-abcde"))),
        ("raising the attempt after the pod was deleted is TargetGone",
            session(1, Some(one_terminated.clone())), None, Some(&SERVED), 10, Want { attempt: 1, ..failed(R::TargetGone) }),
        ("target gone is permanent",
            session(3, Some(failed_status(R::TargetGone, 0))), Some(pod("Running", &[])), Some(&SERVED), 10,
            failed(R::TargetGone)),
        ("pod finished before the container started",
            session(0, Some(one_unknown.clone())), Some(pod("Succeeded", &[("debugger-abcde", None)])), Some(&SERVED), 10,
            failed(R::TargetNotRunning)),
        ("a profile with a securityContext on Kubernetes 1.16-1.21",
            session(0, None), Some(pod("Running", &[])), Some(&Availability::Available(ApiShape::LegacyEphemeralContainers)), 0,
            failed(R::Invalid)),
        ("attempt lowered where no CEL refused it (Kubernetes < 1.25)",
            session(0, None), Some(pod("Running", &[("debugger-abcde", terminated(0)), ("debugger-abcde-1", terminated(0))])),
            Some(&SERVED), 10, failed(R::Invalid)),
    ];
    for (what, session, pod, availability, secs, want) in cases {
        let decision = decide_on(&session, pod.as_ref(), availability, secs);
        let status = &decision.status;
        assert_eq!(injects(&decision), want.inject, "{what}: {decision:?}");
        assert_eq!(status.phase, Some(want.phase), "{what}: {status:?}");
        assert_eq!(status.reason, want.reason, "{what}: {:?}", status.message);
        if want.container.is_some() {
            assert_eq!(status.container_name.as_deref(), want.container, "{what}");
        }
        assert_eq!(status.attempt, want.attempt, "{what}");
        assert_eq!(status.observed_generation, session.metadata.generation, "{what}");
        let is = |type_| condition(status, type_).status.as_str();
        assert_eq!(is("Attachable"), if want.phase == Phase::Running { "True" } else { "False" }, "{what}");
        assert_eq!(is("Stalled"), if want.phase == Phase::Failed { "True" } else { "False" }, "{what}");
        if want.phase == Phase::Failed {
            let stalled = condition(status, "Stalled");
            assert_eq!(Some(stalled.reason.as_str()), want.reason.map(FailureReason::as_str), "{what}");
        }
    }
}

#[test]
fn a_forged_status_never_redirects_an_injection() {
    // Someone who may write only the status points the session at another pod
    // and claims a container there.
    let forged = DebugSessionStatus {
        pod_name: Some("payments".into()),
        pod_uid: Some("payments-uid".into()),
        containers: vec![record("debugger-abcde", 0, ContainerState::Running)],
        phase: Some(Phase::Running),
        ..Default::default()
    };
    let s = session(0, Some(forged));
    // reads_for names the spec's pod, not the status's.
    assert_eq!(crate::reads::reads_for(&s, false).pods, crate::reads::PodReads::Named("web".into()));
    let web = pod("Running", &[]);
    let decision = decide_on(&s, Some(&web), Some(&SERVED), 1);
    let Next::Inject(injections) = &decision.next else { panic!("{decision:?}") };
    let into = &injections[0].pod;
    assert_eq!(into.metadata.name.as_deref(), Some("web"), "only the spec's pod");
    assert_eq!(decision.status.pod_name.as_deref(), Some("web"), "status corrected");
    assert_eq!(decision.status.pod_uid.as_deref(), Some("web-uid"));
    assert!(decision.status.containers.is_empty(), "the fake record is gone");
}

#[test]
fn a_selector_pin_is_checked_against_the_selector() {
    let target = serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } });
    let pinned = |pod: &str| DebugSessionStatus {
        pod_name: Some(pod.into()),
        pod_uid: Some(format!("{pod}-uid")),
        phase: Some(Phase::Pending),
        ..Default::default()
    };
    let s = session_for(target.clone(), 0, Some(pinned("db")));
    let mut db = named_pod("db", "Running", &[]);
    db.metadata.labels = Some(BTreeMap::from([("app".into(), "db".into())]));
    let observed = Observed {
        pods: PodView::Named { name: "db", pod: Some(&db) },
        availability: Some(&SERVED),
        now: at(1),
        policy: &NO_POLICY,
        active: Default::default(),
    };
    let decision = decide(&s, &observed);
    assert_eq!(decision.next, Next::LookAgain, "{decision:?}");
    assert_eq!(decision.status.pod_name, None, "the pin is dropped, not obeyed");

    // A pinned pod that matches and was claimed before a crash gets the container.
    let s = session_for(target.clone(), 0, Some(pinned("web-2")));
    let web2 = named_pod("web-2", "Running", &[]);
    let observed = Observed {
        pods: PodView::Named { name: "web-2", pod: Some(&web2) },
        availability: Some(&SERVED),
        now: at(1),
        policy: &NO_POLICY,
        active: Default::default(),
    };
    assert_eq!(injects(&decide(&s, &observed)), Some("debugger-abcde"));

    // Choosing among candidates prefers the pod that already holds our container.
    let s = session_for(target, 0, None);
    let candidates =
        [named_pod("web-1", "Running", &[]), named_pod("web-2", "Running", &[("debugger-abcde", running())])];
    let observed = Observed {
        pods: PodView::Selected(&candidates),
        availability: Some(&SERVED),
        now: at(1),
        policy: &NO_POLICY,
        active: Default::default(),
    };
    let decision = decide(&s, &observed);
    assert_eq!(decision.status.pod_name.as_deref(), Some("web-2"));
    assert_eq!(decision.status.phase, Some(Phase::Running));
}

#[test]
fn a_planted_container_is_reported_not_adopted() {
    let s = session(0, None);
    let mut p = pod("Running", &[("debugger-abcde", running())]);
    let planted = &mut p.spec.as_mut().unwrap().ephemeral_containers.as_mut().unwrap()[0];
    planted.image = Some("evil:latest".into());
    planted.security_context = crate::debug_container::security_context(crate::crd::Profile::Sysadmin);
    let decision = decide_on(&s, Some(&p), Some(&SERVED), 1);
    assert_eq!(decision.next, Next::Wait);
    assert_eq!(decision.status.reason, Some(FailureReason::ContainerMismatch));
    assert!(decision.status.message.as_deref().unwrap().contains("evil:latest"), "{:?}", decision.status.message);
}

#[test]
fn a_recreated_session_adopts_its_predecessors_containers() {
    // GitOps deleted the session after its TTL and created it again: same name, new UID.
    let predecessor = session(0, None);
    let mut s = session(0, None);
    s.metadata.uid = Some("99999999-new".into());
    let mut p = pod("Running", &[]);
    let old = build_ephemeral_container(&predecessor, "debugger-abcde", "app", 0);
    p.spec.as_mut().unwrap().ephemeral_containers = Some(vec![old]);
    p.status.as_mut().unwrap().ephemeral_container_statuses =
        Some(vec![ContainerStatus { name: "debugger-abcde".into(), state: terminated(0), ..Default::default() }]);
    let decision = decide_on(&s, Some(&p), Some(&SERVED), 1);
    assert_eq!(decision.next, Next::Wait, "no second container: {decision:?}");
    assert_eq!(decision.status.phase, Some(Phase::Terminated));
    assert_eq!(decision.status.container_name.as_deref(), Some("debugger-abcde"));

    // A higher attempt gets a container of its own.
    s.spec.attempt = 1;
    assert_eq!(injects(&decide_on(&s, Some(&p), Some(&SERVED), 1)), Some("debugger-99999-1"));
}

#[test]
fn bad_input_fails_at_once_with_the_reason() {
    let mut bad = session(0, None);
    bad.spec.target.pod = Some("a b".into());
    let decision = decide_on(&bad, None, None, 0);
    assert_eq!(decision.status.reason, Some(FailureReason::Invalid));
    assert!(decision.status.message.as_deref().unwrap().contains("not a pod name"));

    let mut huge = session(0, None);
    huge.spec.command = Some(vec!["x".repeat(4096); 16]);
    let decision = decide_on(&huge, Some(&pod("Running", &[])), Some(&SERVED), 0);
    assert_eq!(decision.status.reason, Some(FailureReason::Invalid));
    assert!(decision.status.message.as_deref().unwrap().contains("bytes"), "{:?}", decision.status.message);

    let mut deleting = session(0, None);
    deleting.metadata.deletion_timestamp = Some(Time(at(0)));
    assert_eq!(injects(&decide_on(&deleting, Some(&pod("Running", &[])), Some(&SERVED), 0)), None);
}

#[test]
fn a_name_taken_by_someone_else_is_not_shown_as_ours() {
    let mut s = session(0, None);
    s.spec.container_name = Some("dbg".into());
    let mut p = pod("Running", &[]);
    p.spec.as_mut().unwrap().ephemeral_containers =
        Some(vec![EphemeralContainer { name: "dbg".into(), ..Default::default() }]);
    let decision = decide_on(&s, Some(&p), Some(&SERVED), 0);
    assert_eq!(decision.status.reason, Some(FailureReason::Invalid));
    assert_eq!(decision.status.container_name, None);
    assert!(decision.status.message.as_deref().unwrap().contains("create a new DebugSession"));
    assert!(!decision.status.message.as_deref().unwrap().contains("raise spec.attempt"), "a retry cannot help");
}

#[test]
fn running_status_carries_the_attach_command() {
    let s = session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Unknown)], 0, Phase::Injected)));
    let p = pod("Running", &[("debugger-abcde", running())]);
    let status = decide_on(&s, Some(&p), Some(&SERVED), 6).status;
    assert_eq!(status.attach_command.as_deref(), Some("kubectl attach -it -n ns web -c debugger-abcde"));
    assert_eq!(status.started_at, Some(Time(at(5))));
    assert_eq!(status.target_container_name.as_deref(), Some("app"));
    assert_eq!(condition(&status, "Ready").status, "True");
    assert_eq!(condition(&status, "Reconciling").status, "False");
    assert_eq!(condition(&status, "Attachable").message, "kubectl attach -it -n ns web -c debugger-abcde");
}

#[test]
fn each_condition_has_its_own_reason() {
    let unavailable = Availability::Unavailable("set EphemeralContainers=true".into());
    let s = session(0, None);
    let status = decide_on(&s, None, Some(&unavailable), 0).status;
    let reasons: Vec<_> =
        status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
    assert_eq!(
        reasons,
        vec![
            ("Ready", "False", "EphemeralContainersUnavailable"),
            ("Reconciling", "False", "Failed"),
            ("Stalled", "True", "EphemeralContainersUnavailable"),
            ("Injected", "False", "NotInjected"),
            ("Attachable", "False", "EphemeralContainersUnavailable"),
            ("EphemeralContainersAvailable", "False", "NotServed"),
            ("CapabilitiesEffective", "True", "AsProfiled"),
        ]
    );
    // Available is set from the availability check alone, whatever the target.
    let status = decide_on(&s, None, Some(&SERVED), 0).status;
    assert_eq!(status.reason, Some(FailureReason::TargetNotFound));
    let available = condition(&status, "EphemeralContainersAvailable");
    assert_eq!((available.status.as_str(), available.reason.as_str()), ("True", "Served"));
}

#[test]
fn a_raised_attempt_is_reconciling_until_it_is_under_way() {
    let s = session(1, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Running)], 0, Phase::Running)));
    let p = pod("Running", &[("debugger-abcde", running())]);
    let status = decide_on(&s, Some(&p), Some(&SERVED), 10).status;
    assert_eq!(status.attempt, 0, "still describes the running one");
    let reconciling = condition(&status, "Reconciling");
    assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("True", "AttemptPending"));
    assert_eq!(condition(&status, "Ready").status, "False", "kstatus must not call it Current yet");
}

#[test]
fn terminated_status_says_it_cannot_be_attached_again() {
    let s = session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Running)], 0, Phase::Running)));
    let p = pod("Running", &[("debugger-abcde", terminated(3))]);
    let status = decide_on(&s, Some(&p), None, 10).status;
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
fn the_kubelets_words_are_shown_while_waiting() {
    let s = session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Unknown)], 0, Phase::Injected)));
    let p = pod("Running", &[("debugger-abcde", waiting("ErrImagePull", Some("pull access denied for nope")))]);
    let status = decide_on(&s, Some(&p), Some(&SERVED), 10).status;
    assert_eq!(status.waiting_reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(status.containers[0].state, ContainerState::Waiting);
    assert!(status.message.as_deref().unwrap().contains("pull access denied for nope"), "{:?}", status.message);
}

#[test]
fn renewal_keeps_every_earlier_container() {
    let s =
        session(1, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Terminated)], 0, Phase::Terminated)));
    let p = pod("Running", &[("debugger-abcde", terminated(0)), ("debugger-abcde-1", running())]);
    let status = decide_on(&s, Some(&p), Some(&SERVED), 10).status;
    let names: Vec<_> = status.containers.iter().map(|c| (c.name.as_str(), c.attempt, c.state)).collect();
    assert_eq!(
        names,
        vec![("debugger-abcde", 0, ContainerState::Terminated), ("debugger-abcde-1", 1, ContainerState::Running)]
    );
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.attempt, 1);
}

/// `pod` with containers of other writers (no markers) before and after the session's own.
fn with_others(mut pod: Pod, before: &[&str], after: &[&str]) -> Pod {
    let others = |names: &[&str]| -> Vec<EphemeralContainer> {
        names.iter().map(|n| EphemeralContainer { name: n.to_string(), ..Default::default() }).collect()
    };
    let list = pod.spec.as_mut().unwrap().ephemeral_containers.get_or_insert_with(Vec::new);
    list.splice(0..0, others(before));
    list.extend(others(after));
    pod
}

#[test]
fn containers_of_other_writers_change_no_status() {
    // On a busy pod every other writer's container would otherwise be one more status write
    // for every session. A strategic merge patch (kubectl debug's) puts its container first.
    let mut s =
        session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Running)], 0, Phase::Running)));
    let at_write = with_others(pod("Running", &[("debugger-abcde", running())]), &[], &["manual-1"]);
    let recorded = decide_on(&s, Some(&at_write), Some(&SERVED), 10).status;
    assert_eq!(recorded.ephemeral_containers_at_injection, ["manual-1", "debugger-abcde"], "all it kept, then its own");
    s.status = Some(recorded.clone());
    let crowded = with_others(at_write.clone(), &["debugger-x7k2p", "rival-1"], &["rival-2"]);
    assert_eq!(decide_on(&s, Some(&crowded), Some(&SERVED), 10).status, recorded);
}

#[test]
fn the_containers_an_injection_kept_are_checked_against_the_pod() {
    let mut s =
        session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Running)], 0, Phase::Running)));
    let p = with_others(pod("Running", &[("debugger-abcde", running())]), &["manual-1"], &["manual-2"]);
    // A list the pod does not bear out is read from the pod again.
    for forged in [vec!["gone", "debugger-abcde"], vec!["manual-1"], vec!["debugger-abcde", "manual-1"]] {
        s.status.as_mut().unwrap().ephemeral_containers_at_injection = forged.iter().map(|n| n.to_string()).collect();
        let status = decide_on(&s, Some(&p), Some(&SERVED), 10).status;
        assert_eq!(status.ephemeral_containers_at_injection, ["manual-1", "manual-2", "debugger-abcde"], "{forged:?}");
    }
    // Nothing of this attempt in the pod: nothing to report, whatever the status said.
    let status = decide_on(&s, Some(&with_others(pod("Running", &[]), &["other"], &[])), Some(&SERVED), 10).status;
    assert!(status.ephemeral_containers_at_injection.is_empty(), "{status:?}");
}

#[test]
fn a_reconcile_without_news_changes_nothing() {
    let s = session(0, None);
    let first = decide_on(&s, None, Some(&SERVED), 1).status;
    let again = decide_on(&session(0, Some(first.clone())), None, Some(&SERVED), 50).status;
    assert_eq!(first, again);
    assert_eq!(again.finished_at, Some(Time(at(1))));
    let starting =
        session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Unknown)], 0, Phase::Injected)));
    let p = pod("Running", &[("debugger-abcde", running())]);
    let first = decide_on(&starting, Some(&p), Some(&SERVED), 6).status;
    let again = decide_on(&session(0, Some(first.clone())), Some(&p), Some(&SERVED), 60).status;
    assert_eq!(first, again);
}

#[test]
fn injected_at_is_clamped_to_what_can_be_true() {
    let mut record = record("debugger-abcde", 0, ContainerState::Unknown);
    record.injected_at = Some(Time(at(100_000)));
    let s = session(0, Some(injected(vec![record], 0, Phase::Injected)));
    let p = pod("Running", &[("debugger-abcde", None)]);
    let status = decide_on(&s, Some(&p), Some(&SERVED), 10).status;
    assert_eq!(
        status.containers[0].injected_at,
        Some(Time(at(10))),
        "a time in the future would defer the timeout forever"
    );
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
    s.status = Some(done.clone());
    let observed = Observed {
        pods: PodView::NotRead,
        availability: None,
        now: at(40),
        policy: &NO_POLICY,
        active: Default::default(),
    };
    assert_eq!(decide(&s, &observed).next, Next::Delete);
    s.spec.attempt = 1;
    assert_eq!(ttl_deadline(&s, &done), None, "a raised attempt is not finished");
}

#[test]
fn transitions_tell_the_story() {
    let pending = DebugSessionStatus { phase: Some(Phase::Pending), ..Default::default() };
    let injected_status = injected(vec![record("c", 0, ContainerState::Unknown)], 0, Phase::Injected);
    let running_status = injected(vec![record("c", 0, ContainerState::Running)], 0, Phase::Running);
    let failed = DebugSessionStatus {
        phase: Some(Phase::Failed),
        reason: Some(FailureReason::Forbidden),
        message: Some("denied".into()),
        ..Default::default()
    };
    let reasons = |old: &DebugSessionStatus, new: &DebugSessionStatus| {
        transitions(false, old, new).into_iter().map(|t| (t.reason, t.warning)).collect::<Vec<_>>()
    };
    let selected = transitions(true, &DebugSessionStatus::default(), &injected_status);
    assert_eq!(
        selected.into_iter().map(|t| t.reason).collect::<Vec<_>>(),
        ["TargetSelected", "Injected"],
        "a selector's choice is news"
    );
    assert_eq!(
        reasons(&DebugSessionStatus::default(), &injected_status),
        vec![("Injected".to_string(), false)],
        "a pod the spec names is not announced again"
    );
    assert_eq!(reasons(&injected_status, &running_status), vec![("Running".to_string(), false)]);
    assert_eq!(reasons(&running_status, &running_status), vec![]);
    assert_eq!(reasons(&pending, &failed), vec![("Forbidden".to_string(), true)]);
}

#[test]
fn terminated_status_keeps_its_times_when_the_pod_goes_away() {
    let mut finished = record("debugger-abcde", 0, ContainerState::Terminated);
    finished.exit_code = Some(3);
    finished.reason = Some("Error".into());
    finished.finished_at = Some(Time(at(9)));
    let s = session(0, Some(injected(vec![finished], 0, Phase::Terminated)));
    let status = decide_on(&s, None, None, 500).status;
    assert_eq!(status.phase, Some(Phase::Terminated));
    assert_eq!((status.exit_code, status.exit_reason.as_deref()), (Some(3), Some("Error")));
    assert_eq!(status.finished_at, Some(Time(at(9))), "ttlSecondsAfterFinished counts from the exit, not from now");
    assert_eq!(status.reason, None);
    assert!(status.message.unwrap().ends_with("since then, pod web was deleted"));
}

#[test]
fn status_that_does_not_decode_reads_as_unset() {
    let session: DebugSession = serde_json::from_value(serde_json::json!({
        "apiVersion": "ephemera.dev/v1alpha1", "kind": "DebugSession",
        "metadata": { "name": "s", "namespace": "ns" },
        "spec": { "target": { "pod": "web" }, "image": "busybox" },
        "status": { "attempt": 3000000000u64, "phase": "Exploded", "reason": "FromTheFuture", "podName": "web" },
    }))
    .unwrap();
    let status = session.status.unwrap();
    assert_eq!((status.attempt, status.phase, status.reason), (0, None, None));
    assert_eq!(status.pod_name.as_deref(), Some("web"), "what decodes is kept");
}

#[test]
#[allow(clippy::field_reassign_with_default)]
fn a_terminated_container_with_capture_is_kept_once() {
    let mut s =
        session(0, Some(injected(vec![record("debugger-abcde", 0, ContainerState::Running)], 0, Phase::Running)));
    s.spec.capture_output = Some(crate::crd::CaptureOutput { max_bytes: 1_000_000 });
    let p = pod("Running", &[("debugger-abcde", terminated(0))]);
    let mut policy = Policy::default();
    policy.max_capture_bytes = 4096;
    let observed = Observed {
        pods: PodView::Named { name: "web", pod: Some(&p) },
        availability: Some(&SERVED),
        now: at(10),
        policy: &policy,
        active: Default::default(),
    };
    let decision = decide(&s, &observed);
    assert_eq!(
        decision.next,
        Next::Capture(vec![Capture {
            pod: "web".into(),
            container: "debugger-abcde".into(),
            config_map: "s1-output-0".into(),
            max_bytes: 4096
        }]),
        "capped by the platform"
    );
    // Once recorded, nothing more.
    let mut captured = decision.status.clone();
    captured.containers[0].output = Some("s1-output-0".into());
    s.status = Some(captured);
    assert_eq!(decide(&s, &observed).next, Next::Wait);
    // Capturing turned off by the platform: a new attempt asking for it is refused.
    s.spec.attempt = 1;
    let off = Policy::default();
    let observed = Observed { policy: &off, ..observed };
    let refused = decide(&s, &observed).status;
    assert_eq!(refused.reason, Some(FailureReason::PolicyViolation));
}

#[test]
fn what_is_taken_from_the_target_is_shown() {
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecretVolumeSource, Volume, VolumeMount};
    let mut s = session(0, None);
    s.spec.run_as = Some(crate::crd::FromTarget::Target);
    s.spec.volume_mounts = Some(crate::crd::FromTarget::Target);
    let mut p = pod("Running", &[]);
    let spec = p.spec.as_mut().unwrap();
    spec.security_context =
        Some(PodSecurityContext { run_as_user: Some(1000), run_as_group: Some(3000), ..Default::default() });
    spec.volumes = Some(vec![
        Volume { name: "data".into(), empty_dir: Some(Default::default()), ..Default::default() },
        Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource { secret_name: Some("db".into()), ..Default::default() }),
            ..Default::default()
        },
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        VolumeMount { name: "data".into(), mount_path: "/data".into(), ..Default::default() },
        VolumeMount { name: "creds".into(), mount_path: "/creds".into(), ..Default::default() },
    ]);
    let decision = decide_on(&s, Some(&p), Some(&SERVED), 0);
    let Next::Inject(injections) = &decision.next else { panic!("{decision:?}") };
    let container = &injections[0].container;
    let security = container.security_context.as_ref().unwrap();
    assert_eq!((security.run_as_user, security.run_as_group), (Some(1000), Some(3000)));
    let mounts: Vec<_> = container.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
    assert_eq!(mounts, ["/data"], "the Secret stays out by default");
    assert_eq!(decision.status.omitted_from_target, ["mount /creds (volume creds, a Secret)"]);
    let warning = condition(&decision.status, "CapabilitiesEffective");
    assert_eq!((warning.status.as_str(), warning.reason.as_str()), ("False", "NonRootUser"));
    assert!(warning.message.contains("SYS_PTRACE") && warning.message.contains("uid 1000"), "{}", warning.message);

    // runAs: target with no user to take fails at once, saying why.
    p.spec.as_mut().unwrap().security_context = None;
    let refused = decide_on(&s, Some(&p), Some(&SERVED), 0).status;
    assert_eq!(refused.reason, Some(FailureReason::Invalid));
    assert!(refused.message.unwrap().contains("runAs: target"));
}

fn fan_out_session(attempt: i32, max_pods: i32, status: Option<DebugSessionStatus>) -> DebugSession {
    session_for(
        serde_json::json!({ "selector": { "matchLabels": { "app": "web" } }, "mode": "All", "maxPods": max_pods }),
        attempt,
        status,
    )
}

fn decide_fan(session: &DebugSession, pods: &[Pod]) -> Decision {
    let observed = Observed {
        pods: PodView::Selected(pods),
        availability: Some(&SERVED),
        now: at(10),
        policy: &NO_POLICY,
        active: Default::default(),
    };
    decide(session, &observed)
}

fn injected_pods(decision: &Decision) -> Vec<String> {
    match &decision.next {
        Next::Inject(injections) => injections.iter().map(|i| i.pod.metadata.name.clone().unwrap()).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn a_fan_out_picks_up_to_max_pods_and_says_why() {
    let mut newest = named_pod("web-c", "Running", &[]);
    newest.metadata.creation_timestamp = Some(Time(at(5)));
    let pods = [named_pod("web-a", "Running", &[]), named_pod("web-b", "Running", &[]), newest];
    let decision = decide_fan(&fan_out_session(0, 2, None), &pods);
    assert_eq!(injected_pods(&decision), ["web-a", "web-c"], "newest first, then by name");
    let status = &decision.status;
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.targets.len(), 2);
    assert!(
        status.message.as_deref().unwrap().contains("3 Running pods match; target.maxPods is 2"),
        "{:?}",
        status.message
    );
    assert_eq!(status.target_counts.unwrap().total, 2);
}

#[test]
fn a_fan_out_keeps_its_set_and_sums_up_its_pods() {
    let pods = [
        named_pod("web-a", "Running", &[("debugger-abcde", running())]),
        named_pod("web-b", "Running", &[("debugger-abcde", terminated(0))]),
        named_pod("web-new", "Running", &[]),
    ];
    let prior = DebugSessionStatus {
        targets: ["web-a", "web-b"]
            .map(|p| DebugTargetStatus { pod_name: p.into(), pod_uid: Some(format!("{p}-uid")), ..Default::default() })
            .to_vec(),
        ..Default::default()
    };
    let decision = decide_fan(&fan_out_session(0, 5, Some(prior)), &pods);
    assert_eq!(decision.next, Next::Wait, "a pod that appeared later is not added");
    let status = &decision.status;
    assert_eq!(status.phase, Some(Phase::Running), "running while any runs");
    let counts = status.target_counts.unwrap();
    assert_eq!((counts.total, counts.running, counts.terminated), (2, 1, 1));
    let rows: Vec<_> = status.targets.iter().map(|r| (r.pod_name.as_str(), r.phase)).collect();
    assert_eq!(rows, [("web-a", Some(Phase::Running)), ("web-b", Some(Phase::Terminated))]);

    // A raised attempt goes to every pod of the set, once each.
    let mut raised = fan_out_session(1, 5, Some(status.clone()));
    raised.status.as_mut().unwrap().targets[0].phase = Some(Phase::Terminated);
    let pods = [
        named_pod("web-a", "Running", &[("debugger-abcde", terminated(0))]),
        named_pod("web-b", "Running", &[("debugger-abcde", terminated(0))]),
        named_pod("web-new", "Running", &[]),
    ];
    let decision = decide_fan(&raised, &pods);
    assert_eq!(injected_pods(&decision), ["web-a", "web-b"]);
    let all_done = decide_fan(
        &fan_out_session(0, 5, Some(status.clone())),
        &[
            named_pod("web-a", "Running", &[("debugger-abcde", terminated(1))]),
            named_pod("web-b", "Running", &[("debugger-abcde", terminated(0))]),
        ],
    );
    assert_eq!(all_done.status.phase, Some(Phase::Terminated), "Terminated once every pod's container ended");
}

#[test]
fn only_a_container_on_its_way_awaits_the_kubelet() {
    let claimed =
        DebugSessionStatus { container_name: Some("debugger-abcde".into()), ..injected(vec![], 0, Phase::Pending) };
    let after_claim = |kubelet: KubeletState| {
        let pod = pod("Running", &[("debugger-abcde", kubelet)]);
        decide_on(&session(0, Some(claimed.clone())), Some(&pod), Some(&SERVED), 1).status
    };
    #[rustfmt::skip]
    let cases = [
        ("no word from the kubelet yet", after_claim(None), true),
        ("ContainerCreating", after_claim(waiting("ContainerCreating", None)), true),
        ("pulling its image failed", after_claim(waiting("ErrImagePull", Some("not found"))), false),
        ("Running at once", after_claim(running()), false),
        ("already exited", after_claim(terminated(0)), false),
        ("a fan-out's rows", DebugSessionStatus {
            targets: vec![status_to_row("web", &after_claim(None))], ..after_claim(None) }, false),
    ];
    for (case, status, awaits) in cases {
        assert_eq!(awaits_kubelet(&status), awaits, "{case}: {status:?}");
    }
    // An older attempt the kubelet never reported on does not hold up a newer one.
    let older_silent = injected(
        vec![
            record("debugger-abcde", 0, ContainerState::Unknown),
            record("debugger-abcde-1", 1, ContainerState::Running),
        ],
        1,
        Phase::Running,
    );
    assert!(!awaits_kubelet(&older_silent));
}

#[test]
fn the_kubelet_creating_a_container_already_said_to_be_on_its_way_is_no_news() {
    let claimed =
        DebugSessionStatus { container_name: Some("debugger-abcde".into()), ..injected(vec![], 0, Phase::Pending) };
    let decide = |status: &DebugSessionStatus, kubelet: KubeletState, secs: i64| {
        let pod = pod("Running", &[("debugger-abcde", kubelet)]);
        decide_on(&session(0, Some(status.clone())), Some(&pod), Some(&SERVED), secs).status
    };
    // The operator waited for the kubelet in vain and published Injected alone.
    let silent = decide(&claimed, None, 1);
    assert_eq!((silent.phase, silent.waiting_reason.as_deref()), (Some(Phase::Injected), None));
    #[rustfmt::skip]
    let cases = [
        ("then the kubelet creates it", &silent, decide(&silent, waiting("ContainerCreating", None), 3), true),
        ("then the kubelet cannot pull its image", &silent,
            decide(&silent, waiting("ErrImagePull", Some("not found")), 3), false),
        ("then it runs", &silent, decide(&silent, running(), 3), false),
        ("then it exits", &silent, decide(&silent, terminated(0), 3), false),
        ("the claim, then the kubelet creates it (the first report's wait covers this)", &claimed,
            decide(&claimed, waiting("ContainerCreating", None), 1), false),
    ];
    for (case, published, new, no_news) in cases {
        assert_eq!(only_routine_news(published, &new), no_news, "{case}: {published:?} → {new:?}");
    }
    // Once published with the reason, a later problem is news as ever.
    let creating = decide(&claimed, waiting("ContainerCreating", None), 1);
    assert!(!only_routine_news(&creating, &decide(&creating, waiting("ErrImagePull", None), 3)));
}

/// `pod` with another session's debug container and someone's `kubectl debug`
/// container added, each with a kubelet status, and written once more.
fn with_others_containers(pod: &Pod) -> Pod {
    let mut other = session(0, None);
    other.metadata.name = Some("s2".into());
    other.metadata.uid = Some("fffff999-0000".into());
    let mut busier = pod.clone();
    let spec = busier.spec.as_mut().unwrap();
    let containers = spec.ephemeral_containers.get_or_insert_default();
    containers.insert(0, build_ephemeral_container(&other, "debugger-fffff", "app", 0));
    containers.push(EphemeralContainer { name: "human".into(), image: Some("busybox".into()), ..Default::default() });
    let statuses = busier.status.as_mut().unwrap().ephemeral_container_statuses.get_or_insert_default();
    for (name, state) in [("debugger-fffff", running()), ("human", waiting("ContainerCreating", None))] {
        statuses.push(ContainerStatus { name: name.into(), state, ..Default::default() });
    }
    busier.metadata.resource_version = Some("next".into());
    busier
}

#[test]
fn once_its_container_is_in_the_pod_a_session_reads_only_its_own() {
    let own = "debugger-abcde";
    let borne_out = |phase, records| DebugSessionStatus {
        ephemeral_containers_at_injection: vec![own.into()],
        container_name: Some(own.into()),
        ..injected(records, 0, phase)
    };
    let claim = borne_out(Phase::Pending, vec![]);
    let injected_silent = borne_out(Phase::Injected, vec![record(own, 0, ContainerState::Unknown)]);
    let is_running = borne_out(Phase::Running, vec![record(own, 0, ContainerState::Running)]);
    #[rustfmt::skip]
    let cases: [(&str, DebugSession, Pod, bool); 8] = [
        ("the claim stands, the container is in", session(0, Some(claim.clone())), pod("Running", &[(own, None)]), true),
        ("waiting for the kubelet", session(0, Some(injected_silent.clone())), pod("Running", &[(own, waiting("ContainerCreating", None))]), true),
        ("running", session(0, Some(is_running.clone())), pod("Running", &[(own, running())]), true),
        ("exited, the pod failing", session(0, Some(is_running.clone())), pod("Failed", &[(own, terminated(1))]), true),
        ("nothing in the pod yet", session(0, Some(claim.clone())), pod("Running", &[]), false),
        ("only an older attempt's container", session(1, Some(is_running.clone())), pod("Running", &[(own, running())]), false),
        ("no record of the pod at injection", session(0, None), pod("Running", &[(own, running())]), false),
        ("a record that the pod belies", session(0, Some(DebugSessionStatus {
            ephemeral_containers_at_injection: vec!["gone".into(), own.into()], ..is_running.clone() })),
            pod("Running", &[(own, running())]), false),
    ];
    for (case, session, pod, only_own) in cases {
        assert_eq!(reads_only_own_containers(&session, &pod).is_some(), only_own, "{case}");
        if !only_own {
            continue;
        }
        // The contract: other containers, and a new resourceVersion, change nothing that is decided.
        for secs in [1, 3, 30, 90] {
            let alone = decide_on(&session, Some(&pod), Some(&SERVED), secs);
            let among_others = decide_on(&session, Some(&with_others_containers(&pod)), Some(&SERVED), secs);
            assert_eq!(alone, among_others, "{case}, after {secs}s");
        }
        assert!(reads_only_own_containers(&session, &with_others_containers(&pod)).is_some(), "{case}");
    }
}

#[test]
fn once_its_container_is_in_a_pod_a_fan_out_reads_only_its_own_there() {
    let own = "debugger-abcde";
    let rows = |phase| DebugSessionStatus {
        targets: ["web-a", "web-b"]
            .map(|p| DebugTargetStatus {
                pod_name: p.into(),
                pod_uid: Some(format!("{p}-uid")),
                phase: Some(phase),
                ..Default::default()
            })
            .to_vec(),
        ..Default::default()
    };
    let web_a = named_pod("web-a", "Running", &[(own, running())]);
    let others = [
        named_pod("web-b", "Running", &[(own, waiting("ContainerCreating", None))]),
        named_pod("web-new", "Running", &[]),
    ];
    for (case, session) in [
        ("claimed", fan_out_session(0, 5, Some(rows(Phase::Pending)))),
        ("running", fan_out_session(0, 5, Some(rows(Phase::Running)))),
    ] {
        assert!(reads_only_own_containers(&session, &web_a).is_some(), "{case}");
        assert!(reads_only_own_containers(&session, &others[1]).is_none(), "{case}: none of its containers there");
        // The contract: other containers in web-a change nothing that is decided.
        let alone: Vec<Pod> = [web_a.clone()].into_iter().chain(others.iter().cloned()).collect();
        let among_others: Vec<Pod> =
            [with_others_containers(&web_a)].into_iter().chain(others.iter().cloned()).collect();
        assert_eq!(decide_fan(&session, &alone), decide_fan(&session, &among_others), "{case}");
    }
    let raised = fan_out_session(1, 5, Some(rows(Phase::Running)));
    assert!(reads_only_own_containers(&raised, &web_a).is_none(), "the raised attempt's container is not in yet");
}
