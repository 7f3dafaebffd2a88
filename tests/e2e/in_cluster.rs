//! The shipped artifacts work: the image `make image` built from the Dockerfile
//! holds one static binary; the Helm chart installs it as two replicas that
//! serve sessions under the chart's ServiceAccount, upgrades without losing or
//! repeating a debug container, uninstalls leaving CRD and sessions, and runs
//! side by side with a second release; the plain manifests are accepted.
//!
//! The operator pods use the pod network, as in a real cluster. The local
//! cluster's API server listens on loopback only and has no Service routing,
//! so the pods reach it through a TCP forwarder on the pod network's gateway,
//! by a name its certificate carries (see `apiserver_from_pods`).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ephemera::crd::Phase;

use crate::common::{TestEnv, cluster_dir, kubeconfig, kubectl, repo_root, sleeping_session};

pub fn helm() -> PathBuf {
    std::env::var_os("EPHEMERA_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ephemera/helm-v3.22.0/helm"))
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

/// The tarball `make image` writes (a prerequisite of `make e2e-test`).
fn image_archive() -> PathBuf {
    let archive = repo_root().join("target/image/ephemera.tar");
    assert!(archive.exists(), "{} is missing: run `make image` first", archive.display());
    archive
}

/// The tag `make image` gives, which is also the chart's default tag (its appVersion).
const IMAGE_REPOSITORY: &str = "localhost/ephemera";

/// Imports the image into the cluster's containerd, once per test run.
fn import_image() {
    static IMPORTED: OnceLock<()> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        run(Command::new(repo_root().join("tests/cluster/import-image.sh")).arg(image_archive()));
    });
}

/// The host's address on the cluster's pod network (10.87.0.1 for the default
/// instance), from the harness's CNI configuration.
fn pod_network_gateway() -> String {
    let dir = cluster_dir().join("cni/net.d");
    let config = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .find(|entry| entry.path().extension().is_some_and(|ext| ext == "conflist"))
        .unwrap_or_else(|| panic!("no CNI configuration in {}", dir.display()));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config.path()).unwrap()).unwrap();
    config["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|plugin| plugin["ipam"]["ranges"][0][0]["gateway"].as_str())
        .expect("a gateway in the CNI configuration")
        .to_string()
}

/// A name the API server's certificate carries, which pods resolve to the gateway (hostAliases).
const APISERVER_NAME: &str = "kubernetes.default.svc";

/// The address on the pod network's gateway where pods reach the API server: a
/// forwarder of raw TCP (TLS stays end to end) to its loopback address, alive
/// as long as this test process. The bridge exists once a pod has run, so
/// call this after creating one.
fn apiserver_from_pods() -> (String, u16) {
    static ADDRESS: OnceLock<(String, u16)> = OnceLock::new();
    ADDRESS
        .get_or_init(|| {
            let config = std::fs::read_to_string(kubeconfig()).unwrap();
            let server = config
                .lines()
                .find_map(|line| line.trim().strip_prefix("server: https://"))
                .expect("a server in the kubeconfig")
                .to_string();
            let gateway = pod_network_gateway();
            let listener = TcpListener::bind((gateway.as_str(), 0))
                .unwrap_or_else(|e| panic!("listen on the pod network's gateway {gateway}: {e}"));
            let port = listener.local_addr().unwrap().port();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(upstream) = TcpStream::connect(&server) else { continue };
                    for (mut from, mut to) in
                        [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
                    {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            });
            (gateway, port)
        })
        .clone()
}

