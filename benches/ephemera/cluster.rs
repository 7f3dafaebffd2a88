//! The cluster side of the benchmark: clients, namespaces, pods, sessions, and
//! operator processes with what /proc and their /metrics say about them.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ephemera::crd::DebugSession;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::common;

pub struct Bench {
    /// The bench's own client (admin, straight to the API server): creates, watches, cleanup.
    pub client: Client,
    /// Port of the API server, for counting the operator's connections to it.
    pub api_port: u16,
    pub kube_version: String,
}

impl Bench {
    pub async fn connect(_args: &crate::Args) -> Self {
        common::ensure_cluster();
        let client = common::client_for("admin").await;
        common::install_crd(&client).await;
        let kubeconfig = Kubeconfig::read_from(common::kubeconfig()).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
        let api_port = config.cluster_url.port_u16().unwrap_or(443);
        let kube_version = client.apiserver_version().await.map(|v| v.git_version).unwrap_or_default();
        Bench { client, api_port, kube_version }
    }

    /// A fresh namespace: one left by an earlier run goes first.
    pub async fn fresh_namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(300);
        while namespaces.get_opt(name).await.expect("read namespace").is_some() {
            let _ = namespaces.delete(name, &DeleteParams::background()).await;
            assert!(Instant::now() < deadline, "namespace {name} from an earlier run is not going away");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "ephemera.dev/bench": "true" } }
        }))
        .unwrap();
        namespaces.create(&PostParams::default(), &ns).await.expect("create namespace");
    }

    /// Deletes a namespace; with `wait`, until it is gone.
    pub async fn remove_namespace(&self, name: &str, wait: bool) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(name, &DeleteParams::background()).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        while wait && Instant::now() < deadline && namespaces.get_opt(name).await.ok().flatten().is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Creates busybox pods (one container `app`, sleeping) and waits until all run.
    pub async fn running_pods(&self, namespace: &str, names: &[String]) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        stream::iter(names)
            .for_each_concurrent(16, |name| {
                let pods = pods.clone();
                async move {
                    let pod: Pod = serde_json::from_value(serde_json::json!({
                        "metadata": { "name": name, "labels": { "ephemera.dev/bench": "target" } },
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [{
                                "name": "app",
                                "image": common::IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"],
                            }],
                        }
                    }))
                    .unwrap();
                    pods.create(&PostParams::default(), &pod).await.expect("create pod");
                }
            })
            .await;
        let ready = |pod: &Pod| {
            pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|cs| cs.iter().all(|c| c.ready))
        };
        let running = self
            .wait_bench_pods(&pods, names, |listed| listed.iter().filter(|p| ready(p)).count() == names.len())
            .await;
        assert!(running, "not all of {} pods became Running in 300 s", names.len());
    }

    /// Waits (up to 300 s) until `done` holds for the bench's pods among `names`, as listed.
    async fn wait_bench_pods(&self, pods: &Api<Pod>, names: &[String], done: impl Fn(&[&Pod]) -> bool) -> bool {
        let wanted: HashSet<&String> = names.iter().collect();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let list = pods.list(&ListParams::default().labels("ephemera.dev/bench=target")).await.expect("list pods");
            let listed: Vec<&Pod> =
                list.items.iter().filter(|p| p.metadata.name.as_ref().is_some_and(|n| wanted.contains(n))).collect();
            if done(&listed) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes pods and waits until they are gone. The kubelet kills a deleted pod's
    /// containers (a scenario's pods hold hundreds) for seconds; the next scenario
    /// must not share the node with that.
    pub async fn delete_pods(&self, namespace: &str, names: &[String]) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        for name in names {
            let _ = pods.delete(name, &DeleteParams::background()).await;
        }
        if !self.wait_bench_pods(&pods, names, |listed| listed.is_empty()).await {
            say!("  pods {names:?} were not all gone 300 s after their deletion");
        }
    }

    pub async fn create_session(&self, namespace: &str, session: &DebugSession) -> Result<(), kube::Error> {
        let sessions: Api<DebugSession> = Api::namespaced(self.client.clone(), namespace);
        sessions.create(&PostParams::default(), session).await.map(|_| ())
    }
}

/// A session debugging `pod` with a busybox that runs `command`; its container is named like the session.
pub fn session(name: &str, pod: &str, command: &[&str]) -> DebugSession {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "ephemera.dev/v1alpha1",
        "kind": "DebugSession",
        "metadata": { "name": name },
        "spec": {
            "target": { "pod": pod, "container": "app" },
            "image": common::IMAGE,
            "imagePullPolicy": "Never",
            "command": command,
            "containerName": name,
            "stdin": false,
            "tty": false,
        }
    }))
    .expect("a DebugSession")
}

