use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use std::time::Duration;

use ephemera::{controller, crd, leader, metrics::Metrics, server, telemetry};

/// Declarative debugging of running pods with ephemeral containers.
#[derive(Parser)]
#[command(version = ephemera::VERSION, about, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (kubeconfig or in-cluster config).
    Run {
        /// Watch DebugSessions and pods in this namespace only (default: all namespaces).
        #[arg(long, env = "EPHEMERA_NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "EPHEMERA_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: SocketAddr,
        #[arg(long, env = "EPHEMERA_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: telemetry::LogFormat,
        /// Kubeconfig context to use instead of the current one (ignored in-cluster).
        #[arg(long, env = "EPHEMERA_KUBE_CONTEXT")]
        kube_context: Option<String>,
        /// Reconcile only while holding a Lease, so that replicas can stand by.
        #[arg(long, env = "EPHEMERA_LEADER_ELECT")]
        leader_elect: bool,
        /// Namespace of the Lease (in a cluster: the operator's own, from POD_NAMESPACE).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        leader_election_namespace: String,
        #[arg(long, default_value = "ephemera-controller")]
        leader_election_lease_name: String,
        /// Seconds a lease lasts without renewal: how long a standby waits for a dead leader.
        #[arg(long, default_value_t = 15)]
        leader_election_lease_seconds: u64,
        /// Identity in the Lease (in a cluster: the pod name, from POD_NAME).
        #[arg(long, env = "POD_NAME")]
        leader_election_identity: Option<String>,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
    /// Print the DebugSession CustomResourceDefinition as YAML.
    Crd {
        /// Leave out what an older API server cannot take: CEL rules before 1.25 (the
        /// controller enforces them instead), their reasons and message expressions before 1.28.
        #[arg(long, value_name = "MAJOR.MINOR", default_value_t = crd::KubeVersion::NEWEST)]
        kubernetes_version: crd::KubeVersion,
        /// Print the field reference (docs/reference.md) as Markdown instead.
        #[arg(long, conflicts_with = "kubernetes_version")]
        markdown: bool,
    },
}

/// The platform's rules for debug containers (the chart's `policy.*` and `security.*` values).
#[derive(clap::Args)]
struct PolicyArgs {
    /// Refuse sessions on which admission recorded no requester, so that every
    /// container is checked against the rights of whoever asked for it. Turn off
    /// only where every DebugSession author may debug (see docs/security.md).
    #[arg(long, env = "EPHEMERA_REQUIRE_REQUESTER", default_value_t = true, action = clap::ArgAction::Set)]
    require_requester: bool,
    /// Images debug containers may use (glob patterns, comma-separated); empty allows any.
    #[arg(long, env = "EPHEMERA_ALLOWED_IMAGES", value_delimiter = ',')]
    allowed_images: Vec<String>,
    /// Only images pinned by digest (name@sha256:...).
    #[arg(long, env = "EPHEMERA_REQUIRE_IMAGE_DIGEST")]
    require_image_digest: bool,
    /// Profiles debug containers may use (comma-separated); empty allows all.
    #[arg(long, env = "EPHEMERA_ALLOWED_PROFILES", value_delimiter = ',')]
    allowed_profiles: Vec<crd::Profile>,
    /// At most this many sessions with a debug container that may run, per namespace.
    #[arg(long, env = "EPHEMERA_MAX_ACTIVE_SESSIONS_PER_NAMESPACE")]
    max_active_sessions_per_namespace: Option<usize>,
    /// At most this many such sessions per requester.
    #[arg(long, env = "EPHEMERA_MAX_ACTIVE_SESSIONS_PER_USER")]
    max_active_sessions_per_user: Option<usize>,
    /// Let `volumeMounts: target` and `envFrom: target` take Secrets and ServiceAccount
    /// tokens of the target (CVE-2023-2728 is why this is off by default).
    #[arg(long, env = "EPHEMERA_ALLOW_SECRET_MOUNTS")]
    allow_secret_mounts: bool,
    /// The most `captureOutput` may keep per debug container; 0 turns it off (it needs
    /// `get pods/log` and `create configmaps`).
    #[arg(long, env = "EPHEMERA_MAX_CAPTURE_BYTES", default_value_t = 262_144)]
    max_capture_bytes: i32,
    /// The most pods one `target.mode: All` session may debug.
    #[arg(long, env = "EPHEMERA_MAX_FAN_OUT", default_value_t = 20)]
    max_fan_out: usize,
}