/// `helm install` (or `upgrade`) of release `name` in `namespace` with the image
/// of `make image`, replicas that reach the API server from the pod network, and
/// `values` on top; waits for every replica to be Ready. Returns Helm's output
/// (with the NOTES).
fn deploy(name: &str, namespace: &str, verb: &str, watch_namespace: &str, values: &[&str]) -> String {
    import_image();
    let (gateway, port) = apiserver_from_pods();
    // The chart's MutatingAdmissionPolicy (the local cluster serves its beta)
    // records who asks for each session; the operator checks that requester.
    let env = format!(
        r#"extraEnv=[{{"name":"KUBERNETES_SERVICE_HOST","value":"{APISERVER_NAME}"}},{{"name":"KUBERNETES_SERVICE_PORT","value":"{port}"}}]"#
    );
    let aliases = format!(r#"hostAliases=[{{"ip":"{gateway}","hostnames":["{APISERVER_NAME}"]}}]"#);
    let chart = repo_root().join("charts/ephemera");
    let fixed = format!("image.repository={IMAGE_REPOSITORY},image.pullPolicy=Never,watchNamespace={watch_namespace}");
    let mut args = vec![verb, name, chart.to_str().unwrap(), "-n", namespace];
    args.extend(["--set", &fixed, "--set-json", &env, "--set-json", &aliases]);
    args.extend(values);
    args.extend(["--wait", "--timeout", "180s"]);
    run(Command::new(helm()).arg("--kubeconfig").arg(kubeconfig()).args(&args))
}

/// A Helm release of charts/ephemera made by a test, in a namespace of the
/// test's own; uninstalled when dropped, so that its cluster-scoped objects
/// never outlive the test.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn helm(&self, args: &[&str]) -> String {
        run(Command::new(helm()).arg("--kubeconfig").arg(kubeconfig()).args(args).args(["-n", &self.namespace]))
    }

    fn deploy(&self, verb: &str, watch_namespace: &str, values: &[&str]) -> String {
        deploy(&self.name, &self.namespace, verb, watch_namespace, values)
    }

    /// The release's pods: (name, ready, deleting), from the API server.
    fn pods(&self) -> Vec<(String, bool, bool)> {
        let (ok, out) = kubectl(&[
            "get",
            "pods",
            "-n",
            &self.namespace,
            "-l",
            &format!("app.kubernetes.io/instance={}", self.name),
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name},{.status.containerStatuses[0].ready},{.metadata.deletionTimestamp}{"\n"}{end}"#,
        ]);
        assert!(ok, "{out}");
        out.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                (fields[0].to_string(), fields[1] == "true", !fields[2].is_empty())
            })
            .collect()
    }

    /// The pod that holds the release's Lease, once one that is not being deleted does.
    async fn leader(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, holder) = kubectl(&[
                "get",
                "lease",
                &self.fullname(),
                "-n",
                &self.namespace,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]);
            if ok && self.pods().iter().any(|(pod, _, deleting)| *pod == holder && !deleting) {
                return holder;
            }
            assert!(Instant::now() < deadline, "no pod of {} holds its lease: {holder}", self.name);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn fullname(&self) -> String {
        if self.name.contains("ephemera") { self.name.clone() } else { format!("{}-ephemera", self.name) }
    }

    fn pod_ip(&self, pod: &str) -> String {
        kubectl(&["get", "pod", pod, "-n", &self.namespace, "-o", "jsonpath={.status.podIP}"]).1
    }

    fn logs(&self, pod: &str) -> String {
        kubectl(&["logs", "-n", &self.namespace, pod]).1
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let selector = format!("app.kubernetes.io/instance={}", self.name);
            let (_, logs) = kubectl(&["logs", "-n", &self.namespace, "-l", &selector, "--prefix", "--tail", "40"]);
            eprintln!("operator logs of release {}:\n{logs}", self.name);
        }
        let _ = Command::new(helm())
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["uninstall", &self.name, "-n", &self.namespace, "--wait", "--ignore-not-found"])
            .output();
    }
}

/// Files of the image's layers, the image config, and the directory they were unpacked in.
fn unpack_image(archive: &Path) -> (Vec<(String, char, u32)>, serde_json::Value, PathBuf) {
    let dir = repo_root().join("target/e2e-image-contents");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&dir));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.as_array().unwrap().len(), 1, "one image in the archive: {manifest}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(manifest[0]["Config"].as_str().unwrap())).unwrap())
            .unwrap();
    let mut files = Vec::new();
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let layer = dir.join(layer.as_str().unwrap());
        // GNU tar's verbose listing: "-rwxr-xr-x 0/0 12345 2026-01-01 00:00 ephemera"
        let listing = run(Command::new("tar").arg("--numeric-owner").arg("-tvf").arg(&layer));
        for line in listing.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let mode = words[0];
            let permissions = mode[1..].chars().fold(0, |bits, c| bits << 1 | u32::from(c != '-'));
            let name = words.last().unwrap().trim_start_matches("./").to_string();
            files.push((name, mode.chars().next().unwrap(), permissions));
        }
        run(Command::new("tar").arg("-xf").arg(&layer).arg("-C").arg(&rootfs));
    }
    (files, config, rootfs)
}

