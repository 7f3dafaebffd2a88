//! A terminal a test types into, as a person would: bash in tmux, on a tmux
//! server of its own (so no other test's tmux can end it), with everything
//! it shows recorded in a file (so nothing scrolls away).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;

/// bash's prompt shows the last exit status, so a test can tell when a command ended and how.
const PROMPT: &str = r"__rc=$?__ $ ";
static PROMPT_SEEN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"__rc=(\d+)__ \$ ").unwrap());
/// Terminal control sequences, left out when the text is searched.
static CONTROL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>78]|\r").unwrap());

pub struct Terminal {
    socket: String,
    log: PathBuf,
    /// Where in the log the text after the last command starts.
    mark: usize,
}

impl Terminal {
    /// bash (no rc files) in `dir`, with exactly `env` (plus TERM and HOME), at its first prompt.
    pub async fn start(name: &str, dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        let socket = format!("ephemera-{name}");
        let log = std::env::temp_dir().join(format!("{socket}.terminal.log"));
        let _ = std::fs::remove_file(&log);
        let terminal = Terminal { socket, log, mark: 0 };
        terminal.tmux(&["kill-server"]);
        let mut shell = vec!["env".to_string(), "-i".into(), "TERM=xterm".into(), "HOME=/root".into()];
        shell.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        shell.extend(["bash".into(), "--norc".into(), "--noprofile".into()]);
        let dir = dir.display().to_string();
        let mut args = vec!["new-session", "-d", "-s", "t", "-x", "200", "-y", "50", "-c", &dir];
        args.extend(shell.iter().map(String::as_str));
        terminal.tmux(&args);
        terminal.tmux(&["pipe-pane", "-t", "t", "-o", &format!("cat >> {}", terminal.log.display())]);
        let mut terminal = terminal;
        terminal.run(&format!("PS1='{PROMPT}'"), Duration::from_secs(10)).await;
        terminal
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// Everything shown so far, control sequences left out.
    pub fn text(&self) -> String {
        let raw = std::fs::read(&self.log).unwrap_or_default();
        CONTROL.replace_all(&String::from_utf8_lossy(&raw), "").into_owned()
    }

    /// What was shown since the last command was typed.
    pub fn since_last(&self) -> String {
        self.text().get(self.mark..).unwrap_or_default().to_string()
    }

    /// Types a line (and Enter); what follows it is searched by the waits.
    /// The line is cleared first (C-u), as a person would: replayed control
    /// sequences (e.g. a TTY session's log) make the terminal type its answers.
    pub fn type_line(&mut self, line: &str) {
        self.mark = self.text().len();
        self.tmux(&["send-keys", "-t", "t", "C-u"]);
        self.tmux(&["send-keys", "-t", "t", "-l", line]);
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
    }

    /// Waits until the text since the last command contains `text`; returns that text.
    pub async fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = self.since_last();
            if shown.contains(text) {
                return shown;
            }
            assert!(Instant::now() < deadline, "the terminal never showed {text:?}; it shows:\n{}", self.text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for bash's prompt after the last command: its exit status and output.
    pub async fn wait_for_prompt(&self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = self.since_last();
            if let Some(found) = PROMPT_SEEN.captures(&shown) {
                let output = shown[..found.get(0).unwrap().start()].to_string();
                return (found[1].parse().unwrap(), output);
            }
            assert!(Instant::now() < deadline, "the command never finished; the terminal shows:\n{}", self.text());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Types a shell command and waits until it finished: its exit status and output.
    pub async fn run(&mut self, command: &str, timeout: Duration) -> (i32, String) {
        self.type_line(command);
        self.wait_for_prompt(timeout).await
    }

    /// Waits until an attached busybox shell shows its prompt.
    pub async fn wait_for_container_shell(&self) {
        self.wait_for("If you don't see a command prompt", Duration::from_secs(60)).await;
        // The shell's first prompt may have been shown before kubectl attached.
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
        self.wait_for("/ # ", Duration::from_secs(30)).await;
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("terminal {}:\n{}", self.socket, self.text());
        }
        self.tmux(&["kill-server"]);
    }
}