impl PolicyArgs {
    fn policy(self) -> Result<ephemera::policy::Policy, Box<dyn std::error::Error>> {
        let mut policy = ephemera::policy::Policy::default().with_allowed_images(&self.allowed_images)?;
        policy.require_image_digest = self.require_image_digest;
        policy.allowed_profiles = (!self.allowed_profiles.is_empty()).then_some(self.allowed_profiles);
        policy.max_active_per_namespace = self.max_active_sessions_per_namespace;
        policy.max_active_per_requester = self.max_active_sessions_per_user;
        policy.require_requester = self.require_requester;
        policy.allow_secret_mounts = self.allow_secret_mounts;
        policy.max_capture_bytes = self.max_capture_bytes.max(0);
        policy.max_fan_out = Some(self.max_fan_out);
        Ok(policy)
    }
}

fn main() -> ExitCode {
    ephemera::memory::share_one_malloc_arena();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(run(cli)));
    let Err(error) = result else { return ExitCode::SUCCESS };
    // Worded for a person (not Rust's Debug dump), through the log when there is one.
    let mut words = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors already say their cause.
        let cause_words = cause.to_string();
        if !words.contains(&cause_words) {
            words = format!("{words}: {cause_words}");
        }
        source = cause.source();
    }
    if tracing::dispatcher::has_been_set() {
        tracing::error!("cannot go on: {words}");
    } else {
        eprintln!("error: {words}");
    }
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Crd { markdown: true, .. } => print!("{}", crd::reference_markdown()),
        Command::Crd { kubernetes_version, .. } => print!("{}", crd::crd_yaml_for(kubernetes_version)),
        Command::Run {
            namespace,
            metrics_addr,
            log_format,
            kube_context,
            leader_elect,
            leader_election_namespace,
            leader_election_lease_name,
            leader_election_lease_seconds,
            leader_election_identity,
            policy,
        } => {
            telemetry::init(log_format);
            let policy = policy.policy()?;
            // Bound before anything else: a taken port is a startup error, not a blind operator.
            let listener = server::bind(metrics_addr).await?;
            let mut config = match kube_context {
                Some(context) => {
                    let options = kube::config::KubeConfigOptions { context: Some(context), ..Default::default() };
                    kube::Config::from_kubeconfig(&options).await?
                }
                None => kube::Config::infer().await?,
            };
            // No request may hang on a dead connection (a load balancer that
            // forgot it, say): requests time out soon; watches, which may stay
            // quiet until the server ends them, only after that end was due.
            config.connect_timeout = Some(Duration::from_secs(10));
            config.write_timeout = Some(Duration::from_secs(15));
            let mut watch_config = config.clone();
            config.read_timeout = Some(controller::REQUEST_TIMEOUT);
            watch_config.read_timeout = Some(Duration::from_secs(u64::from(controller::WATCH_TIMEOUT_SECONDS) + 25));
            // A watch that fails is retried by its own backoff (seconds at most), not by
            // kube's retry layer, which honours the Retry-After of a starting API server
            // and so held a watch back 5 s after /readyz.
            watch_config.default_retry = false;
            let client = ephemera::api_client::client(config)?;
            let watch_client = ephemera::api_client::client(watch_config)?;
            controller::check_crd_served(&client, namespace.as_deref()).await?;
            let metrics = Arc::new(Metrics::new());
            let health = if leader_elect { Arc::new(server::Health::default()) } else { server::Health::sole_leader() };
            let server = tokio::spawn(server::serve(listener, metrics.clone(), health.clone()));
            let trimmer = tokio::spawn(ephemera::memory::trim_after_waves(metrics.clone()));
            tracing::info!(
                version = ephemera::VERSION,
                namespace = namespace.as_deref().unwrap_or("<all>"),
                "starting ephemera controller"
            );
            let controller = controller::run(client.clone(), watch_client, namespace, metrics, health.clone(), policy);
            let result = if leader_elect {
                let identity = leader_election_identity.unwrap_or_else(default_identity);
                let election = leader::LeaderElection {
                    namespace: leader_election_namespace,
                    lease_name: leader_election_lease_name,
                    identity,
                    lease_seconds: leader_election_lease_seconds,
                };
                leader::run_as_leader(client, election, health, controller).await
            } else {
                controller.await;
                Ok(())
            };
            server.abort();
            trimmer.abort();
            result?;
        }
    }
    Ok(())
}

/// `<hostname>-<pid>`, unique enough for processes outside a cluster.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
