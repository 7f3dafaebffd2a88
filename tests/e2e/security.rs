//! Nobody gets through ephemera what they could not do by hand: the requester
//! is checked again when each container is to be added, and the platform's
//! policy is enforced.

use std::collections::BTreeMap;

use ephemera::crd::{FailureReason, Phase};
use ephemera::requester::{GROUPS_ANNOTATION, UID_ANNOTATION, USERNAME_ANNOTATION};
use kube::api::{Patch, PatchParams};

use crate::common::{Operator, TestEnv, busybox_session, grant, kubeconfig, kubectl, sleeping_session};

/// A session as admission would have stamped it for `user`.
fn requested_by(user: &str, name: &str, target: &str) -> String {
    let annotations = BTreeMap::from([
        (USERNAME_ANNOTATION, user.to_string()),
        (UID_ANNOTATION, format!("{user}-uid")),
        (GROUPS_ANNOTATION, "system:authenticated".to_string()),
    ]);
    let annotations: Vec<String> = annotations.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    busybox_session(name, target, r#"["sh", "-c", "sleep 2"]"#, "").replacen(
        &format!("metadata: {{ name: {name} }}"),
        &format!("metadata: {{ name: {name}, annotations: {{ {} }} }}", annotations.join(", ")),
        1,
    )
}

fn operator_with(env: &TestEnv, args: &[&str]) -> Operator {
    let mut all = vec!["--require-requester=true"];
    all.extend_from_slice(args);
    Operator::start_with_args(&env.namespace, &kubeconfig(), "admin", "127.0.0.1:0", &all, "")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_requester_is_checked_again_before_each_container() {
    let mut env = TestEnv::without_operator("requester", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    grant(
        &env.namespace,
        "alice",
        serde_json::json!([{ "apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "resourceNames": ["web"], "verbs": ["patch"] }]),
    );
    env.operator = Some(operator_with(&env, &[]));
    env.create_session(&requested_by("alice", "by-alice", "{ pod: web }")).await;
    let session = env.wait_phase("by-alice", Phase::Terminated).await;
    assert_eq!(session.status.unwrap().requester.as_deref(), Some("alice"));

    // alice loses the right; her next attempt is refused, naming her and the right.
    let (ok, out) = kubectl(&["delete", "rolebinding", "alice", "-n", &env.namespace]);
    assert!(ok, "{out}");
    env.sessions
        .patch("by-alice", &PatchParams::default(), &Patch::Merge(serde_json::json!({ "spec": { "attempt": 1 } })))
        .await
        .unwrap();
    let failed = env
        .wait_session("by-alice", "refused", std::time::Duration::from_secs(30), |s| {
            s.status.as_ref().is_some_and(|st| st.attempt == 1 && st.phase == Some(Phase::Failed))
        })
        .await
        .status
        .unwrap();
    assert_eq!(failed.reason, Some(FailureReason::Forbidden));
    let message = failed.message.unwrap();
    assert!(message.contains("alice may not patch pods/ephemeralcontainers of pod web"), "{message}");
    assert_eq!(env.ephemeral_names("web").await.len(), 1, "nothing added for the refused attempt");

    // bob never had the right; a session with no requester at all is refused too.
    env.create_session(&requested_by("bob", "by-bob", "{ pod: web }")).await;
    let bob = env.wait_phase("by-bob", Phase::Failed).await.status.unwrap();
    assert!(bob.message.unwrap().contains("bob may not patch"));
    env.create_session(&sleeping_session("by-nobody", "{ pod: web }", "")).await;
    let nobody = env.wait_phase("by-nobody", Phase::Failed).await.status.unwrap();
    assert_eq!(nobody.reason, Some(FailureReason::Forbidden));
    assert!(nobody.message.unwrap().contains("admission recorded no requester"));
    assert_eq!(env.ephemeral_names("web").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platform_policy_is_enforced() {
    let mut env = TestEnv::without_operator("policy", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    env.operator = Some(Operator::start_with_args(
        &env.namespace,
        &kubeconfig(),
        "admin",
        "127.0.0.1:0",
        &[
            "--allowed-images=localhost/busybox:*",
            "--allowed-profiles=general,baseline,restricted,netadmin",
            "--max-active-sessions-per-namespace=1",
        ],
        "",
    ));
    env.create_session(&sleeping_session("first", "{ pod: web }", "")).await;
    env.wait_phase("first", Phase::Running).await;
    let cases = [
        ("quota", sleeping_session("second", "{ pod: web }", ""), "policy.maxActiveSessionsPerNamespace"),
        (
            "image",
            sleeping_session("other-image", "{ pod: web }", "")
                .replace("localhost/busybox:1.36", "docker.io/nicolaka/netshoot"),
            "policy.allowedImages",
        ),
        ("profile", sleeping_session("privileged", "{ pod: web }", "  profile: sysadmin\n"), "policy.allowedProfiles"),
    ];
    for (what, yaml, rule) in cases {
        let name = yaml.split("name: ").nth(1).unwrap().split(' ').next().unwrap().to_string();
        env.create_session(&yaml).await;
        let status = env.wait_phase(&name, Phase::Failed).await.status.unwrap();
        assert_eq!(status.reason, Some(FailureReason::PolicyViolation), "{what}");
        assert!(status.message.unwrap().contains(rule), "{what}");
    }
    assert_eq!(env.ephemeral_names("web").await.len(), 1, "only the first");
}
