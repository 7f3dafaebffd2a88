//! ephemera on the API servers of the feature-gate era, for real: one row per
//! (version, apiserver gate, kubelet gate), each on a cluster of its own built
//! from that version's Go modules (tests/cluster, `up.sh --kubernetes`).
//!
//! In each row the CRD of that version (`ephemera crd --kubernetes-version`)
//! installs and the operator starts; the session's phase and its
//! `EphemeralContainersAvailable` condition are right for the row, with the
//! advice naming the components whose gate must change; where ephemeral
//! containers are served, a session adds its container in the shape that
//! server speaks, keeps every earlier one across two attempts, and (with a
//! kubelet that runs it) goes Running, Terminated, and is no longer attachable.

#[allow(dead_code)]
#[path = "../e2e/common.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ephemera::crd::{ContainerState, DebugSession, FailureReason, Phase};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

use common::{IMAGE, Operator, free_port, repo_root};

/// A cluster of one Kubernetes version, started for one row and stopped after it.
struct Cluster {
    dir: PathBuf,
    version: &'static str,
}

impl Cluster {
    /// `up.sh --kubernetes VERSION ARGS...` in a state dir of its own.
    fn start(row: &str, version: &'static str, args: &[&str]) -> Self {
        let dir = PathBuf::from(format!("/tmp/ephemera-matrix-{row}"));
        let started = Instant::now();
        let status = Command::new(repo_root().join("tests/cluster/up.sh"))
            .args(["--kubernetes", version])
            .args(args)
            .env("EPHEMERA_CLUSTER_DIR", &dir)
            .stdin(Stdio::null())
            .status()
            .expect("run up.sh");
        assert!(status.success(), "{row}: up.sh --kubernetes {version} {args:?} failed");
        eprintln!("{row}: Kubernetes {version} {args:?} up in {:.1}s", started.elapsed().as_secs_f64());
        Self { dir, version }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let options = KubeConfigOptions { context: Some("admin".into()), ..Default::default() };
        Client::try_from(Config::from_custom_kubeconfig(kubeconfig, &options).await.unwrap()).unwrap()
    }

    /// kubectl (1.34) against this cluster: (success, stdout + stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(self.dir.join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    /// The CRD as `ephemera crd --kubernetes-version` prints it for this version, applied as a user would.
    async fn install_crd(&self) {
        let output = Command::new(env!("CARGO_BIN_EXE_ephemera"))
            .args(["crd", "--kubernetes-version", self.version])
            .output()
            .unwrap();
        assert!(output.status.success());
        let file = self.dir.join("debugsession-crd.yaml");
        std::fs::write(&file, &output.stdout).unwrap();
        let (ok, out) = self.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
        assert!(ok, "the {} API server refused the CRD: {out}", self.version);
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let established = await_condition(crds, "debugsessions.ephemera.dev", conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established).await.expect("CRD established").unwrap();
    }

