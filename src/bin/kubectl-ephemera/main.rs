//! `kubectl ephemera`: the kubectl plugin. `debug` creates a DebugSession,
//! watches it until its container runs and attaches to it, as quick as
//! `kubectl debug -it`, with a session that explains itself afterwards;
//! `attach`, `renew`, `ls`, `logs`, `delete` and `explain` work on sessions.
//!
//! Exit status: the debug container's own exit code once it has run (as
//! `kubectl debug -it` and `kubectl attach` give it), 1 for every error of the
//! plugin (flags included, as kubectl does).

mod attach;
mod commands;
mod connect;
mod wait;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use ephemera::plugin::cli::{Cli, Command, CompletionShell};

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version succeed; a bad flag is a plugin error.
            return if error.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) is no error.
pub fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        result => result,
    }
}

async fn run(cli: Cli) -> Result<u8, Error> {
    if let Command::Completion { shell } = cli.command {
        let shell = match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
        };
        // For the executable's own name: kubectl completes plugins only through kubectl_complete-* helpers.
        let mut command = Cli::command().bin_name("kubectl-ephemera");
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "kubectl-ephemera", &mut script);
        print_out(&String::from_utf8_lossy(&script))?;
        return Ok(0);
    }
    // Flags that cannot work are reported before anything is asked of the cluster.
    if let Command::Debug(args) = &cli.command {
        args.validate()?;
    }
    let connection = connect::connect(&cli.kube).await?;
    let context = commands::Context { connection, flags: cli.kube.clone(), quiet: cli.quiet, timeout: cli.timeout };
    match cli.command {
        Command::Debug(args) => commands::debug(&context, args).await,
        Command::Attach { session } => commands::attach(&context, &session).await,
        Command::Renew { session, attach } => commands::renew(&context, &session, attach).await,
        Command::Ls { all_namespaces } => commands::ls(&context, all_namespaces).await,
        Command::Logs { session, attempt, follow } => commands::logs(&context, &session, attempt, follow).await,
        Command::Delete { session } => commands::delete(&context, &session).await,
        Command::Explain { session } => commands::explain(&context, &session).await,
        Command::Completion { .. } => unreachable!("handled above"),
    }
}
