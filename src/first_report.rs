//! The status of a debug container just added waits a moment for the
//! kubelet to start it. The kubelet usually does within a second or two,
//! reporting ContainerCreating on the way, so writing "Injected" (and then
//! "ContainerCreating") would be followed by another write straight away;
//! waiting lets one write say "Running". A problem the kubelet reports
//! (ErrImagePull, ...) is written at once. Only the process that added the
//! container waits, and never longer than [`WAIT`]: after a restart, or when
//! the kubelet is slow or silent (a kubelet without the feature gate),
//! "Injected" is written as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::crd::DebugSessionStatus;
use crate::status;

/// The longest a status that only adds "the container is in the pod, on its way" waits to be written.
pub const WAIT: Duration = Duration::from_secs(2);

/// When each session's container was added, for those added less than [`WAIT`] ago.
#[derive(Default)]
pub struct FirstReports {
    injected_at: Mutex<HashMap<String, Instant>>,
}

impl FirstReports {
    /// The session with `uid` just had its container added.
    pub fn injected(&self, uid: &str) {
        let mut injected_at = self.injected_at.lock().expect("first reports lock");
        injected_at.retain(|_, at| at.elapsed() < WAIT);
        injected_at.insert(uid.to_string(), Instant::now());
    }

    /// How much longer `status` may wait before it is written: some, while it
    /// only adds that the container this process just added is in the pod and
    /// on its way (see [`status::awaits_kubelet`]).
    pub fn wait_left(&self, uid: &str, status: &DebugSessionStatus) -> Option<Duration> {
        let mut injected_at = self.injected_at.lock().expect("first reports lock");
        let left = injected_at
            .get(uid)
            .and_then(|at| WAIT.checked_sub(at.elapsed()))
            .filter(|left| !left.is_zero() && status::awaits_kubelet(status));
        if left.is_none() {
            injected_at.remove(uid);
        }
        left
    }

    pub fn forget(&self, uid: &str) {
        self.injected_at.lock().expect("first reports lock").remove(uid);
    }

    pub fn len(&self) -> usize {
        self.injected_at.lock().expect("first reports lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ContainerState, DebugContainerStatus, Phase};

    fn injected(state: ContainerState, reason: Option<&str>) -> DebugSessionStatus {
        DebugSessionStatus {
            phase: Some(Phase::Injected),
            waiting_reason: reason.map(str::to_string),
            containers: vec![DebugContainerStatus { name: "debugger-a".into(), state, ..Default::default() }],
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_only_for_the_kubelets_first_word_and_never_long() {
        let reports = FirstReports::default();
        let silent = injected(ContainerState::Unknown, None);
        assert_eq!(reports.wait_left("uid", &silent), None, "nothing added here: write at once");

        reports.injected("uid");
        assert_eq!(reports.wait_left("uid", &silent), Some(WAIT));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(reports.wait_left("uid", &silent), Some(WAIT - Duration::from_millis(500)));

        let creating = injected(ContainerState::Waiting, Some("ContainerCreating"));
        assert_eq!(
            reports.wait_left("uid", &creating),
            Some(WAIT - Duration::from_millis(500)),
            "creating it is the kubelet's routine: wait on"
        );
        let cannot_pull = injected(ContainerState::Waiting, Some("ErrImagePull"));
        assert_eq!(reports.wait_left("uid", &cannot_pull), None, "the kubelet reports a problem: write");
        assert!(reports.is_empty(), "a write ends the wait for good");
        assert_eq!(reports.wait_left("uid", &silent), None);

        reports.injected("uid");
        tokio::time::advance(WAIT).await;
        assert_eq!(reports.wait_left("uid", &silent), None, "the kubelet stayed silent: write");
        assert!(reports.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_that_never_come_back_are_not_kept() {
        let reports = FirstReports::default();
        for uid in ["a", "b", "c"] {
            reports.injected(uid);
        }
        reports.forget("a");
        assert_eq!(reports.len(), 2);
        tokio::time::advance(WAIT).await;
        reports.injected("d");
        assert_eq!(reports.len(), 1, "an addition drops the waits that are over");
    }
}