    fn operator(&self, row: &str) -> Operator {
        let metrics = format!("127.0.0.1:{}", free_port());
        // No admission policy records requesters on these versions (see docs/security.md).
        Operator::start_with_args("default", &self.kubeconfig(), "admin", &metrics, &[], &format!("-matrix-{row}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("tests/cluster/down.sh"))
            .env("EPHEMERA_CLUSTER_DIR", &self.dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// A row's namespace objects: the pod `tomcat-test` with container `tomcat-java`, and sessions.
struct Row {
    cluster: Cluster,
    operator: Operator,
    pods: Api<Pod>,
    sessions: Api<DebugSession>,
}

impl Row {
    async fn start(row: &str, version: &'static str, args: &[&str]) -> Self {
        let cluster = Cluster::start(row, version, args);
        cluster.install_crd().await;
        let operator = cluster.operator(row);
        let client = cluster.client().await;
        let row = Row {
            pods: Api::default_namespaced(client.clone()),
            sessions: Api::default_namespaced(client),
            cluster,
            operator,
        };
        row.create_pod().await;
        row
    }

    async fn create_pod(&self) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "tomcat-test" },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "tomcat-java", "image": IMAGE, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"],
                }],
            }
        }))
        .unwrap();
        // The ServiceAccount admission of a brand-new cluster may take a moment.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(error) = self.pods.create(&PostParams::default(), &pod).await {
            assert!(Instant::now() < deadline, "create pod: {error}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_pod_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pod = self.pods.get("tomcat-test").await.unwrap();
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                return;
            }
            assert!(Instant::now() < deadline, "tomcat-test never ran: {:?}", pod.status);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn create_session(&self, name: &str, command: &str, extra: &str) {
        let yaml = format!(
            "metadata: {{ name: {name} }}\nspec:\n  target: {{ pod: tomcat-test, container: tomcat-java }}\n  image: {IMAGE}\n  imagePullPolicy: Never\n  command: {command}\n  stdin: false\n  tty: false\n{extra}"
        );
        let session: DebugSession = serde_saphyr::from_str(&yaml).unwrap();
        self.sessions.create(&PostParams::default(), &session).await.expect("create DebugSession");
    }

    async fn wait(&self, name: &str, what: &str, ok: impl Fn(&DebugSession) -> bool) -> DebugSession {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(session) = self.sessions.get_opt(name).await.unwrap()
                && ok(&session)
            {
                return session;
            }
            if Instant::now() >= deadline {
                let session = self.sessions.get_opt(name).await.unwrap();
                let log = std::fs::read_to_string(&self.operator.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "{name} never became {what}: {:#?}\noperator log (newest first):\n{}",
                    session.and_then(|s| s.status),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_phase(&self, name: &str, attempt: i32, phase: Phase) -> DebugSession {
        self.wait(name, phase.as_str(), |s| {
            s.status.as_ref().is_some_and(|st| st.phase == Some(phase) && st.attempt == attempt)
        })
        .await
    }

    async fn ephemeral_names(&self) -> Vec<String> {
        let pod = self.pods.get("tomcat-test").await.unwrap();
        pod.spec.unwrap().ephemeral_containers.unwrap_or_default().into_iter().map(|c| c.name).collect()
    }

    /// The EphemeralContainersAvailable condition: (status, reason, message).
    fn available(session: &DebugSession) -> (String, String, String) {
        let condition = session
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "EphemeralContainersAvailable")
            .unwrap();
        (condition.status.clone(), condition.reason.clone(), condition.message.clone())
    }

    /// A row without ephemeral containers: the session fails at once, saying what to change.
    async fn expect_unavailable(&self, advice: &[&str]) {
        self.create_session("dbg", r#"["sleep", "600"]"#, "").await;
        let session = self.wait_phase("dbg", 0, Phase::Failed).await;
        let status = session.status.clone().unwrap();
        assert_eq!(status.reason, Some(FailureReason::EphemeralContainersUnavailable), "{status:#?}");
        let (available, reason, _) = Self::available(&session);
        assert_eq!((available.as_str(), reason.as_str()), ("False", "NotServed"));
        let message = status.message.unwrap();
        for part in advice {
            assert!(message.contains(part), "the advice lacks {part:?}: {message}");
        }
        assert!(self.ephemeral_names().await.is_empty());
    }

    /// A row where everything works: two attempts in the shape this server
    /// speaks, every earlier container kept, Running, Terminated, not attachable.
    async fn expect_two_attempts_run_and_end(&self, extra: &str) {
        self.wait_pod_running().await;
        self.create_session("dbg", r#"["sh", "-c", "ps; sleep 3; exit 3"]"#, extra).await;
        self.wait_phase("dbg", 0, Phase::Running).await;
        let done = self.wait_phase("dbg", 0, Phase::Terminated).await;
        let status = done.status.clone().unwrap();
        assert_eq!((status.exit_code, status.exit_reason.as_deref()), (Some(3), Some("Error")));
        let (available, reason, _) = Self::available(&done);
        assert_eq!((available.as_str(), reason.as_str()), ("True", "Served"));
        let first = status.container_name.unwrap();
        // The debug container shared the target's processes.
        let (ok, logs) = self.cluster.kubectl(&["logs", "tomcat-test", "-c", &first]);
        assert!(ok && logs.contains("sleep 3600"), "{logs}");
        let (attached, out) = self.cluster.kubectl(&["attach", "tomcat-test", "-c", &first]);
        assert!(!attached, "a terminated ephemeral container cannot be attached to: {out}");

        self.sessions
            .patch("dbg", &PatchParams::default(), &Patch::Merge(serde_json::json!({ "spec": { "attempt": 1 } })))
            .await
            .unwrap();
        let second = self.wait_phase("dbg", 1, Phase::Terminated).await.status.unwrap();
        let recorded: Vec<_> = second.containers.iter().map(|c| (c.attempt, c.state)).collect();
        assert_eq!(recorded, vec![(0, ContainerState::Terminated), (1, ContainerState::Terminated)]);
        // In any order: a strategic merge patch (1.22 and later) puts the new one first.
        let mut in_pod = self.ephemeral_names().await;
        in_pod.sort();
        assert_eq!(in_pod, vec![first.clone(), format!("{first}-1")], "every earlier container kept");
    }
}

const OFF: &[&str] = &["--control-plane-only", "--feature-gates", "EphemeralContainers=false"];
/// 1.16-1.21 refuse any securityContext on an ephemeral container: only this profile sets none.
const BASELINE: &str = "  profile: baseline\n";
const ON: &[&str] = &["--feature-gates", "EphemeralContainers=true"];

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_21_gate_off() {
    let row = Row::start("121-off", "1.21", OFF).await;
    row.expect_unavailable(&[
        "Kubernetes 1.21",
        "EphemeralContainers=true",
        "kube-apiserver",
        "every kubelet",
        "off by default before 1.23",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_21_gate_on() {
    let row = Row::start("121-on", "1.21", ON).await;
    row.expect_two_attempts_run_and_end(BASELINE).await;
    // The default profile (general: SYS_PTRACE) needs a securityContext: refused
    // before anything is written, with what to use instead.
    row.create_session("ptrace", r#"["sleep", "600"]"#, "").await;
    let refused = row.wait_phase("ptrace", 0, Phase::Failed).await.status.unwrap();
    assert_eq!(refused.reason, Some(FailureReason::Invalid));
    assert!(refused.message.unwrap().contains("use profile: baseline on this cluster"));
    assert_eq!(row.ephemeral_names().await.len(), 2, "nothing sent for it");
    chart_installs_on(&row);
    // The legacy shape: the operator read and replaced kind EphemeralContainers.
    let log = std::fs::read_to_string(&row.operator.log).unwrap();
    assert!(log.contains("LegacyEphemeralContainers"), "the operator chose the 1.16-1.21 shape:\n{log}");
}

/// The chart as `helm install` renders it for this cluster's version, accepted by its API server
/// (a server-side dry run): no admission policy below 1.30, and no editor aggregation without it.
fn chart_installs_on(row: &Row) {
    let helm = std::env::var_os("EPHEMERA_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ephemera/helm-v3.22.0/helm"));
    let output = Command::new(&helm)
        .args(["template", "ephemera", repo_root().join("charts/ephemera").to_str().unwrap(), "--namespace", "default"])
        .args(["--kube-version", row.cluster.version])
        .output()
        .expect("run helm");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rendered = String::from_utf8(output.stdout).unwrap();
    assert!(!rendered.contains("ValidatingAdmissionPolicy"), "no admission policy below 1.30");
    assert!(!rendered.contains("aggregate-to-edit"), "without the policy, debug power must not go to edit");
    let file = row.cluster.dir.join("chart.yaml");
    std::fs::write(&file, rendered).unwrap();
    let (ok, out) = row.cluster.kubectl(&["apply", "--server-side", "--dry-run=server", "-f", file.to_str().unwrap()]);
    assert!(ok, "the {} API server refused the chart: {out}", row.cluster.version);
    assert!(
        out.contains("deployment.apps/ephemera") && out.contains("clusterrole.rbac.authorization.k8s.io/ephemera"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_21_kubelet_gate_off() {
    // The apiserver takes the container; the kubelet never starts it. Only a timeout can tell.
    let row = Row::start(
        "121-kubelet-off",
        "1.21",
        &["--feature-gates", "EphemeralContainers=true", "--kubelet-feature-gates", "EphemeralContainers=false"],
    )
    .await;
    row.wait_pod_running().await;
    row.create_session("dbg", r#"["sleep", "600"]"#, &format!("{BASELINE}  startTimeoutSeconds: 10\n")).await;
    let session = row.wait_phase("dbg", 0, Phase::Failed).await;
    let status = session.status.clone().unwrap();
    assert_eq!(status.reason, Some(FailureReason::StartTimeout), "{status:#?}");
    let message = status.message.unwrap();
    assert!(
        message.contains("the kubelet never reported it")
            && message.contains("feature gate on for this node's kubelet"),
        "{message}"
    );
    assert_eq!(row.ephemeral_names().await.len(), 1, "accepted into the spec, never started");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_21_manual_procedure_then_ephemera() {
    // What the tutorials of that era do by hand: enable the gate, then PUT kind
    // EphemeralContainers with `kubectl replace --raw`, keeping every earlier one.
    let row = Row::start("121-manual", "1.21", ON).await;
    row.wait_pod_running().await;
    let path = "/api/v1/namespaces/default/pods/tomcat-test/ephemeralcontainers";
    let debugger = |name: &str| {
        serde_json::json!({
            "name": name, "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "600"],
            "targetContainerName": "tomcat-java", "stdin": true, "tty": true, "terminationMessagePolicy": "File",
        })
    };
    for name in ["debugger-manual-1", "debugger-manual-2"] {
        let (ok, current) = row.cluster.kubectl(&["get", "--raw", path]);
        assert!(ok, "{current}");
        let mut object: serde_json::Value = serde_json::from_str(&current).unwrap();
        assert_eq!(object["kind"], "EphemeralContainers");
        let mut list = object["ephemeralContainers"].as_array().cloned().unwrap_or_default();
        list.push(debugger(name));
        object["ephemeralContainers"] = list.into();
        let file = row.cluster.dir.join(format!("{name}.json"));
        std::fs::write(&file, object.to_string()).unwrap();
        let (ok, out) = row.cluster.kubectl(&["replace", "--raw", path, "-f", file.to_str().unwrap()]);
        assert!(ok, "kubectl replace --raw: {out}");
    }
    assert_eq!(row.ephemeral_names().await, ["debugger-manual-1", "debugger-manual-2"]);

    row.create_session("dbg", r#"["sleep", "600"]"#, BASELINE).await;
    let session = row.wait_phase("dbg", 0, Phase::Running).await;
    let status = session.status.unwrap();
    let third = status.container_name.unwrap();
    let all_three = ["debugger-manual-1".to_string(), "debugger-manual-2".into(), third];
    assert_eq!(row.ephemeral_names().await, all_three);
    assert_eq!(status.ephemeral_containers_at_injection, all_three, "all three in status");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_22_gate_off() {
    let row = Row::start("122-off", "1.22", OFF).await;
    row.expect_unavailable(&["Kubernetes 1.22", "EphemeralContainers=true", "kube-apiserver", "every kubelet"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_22_gate_on() {
    let row = Row::start("122-on", "1.22", ON).await;
    // From 1.22 a securityContext is taken: the default profile works.
    row.expect_two_attempts_run_and_end("").await;
    let log = std::fs::read_to_string(&row.operator.log).unwrap();
    assert!(log.contains("PodSubresource"), "the operator chose the Pod shape:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_24_default() {
    // Beta and on by default: nothing to turn on.
    let row = Row::start("124-default", "1.24", &[]).await;
    row.expect_two_attempts_run_and_end("").await;
    chart_installs_on(&row);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_34() {
    // GA, no gate: the newest CRD (with CEL) and the same story.
    let row = Row::start("134", "1.34", &[]).await;
    row.expect_two_attempts_run_and_end("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_1_24_gate_off() {
    let row = Row::start("124-off", "1.24", OFF).await;
    row.expect_unavailable(&["Kubernetes 1.24", "turned off", "kube-apiserver", "every kubelet"]).await;
}

/// The CRD of every version in the matrix parses as the newest one does, minus what it leaves out.
#[test]
fn crd_flavours_leave_out_only_what_old_servers_reject() {
    for version in ["1.21", "1.22", "1.24"] {
        let output = Command::new(env!("CARGO_BIN_EXE_ephemera"))
            .args(["crd", "--kubernetes-version", version])
            .output()
            .unwrap();
        let yaml = String::from_utf8(output.stdout).unwrap();
        assert!(!yaml.contains("x-kubernetes-validations"), "{version} has no CEL");
        assert!(yaml.contains("pattern:"), "{version} keeps the patterns every server enforces");
        assert!(yaml.contains("maximum:"), "{version} keeps the bounds");
    }
}
