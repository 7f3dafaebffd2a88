//! Bad input, all of it: specs the API server must refuse, specs only the
//! controller can judge, forged statuses, and plugin arguments. Each must end
//! in a clear answer (refused at admission, Failed with a documented reason
//! within 10 s, or an error message from the plugin), never a crash, never a
//! session stuck without an answer.

use std::process::Command;
use std::time::{Duration, Instant};

use ephemera::crd::{DebugSession, FailureReason, Phase};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;

use crate::common::{IMAGE, TestEnv, kubeconfig};

/// What must become of one bad input.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Refused by the API server (schema, pattern, bound or CEL).
    Refused,
    /// Accepted, then Failed with this reason within 10 s.
    Fails(FailureReason),
}

fn spec(target: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut spec =
        serde_json::json!({ "target": target, "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "60"] });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    spec
}

/// Bad specs: (name, spec, answer).
fn bad_specs() -> Vec<(&'static str, serde_json::Value, Answer)> {
    use Answer::*;
    use FailureReason as R;
    let pod = |name: &str| serde_json::json!({ "pod": name });
    let none = serde_json::json!({});
    let labels = |key: &str, value: &str| serde_json::json!({ "selector": { "matchLabels": { key: value } } });
    let expression = |key: &str, op: &str, values: serde_json::Value| serde_json::json!({ "selector": { "matchExpressions": [{ "key": key, "operator": op, "values": values }] } });
    let long = |n: usize| "a".repeat(n);
    vec![
        ("pod-empty", spec(pod(""), none.clone()), Refused),
        ("pod-dotdot", spec(pod("../../x"), none.clone()), Refused),
        ("pod-space", spec(pod("a b"), none.clone()), Refused),
        ("pod-nul", spec(pod("a\u{0}b"), none.clone()), Refused),
        ("pod-subresource", spec(pod("tgt/ephemeralcontainers"), none.clone()), Refused),
        ("pod-upper", spec(pod("Web"), none.clone()), Refused),
        ("pod-leading-dash", spec(pod("-web"), none.clone()), Refused),
        ("pod-too-long", spec(pod(&long(254)), none.clone()), Refused),
        ("pod-unicode", spec(pod("wéb"), none.clone()), Refused),
        ("pod-newline", spec(pod("web\n"), none.clone()), Refused),
        (
            "both-targets",
            spec(serde_json::json!({ "pod": "web", "selector": { "matchLabels": { "app": "web" } } }), none.clone()),
            Refused,
        ),
        ("no-target", spec(serde_json::json!({ "container": "app" }), none.clone()), Refused),
        ("selector-empty", spec(serde_json::json!({ "selector": {} }), none.clone()), Refused),
        ("selector-key-space", spec(labels("a b", "x"), none.clone()), Refused),
        ("selector-key-slashes", spec(labels("a/b/c", "x"), none.clone()), Refused),
        ("selector-value-space", spec(labels("app", "x y"), none.clone()), Refused),
        ("selector-value-long", spec(labels("app", &long(64)), none.clone()), Refused),
        ("selector-op", spec(expression("app", "Near", serde_json::json!(["x"])), none.clone()), Refused),
        ("selector-expr-key", spec(expression("a b", "In", serde_json::json!(["x"])), none.clone()), Refused),
        (
            "selector-in-without-values",
            spec(expression("app", "In", serde_json::json!([])), none.clone()),
            Fails(R::Invalid),
        ),
        (
            "selector-exists-with-values",
            spec(expression("app", "Exists", serde_json::json!(["x"])), none.clone()),
            Fails(R::Invalid),
        ),
        ("container-upper", spec(serde_json::json!({ "pod": "web", "container": "A" }), none.clone()), Refused),
        ("container-dots", spec(serde_json::json!({ "pod": "web", "container": "a.b" }), none.clone()), Refused),
        ("container-too-long", spec(serde_json::json!({ "pod": "web", "container": long(64) }), none.clone()), Refused),
        (
            "container-missing",
            spec(serde_json::json!({ "pod": "web", "container": "nope" }), none.clone()),
            Fails(R::TargetContainerNotFound),
        ),
        ("image-empty", spec(pod("web"), serde_json::json!({ "image": "" })), Refused),
        ("image-space", spec(pod("web"), serde_json::json!({ "image": "busy box" })), Refused),
        ("image-control", spec(pod("web"), serde_json::json!({ "image": "busy\u{7}box" })), Refused),
        ("image-tab", spec(pod("web"), serde_json::json!({ "image": "busy\tbox" })), Refused),
        ("image-too-long", spec(pod("web"), serde_json::json!({ "image": long(1025) })), Refused),
        ("image-upper", spec(pod("web"), serde_json::json!({ "image": "BusyBox" })), Fails(R::Invalid)),
        ("image-double-colon", spec(pod("web"), serde_json::json!({ "image": "busybox::1" })), Fails(R::Invalid)),
        ("image-bad-digest", spec(pod("web"), serde_json::json!({ "image": "busybox@sha256:xyz" })), Fails(R::Invalid)),
        ("container-name-upper", spec(pod("web"), serde_json::json!({ "containerName": "Dbg" })), Refused),
        ("container-name-long", spec(pod("web"), serde_json::json!({ "containerName": long(57) })), Refused),
        ("container-name-taken", spec(pod("web"), serde_json::json!({ "containerName": "app" })), Fails(R::Invalid)),
        ("attempt-negative", spec(pod("web"), serde_json::json!({ "attempt": -1 })), Refused),
        ("attempt-huge", spec(pod("web"), serde_json::json!({ "attempt": 10000 })), Refused),
        ("attempt-overflow", spec(pod("web"), serde_json::json!({ "attempt": 3_000_000_000u64 })), Refused),
        ("attempt-string", spec(pod("web"), serde_json::json!({ "attempt": "1" })), Refused),
        ("timeout-zero", spec(pod("web"), serde_json::json!({ "startTimeoutSeconds": 0 })), Refused),
        ("timeout-huge", spec(pod("web"), serde_json::json!({ "startTimeoutSeconds": 86401 })), Refused),
        ("ttl-negative", spec(pod("web"), serde_json::json!({ "ttlSecondsAfterFinished": -1 })), Refused),
        (
            "ttl-overflow",
            spec(pod("web"), serde_json::json!({ "ttlSecondsAfterFinished": 99_999_999_999u64 })),
            Refused,
        ),
        ("profile-unknown", spec(pod("web"), serde_json::json!({ "profile": "superuser" })), Refused),
        ("pull-policy-unknown", spec(pod("web"), serde_json::json!({ "imagePullPolicy": "Sometimes" })), Refused),
        ("command-too-many", spec(pod("web"), serde_json::json!({ "command": vec!["x"; 65] })), Refused),
        ("arg-too-long", spec(pod("web"), serde_json::json!({ "args": [long(4097)] })), Refused),
        (
            "env-too-many",
            spec(
                pod("web"),
                serde_json::json!({ "env": (0..65).map(|i| serde_json::json!({ "name": format!("V{i}"), "value": "x" })).collect::<Vec<_>>() }),
            ),
            Refused,
        ),
        (
            "env-name-equals",
            spec(pod("web"), serde_json::json!({ "env": [{ "name": "A=B", "value": "x" }] })),
            Fails(R::Invalid),
        ),
        ("env-without-name", spec(pod("web"), serde_json::json!({ "env": [{ "value": "x" }] })), Refused),
        ("spec-too-big", spec(pod("web"), serde_json::json!({ "args": vec![long(4000); 12] })), Fails(R::Invalid)),
        ("unknown-field", spec(pod("web"), serde_json::json!({ "privileged": true })), Refused),
        ("stdin-string", spec(pod("web"), serde_json::json!({ "stdin": "yes" })), Refused),
        ("custom-image", spec(pod("web"), serde_json::json!({ "custom": { "image": "evil" } })), Refused),
        ("custom-command", spec(pod("web"), serde_json::json!({ "custom": { "command": ["sh"] } })), Refused),
        ("custom-unknown", spec(pod("web"), serde_json::json!({ "custom": { "resources": {} } })), Refused),
        ("run-as-root", spec(pod("web"), serde_json::json!({ "runAs": "root" })), Refused),
        ("run-as-unknown-user", spec(pod("web"), serde_json::json!({ "runAs": "target" })), Fails(R::Invalid)),
        ("mounts-from-nowhere", spec(pod("web"), serde_json::json!({ "volumeMounts": "everything" })), Refused),
        ("capture-zero", spec(pod("web"), serde_json::json!({ "captureOutput": { "maxBytes": 0 } })), Refused),
        ("capture-huge", spec(pod("web"), serde_json::json!({ "captureOutput": { "maxBytes": 10_000_000 } })), Refused),
        (
            "fan-out-by-name",
            spec(serde_json::json!({ "pod": "web", "mode": "All", "maxPods": 2 }), none.clone()),
            Refused,
        ),
        (
            "fan-out-unbounded",
            spec(serde_json::json!({ "selector": { "matchLabels": { "app": "web" } }, "mode": "All" }), none.clone()),
            Refused,
        ),
        (
            "fan-out-zero",
            spec(
                serde_json::json!({ "selector": { "matchLabels": { "app": "web" } }, "mode": "All", "maxPods": 0 }),
                none.clone(),
            ),
            Refused,
        ),
        (
            "fan-out-mode-unknown",
            spec(serde_json::json!({ "selector": { "matchLabels": { "app": "web" } }, "mode": "Some" }), none.clone()),
            Refused,
        ),
        ("no-such-pod", spec(pod("nope"), none.clone()), Fails(R::TargetNotFound)),
        ("no-matching-pod", spec(labels("app", "nothing"), none.clone()), Fails(R::TargetNotFound)),
        ("pod-not-running", spec(pod("pending"), none.clone()), Fails(R::TargetNotRunning)),
    ]
}

/// Bad statuses, as someone with the right to write them might: (name, status).
fn bad_statuses() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("status-phase-unknown", serde_json::json!({ "phase": "Exploded" })),
        ("status-reason-unknown", serde_json::json!({ "phase": "Failed", "reason": "FromTheFuture" })),
        ("status-attempt-overflow", serde_json::json!({ "attempt": 3_000_000_000u64 })),
        ("status-exit-code-string", serde_json::json!({ "exitCode": "three" })),
        ("status-containers-bad", serde_json::json!({ "containers": [{ "name": 5 }] })),
        ("status-observed-negative", serde_json::json!({ "observedGeneration": -1 })),
        ("status-targets-bad", serde_json::json!({ "targets": [{ "podName": 7 }] })),
        (
            "status-counts-negative",
            serde_json::json!({ "targetCounts": { "total": -1, "pending": 0, "running": 0, "terminated": 0, "failed": 0 } }),
        ),
    ]
}

