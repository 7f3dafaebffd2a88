//! Test environment on the local cluster of tests/cluster: a client, a
//! namespace of the test's own and an operator process watching only it, so
//! tests run in parallel without seeing each other.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ephemera::crd::{DebugSession, Phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};

pub const IMAGE: &str = "localhost/busybox:1.36";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cluster_dir() -> PathBuf {
    std::env::var_os("EPHEMERA_CLUSTER_DIR").map_or_else(|| PathBuf::from("/tmp/ephemera-cluster"), PathBuf::from)
}

pub fn kubeconfig() -> PathBuf {
    cluster_dir().join("kubeconfig")
}

/// Starts the cluster through up.sh unless it already answers; once per test binary.
/// A start that failed is not tried again by the next test: every test fails
/// at once with the same message instead of each spending minutes on up.sh.
pub fn ensure_cluster() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = READY.get_or_init(|| {
        let healthy =
            kubeconfig().exists() && kubectl_output(&["get", "--raw", "/readyz"]).is_ok_and(|o| o.status.success());
        if healthy {
            return Ok(());
        }
        let up = || {
            // -o: the cluster's daemons must not inherit (and so keep holding) the lock
            Command::new("flock")
                .args(["-o", "-w", "900"])
                .arg(cluster_dir().with_extension("lock"))
                .arg(repo_root().join("tests/cluster/up.sh"))
                .status()
                .is_ok_and(|status| status.success())
        };
        // up.sh tears down a half-started cluster itself; one more try covers a
        // start that failed on something transient (its output is above).
        if up() {
            return Ok(());
        }
        eprintln!("tests/cluster/up.sh failed; trying once more");
        if up() { Ok(()) } else { Err("tests/cluster/up.sh failed twice; see its output above".into()) }
    });
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

