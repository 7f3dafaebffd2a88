//! Debug containers that can see what they need, and sessions that keep what
//! they found: runAs, volumeMounts and envFrom from the target, custom specs,
//! and captured output that outlives the pod.

use std::time::Duration;

use ephemera::crd::{DebugSession, FailureReason, Phase};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};

use crate::common::{IMAGE, Operator, TestEnv, busybox_session, kubeconfig};

/// The output a session's `captureOutput` kept of `attempt`.
async fn captured(env: &TestEnv, session: &str, attempt: i32) -> ConfigMap {
    let session = env.sessions.get(session).await.unwrap();
    let name = ephemera::status::output_config_map(&session, attempt);
    let recorded = session.status.unwrap().containers.into_iter().find(|c| c.attempt == attempt).and_then(|c| c.output);
    assert_eq!(recorded.as_deref(), Some(name.as_str()), "status points to the ConfigMap");
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    config_maps.get(&name).await.unwrap()
}

fn output(config_map: &ConfigMap) -> String {
    config_map.data.as_ref().and_then(|d| d.get("output")).cloned().unwrap_or_default()
}

async fn operator(env: &mut TestEnv, extra: &[&str]) {
    let mut args = vec!["--max-capture-bytes=4096"];
    args.extend_from_slice(extra);
    env.operator = Some(Operator::start_with_args(&env.namespace, &kubeconfig(), "admin", "127.0.0.1:0", &args, ""));
}

