//! `kubectl ephemera`: the kubectl plugin. Creates a DebugSession, waits until
//! its container runs, and attaches to it, so debugging is as quick as
//! `kubectl debug -it`, with a session that explains itself afterwards.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ephemera::crd::{DebugSession, DebugSessionSpec, ImagePullPolicy, Phase, Profile, Target};
use ephemera::debug_container::is_from_session;
use ephemera::validation::{is_dns1123_label, is_dns1123_subdomain};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;
use kube::{Client, Config};

/// Debug running pods with ephemeral containers, through DebugSessions.
#[derive(Parser)]
#[command(name = "kubectl ephemera", version = ephemera::VERSION)]
struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// How long to wait for the debug container to run.
    #[arg(long, global = true, default_value = "120s", value_parser = parse_seconds)]
    timeout: Duration,
    /// Create or renew only; print the attach command instead of running it.
    #[arg(long, global = true)]
    no_attach: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a debug container in POD and attach to it.
    Debug {
        pod: String,
        /// Image of the debug container.
        #[arg(long)]
        image: String,
        /// Container whose process namespace to share (default: the pod's first).
        #[arg(short = 't', long)]
        target: Option<String>,
        /// kubectl debug profile: general, baseline, restricted, netadmin, sysadmin.
        #[arg(long, default_value = "general", value_parser = parse_profile)]
        profile: Profile,
        #[arg(long, value_parser = parse_pull_policy)]
        image_pull_policy: Option<ImagePullPolicy>,
        /// Name of the DebugSession (default: generated from the pod's name).
        #[arg(long)]
        name: Option<String>,
        /// Delete the DebugSession this many seconds after it finished.
        #[arg(long)]
        ttl: Option<i32>,
        /// Command of the debug container (after `--`); the image's default if none.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Start a fresh container for a session whose container has exited, and attach.
    Renew { session: String },
    /// Attach to the running container of a session.
    Attach { session: String },
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let digits = s.strip_suffix('s').unwrap_or(s);
    digits.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?} is not a number of seconds like 90s"))
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| format!("unknown profile {s:?}"))
}

fn parse_pull_policy(s: &str) -> Result<ImagePullPolicy, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| format!("unknown pull policy {s:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let options = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = Config::from_kubeconfig(&options).await?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let sessions: Api<DebugSession> = Api::namespaced(client, &namespace);
    let name = match cli.command {
        Cmd::Debug { pod, image, target, profile, image_pull_policy, name, ttl, command } => {
            let spec = DebugSessionSpec {
                target: Target { pod: Some(pod.clone()), selector: None, container: target },
                image,
                image_pull_policy,
                command: (!command.is_empty()).then_some(command),
                args: None,
                env: None,
                working_dir: None,
                stdin: true,
                tty: true,
                profile,
                container_name: None,
                attempt: 0,
                start_timeout_seconds: i32::try_from(cli.timeout.as_secs()).unwrap_or(i32::MAX),
                ttl_seconds_after_finished: ttl,
            };
            let mut session = DebugSession::new(name.as_deref().unwrap_or_default(), spec);
            if name.is_none() {
                session.metadata.name = None;
                session.metadata.generate_name = Some(format!("{pod}-debug-"));
            }
            let created = sessions.create(&PostParams::default(), &session).await?;
            let name = created.metadata.name.unwrap_or_default();
            eprintln!("debugsession.ephemera.dev/{name} created");
            name
        }
        Cmd::Renew { session } => {
            let current = sessions.get(&session).await?;
            let attempt = current.spec.attempt + 1;
            let patch = serde_json::json!({ "spec": { "attempt": attempt } });
            sessions.patch(&session, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            eprintln!("debugsession.ephemera.dev/{session} renewed (attempt {attempt})");
            session
        }
        Cmd::Attach { session } => session,
    };
    let session = wait_until_settled(&sessions, &name, cli.timeout).await?;
    let status = session.status.clone().unwrap_or_default();
    match status.phase {
        Some(Phase::Running) => {
            let pods: Api<Pod> = Api::namespaced(sessions.clone().into_client(), &namespace);
            let args = attach_args(&pods, &session, &namespace).await?;
            if cli.no_attach {
                println!("kubectl {}", args.join(" "));
                return Ok(ExitCode::SUCCESS);
            }
            attach_with_kubectl(&args, cli.context.as_deref())
        }
        Some(Phase::Terminated) => {
            eprintln!("{}", status.message.unwrap_or_default());
            eprintln!(
                "Its output: kubectl logs -n {namespace} {} -c {}",
                status.pod_name.unwrap_or_default(),
                status.container_name.unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
        _ => {
            let reason = status.reason.map_or("Failed", |r| r.as_str());
            eprintln!("{reason}: {}", status.message.unwrap_or_default());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Polls the session until its current attempt runs, ends or fails, echoing each phase.
async fn wait_until_settled(
    sessions: &Api<DebugSession>,
    name: &str,
    timeout: Duration,
) -> Result<DebugSession, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + timeout;
    let mut shown = None;
    loop {
        let session = sessions.get(name).await?;
        let status = session.status.clone().unwrap_or_default();
        let current = status.attempt == session.spec.attempt;
        if current && status.phase != shown {
            shown = status.phase;
            if let Some(phase) = shown {
                let detail = status.waiting_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                eprintln!("{name}: {}{detail}", phase.as_str());
            }
        }
        if current && matches!(status.phase, Some(Phase::Running | Phase::Terminated | Phase::Failed)) {
            return Ok(session);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} did not start within {}s; see kubectl describe dbgs {name}",
                timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// kubectl's arguments to attach to the session's running container. Built
/// from names, never from a command line found in the API: the names must be
/// valid DNS names, and the pod must hold that container with this session's marker.
async fn attach_args(
    pods: &Api<Pod>,
    session: &DebugSession,
    namespace: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let status = session.status.clone().unwrap_or_default();
    let (Some(pod), Some(container)) = (status.pod_name, status.container_name) else {
        return Err("the session's status names no pod and container to attach to".into());
    };
    if !(is_dns1123_subdomain(namespace) && is_dns1123_subdomain(&pod) && is_dns1123_label(&container)) {
        return Err(format!("refusing to attach: {pod:?}/{container:?} in {namespace:?} are not valid names").into());
    }
    let found = pods.get(&pod).await?;
    let uid = session.metadata.uid.as_deref().unwrap_or_default();
    let ours = found
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .any(|c| c.name == container && is_from_session(c, uid));
    if !ours {
        return Err(
            format!("refusing to attach: pod {pod} holds no debug container {container} of this session").into()
        );
    }
    let mut args = vec!["attach".to_string()];
    match (session.spec.stdin, session.spec.tty) {
        (true, true) => args.push("-it".into()),
        (true, false) => args.push("-i".into()),
        (false, true) => args.push("-t".into()),
        (false, false) => {}
    }
    args.extend(["-n".into(), namespace.into(), pod, "-c".into(), container]);
    Ok(args)
}

/// Runs `kubectl ARGS` with the kubectl that invoked us (or `$KUBECTL`).
fn attach_with_kubectl(args: &[String], context: Option<&str>) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut command = Command::new(kubectl);
    if let Some(context) = context {
        command.args(["--context", context]);
    }
    command.args(args);
    let status = command.status()?;
    Ok(status.code().map_or(ExitCode::FAILURE, |c| ExitCode::from(u8::try_from(c).unwrap_or(1))))
}