/// A counting proxy's client to the API server: admin, over one HTTP/2 connection, as
/// `kubectl` and the operator in a cluster talk to it. Over HTTP/1.1 every request of a
/// burst needed a connection of its own, and each new one a TLS handshake.
pub async fn upstream_client() -> Client {
    ephemera::api_client::client(common::config_for("admin").await).expect("client")
}

/// A client that talks to the API server through a proxy on `port`.
pub async fn client_through(port: u16, label: &str) -> (Client, PathBuf) {
    let path = std::env::temp_dir().join(format!("ephemera-bench-{label}-{}.kubeconfig", std::process::id()));
    crate::proxy::write_kubeconfig(&path, port);
    let kubeconfig = Kubeconfig::read_from(&path).expect("read the proxy kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    (Client::try_from(config).expect("client"), path)
}

/// An operator process, `ephemera run --namespace NS`, built in the bench's profile.
pub struct OperatorProcess {
    child: Child,
    pub metrics_port: u16,
    pub spawned: Instant,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn spawn(namespace: &str, kubeconfig: &Path, context: Option<&str>, label: &str, extra: &[&str]) -> Self {
        let log_dir = common::repo_root().join("target/bench-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = log_dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let metrics_port = common::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ephemera"));
        command
            .args(["run", "--namespace", namespace, "--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            // No admission policy records a requester here (the chart installs it), and the
            // floor runs as admin too: both add containers without a per-user check.
            .arg("--require-requester=false")
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // Extra environment for the operator, e.g. EPHEMERA_BENCH_OPERATOR_ENV="MALLOC_ARENA_MAX=2 RUST_LOG=debug".
        let extra_env = std::env::var("EPHEMERA_BENCH_OPERATOR_ENV").unwrap_or_default();
        for pair in extra_env.split_whitespace() {
            if let Some((key, value)) = pair.split_once('=') {
                command.env(key, value);
            }
        }
        match context {
            Some(context) => command.env("EPHEMERA_KUBE_CONTEXT", context),
            None => command.env_remove("EPHEMERA_KUBE_CONTEXT"),
        };
        // Drop kills the operator, but a bench that is itself killed never drops it: the
        // kernel stops it instead, so no stray operator serves the next run's namespace.
        // (The signal follows the spawning thread, a runtime worker that lives as long as the bench.)
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = Instant::now();
        let child = command.spawn().expect("start the operator");
        OperatorProcess { child, metrics_port, spawned, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time from the spawn until /readyz answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Option<Duration> {
        let deadline = self.spawned + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the operator exited ({status}); see {}", self.log.display());
            }
            if let Some((200, _)) = http_get(self.metrics_port, "/readyz").await {
                return Some(self.spawned.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    pub async fn metrics(&self) -> MetricSet {
        match http_get(self.metrics_port, "/metrics").await {
            Some((200, body)) => MetricSet::parse(&body),
            _ => MetricSet::default(),
        }
    }

    pub fn memory(&self) -> Memory {
        memory(self.pid())
    }

    /// Established TCP connections of the process to `port`.
    pub fn connections_to(&self, port: u16) -> usize {
        connections_to(self.pid(), port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A GET over a fresh HTTP/1.0 connection: (status, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    let exchange = move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::task::spawn_blocking(exchange).await.ok().flatten()
}

/// Prometheus samples by name with labels, e.g. `ephemera_api_requests_total{resource="pods",verb="get"}`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MetricSet(pub BTreeMap<String, f64>);

impl MetricSet {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect();
        MetricSet(samples)
    }

    /// Sum of the samples of one metric, all label sets.
    pub fn sum(&self, name: &str) -> f64 {
        self.0.iter().filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
    }

    /// What grew since `before`, for the counters worth showing.
    pub fn since(&self, before: &MetricSet) -> MetricSet {
        let shown = [
            "ephemera_api_requests_total",
            "ephemera_injections_total",
            "ephemera_reconciliations_total",
            "ephemera_pod_event_wakes_total",
        ];
        MetricSet(
            self.0
                .iter()
                .filter(|(k, _)| shown.iter().any(|s| k.starts_with(s)))
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect(),
        )
    }
}

/// A process's memory in MiB, from /proc.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub resident: f64,
    /// The most it was resident at any time (VmHWM).
    pub peak: f64,
    /// Of `resident`, the pages of mapped files: the binary's code and data, and the libraries'.
    pub mapped_files: f64,
}

pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Memory { resident: mib("VmRSS:"), peak: mib("VmHWM:"), mapped_files: mib("RssFile:") }
}

/// Established TCP connections of process `pid` to remote `port`: the
/// process's socket inodes (/proc/PID/fd) matched against /proc/PID/net/tcp{,6}.
pub fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut count = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                continue;
            }
            let remote_port = fields[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && fields[3] == "01" && inodes.contains(fields[9]) {
                count += 1;
            }
        }
    }
    count
}
