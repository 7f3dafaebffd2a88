//! The kubectl plugin, invoked the way users do: `kubectl ephemera ...`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ephemera::crd::{FailureReason, Phase};
use kube::ResourceExt;

use crate::common::{IMAGE, TestEnv, apply_json, cluster_dir, kubeconfig, repo_root};
use crate::terminal::Terminal;

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-ephemera");

pub fn plugin_dir() -> PathBuf {
    Path::new(PLUGIN).parent().unwrap().to_path_buf()
}

/// `kubectl ephemera ARGS` with the plugin on PATH, as kubectl finds plugins.
pub fn kubectl_ephemera(args: &[&str]) -> Output {
    let path = format!("{}:{}", plugin_dir().display(), std::env::var("PATH").unwrap_or_default());
    Command::new(cluster_dir().join("bin/kubectl"))
        .arg("ephemera")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig())
        .env("KUBECTL", cluster_dir().join("bin/kubectl"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kubectl ephemera")
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A kubeconfig whose context defaults to `namespace`, so commands need no -n, as a user's would.
pub fn kubeconfig_for(namespace: &str) -> PathBuf {
    let dir = repo_root().join("target").join(namespace);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("kubeconfig");
    std::fs::copy(kubeconfig(), &copy).unwrap();
    let status = Command::new(cluster_dir().join("bin/kubectl"))
        .args(["config", "set-context", "--current", "--namespace", namespace, "--kubeconfig"])
        .arg(&copy)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_creates_waits_and_prints_or_explains() {
    let env = TestEnv::new("plugin-basics").await;
    env.running_pod("web", &["app"], &[]).await;
    let ns = env.namespace.as_str();
    // Without -i, kubectl debug does not attach; the plugin waits until it runs and prints the attach command.
    let output = kubectl_ephemera(&[
        "debug",
        "web",
        "-n",
        ns,
        "--image",
        IMAGE,
        "--image-pull-policy",
        "Never",
        "--env",
        "A=1,B=2",
        "--",
        "sleep",
        "600",
    ]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    let attach = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(attach.starts_with(&format!("kubectl attach -n {ns} web -c debugger-")), "{out}");
    assert!(out.contains(": Pending") && out.contains(": Running"), "phases are echoed: {out}");
    let sessions = env.sessions.list(&Default::default()).await.unwrap().items;
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert!(session.name_any().starts_with("web-debug-"));
    assert_eq!((session.spec.stdin, session.spec.tty), (false, false));
    assert_eq!(session.spec.command.as_deref(), Some(&["sleep".to_string(), "600".to_string()][..]));
    let env_names: Vec<_> = session.spec.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env_names, ["A", "B"]);

    // -q prints nothing but the result.
    let output = kubectl_ephemera(&["debug", "web", "-n", ns, "--image", IMAGE, "-q", "--", "sleep", "600"]);
    assert!(output.status.success() && output.stderr.is_empty(), "{}", text(&output));

    let output = kubectl_ephemera(&["debug", "nope", "-n", ns, "--image", IMAGE]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("TargetNotFound: pod nope does not exist"), "{}", text(&output));

    // Plugin errors exit 1, as kubectl's do; flags included.
    for args in [
        &["debug", "web", "-n", ns][..],
        &["debug", "web", "-n", ns, "--image", IMAGE, "--bogus"],
        &["ls", "--as", "bob", "-n", ns],
    ] {
        let output = kubectl_ephemera(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
    }
    let forbidden = text(&kubectl_ephemera(&["ls", "--as", "bob", "-n", ns]));
    assert!(forbidden.contains("forbidden") && forbidden.contains("bob"), "impersonated: {forbidden}");
}

/// The acceptance run: `kubectl ephemera debug -it` reaches a prompt, the
/// shell's exit code is the plugin's, `attach` then shows the exit code and
/// the output, `renew` gives a fresh prompt, `ls` shows both attempts and
/// `logs --attempt 0` the first one's output. kubectl is not on PATH and
/// $KUBECTL names nothing: the plugin must run the kubectl that invoked it.
#[tokio::test(flavor = "multi_thread")]
async fn debug_exit_attach_renew_ls_and_logs_in_a_terminal() {
    let env = TestEnv::new("plugin-terminal").await;
    env.running_pod("web", &["app"], &[]).await;
    // The cluster's kubectl is the one on PATH (not /usr/bin's); $KUBECTL
    // names nothing, so attaching works only with the kubectl that invoked the plugin.
    let vars = [
        ("PATH", format!("{}:{}:/usr/sbin:/sbin:/bin", plugin_dir().display(), cluster_dir().join("bin").display())),
        ("KUBECONFIG", kubeconfig_for(&env.namespace).display().to_string()),
        ("KUBECTL", "/nonexistent/kubectl".to_string()),
    ];
    let mut terminal = Terminal::start(&env.namespace, &repo_root(), &vars).await;
    let minute = Duration::from_secs(60);

    terminal.type_line(&format!("kubectl ephemera debug -it web --image {IMAGE} --target app -- sh"));
    terminal.wait_for_container_shell().await;
    let name = env.sessions.list(&Default::default()).await.unwrap().items[0].name_any();
    terminal.type_line("echo first-$((6*7)) $EPHEMERA_ATTEMPT");
    terminal.wait_for("first-42 0", minute).await;
    terminal.type_line("exit 3");
    let (code, _) = terminal.wait_for_prompt(minute).await;
    assert_eq!(code, 3, "the debug container's exit code");

    let (code, shown) = terminal.run(&format!("kubectl ephemera attach {name}"), minute).await;
    assert_eq!(code, 3, "{shown}");
    assert!(shown.contains("exited with code 3 (Error)"), "{shown}");
    assert!(shown.contains("first-42 0"), "its output: {shown}");

    terminal.type_line(&format!("kubectl ephemera renew {name}"));
    terminal.wait_for("renewed (attempt 1)", minute).await;
    terminal.wait_for_container_shell().await;
    terminal.type_line("echo second-$((6*7)) $EPHEMERA_ATTEMPT");
    terminal.wait_for("second-42 1", minute).await;
    terminal.type_line("exit");
    let (code, _) = terminal.wait_for_prompt(minute).await;
    assert_eq!(code, 0);

    let (code, shown) = terminal.run("kubectl ephemera ls", minute).await;
    assert_eq!(code, 0, "{shown}");
    let rows: Vec<Vec<&str>> = shown
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| r.first() == Some(&name.as_str()))
        .collect();
    assert_eq!(rows.len(), 2, "both attempts: {shown}");
    assert_eq!(rows[0][1..4], ["0", "Terminated", "web"], "{shown}");
    assert_eq!((rows[0][6], rows[1][1], rows[1][2], rows[1][6]), ("3", "1", "Terminated", "0"), "{shown}");

    let (code, shown) = terminal.run(&format!("kubectl ephemera logs {name} --attempt 0"), minute).await;
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("first-42 0") && !shown.contains("second-42"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_is_decided_on_the_current_version_and_says_when_it_cannot_help() {
    let env = TestEnv::new("plugin-renew").await;
    env.running_pod("web", &["app"], &[]).await;
    let ns = env.namespace.as_str();
    // Attached, the plugin gives the exit code whether it first saw the
    // container Running or already Terminated (the kubelet decides which).
    let once = ["debug", "web", "-n", ns, "--image", IMAGE, "--name", "once", "--attach=true", "--", "true"];
    let output = kubectl_ephemera(&once);
    assert_eq!(output.status.code(), Some(0), "a finished container's exit code: {}", text(&output));
    env.wait_phase("once", Phase::Terminated).await;

    // Two renews at once: each writes only on the version it read, so one
    // raises the attempt and the other, refused, reads again and joins it.
    let renew =
        |ns: String| std::thread::spawn(move || kubectl_ephemera(&["renew", "once", "-n", &ns, "--attach=false"]));
    let (first, second) = (renew(ns.to_string()), renew(ns.to_string()));
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    let ns = ns.to_string();
    assert!(first.status.success() && second.status.success(), "{}\n{}", text(&first), text(&second));
    let renewed = [&first, &second].iter().filter(|o| text(o).contains("renewed (attempt 1)")).count();
    assert_eq!(renewed, 1, "exactly one renew raised the attempt:\n{}\n{}", text(&first), text(&second));
    assert_eq!(env.sessions.get("once").await.unwrap().spec.attempt, 1);
    assert_eq!(env.ephemeral_names("web").await.len(), 2);

    // Renewing while the container still runs would only queue a container behind it.
    let output =
        kubectl_ephemera(&["debug", "web", "-n", &ns, "--image", IMAGE, "--name", "busy", "--", "sleep", "600"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = kubectl_ephemera(&["renew", "busy", "-n", &ns]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("still runs") && out.contains("kubectl ephemera attach busy"), "{out}");
    assert_eq!(env.sessions.get("busy").await.unwrap().spec.attempt, 0, "not raised");

    // Deleting it says the process keeps running; explain tells the story.
    let story = text(&kubectl_ephemera(&["explain", "busy", "-n", &ns]));
    assert!(story.contains("What happened:") && story.contains("Running") && story.contains("Next: Attach"), "{story}");
    let output = kubectl_ephemera(&["delete", "busy", "-n", &ns]);
    assert!(output.status.success() && text(&output).contains("keeps running"), "{}", text(&output));
    assert!(env.sessions.get_opt("busy").await.unwrap().is_none());

    // A session whose pod is gone: renew cannot help.
    env.running_pod("doomed", &["app"], &[]).await;
    let output =
        kubectl_ephemera(&["debug", "doomed", "-n", &ns, "--image", IMAGE, "--name", "lost", "--", "sleep", "600"]);
    assert!(output.status.success(), "{}", text(&output));
    // Gone at once, before the kubelet can report the container's end.
    let now = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    env.pods.delete("doomed", &now).await.unwrap();
    let session = env.wait_phase("lost", Phase::Failed).await;
    assert_eq!(session.status.unwrap().reason, Some(FailureReason::TargetGone));
    let output = kubectl_ephemera(&["renew", "lost", "-n", &ns]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("renew cannot help"), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn selectors_and_workloads_pick_the_pod() {
    let env = TestEnv::new("plugin-workloads").await;
    let ns = env.namespace.as_str();
    env.running_pod("picked", &["app"], &[("app", "web")]).await;
    let output = kubectl_ephemera(&[
        "debug", "-l", "app=web", "-n", ns, "--image", IMAGE, "--name", "by-label", "--", "sleep", "600",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let session = env.sessions.get("by-label").await.unwrap();
    assert_eq!(session.status.unwrap().pod_name.as_deref(), Some("picked"));
    let output = kubectl_ephemera(&["debug", "-l", "app=web", "-n", ns, "--image", IMAGE, "--", "sleep", "600"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("debugsession.ephemera.dev/web-debug-"), "named after the label: {}", text(&output));

    apply_json(
        ns,
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "api", "namespace": ns },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "api" } },
                "template": {
                    "metadata": { "labels": { "app": "api" } },
                    "spec": { "terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"],
                    }]},
                },
            },
        }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let running =
        |p: &k8s_openapi::api::core::v1::Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    while !env.pods.list(&kube::api::ListParams::default().labels("app=api")).await.unwrap().items.iter().any(running) {
        assert!(std::time::Instant::now() < deadline, "the deployment's pod never ran");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let output =
        kubectl_ephemera(&["debug", "deploy/api", "-n", ns, "--image", IMAGE, "--timeout", "2m", "--", "sleep", "600"]);
    assert!(output.status.success(), "{}", text(&output));
    let session = env
        .sessions
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|s| s.name_any().starts_with("api-debug-"))
        .unwrap();
    let selector = session.spec.target.selector.unwrap();
    assert_eq!(selector.match_labels.unwrap().get("app").map(String::as_str), Some("api"));
    assert!(session.status.unwrap().pod_name.unwrap().starts_with("api-"));
}

#[test]
fn completion_scripts_for_bash_and_zsh() {
    for (shell, expected) in [("bash", "complete -F _kubectl__ephemera"), ("zsh", "#compdef kubectl-ephemera")] {
        let output = Command::new(PLUGIN).args(["completion", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && script.contains(expected), "{shell}: {script}");
        assert!(script.contains("renew") && script.contains("--image-pull-policy"), "{shell}");
    }
}

/// The chart's `<release>-debugger` role, and nothing else, is enough for the
/// whole plugin: debug (also by workload), attach, renew, ls, logs, explain, delete.
#[tokio::test(flavor = "multi_thread")]
async fn the_debugger_role_alone_is_enough_for_the_plugin() {
    let env = TestEnv::new("plugin-role").await;
    let ns = env.namespace.as_str();
    let roles = Command::new(crate::in_cluster::helm())
        .args(["template", "ephemera"])
        .arg(repo_root().join("charts/ephemera"))
        .args(["--show-only", "templates/user-roles.yaml", "--kube-version", "1.34"])
        .output()
        .unwrap();
    assert!(roles.status.success(), "{}", String::from_utf8_lossy(&roles.stderr));
    let debugger = String::from_utf8_lossy(&roles.stdout)
        .split("\n---")
        .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).unwrap_or_default())
        .find(|doc| doc["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-debugger")))
        .expect("the chart has a debugger role");
    // The same rules as a Role of this namespace, bound to alice (who has no other rights).
    crate::common::grant(ns, "alice", debugger["rules"].clone());
    env.running_pod("web", &["app"], &[("app", "web")]).await;
    let as_alice = |args: &[&str]| {
        let mut all = vec!["--context", "alice", "-n", ns];
        all.extend_from_slice(args);
        kubectl_ephemera(&all)
    };
    // Without -i, --attach follows the log: the line printed before any attach
    // could connect is there too, whether the plugin saw Running or Terminated.
    let script = "echo from-alice; sleep 2; echo still-alice";
    let output = as_alice(&["debug", "web", "--image", IMAGE, "--name", "s", "--attach", "--", "sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("from-alice\nstill-alice"), "all the output of the container: {}", text(&output));
    for args in [
        &["attach", "s"][..],
        &["renew", "s", "--attach=false"],
        &["ls"],
        &["logs", "s", "--attempt", "0"],
        &["explain", "s"],
        &["delete", "s"],
    ] {
        let output = as_alice(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
        assert!(!text(&output).contains("forbidden"), "{args:?}: {}", text(&output));
    }
    apply_json(
        ns,
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": { "name": "db", "namespace": ns },
            "spec": {
                "selector": { "matchLabels": { "app": "web" } },
                "serviceName": "db",
                "replicas": 0,
                "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "db", "image": IMAGE }] } },
            },
        }),
    );
    // sts/db's selector (app=web) picks the running pod web.
    let output = as_alice(&["debug", "sts/db", "--image", IMAGE, "--", "sleep", "600"]);
    assert!(output.status.success(), "{}", text(&output));
}