/// Plugin invocations that must end in an error message, exit code 1.
fn bad_plugin_calls() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("plugin-no-image", vec!["debug", "web"]),
        ("plugin-bad-profile", vec!["debug", "web", "--image", IMAGE, "--profile", "superuser"]),
        ("plugin-bad-env", vec!["debug", "web", "--image", IMAGE, "--env", "NOEQUALS"]),
        ("plugin-bad-timeout", vec!["debug", "web", "--image", IMAGE, "--timeout", "soon"]),
        ("plugin-tty-without-stdin", vec!["debug", "web", "--image", IMAGE, "-t"]),
        ("plugin-bad-pod-name", vec!["debug", "a b", "--image", IMAGE, "--no-attach", "--timeout", "5s"]),
        ("plugin-attach-missing", vec!["attach", "nope", "--timeout", "3s"]),
        ("plugin-unknown-command", vec!["explode"]),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_a_clear_answer() {
    let mut env = TestEnv::new("corpus").await;
    env.running_pod("web", &["app"], &[("app", "web")]).await;
    let pending: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "pending" },
        "spec": { "schedulerName": "nobody", "containers": [{ "name": "app", "image": IMAGE }] },
    }))
    .unwrap();
    env.pods.create(&PostParams::default(), &pending).await.unwrap();
    let raw: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &ApiResource::erase::<DebugSession>(&()));
    let (mut total, mut clean, mut crashes, mut stuck) = (0, 0, 0, 0);
    let mut report = Vec::new();

    let mut accepted = Vec::new();
    for (name, spec, answer) in bad_specs() {
        total += 1;
        let object = serde_json::json!({
            "apiVersion": "ephemera.dev/v1alpha1", "kind": "DebugSession", "metadata": { "name": name }, "spec": spec,
        });
        // Applied with strict field validation, as kubectl does: an unknown field is an error.
        let strict = PatchParams::apply("corpus").validation(kube::api::ValidationDirective::Strict);
        let created = raw.patch(name, &strict, &Patch::Apply(&object)).await;
        match (answer, created) {
            // Server-side apply answers a type error with 500 "failed to create typed patch object".
            (Answer::Refused, Err(kube::Error::Api(status)))
                if status.code == 422
                    || status.code == 400
                    || status.message.contains("failed to create typed patch") =>
            {
                clean += 1
            }
            (Answer::Fails(reason), Ok(_)) => accepted.push((name, reason, Instant::now())),
            (answer, outcome) => report.push(format!("{name}: expected {answer:?}, got {outcome:?}")),
        }
    }
    for (name, reason, created) in accepted {
        let deadline = created + Duration::from_secs(10);
        loop {
            let status = env.sessions.get(name).await.unwrap().status;
            if let Some(status) = status.filter(|s| s.phase == Some(Phase::Failed)) {
                if status.reason == Some(reason) {
                    clean += 1;
                } else {
                    report.push(format!("{name}: {:?} instead of {reason:?}: {:?}", status.reason, status.message));
                }
                break;
            }
            if Instant::now() > deadline {
                stuck += 1;
                report.push(format!("{name}: no answer within 10 s"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A good session whose status others try to spoil.
    env.create_session(&crate::common::sleeping_session("victim", "{ pod: web }", "")).await;
    env.wait_phase("victim", Phase::Running).await;
    for (name, status) in bad_statuses() {
        total += 1;
        let patch = serde_json::json!({ "status": status });
        match env.sessions.patch_status("victim", &PatchParams::default(), &Patch::Merge(&patch)).await {
            Err(kube::Error::Api(refusal)) if refusal.code == 422 || refusal.code == 400 => clean += 1,
            other => report.push(format!("{name}: stored: {:?}", other.map(|s| s.status))),
        }
    }
    let victim = env.wait_phase("victim", Phase::Running).await;
    assert!(victim.status.unwrap().attach_command.is_some());

    // The plugin, with what a hurried human types.
    for (name, args) in bad_plugin_calls() {
        total += 1;
        let output = Command::new(env!("CARGO_BIN_EXE_kubectl-ephemera"))
            .args(&args)
            .args(["-n", &env.namespace])
            .env("KUBECONFIG", kubeconfig())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        match output.status.code() {
            _ if text.contains("panicked") => {
                crashes += 1;
                report.push(format!("{name}: the plugin panicked: {text}"));
            }
            Some(1 | 2) if !text.trim().is_empty() => clean += 1,
            code => report.push(format!("{name}: exit {code:?}: {text}")),
        }
    }

    // The operator lived through it all.
    if env.operator.as_mut().unwrap().try_wait().is_some() {
        crashes += 1;
        report.push("the operator exited".into());
    }
    eprintln!("{total} bad inputs, {clean} rejected cleanly, {crashes} crashes, {stuck} stuck");
    assert!(total >= 60, "the corpus holds {total} inputs");
    assert!(report.is_empty(), "{}", report.join("\n"));
    assert_eq!((clean, crashes, stuck), (total, 0, 0));
}
