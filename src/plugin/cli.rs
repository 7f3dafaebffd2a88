//! The plugin's command line, parsed the way kubectl (cobra and pflag) parses
//! the same flags: `-it`, `--stdin=false`, `-n ns`/`-n=ns`/`-nns`, repeatable
//! `--env` with pflag's `key=value[,key=value]` rule, durations like `90s`,
//! and everything after `--` as the command.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::crd::{ImagePullPolicy, Profile};

/// Debug running pods with ephemeral containers, through DebugSessions.
///
/// Each debug run is a DebugSession resource: it survives the terminal, shows
/// its phase in `kubectl get dbgs`, and can be renewed with a fresh container
/// once the old one has exited (ephemeral containers can never be restarted).
#[derive(Parser, Debug)]
#[command(name = "kubectl ephemera", bin_name = "kubectl ephemera", version = crate::VERSION, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeFlags,
    /// Print less: no phases, no hints (errors still go to stderr).
    #[arg(short, long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = pflag_bool)]
    pub quiet: bool,
    /// How long to wait for the debug container to run, e.g. 90s or 2m (a bare number is seconds).
    #[arg(long, global = true, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's connection flags, with kubectl's names and meaning.
#[derive(Args, Debug, Default, Clone, PartialEq)]
#[command(next_help_heading = "Connection (as in kubectl)")]
pub struct KubeFlags {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Username to impersonate for the operation.
    #[arg(long = "as", global = true)]
    pub as_user: Option<String>,
    /// Group to impersonate for the operation; repeat for several groups.
    #[arg(long = "as-group", global = true)]
    pub as_group: Vec<String>,
    /// UID to impersonate for the operation.
    #[arg(long = "as-uid", global = true)]
    pub as_uid: Option<String>,
    /// How long a single request may take, e.g. 5s or 1m (a bare number is seconds; 0 is no limit).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Add a debug container to a running pod (through a new DebugSession) and attach to it.
    #[command(
        args_override_self = true,
        override_usage = "kubectl ephemera debug (POD | deploy/NAME | sts/NAME | -l SELECTOR) --image IMAGE [-it] [--target CONTAINER] [-- COMMAND [ARGS...]]"
    )]
    Debug(DebugArgs),
    /// Attach to a session's debug container; if it has exited, show its exit code and output.
    Attach { session: String },
    /// Start a fresh debug container for a session whose container has exited, and attach to it.
    Renew {
        session: String,
        /// Attach once it runs (`--attach=false` prints the attach command instead).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = pflag_bool)]
        attach: bool,
    },
    /// List debug sessions, one line per attempt.
    #[command(alias = "list")]
    Ls {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Print the output of a session's debug container.
    Logs {
        session: String,
        /// Which attempt (default: the current one).
        #[arg(long)]
        attempt: Option<i32>,
        /// Keep streaming while the container runs.
        #[arg(short, long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = pflag_bool)]
        follow: bool,
    },
    /// Delete a session (a debug process that still runs keeps running).
    Delete { session: String },
    /// Tell what happened to a session, from its status and Events.
    Explain { session: String },
    /// Print a shell completion script: `source <(kubectl-ephemera completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
}

