//! Who sent a SIGKILL: the machine-wide record that `kill-trace.sh start` keeps
//! (the `signal_generate` tracepoint, filtered to signal 9) while the fault suite
//! runs. Twice a `sleep 600` debug container ended with exit code 137 in CI, and
//! neither the kubelet, containerd nor the OOM killer said why; this names the sender.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

const TRACE: &str = "/sys/kernel/tracing/instances/ephemera-faults/trace";

/// One SIGKILL, as the tracepoint saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kill {
    /// The task that sent it (`comm-pid`): a shell of ours, runc, a dying PID namespace's init...
    pub sender: String,
    pub target_comm: String,
    pub target_pid: u32,
    /// Seconds since boot (trace_clock `boot`).
    pub since_boot: f64,
}

/// A line of the trace, e.g.
/// `bash-22258 [000] d..1. 71549.556754: signal_generate: sig=9 errno=0 code=0 comm=sleep pid=22226 grp=1 res=0`.
pub fn parse(line: &str) -> Option<Kill> {
    let (head, event) = line.split_once(": signal_generate: ")?;
    let event = event.strip_prefix("sig=9 ")?;
    // The format ends "comm=%s pid=%d grp=%d res=%d": comm may hold anything, even " pid=".
    let comm_start = event.find("comm=")? + "comm=".len();
    let comm_end = event.rfind(" pid=")?;
    let pid = event[comm_end + " pid=".len()..].split(' ').next()?;
    let head = head.trim();
    let (task, rest) = head.split_once(" [")?;
    let since_boot = rest.rsplit(' ').next()?.parse().ok()?;
    Some(Kill {
        sender: task.trim().to_string(),
        target_comm: event.get(comm_start..comm_end)?.to_string(),
        target_pid: pid.parse().ok()?,
        since_boot,
    })
}

/// The wall clock at boot, to turn the trace's boot-clock readings into times.
fn booted_at() -> Timestamp {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    let since_boot = now.tv_sec as f64 + now.tv_nsec as f64 / 1e9;
    Timestamp::now() - SignedDuration::from_secs_f64(since_boot)
}

/// What the trace says of a process named `comm` (any name when None) killed
/// around `at` (the kubelet's finishedAt, to the second), in words for a census.
pub fn who_killed(comm: Option<&str>, at: Timestamp) -> String {
    let Ok(text) = std::fs::read_to_string(TRACE) else {
        return format!("no kill trace at {TRACE} (tests/faults/kill-trace.sh start)");
    };
    let window = (at - SignedDuration::from_secs(1), at + SignedDuration::from_secs(2));
    let booted = booted_at();
    let kills: Vec<String> = text
        .lines()
        .filter_map(parse)
        .filter(|k| comm.is_none_or(|c| k.target_comm == c))
        .map(|k| (booted + SignedDuration::from_secs_f64(k.since_boot), k))
        .filter(|(when, _)| window.0 <= *when && *when < window.1)
        .map(|(when, k)| format!("SIGKILL to {} (pid {}) from {} at {when}", k.target_comm, k.target_pid, k.sender))
        .collect();
    if kills.is_empty() {
        format!("the kill trace has no SIGKILL to {} around {at}", comm.unwrap_or("any process"))
    } else {
        kills.join("; ")
    }
}

/// The name the kernel gives a process of `command`: its file name, cut to 15 bytes.
pub fn process_name(command: &str) -> String {
    let name = command.rsplit('/').next().unwrap_or(command);
    name.chars()
        .scan(0, |bytes, c| {
            *bytes += c.len_utf8();
            (*bytes <= 15).then_some(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kill_with_its_sender() {
        let line = "            bash-22258   [000] d..1. 71549.556754: signal_generate: sig=9 errno=0 code=0 comm=sleep pid=22226 grp=1 res=0";
        assert_eq!(
            parse(line),
            Some(Kill {
                sender: "bash-22258".into(),
                target_comm: "sleep".into(),
                target_pid: 22226,
                since_boot: 71549.556754
            })
        );
    }

    #[test]
    fn parses_names_with_dashes_and_spaces() {
        let line = " containerd-shim-4100    [001] d..2.   12.5: signal_generate: sig=9 errno=0 code=0 comm=runc:[2:INIT] x pid=7 grp=1 res=0";
        let kill = parse(line).unwrap();
        assert_eq!(
            (kill.sender.as_str(), kill.target_comm.as_str(), kill.target_pid),
            ("containerd-shim-4100", "runc:[2:INIT] x", 7)
        );
    }

    #[test]
    fn a_name_holding_pid_is_read_whole() {
        let line = " bash-1 [000] d..1. 3.0: signal_generate: sig=9 errno=0 code=0 comm=x pid=1 y pid=42 grp=1 res=0";
        let kill = parse(line).unwrap();
        assert_eq!((kill.target_comm.as_str(), kill.target_pid), ("x pid=1 y", 42));
    }

    #[test]
    fn skips_headers_and_other_signals() {
        assert_eq!(parse("#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION"), None);
        assert_eq!(
            parse(" bash-1 [000] d..1. 1.0: signal_generate: sig=15 errno=0 code=0 comm=sleep pid=2 grp=1 res=0"),
            None
        );
        assert_eq!(
            parse(" bash-1 [000] d..1. 1.0: signal_generate: sig=19 errno=0 code=0 comm=sig=9 pid=2 grp=1 res=0"),
            None
        );
    }

    #[test]
    fn process_names_are_file_names_cut_to_15_bytes() {
        assert_eq!(process_name("/bin/sleep"), "sleep");
        assert_eq!(process_name("a-very-long-program-name"), "a-very-long-pro");
    }
}
