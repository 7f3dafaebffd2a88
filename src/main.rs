use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ephemera::{controller, crd, metrics::Metrics, server, telemetry};

/// Declarative debugging of running pods with ephemeral containers.
#[derive(Parser)]
#[command(version, about)]
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
    },
    /// Print the DebugSession CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Crd => print!("{}", crd::crd_yaml()),
        Command::Run { namespace, metrics_addr, log_format, kube_context } => {
            telemetry::init(log_format);
            let client = match kube_context {
                Some(context) => {
                    let options = kube::config::KubeConfigOptions { context: Some(context), ..Default::default() };
                    kube::Client::try_from(kube::Config::from_kubeconfig(&options).await?)?
                }
                None => kube::Client::try_default().await?,
            };
            let metrics = Arc::new(Metrics::new());
            let server = tokio::spawn(server::serve(metrics_addr, metrics.clone()));
            tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), "starting ephemera controller");
            controller::run(client, namespace, metrics).await;
            server.abort();
        }
    }
    Ok(())
}