/// `kubectl debug`'s flags that apply to an ephemeral container, and ephemera's own.
#[derive(Args, Debug)]
pub struct DebugArgs {
    /// The pod to debug: POD (or pod/POD), or a workload whose pods to choose from: deploy/NAME, sts/NAME, ds/NAME, rs/NAME.
    pub target: Option<String>,
    /// Debug one Running pod (Ready first, then newest) of those matching this label selector, e.g. app=web.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Container image of the debug container.
    #[arg(long)]
    pub image: Option<String>,
    /// Keep stdin open on the debug container; with it, the plugin attaches.
    #[arg(short = 'i', long = "stdin", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = pflag_bool)]
    pub stdin: bool,
    /// Allocate a TTY for the debug container (needs -i).
    #[arg(short = 't', long = "tty", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = pflag_bool)]
    pub tty: bool,
    /// Wait for the container to run and attach (default: true with -i, else false).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = pflag_bool)]
    pub attach: Option<bool>,
    /// Name of the debug container (default: debugger-<5 characters of the session's UID>).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The container whose processes the debug container sees (default: the pod's first).
    /// (`--target`, as in kubectl; the positional argument is the pod.)
    #[arg(long = "target", value_name = "CONTAINER")]
    pub target_container: Option<String>,
    /// Always, IfNotPresent or Never (default: the server's rule).
    #[arg(long, value_parser = parse_pull_policy)]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// general, baseline, restricted, netadmin or sysadmin, as in kubectl debug.
    #[arg(long, default_value = "general", value_parser = parse_profile)]
    pub profile: Profile,
    /// Environment variables of the debug container: KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Pass everything after -- to the image's entrypoint as arguments, instead of as the command.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = pflag_bool)]
    pub arguments_only: bool,
    /// Name of the DebugSession (default: generated from the target's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Delete the DebugSession this long after it finished, e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// How long the kubelet may take to start the container before the session fails (the server-side
    /// startTimeoutSeconds; default 2m). `--timeout` is how long this command waits.
    #[arg(long, value_parser = parse_duration)]
    pub start_timeout: Option<Duration>,
    /// The command of the debug container (or its arguments with --arguments-only).
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl DebugArgs {
    pub fn validate(&self) -> Result<(), String> {
        if self.image.as_deref().unwrap_or_default().is_empty() {
            return Err("you must specify --image".into());
        }
        if self.tty && !self.stdin {
            // kubectl debug's own rule and words.
            return Err("-i/--stdin is required for containers with -t/--tty=true".into());
        }
        match (&self.target, &self.selector) {
            (None, None) => Err("name a pod, a workload such as deploy/NAME, or a selector with -l".into()),
            (Some(_), Some(_)) => Err("give either a pod/workload or -l SELECTOR, not both".into()),
            _ => Ok(()),
        }
    }

    /// Whether to attach once the container runs: kubectl's rule.
    pub fn attaches(&self) -> bool {
        self.attach.unwrap_or(self.stdin)
    }

    /// The container's command and arguments, kubectl's way.
    pub fn command_and_args(&self) -> (Option<Vec<String>>, Option<Vec<String>>) {
        if self.command.is_empty() {
            (None, None)
        } else if self.arguments_only {
            (None, Some(self.command.clone()))
        } else {
            (Some(self.command.clone()), None)
        }
    }

    /// The `--env` values merged as pflag's stringToString merges them (a later key wins),
    /// in key order.
    pub fn env_vars(&self) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        for value in &self.env {
            env.extend(parse_string_to_string(value)?);
        }
        Ok(env)
    }
}

/// pflag's bool: `--flag`, `--flag=true`, `--flag=false` (also 1/0, t/f, TRUE/FALSE, True/False).
pub fn pflag_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("invalid argument {other:?}: strconv.ParseBool: parsing {other:?}: invalid syntax")),
    }
}

/// One `--env` value, as pflag's stringToString reads it: with exactly one
/// `=` the whole value is one pair (commas included, surrounding quotes
/// trimmed); with more, a CSV line of pairs, each split at its first `=`.
pub fn parse_string_to_string(value: &str) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<String> = match value.matches('=').count() {
        0 => return Err(format!("{value} must be formatted as key=value")),
        1 => vec![value.trim_matches('"').to_string()],
        _ => csv_fields(value)?,
    };
    pairs
        .into_iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(format!("{pair} must be formatted as key=value")),
        })
        .collect()
}

/// The fields of one CSV record (Go's encoding/csv: quotes may enclose a
/// field, `""` inside quotes is a quote).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("{line}: extraneous or missing \" in quoted-field")),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => return Err(format!("{line}: extraneous or missing \" in quoted-field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(format!("{line}: bare \" in non-quoted-field")),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

/// A duration as kubectl's `--request-timeout` takes it: a bare integer is
/// seconds, anything else a duration with units such as `90s`, `2m` or `1h30m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value)
        .map_err(|_| format!("{value:?} is not a duration: use an integer with a unit, e.g. 1s, 2m or 3h"))
}

pub fn parse_profile(value: &str) -> Result<Profile, String> {
    match value {
        "legacy" => {
            Err("--profile=legacy is not supported by ephemera; use general (the default) or another profile".into())
        }
        _ => serde_json::from_value(serde_json::Value::String(value.into()))
            .map_err(|_| format!("invalid profile {value:?}: use general, baseline, restricted, netadmin or sysadmin")),
    }
}