fn kubectl_output(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new(cluster_dir().join("bin/kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Runs kubectl (the cluster's own build) and returns (success, stdout + stderr).
pub fn kubectl(args: &[&str]) -> (bool, String) {
    let output = kubectl_output(args).expect("run kubectl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

pub async fn client_for(context: &str) -> Client {
    Client::try_from(config_for(context).await).expect("client")
}

/// The kubeconfig's settings for `context`.
pub async fn config_for(context: &str) -> Config {
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("read kubeconfig");
    let options = KubeConfigOptions { context: Some(context.into()), ..Default::default() };
    Config::from_custom_kubeconfig(kubeconfig, &options).await.expect("kubeconfig context")
}

/// Installs the CRD from crds/ (server-side apply) and waits until it is served.
pub async fn install_crd(client: &Client) {
    let yaml = std::fs::read_to_string(repo_root().join("crds/debugsession.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(&crd.name_any(), &PatchParams::apply("ephemera-e2e").force(), &Patch::Apply(&crd))
        .await
        .expect("apply CRD");
    let name = crd.name_any();
    let established = await_condition(crds, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established).await.expect("CRD established").unwrap();
}

pub struct Operator {
    child: Child,
    pub log: PathBuf,
}

impl Operator {
    /// Runs `ephemera run --namespace <ns>` with the given kubeconfig context.
    pub fn start(namespace: &str, context: &str, metrics_addr: &str) -> Self {
        Self::start_with_kubeconfig(namespace, &kubeconfig(), context, metrics_addr)
    }

    pub fn start_with_kubeconfig(
        namespace: &str,
        kubeconfig: &std::path::Path,
        context: &str,
        metrics_addr: &str,
    ) -> Self {
        Self::start_with_args(namespace, kubeconfig, context, metrics_addr, &[], "")
    }

    /// `log_suffix` keeps the logs of several operators of one test apart.
    pub fn start_with_args(
        namespace: &str,
        kubeconfig: &std::path::Path,
        context: &str,
        metrics_addr: &str,
        extra_args: &[&str],
        log_suffix: &str,
    ) -> Self {
        let log_dir = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = log_dir.join(format!("{namespace}{log_suffix}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        // EPHEMERA_OPERATOR_BIN: another build of the operator, e.g. the image's release binary.
        let binary = std::env::var_os("EPHEMERA_OPERATOR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ephemera").into());
        let child = Command::new(binary)
            .args(["run", "--metrics-addr", metrics_addr])
            // Most tests install no admission policy recording the requester; those
            // that test it pass --require-requester=true after this.
            .arg("--require-requester=false")
            // An empty namespace means all of them.
            .args(if namespace.is_empty() { vec![] } else { vec!["--namespace", namespace] })
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            .env("EPHEMERA_KUBE_CONTEXT", context)
            .env(
                "RUST_LOG",
                std::env::var("FAULTS_RUST_LOG").unwrap_or_else(|_| "info,ephemera=debug,kube=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Self { child, log }
    }

    #[allow(dead_code)] // used by benches/unrelated_pods.rs
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has ended.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub sessions: Api<DebugSession>,
    pub pods: Api<Pod>,
    pub operator: Option<Operator>,
}

impl TestEnv {
    /// A fresh namespace `e2e-<name>` with an operator (as admin) watching it.
    pub async fn new(name: &str) -> Self {
        Self::with_namespace_labels(name, &[]).await
    }

    pub async fn with_namespace_labels(name: &str, labels: &[(&str, &str)]) -> Self {
        let mut env = Self::without_operator(name, labels).await;
        env.start_operator("admin");
        env
    }

    pub async fn without_operator(name: &str, labels: &[(&str, &str)]) -> Self {
        Self::in_namespace(&format!("e2e-{name}"), labels).await
    }

    /// A fresh namespace of exactly this name, without an operator.
    pub async fn in_namespace(namespace: &str, labels: &[(&str, &str)]) -> Self {
        ensure_cluster();
        let client = client_for("admin").await;
        static CRD: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        CRD.get_or_init(|| install_crd(&client)).await;
        let namespace = namespace.to_string();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // A namespace left by an earlier run goes first (it may still be terminating).
        let deadline = Instant::now() + Duration::from_secs(120);
        while namespaces.get_opt(&namespace).await.unwrap().is_some() {
            let _ = namespaces.delete(&namespace, &DeleteParams::background()).await;
            assert!(Instant::now() < deadline, "namespace {namespace} from an earlier run is not going away");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut ns = Namespace::default();
        ns.metadata.name = Some(namespace.clone());
        ns.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        namespaces.create(&PostParams::default(), &ns).await.expect("create namespace");
        // Operator logs of an earlier run of this test (one per operator) start afresh.
        for entry in std::fs::read_dir(repo_root().join("target/e2e-logs")).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(namespace.as_str()).is_some_and(|rest| rest == ".log" || rest.starts_with('-')) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Self {
            sessions: Api::namespaced(client.clone(), &namespace),
            pods: Api::namespaced(client.clone(), &namespace),
            client,
            namespace,
            operator: None,
        }
    }

    pub fn start_operator(&mut self, context: &str) {
        self.operator = Some(Operator::start(&self.namespace, context, "127.0.0.1:0"));
    }

    /// Creates a busybox pod whose containers sleep, and waits until it is Running.
    pub async fn running_pod(&self, name: &str, containers: &[&str], labels: &[(&str, &str)]) -> Pod {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>() },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": containers.iter().map(|c| serde_json::json!({
                    "name": c,
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"],
                })).collect::<Vec<_>>(),
            }
        }))
        .unwrap();
        self.pods.create(&PostParams::default(), &pod).await.expect("create pod");
        self.wait_pod(name, "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
        })
        .await
    }

    pub async fn wait_pod(&self, name: &str, what: &str, ok: impl Fn(&Pod) -> bool) -> Pod {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(pod) = self.pods.get_opt(name).await.unwrap()
                && ok(&pod)
            {
                return pod;
            }
            if Instant::now() >= deadline {
                panic!("pod {name} never became {what}\n{}", self.why_pod_is_stuck(name).await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The pod's phase and conditions and the nodes' pressure conditions and taints: when no test
    /// pod runs, the cause (a node under DiskPressure, say) is in the failure, not in a lost log.
    async fn why_pod_is_stuck(&self, name: &str) -> String {
        let pod = match self.pods.get_opt(name).await {
            Ok(Some(pod)) => format!("pod status: {}", serde_json::to_string(&pod.status).unwrap_or_default()),
            other => format!("pod: {other:?}"),
        };
        let nodes =
            match Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone()).list(&Default::default()).await {
                Ok(nodes) => nodes
                    .items
                    .iter()
                    .map(|node| {
                        let spec = node.spec.clone().unwrap_or_default();
                        let conditions = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
                        let raised: Vec<String> = conditions
                            .iter()
                            .filter(|c| (c.type_ == "Ready") != (c.status == "True"))
                            .map(|c| format!("{}={} ({})", c.type_, c.status, c.message.clone().unwrap_or_default()))
                            .collect();
                        let taints: Vec<String> =
                            spec.taints.unwrap_or_default().iter().map(|t| format!("{}:{}", t.key, t.effect)).collect();
                        format!("node {}: conditions off normal {raised:?}, taints {taints:?}", node.name_any())
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(err) => format!("nodes: {err}"),
            };
        format!("{pod}\n{nodes}")
    }

    pub async fn wait_pod_gone(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.pods.get_opt(name).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "pod {name} was never deleted");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn create_session(&self, yaml: &str) -> DebugSession {
        let session: DebugSession = serde_saphyr::from_str(yaml).expect("session YAML");
        self.sessions.create(&PostParams::default(), &session).await.expect("create DebugSession")
    }

    /// Waits until the session satisfies `ok`, failing with its status and the operator log if it never does.
    pub async fn wait_session(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&DebugSession) -> bool,
    ) -> DebugSession {
        let deadline = Instant::now() + timeout;
        loop {
            let session = self.sessions.get_opt(name).await.unwrap();
            if let Some(s) = &session
                && ok(s)
            {
                return session.unwrap();
            }
            if Instant::now() >= deadline {
                panic!(
                    "DebugSession {name} never became {what}; last status:\n{}\noperator log:\n{}",
                    serde_saphyr::to_string(&session.and_then(|s| s.status)).unwrap(),
                    self.operator_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: Phase) -> DebugSession {
        self.wait_session(name, phase.as_str(), Duration::from_secs(90), |s| {
            s.status.as_ref().and_then(|st| st.phase) == Some(phase)
        })
        .await
    }

    pub fn operator_log_tail(&self) -> String {
        let Some(operator) = &self.operator else { return "(no operator)".into() };
        let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Adds the debug container of `session`'s attempt 0 to `pod` by hand, as the
    /// operator would have (target container `app`); returns its name.
    pub async fn inject_as(&self, session: &DebugSession, pod: &str) -> String {
        let target = self.pods.get(pod).await.unwrap();
        let uid = session.metadata.uid.as_deref().unwrap();
        let name = ephemera::debug_container::default_name_candidates(uid)[0].clone();
        let container = ephemera::debug_container::build_ephemeral_container(session, &name, "app", 0);
        let shape = ephemera::ephemeral_api::ApiShape::PodSubresource;
        ephemera::ephemeral_api::add_ephemeral_containers(&self.client, shape, &target, &[container]).await.unwrap();
        name
    }

    /// Names of the pod's ephemeral containers, in order.
    pub async fn ephemeral_names(&self, pod: &str) -> Vec<String> {
        let pod = self.pods.get(pod).await.unwrap();
        pod.spec.unwrap().ephemeral_containers.unwrap_or_default().into_iter().map(|c| c.name).collect()
    }

    /// Reasons of the Kubernetes events about a session, oldest first.
    /// Reasons of the Events about a session, oldest first.
    async fn event_reasons(&self, session: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut list = events.list(&Default::default()).await.unwrap().items;
        list.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(session));
        list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        list.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Waits until Events with all these reasons exist for a session. The
    /// operator records an event after the status write it reports, so a test
    /// that has just seen the status may be a moment early.
    pub async fn expect_events(&self, session: &str, reasons: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.event_reasons(session).await;
            if reasons.iter().all(|reason| events.iter().any(|e| e == reason)) {
                return events;
            }
            assert!(Instant::now() < deadline, "events of {session} are {events:?}; expected all of {reasons:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("operator log of {}:\n{}", self.namespace, self.operator_log_tail());
        }
        // Leave the namespace when a test failed, for a look; otherwise clean up in the background.
        if !std::thread::panicking() {
            let _ = Command::new(cluster_dir().join("bin/kubectl"))
                .arg("--kubeconfig")
                .arg(kubeconfig())
                .args(["delete", "namespace", &self.namespace, "--wait=false"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Every phase a session's status takes, in order, as seen by a watch, until `last` or the timeout.
pub async fn record_phases(sessions: Api<DebugSession>, name: &str, last: Phase, timeout: Duration) -> Vec<Phase> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // A watch may end with 410 Expired (e.g. when another test changes the CRD);
    // the watcher then lists again, and phases seen on the list still count.
    let mut stream = watcher(sessions, config).default_backoff().applied_objects().boxed();
    let mut phases: Vec<Phase> = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Some(next) = stream.next().await {
            let Ok(session) = next else { continue };
            if let Some(phase) = session.status.and_then(|s| s.phase)
                && phases.last() != Some(&phase)
            {
                phases.push(phase);
                if phase == last {
                    break;
                }
            }
        }
    })
    .await;
    phases
}

pub fn tmux(args: &[&str]) -> String {
    let output = Command::new("tmux").args(args).output().expect("run tmux");
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Ends a tmux session, if there is one.
pub fn tmux_kill(session: &str) {
    let _ = Command::new("tmux").args(["kill-session", "-t", session]).stderr(Stdio::null()).status();
}

/// Waits until the tmux pane shows `text`.
pub async fn wait_for_screen(session: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(text) {
            return screen;
        }
        assert!(Instant::now() < deadline, "tmux never showed {text:?}; screen:\n{screen}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn apply_json(namespace: &str, object: serde_json::Value) {
    let path = std::env::temp_dir().join(format!(
        "{namespace}-{}-{}.json",
        object["kind"].as_str().unwrap(),
        object["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&path, object.to_string()).unwrap();
    let (ok, out) = kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// Binds `user` to a Role with `rules` in the namespace.
pub fn grant(namespace: &str, user: &str, rules: serde_json::Value) {
    apply_json(
        namespace,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": user, "namespace": namespace },
            "rules": rules,
        }),
    );
    apply_json(
        namespace,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": user, "namespace": namespace },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        }),
    );
}

/// A session that debugs `target` with a busybox running `command` (a YAML
/// flow sequence); `extra` adds spec lines.
pub fn busybox_session(name: &str, target: &str, command: &str, extra: &str) -> String {
    format!(
        "metadata: {{ name: {name} }}\nspec:\n  target: {target}\n  image: {IMAGE}\n  imagePullPolicy: Never\n  command: {command}\n{extra}"
    )
}

/// A session that debugs `target` with a busybox sleeping for ten minutes; `extra` adds spec lines.
pub fn sleeping_session(name: &str, target: &str, extra: &str) -> String {
    busybox_session(name, target, r#"["sleep", "600"]"#, extra)
}

/// `kubectl [--context CONTEXT] patch dbgs SESSION --type=merge -p PATCH`: what a user's edit goes through.
pub fn kubectl_patch_session(context: Option<&str>, namespace: &str, session: &str, patch: &str) -> (bool, String) {
    let mut args = vec![];
    if let Some(context) = context {
        args.extend(["--context", context]);
    }
    args.extend(["patch", "dbgs", session, "-n", namespace, "--type=merge", "-p", patch]);
    kubectl(&args)
}

/// The text of the operator's /metrics on `port`.
pub async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        let output = Command::new("curl").args(["-fsS", &format!("http://127.0.0.1:{port}/metrics")]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    })
    .await
    .unwrap()
}

/// The sum of a metric's samples (all label sets) in a /metrics text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        // Not sum(): the sum of no floats is -0.0, which a summary line prints as "-0".
        .fold(0.0, |total, value| total + value)
}

/// CPU time (user + system) a process has used so far, in clock ticks of 10 ms.
#[allow(dead_code)] // used by tests/faults and benches/ephemera
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// A loopback port that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Prints a fault test's one summary line and appends it to target/faults-summary.txt
/// (`make test-faults` prints the file; the e2e leader failover writes there too).
pub fn fault_summary(test: &str, line: &str) {
    use std::io::Write;
    let text = format!("FAULTS {test}: {line}");
    println!("{text}");
    let path = repo_root().join("target/faults-summary.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{} {text}", k8s_openapi::jiff::Timestamp::now());
    }
}