const ONE_SHOT: &str = "  stdin: false\n  tty: false\n  captureOutput: { maxBytes: 4096 }\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_non_root_pod_is_debugged_as_its_own_user() {
    let mut env =
        TestEnv::with_namespace_labels("runas", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    env.operator.take();
    operator(&mut env, &[]).await;
    // The user is set on the container, not the pod: a debug container does not inherit it.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"],
                "securityContext": { "runAsUser": 1000, "runAsGroup": 3000, "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
            }],
        }
    }))
    .unwrap();
    env.pods.create(&PostParams::default(), &pod).await.unwrap();
    env.wait_pod("web", "Running", |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).await;

    let extra = format!("  profile: restricted\n  runAs: target\n{ONE_SHOT}");
    env.create_session(&busybox_session("as-target", "{ pod: web }", r#"["sh", "-c", "id -u; id -g"]"#, &extra)).await;
    env.wait_phase("as-target", Phase::Terminated).await;
    assert_eq!(output(&captured(&env, "as-target", 0).await).split_whitespace().collect::<Vec<_>>(), ["1000", "3000"]);

    // Without runAs: target the image's root user meets runAsNonRoot: the kubelet refuses at once.
    let extra = format!("  profile: restricted\n{ONE_SHOT}");
    env.create_session(&busybox_session("as-image", "{ pod: web }", r#"["id", "-u"]"#, &extra)).await;
    let started = std::time::Instant::now();
    let failed = env.wait_phase("as-image", Phase::Failed).await.status.unwrap();
    assert_eq!(failed.reason, Some(FailureReason::CannotStart), "{:?}", failed.message);
    assert!(failed.message.unwrap().contains("runAsNonRoot"));
    assert!(started.elapsed() < Duration::from_secs(60), "not after startTimeoutSeconds");

    // A profile's capabilities do nothing for a non-root user: a condition says so.
    let extra = "  profile: general\n  runAs: target\n";
    // (Pod Security refuses SYS_PTRACE in a restricted namespace: the session fails, and says both.)
    env.create_session(&busybox_session("ptrace", "{ pod: web }", r#"["true"]"#, extra)).await;
    let session = env
        .wait_session("ptrace", "settled", Duration::from_secs(60), |s| {
            s.status.as_ref().is_some_and(|st| matches!(st.phase, Some(Phase::Failed | Phase::Terminated)))
        })
        .await;
    let warning = session.status.unwrap().conditions.into_iter().find(|c| c.type_ == "CapabilitiesEffective").unwrap();
    assert_eq!((warning.status.as_str(), warning.reason.as_str()), ("False", "NonRootUser"), "{warning:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_targets_mounts_and_environment_are_shared_but_secrets_only_when_allowed() {
    let mut env = TestEnv::without_operator("reach", &[]).await;
    operator(&mut env, &[]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let settings: ConfigMap =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "settings" }, "data": { "mode": "canary" } }))
            .unwrap();
    config_maps.create(&PostParams::default(), &settings).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret: Secret = serde_json::from_value(
        serde_json::json!({ "metadata": { "name": "db" }, "stringData": { "password": "hunter2" } }),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [
                { "name": "scratch", "emptyDir": {} },
                { "name": "settings", "configMap": { "name": "settings" } },
                { "name": "db", "secret": { "secretName": "db" } },
            ],
            "containers": [{
                "name": "app", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo written-by-app > /scratch/state; sleep 3600"],
                "env": [
                    { "name": "APP_MODE", "value": "blue" },
                    { "name": "DB_PASSWORD", "valueFrom": { "secretKeyRef": { "name": "db", "key": "password" } } },
                ],
                "volumeMounts": [
                    { "name": "scratch", "mountPath": "/scratch" },
                    { "name": "settings", "mountPath": "/etc/settings", "readOnly": true },
                    { "name": "db", "mountPath": "/etc/db", "readOnly": true },
                ],
            }],
        }
    }))
    .unwrap();
    env.pods.create(&PostParams::default(), &pod).await.unwrap();
    env.wait_pod("web", "Running", |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).await;

    let look = r#"["sh", "-c", "cat /scratch/state /etc/settings/mode; cat /etc/db/password || echo no-secret-file; echo mode=$APP_MODE password=${DB_PASSWORD:-none}"]"#;
    let extra = format!("  volumeMounts: target\n  envFrom: target\n{ONE_SHOT}");
    env.create_session(&busybox_session("look", "{ pod: web }", look, &extra)).await;
    let session = env.wait_phase("look", Phase::Terminated).await;
    let seen = output(&captured(&env, "look", 0).await);
    assert!(seen.contains("written-by-app") && seen.contains("canary"), "the target's emptyDir and ConfigMap: {seen}");
    assert!(seen.contains("no-secret-file") && seen.contains("password=none"), "Secrets stay out by default: {seen}");
    assert!(seen.contains("mode=blue"), "the target's env: {seen}");
    let omitted = session.status.unwrap().omitted_from_target;
    assert_eq!(omitted.len(), 3, "{omitted:?}");
    assert_eq!(omitted[0], "mount /etc/db (volume db, a Secret)");
    assert!(
        omitted[1].starts_with("mount /var/run/secrets/kubernetes.io/serviceaccount (volume kube-api-access-"),
        "the pod's token too: {omitted:?}"
    );
    assert_eq!(omitted[2], "env DB_PASSWORD (from a Secret)");

    // Where the platform allows Secrets, they are shared too.
    env.operator.take();
    operator(&mut env, &["--allow-secret-mounts"]).await;
    env.create_session(&busybox_session("look-secrets", "{ pod: web }", look, &extra)).await;
    env.wait_phase("look-secrets", Phase::Terminated).await;
    let seen = output(&captured(&env, "look-secrets", 0).await);
    assert!(seen.contains("hunter2") && seen.contains("password=hunter2"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_specs_merge_like_kubectl_and_refuse_what_kubectl_refuses() {
    let mut env = TestEnv::without_operator("custom", &[]).await;
    operator(&mut env, &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let extra =
        format!("  custom: {{ workingDir: /tmp, securityContext: {{ readOnlyRootFilesystem: true }} }}\n{ONE_SHOT}");
    let command = r#"["sh", "-c", "pwd; touch /probe 2>/dev/null && echo writable || echo read-only"]"#;
    env.create_session(&busybox_session("custom", "{ pod: web }", command, &extra)).await;
    env.wait_phase("custom", Phase::Terminated).await;
    let seen = output(&captured(&env, "custom", 0).await);
    assert_eq!(seen.split_whitespace().collect::<Vec<_>>(), ["/tmp", "read-only"], "{seen}");

    let refused: Result<DebugSession, _> = serde_saphyr::from_str(&busybox_session(
        "custom-image",
        "{ pod: web }",
        r#"["true"]"#,
        "  custom: { image: evil:latest }\n",
    ));
    let refused = env.sessions.create(&PostParams::default(), &refused.unwrap()).await;
    let message = format!("{refused:?}");
    assert!(message.contains("custom may not set name, command, image"), "refused at admission: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn captured_output_outlives_the_pod_and_marks_truncation() {
    let mut env = TestEnv::without_operator("capture", &[]).await;
    operator(&mut env, &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(&busybox_session("ps", "{ pod: web }", r#"["sh", "-c", "ps; echo done"]"#, ONE_SHOT)).await;
    env.wait_phase("ps", Phase::Terminated).await;
    let kept = captured(&env, "ps", 0).await;
    assert_eq!(kept.metadata.annotations.as_ref().unwrap()["ephemera.dev/truncated"], "false");
    assert!(kept.metadata.owner_references.as_ref().unwrap()[0].kind == "DebugSession");
    // A one-shot that prints more than it may keep.
    let flood = "  stdin: false\n  tty: false\n  captureOutput: { maxBytes: 100 }\n";
    env.create_session(&busybox_session("flood", "{ pod: web }", r#"["sh", "-c", "seq 1 1000"]"#, flood)).await;
    env.wait_phase("flood", Phase::Terminated).await;
    let flooded = captured(&env, "flood", 0).await;
    assert_eq!(output(&flooded).len(), 100);
    assert_eq!(flooded.metadata.annotations.as_ref().unwrap()["ephemera.dev/truncated"], "true");

    // The pod goes; the output stays, and the plugin shows it.
    env.pods.delete("web", &DeleteParams::default().grace_period(0)).await.unwrap();
    env.wait_pod_gone("web").await;
    let kept = captured(&env, "ps", 0).await;
    assert!(output(&kept).contains("sleep 3600") && output(&kept).contains("done"), "{kept:?}");
    let plugin = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ephemera"))
        .args(["logs", "flood", "-n", &env.namespace])
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&plugin.stdout);
    assert!(plugin.status.success() && shown.starts_with("1\n2\n") && shown.contains("[output truncated"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_probe_in_every_replica() {
    let mut env = TestEnv::without_operator("fan-out", &[]).await;
    let port = crate::common::free_port();
    env.operator = Some(Operator::start_with_args(
        &env.namespace,
        &kubeconfig(),
        "admin",
        &format!("127.0.0.1:{port}"),
        &["--max-capture-bytes=4096"],
        "",
    ));
    for replica in ["web-0", "web-1", "web-2"] {
        env.running_pod(replica, &["app"], &[("app", "web")]).await;
    }
    let every = |name: &str, max_pods: u32| {
        format!(
            "metadata: {{ name: {name} }}\nspec:\n  target: {{ selector: {{ matchLabels: {{ app: web }} }}, mode: All, maxPods: {max_pods} }}\n  image: {IMAGE}\n  imagePullPolicy: Never\n  command: [\"sh\", \"-c\", \"hostname; sleep 2\"]\n{ONE_SHOT}"
        )
    };
    env.create_session(&every("probe", 3)).await;
    let session = env.wait_phase("probe", Phase::Terminated).await;
    let status = session.status.unwrap();
    let counts = status.target_counts.unwrap();
    assert_eq!((counts.total, counts.terminated, counts.failed), (3, 3, 0), "{:?}", status.message);
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    for row in &status.targets {
        assert_eq!(env.ephemeral_names(&row.pod_name).await.len(), 1, "{}", row.pod_name);
        let kept = row.containers[0].output.clone().expect("one capture per pod");
        let output = output(&config_maps.get(&kept).await.unwrap());
        assert_eq!(output.trim(), row.pod_name, "each pod's own output");
    }
    let (_, wide) = crate::common::kubectl(&["get", "dbgs", "probe", "-n", &env.namespace, "-o", "wide"]);
    assert!(wide.contains("PODS") && wide.contains("DONE"), "{wide}");

    // Capped: two of the three, and the status says why.
    env.create_session(&every("two", 2)).await;
    let session = env.wait_phase("two", Phase::Terminated).await;
    let status = session.status.unwrap();
    assert_eq!(status.targets.len(), 2);
    assert!(status.message.unwrap().contains("3 Running pods match; target.maxPods is 2"));

    // One write to pods/ephemeralcontainers per pod per attempt.
    let metrics = crate::common::scrape(port).await;
    let writes = metrics
        .lines()
        .find(|l| l.starts_with("ephemera_api_requests_total") && l.contains("resource=\"pods/ephemeralcontainers\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(writes, Some(5.0), "{metrics}");
}