pub fn parse_pull_policy(value: &str) -> Result<ImagePullPolicy, String> {
    serde_json::from_value(serde_json::Value::String(value.into()))
        .map_err(|_| format!("invalid image pull policy: {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, String> {
        let argv = std::iter::once("kubectl-ephemera").chain(args.split(' ').filter(|a| !a.is_empty()));
        Cli::try_parse_from(argv).map_err(|e| e.to_string())
    }

    fn debug(args: &str) -> DebugArgs {
        match parse(args).unwrap_or_else(|e| panic!("{args}: {e}")).command {
            Command::Debug(debug) => debug,
            other => panic!("{args}: parsed as {other:?}"),
        }
    }

    /// What `kubectl debug` makes of the same arguments (pflag's rules): the
    /// expected stdin, tty, attach, command and args.
    #[test]
    fn interactive_flags_and_the_command_as_kubectl_parses_them() {
        type Expected = (bool, bool, bool, Option<&'static [&'static str]>, Option<&'static [&'static str]>);
        let table: &[(&str, Expected)] = &[
            ("debug web --image b", (false, false, false, None, None)),
            ("debug web --image b -i", (true, false, true, None, None)),
            ("debug web --image b -it", (true, true, true, None, None)),
            ("debug -it web --image b -- sh", (true, true, true, Some(&["sh"]), None)),
            ("debug web -ti --image b", (true, true, true, None, None)),
            ("debug web -i -t --image b", (true, true, true, None, None)),
            ("debug web --stdin --tty --image b", (true, true, true, None, None)),
            ("debug web --stdin=true --tty=true --image b", (true, true, true, None, None)),
            ("debug web -it --stdin=false --image b", (false, true, false, None, None)),
            ("debug web -i=false --image b", (false, false, false, None, None)),
            ("debug web -i=t --image b", (true, false, true, None, None)),
            ("debug web -i --attach=false --image b", (true, false, false, None, None)),
            ("debug web --attach --image b", (false, false, true, None, None)),
            ("debug web --image b -- sh -c echo", (false, false, false, Some(&["sh", "-c", "echo"]), None)),
            ("debug web --image b --arguments-only -- -c echo", (false, false, false, None, Some(&["-c", "echo"]))),
            ("debug web --image b -- -it", (false, false, false, Some(&["-it"]), None)),
        ];
        for (args, (stdin, tty, attach, command, arguments)) in table {
            let parsed = debug(args);
            let owned = |v: &Option<&[&str]>| v.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(
                (parsed.stdin, parsed.tty, parsed.attaches(), parsed.command_and_args()),
                (*stdin, *tty, *attach, (owned(command), owned(arguments))),
                "{args}"
            );
        }
    }

    #[test]
    fn value_flags_as_kubectl_parses_them() {
        let d = debug("debug web --image=b -c dbg --target app --image-pull-policy Never --profile=sysadmin");
        assert_eq!(d.image.as_deref(), Some("b"));
        assert_eq!(d.container.as_deref(), Some("dbg"));
        assert_eq!(d.target_container.as_deref(), Some("app"));
        assert_eq!(d.image_pull_policy, Some(ImagePullPolicy::Never));
        assert_eq!(d.profile, Profile::Sysadmin);
        assert_eq!(debug("debug web --image b").profile, Profile::General, "kubectl's default since 1.36");
        assert_eq!(debug("debug web --image b --container=dbg").container.as_deref(), Some("dbg"));
        assert_eq!(debug("debug web --image b -cdbg").container.as_deref(), Some("dbg"));
        assert_eq!(debug("debug web --image b -c=dbg").container.as_deref(), Some("dbg"));
        assert_eq!(debug("debug -l app=web --image b").selector.as_deref(), Some("app=web"));
        assert_eq!(debug("debug deploy/web --image b").target.as_deref(), Some("deploy/web"));
        for bad in [
            "debug web --image b --image-pull-policy never",
            "debug web --image b --profile legacy",
            "debug web --image b --profile admin",
            "debug web --image b --stdin=yes",
            "debug web --image b --stdin false",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }

    /// `--env` is pflag's stringToString: repeatable, comma-separated when a
    /// value holds more than one `=`, one pair (commas kept) when it holds one.
    #[test]
    fn env_as_kubectl_parses_it() {
        type Pairs = &'static [(&'static str, &'static str)];
        let table: &[(&str, Result<Pairs, ()>)] = &[
            ("--env A=1", Ok(&[("A", "1")])),
            ("--env A=1 --env B=2", Ok(&[("A", "1"), ("B", "2")])),
            ("--env=A=1,B=2", Ok(&[("A", "1"), ("B", "2")])),
            ("--env A=x,y", Ok(&[("A", "x,y")])),
            ("--env A=b=c", Ok(&[("A", "b=c")])),
            ("--env A=1 --env A=2", Ok(&[("A", "2")])),
            ("--env \"A=1\"", Ok(&[("A", "1")])),
            ("--env \"A=1,2\",B=3", Ok(&[("A", "1,2"), ("B", "3")])),
            ("--env A=", Ok(&[("A", "")])),
            ("--env A", Err(())),
            ("--env A=1,B", Ok(&[("A", "1,B")])),
            ("--env A=1,B,C=2", Err(())),
        ];
        for (flags, expected) in table {
            let parsed = debug(&format!("debug web --image b {flags}")).env_vars();
            let expected = expected
                .map(|pairs| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
            assert_eq!(parsed.map_err(|_| ()), expected, "{flags}");
        }
    }

    #[test]
    fn kubeconfig_flags_as_kubectl_parses_them() {
        let cli = parse("ls --kubeconfig /k --context c -n ns --as alice --as-group g1 --as-group g2 --as-uid 7 --request-timeout 5s")
            .unwrap();
        assert_eq!(
            cli.kube,
            KubeFlags {
                kubeconfig: Some("/k".into()),
                context: Some("c".into()),
                namespace: Some("ns".into()),
                as_user: Some("alice".into()),
                as_group: vec!["g1".into(), "g2".into()],
                as_uid: Some("7".into()),
                request_timeout: Some(Duration::from_secs(5)),
            }
        );
        for args in ["-n ns ls", "ls -n ns", "ls -n=ns", "ls -nns", "ls --namespace ns", "ls --namespace=ns"] {
            assert_eq!(parse(args).unwrap().kube.namespace.as_deref(), Some("ns"), "{args}");
        }
        // --as-group is a string array: a comma is part of the group name.
        assert_eq!(parse("ls --as-group a,b").unwrap().kube.as_group, vec!["a,b".to_string()]);
        assert_eq!(parse("ls --request-timeout 0").unwrap().kube.request_timeout, Some(Duration::ZERO));
        assert_eq!(parse("ls --request-timeout=30").unwrap().kube.request_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn durations() {
        let table = [
            ("90s", Some(90)),
            ("2m", Some(120)),
            ("1h30m", Some(5400)),
            ("1h 30m", Some(5400)),
            ("45", Some(45)),
            ("0", Some(0)),
            ("2 minutes", Some(120)),
            ("soon", None),
            ("-1s", None),
            ("", None),
        ];
        for (text, seconds) in table {
            assert_eq!(parse_duration(text).ok().map(|d| d.as_secs()), seconds, "{text:?}");
        }
        assert_eq!(parse("ls").unwrap().timeout, Duration::from_secs(120));
        assert_eq!(parse("ls --timeout 2m").unwrap().timeout, Duration::from_secs(120));
        assert_eq!(debug("debug web --image b --start-timeout=90s").start_timeout, Some(Duration::from_secs(90)));
        assert_eq!(debug("debug web --image b --ttl 1h").ttl, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn quiet_and_other_commands() {
        assert!(parse("debug web --image b -q").unwrap().quiet);
        assert!(parse("-q ls").unwrap().quiet);
        assert!(!parse("ls").unwrap().quiet);
        assert!(matches!(parse("ls -A").unwrap().command, Command::Ls { all_namespaces: true }));
        assert!(matches!(parse("ls --all-namespaces").unwrap().command, Command::Ls { all_namespaces: true }));
        assert!(matches!(
            parse("logs s --attempt 0 -f").unwrap().command,
            Command::Logs { attempt: Some(0), follow: true, .. }
        ));
        assert!(matches!(parse("renew s").unwrap().command, Command::Renew { attach: true, .. }));
        assert!(matches!(parse("renew s --attach=false").unwrap().command, Command::Renew { attach: false, .. }));
        assert!(matches!(
            parse("completion zsh").unwrap().command,
            Command::Completion { shell: CompletionShell::Zsh }
        ));
    }

    #[test]
    fn validation_follows_kubectl() {
        assert_eq!(
            debug("debug web -t --image b").validate(),
            Err("-i/--stdin is required for containers with -t/--tty=true".into())
        );
        assert_eq!(debug("debug web").validate(), Err("you must specify --image".into()));
        assert!(debug("debug --image b").validate().is_err());
        assert!(debug("debug web -l app=web --image b").validate().is_err());
        assert!(debug("debug web -it --image b").validate().is_ok());
    }
}