#[test]
fn image_is_one_static_binary_run_as_65532() {
    let (files, config, rootfs) = unpack_image(&image_archive());
    assert_eq!(files, vec![("ephemera".to_string(), '-', 0o755)], "the binary and nothing else (no shell, no libc)");
    let config = &config["config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/ephemera"]));
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));

    let binary = rootfs.join("ephemera");
    let kind = run(Command::new("file").arg("-b").arg(&binary));
    assert!(kind.contains("statically linked") || kind.contains("static-pie linked"), "not static: {kind}");
    assert!(!kind.contains("dynamically linked"), "{kind}");

    // The labels name what the binary says it is.
    let version = run(Command::new(&binary).arg("--version"));
    let labels = &config["Labels"];
    let label =
        |name: &str| labels[format!("org.opencontainers.image.{name}")].as_str().unwrap_or_default().to_string();
    assert_eq!(label("version"), env!("CARGO_PKG_VERSION"));
    let revision = label("revision");
    assert!(revision.len() >= 7 && revision != "unknown", "a git revision: {labels}");
    assert_eq!(version.trim(), format!("ephemera {} (revision {revision})", env!("CARGO_PKG_VERSION")));
    assert_eq!(version.trim(), format!("ephemera {}", ephemera::VERSION), "the image is stale: run `make image`");
    assert!(label("source").starts_with("https://"), "{labels}");
}

/// Sleeping sessions `names` on pod `web`, each Running.
async fn running_sessions(env: &TestEnv, names: &[&str]) -> Vec<String> {
    let mut containers = Vec::new();
    for name in names {
        env.create_session(&sleeping_session(name, "{ pod: web }", "")).await;
    }
    for name in names {
        let session = env.wait_phase(name, Phase::Running).await;
        containers.push(session.status.unwrap().container_name.unwrap());
    }
    containers
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_upgrade_and_uninstall_keep_every_session() {
    let env = TestEnv::without_operator("helm", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let release = Release { name: "ephemera-e2e".into(), namespace: env.namespace.clone() };

    // Install: two replicas, both Ready, one leading.
    let installed = release.deploy("install", &env.namespace, &["--set", "logFormat=text"]);
    assert!(installed.contains("NOTES:") && installed.contains("first-debug.yaml"), "{installed}");
    let pods = release.pods();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|(_, ready, _)| *ready), "every replica Ready: {pods:?}");
    let leader = release.leader().await;
    let (_, budget) =
        kubectl(&["get", "pdb", "ephemera-e2e", "-n", &env.namespace, "-o", "jsonpath={.spec.minAvailable}"]);
    assert_eq!(budget, "1");

    // A session is served by the pod, under the chart's ServiceAccount: the
    // admission policy lets only that account write a session's status.
    let before = running_sessions(&env, &["one", "two"]).await;
    let (_, account) =
        kubectl(&["get", "pod", &leader, "-n", &env.namespace, "-o", "jsonpath={.spec.serviceAccountName}"]);
    assert_eq!(account, "ephemera-e2e");
    let (_, policy) = kubectl(&["get", "validatingadmissionpolicy", "ephemera-e2e-status-by-operator", "-o", "yaml"]);
    assert!(policy.contains(&format!("system:serviceaccount:{}:ephemera-e2e", env.namespace)), "{policy}");
    let metrics = run(Command::new("curl").args(["-fsS", &format!("http://{}:8080/metrics", release.pod_ip(&leader))]));
    assert!(metrics.contains("ephemera_injections_total{result=\"injected\"} 2"), "{metrics}");
    assert!(!release.logs(&leader).trim_start().starts_with('{'), "logFormat=text");

    // Upgrade to JSON logs while sessions run, and create one while the replicas roll.
    let namespace = env.namespace.clone();
    let upgrade = tokio::task::spawn_blocking(move || {
        deploy("ephemera-e2e", &namespace, "upgrade", &namespace, &["--set", "logFormat=json"])
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.create_session(&sleeping_session("during-upgrade", "{ pod: web }", "")).await;
    upgrade.await.unwrap();
    let during = env.wait_phase("during-upgrade", Phase::Running).await.status.unwrap().container_name.unwrap();
    let leader_of_new = release.leader().await;
    let after: Vec<_> = release.pods().into_iter().filter(|(_, _, deleting)| !deleting).collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|(pod, ..)| !pods.iter().any(|(old, ..)| old == pod)), "replaced: {pods:?} {after:?}");
    for (pod, ..) in &after {
        let first_line = release.logs(pod).lines().next().unwrap_or_default().to_string();
        assert!(serde_json::from_str::<serde_json::Value>(&first_line).is_ok(), "logFormat=json: {first_line}");
    }
    assert!(after.iter().any(|(pod, ..)| *pod == leader_of_new), "a new replica leads");
    for (name, container) in ["one", "two"].iter().zip(&before) {
        let session = env.wait_phase(name, Phase::Running).await;
        assert_eq!(session.status.unwrap().container_name.as_ref(), Some(container), "{name} kept its container");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut in_pod = env.ephemeral_names("web").await;
    in_pod.sort();
    let mut expected = [before.clone(), vec![during]].concat();
    expected.sort();
    assert_eq!(in_pod, expected, "one container per session, none twice");

    // Uninstall: the operator and the release's RBAC and policies go; the CRD
    // (Helm never deletes crds/) and the sessions, with their status, stay.
    release.helm(&["uninstall", "ephemera-e2e", "--wait"]);
    for object in [
        "clusterrole/ephemera-e2e",
        "clusterrole/ephemera-e2e-debugger",
        "validatingadmissionpolicy/ephemera-e2e-author-may-debug",
    ] {
        let (_, out) = kubectl(&["get", object]);
        assert!(out.contains("NotFound"), "{object} outlived the release: {out}");
    }
    let (ok, crd) = kubectl(&["get", "crd", "debugsessions.ephemera.dev"]);
    assert!(ok, "the CRD stays: {crd}");
    let (_, phases) = kubectl(&["get", "dbgs", "-n", &env.namespace, "-o", "jsonpath={.items[*].status.phase}"]);
    assert_eq!(phases, "Running Running Running", "the sessions stay");
    assert!(release.pods().iter().all(|(_, _, deleting)| *deleting), "{:?}", release.pods());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_releases_in_two_namespaces_serve_their_own_namespace() {
    // The first release runs in the namespace it watches; the second in another.
    let first = TestEnv::without_operator("helm-first", &[]).await;
    let second_system = TestEnv::without_operator("helm-second-system", &[]).await;
    let second = TestEnv::without_operator("helm-second", &[]).await;
    first.running_pod("web", &["app"], &[]).await;
    second.running_pod("web", &["app"], &[]).await;
    let one = Release { name: "ephemera-first".into(), namespace: first.namespace.clone() };
    let two = Release { name: "second".into(), namespace: second_system.namespace.clone() };
    one.deploy("install", &first.namespace, &["--set", "replicaCount=1"]);
    two.deploy("install", &second.namespace, &["--set", "replicaCount=1"]);

    running_sessions(&first, &["mine"]).await;
    running_sessions(&second, &["theirs"]).await;
    // Each operator serves its own namespace, and only it: one injection each.
    for (release, watched) in [(&one, &first.namespace), (&two, &second.namespace)] {
        let leader = release.leader().await;
        let log = release.logs(&leader);
        assert!(log.contains(&format!(r#""namespace":"{watched}"}}"#)), "{log}");
        let metrics =
            run(Command::new("curl").args(["-fsS", &format!("http://{}:8080/metrics", release.pod_ip(&leader))]));
        assert!(metrics.contains("ephemera_injections_total{result=\"injected\"} 1"), "{metrics}");
    }
    assert_eq!(first.ephemeral_names("web").await.len(), 1);
    assert_eq!(second.ephemeral_names("web").await.len(), 1);

    // Each release's admission policies govern its own namespace only.
    for (release, watched) in [("ephemera-first", &first.namespace), ("second-ephemera", &second.namespace)] {
        let (_, scope) = kubectl(&[
            "get",
            "validatingadmissionpolicybinding",
            &format!("{release}-author-may-debug"),
            "-o",
            "jsonpath={.spec.matchResources.namespaceSelector.matchLabels}",
        ]);
        assert!(scope.contains(watched.as_str()), "{release}: {scope}");
    }
}

/// `kubectl auth can-i` as `account` (a SubjectAccessReview by the API server);
/// `resource` may name a subresource after a slash.
fn can(account: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let mut args = vec!["auth", "can-i", "--as", account, verb, resource, "-n", namespace];
    if !subresource.is_empty() {
        args.extend(["--subresource", subresource]);
    }
    // Its answer is the first line; kubectl may warn after it (cluster-scoped resources).
    let (_, out) = kubectl(&args);
    out.lines().next().map(str::trim) == Some("yes")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_holds_exactly_the_documented_verbs() {
    let system = TestEnv::without_operator("helm-rbac", &[]).await;
    let watched = TestEnv::without_operator("helm-rbac-watched", &[]).await;
    let release = Release { name: "ephemera-rbac".into(), namespace: system.namespace.clone() };
    release.deploy("install", &watched.namespace, &["--set", "replicaCount=1"]);
    let account = format!("system:serviceaccount:{}:ephemera-rbac", system.namespace);
    let (ns, system_ns) = (watched.namespace.as_str(), system.namespace.as_str());
    // The documented list (docs/security.md): in the watched namespace, and the Lease in its own.
    let granted = [
        ("get", "debugsessions.ephemera.dev", ns),
        ("list", "debugsessions.ephemera.dev", ns),
        ("watch", "debugsessions.ephemera.dev", ns),
        ("delete", "debugsessions.ephemera.dev", ns),
        ("patch", "debugsessions.ephemera.dev/status", ns),
        ("get", "pods", ns),
        ("list", "pods", ns),
        ("watch", "pods", ns),
        ("patch", "pods/ephemeralcontainers", ns),
        ("create", "events.events.k8s.io", ns),
        ("patch", "events.events.k8s.io", ns),
        ("create", "subjectaccessreviews.authorization.k8s.io", ns),
        ("get", "leases.coordination.k8s.io", system_ns),
        ("create", "leases.coordination.k8s.io", system_ns),
        ("patch", "leases.coordination.k8s.io", system_ns),
    ];
    for (verb, resource, namespace) in granted {
        assert!(can(&account, verb, resource, namespace), "{verb} {resource} in {namespace} should be granted");
    }
    // Anything more is a failure: other verbs, other resources, other namespaces.
    let refused = [
        ("update", "pods/ephemeralcontainers", ns),
        ("get", "pods/ephemeralcontainers", ns),
        ("patch", "pods/ephemeralcontainers", system_ns),
        ("patch", "pods/ephemeralcontainers", "default"),
        ("get", "pods", "default"),
        ("update", "debugsessions.ephemera.dev/status", ns),
        ("create", "debugsessions.ephemera.dev", ns),
        ("update", "debugsessions.ephemera.dev", ns),
        ("get", "debugsessions.ephemera.dev", "default"),
        ("create", "pods", ns),
        ("delete", "pods", ns),
        ("create", "pods/exec", ns),
        ("create", "pods/attach", ns),
        ("get", "secrets", ns),
        ("get", "configmaps", ns),
        ("list", "leases.coordination.k8s.io", system_ns),
        ("delete", "leases.coordination.k8s.io", system_ns),
        ("update", "leases.coordination.k8s.io", system_ns),
        ("get", "leases.coordination.k8s.io", ns),
        ("get", "customresourcedefinitions.apiextensions.k8s.io", ns),
    ];
    for (verb, resource, namespace) in refused {
        assert!(!can(&account, verb, resource, namespace), "{verb} {resource} in {namespace} must not be granted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_manifests_are_accepted_by_the_api_server() {
    // A server-side dry run checks every object against the real API. The
    // namespaced ones need an existing namespace: the test's own stands in.
    let env = TestEnv::without_operator("manifests", &[]).await;
    let manifests = std::fs::read_to_string(repo_root().join("deploy/ephemera.yaml")).unwrap();
    assert!(manifests.contains("namespace: ephemera-system"));
    let path = repo_root().join("target/e2e-manifests.yaml");
    std::fs::write(&path, manifests.replace("ephemera-system", &env.namespace)).unwrap();
    let (ok, out) = kubectl(&["apply", "--server-side", "--dry-run=server", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    for kind in ["customresourcedefinition", "serviceaccount/ephemera", "clusterrole", "deployment.apps/ephemera"] {
        assert!(out.contains(kind), "{kind} missing in:\n{out}");
    }
}

/// Leader failover under load (the fault suite's list, here because it needs the
/// chart's replicas): the leader is killed (a forced pod deletion, as a node loss
/// looks to the API server) while 100 sessions are being created over 5 pods.
/// The standby takes over; no session is lost and no container goes in twice.
#[tokio::test(flavor = "multi_thread")]
async fn leader_killed_during_100_creations_loses_and_repeats_nothing() {
    const SESSIONS: usize = 100;
    const PODS: usize = 5;
    let env = TestEnv::without_operator("failover", &[]).await;
    let pods: Vec<String> = (0..PODS).map(|i| format!("web-{i}")).collect();
    futures::future::join_all(pods.iter().map(|pod| env.running_pod(pod, &["app"], &[]))).await;
    let release = Release { name: "ephemera-failover".into(), namespace: env.namespace.clone() };
    release.deploy("install", &env.namespace, &[]);
    let leader = release.leader().await;

    // Creations go on, one every 50 ms (about 6 s in all), while the leader dies.
    let creating = {
        let (sessions, pods) = (env.sessions.clone(), pods.clone());
        tokio::spawn(async move {
            for i in 0..SESSIONS {
                let yaml = sleeping_session(&format!("s-{i}"), &format!("{{ pod: {} }}", pods[i % PODS]), "");
                let session: ephemera::crd::DebugSession = serde_saphyr::from_str(&yaml).unwrap();
                sessions.create(&Default::default(), &session).await.expect("create DebugSession");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let created = || async { env.sessions.list(&Default::default()).await.unwrap().items.len() };
    while created().await < SESSIONS / 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Instant::now();
    let (ok, out) = kubectl(&["delete", "pod", &leader, "-n", &env.namespace, "--grace-period=0", "--force"]);
    assert!(ok, "{out}");
    let created_when_killed = created().await;
    assert!(created_when_killed < SESSIONS, "the leader died while sessions were still being created");
    let new_leader = release.leader().await;
    let takeover = killed.elapsed();
    assert_ne!(new_leader, leader);
    creating.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(240);
    let (running, all_running) = loop {
        let sessions = env.sessions.list(&Default::default()).await.unwrap().items;
        let running =
            sessions.iter().filter(|s| s.status.as_ref().and_then(|st| st.phase) == Some(Phase::Running)).count();
        if running == SESSIONS || Instant::now() > deadline {
            break (running, killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Every session's container in its pod exactly once, and no other container.
    let sessions = env.sessions.list(&Default::default()).await.unwrap().items;
    let mut in_pods = Vec::new();
    for pod in &pods {
        in_pods.extend(env.ephemeral_names(pod).await.into_iter().map(|c| format!("{pod}/{c}")));
    }
    let mut claimed: Vec<String> = sessions
        .iter()
        .filter_map(|s| {
            let status = s.status.as_ref()?;
            Some(format!("{}/{}", status.pod_name.as_deref()?, status.container_name.as_deref()?))
        })
        .collect();
    in_pods.sort();
    claimed.sort();
    let duplicates = in_pods.len() - {
        let mut unique = in_pods.clone();
        unique.dedup();
        unique.len()
    };
    let orphans = in_pods.iter().filter(|c| claimed.binary_search(c).is_err()).count();
    let lost = claimed.iter().filter(|c| in_pods.binary_search(c).is_err()).count() + (SESSIONS - claimed.len());
    let line = format!(
        "sessions={SESSIONS} pods={PODS} leader killed after {created_when_killed} creations; \
         standby led after {:.1}s; all running {:.1}s after the kill; running={running} containers={} duplicates={duplicates} orphans={orphans} lost={lost}",
        takeover.as_secs_f64(),
        all_running.as_secs_f64(),
        in_pods.len(),
    );
    crate::common::fault_summary("leader-failover", &line);
    assert_eq!((duplicates, orphans, lost), (0, 0, 0), "{in_pods:?}\n{claimed:?}");
    assert_eq!(running, SESSIONS, "every session Running within 240 s of the kill");
}
