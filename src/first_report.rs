//! The status of a debug container just added waits a moment for the
//! kubelet to start it. The kubelet usually does within a second or two,
//! reporting ContainerCreating on the way, so writing "Injected" (and then
//! "ContainerCreating") would be followed by another write straight away;
//! waiting lets one write say "Running". A problem the kubelet reports
//! (ErrImagePull, ...) is written at once. Only the process that added the
//! container waits: after a restart "Injected" is written as before.
//!
//! The wait ends when the kubelet of the container's node has been silent for
//! [`WAIT`]: it has said nothing about any container this process added on
//! that node since the later of this container's addition and its last word.
//! A kubelet working through many new containers (a burst of sessions) starts
//! them one after the other, seconds apart; while it reports on the others,
//! "Injected" for those still in its queue would be followed at once by
//! "Running". A kubelet that is stopped, or has no feature gate, says nothing,
//! and "Injected" goes out after [`WAIT`]. However busy the kubelet, no status
//! waits more than [`LONGEST_WAIT`].
//!
//! A held status is rechecked at least every [`WAIT`]. A recheck with no news
//! (no pod change woke the session, the session itself is unchanged, and
//! neither the wait nor the status's own deadline is over) reads nothing:
//! under a busy kubelet, every recheck reading the pod added up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::crd::{DebugSession, DebugSessionStatus};
use crate::status;

/// How long a kubelet may be silent before "Injected" is written without its word.
pub const WAIT: Duration = Duration::from_secs(2);

/// The longest a status waits for the kubelet's first word, however busy the kubelet is.
pub const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// A container this process added, until the kubelet's first word on it (or [`LONGEST_WAIT`]).
struct Added {
    at: Instant,
    node: Option<String>,
    /// The kubelet has reported on it (ContainerCreating counts).
    heard: bool,
    /// Its status was written without waiting any longer: it never waits again.
    released: bool,
    /// The pod's ephemeral containers as its write left them, while the status
    /// that records them is held back (see [`FirstReports::hold_record`]).
    record: Vec<String>,
    /// Set while its status is held back.
    held: Option<Held>,
    /// When (by [`Records::clock`]) a change of its pod last woke the session.
    last_news: u64,
}

/// What a recheck of a held status compares against.
struct Held {
    /// The session's resourceVersion when its status was held back.
    version: Option<String>,
    /// When the held status's own deadline falls (a start timeout).
    due: Option<Instant>,
    /// Where [`Records::clock`] stood when the reconcile that held it began:
    /// news after that is news it did not read.
    began: u64,
}

/// Where the news clock stood when a reconcile began (see [`FirstReports::quiet_recheck`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Began(u64);

impl Added {
    /// When the wait for the kubelet's first word ends, given when each node's kubelet last spoke.
    fn wait_ends(&self, last_word: &HashMap<String, Instant>) -> Instant {
        let word = self.node.as_ref().and_then(|node| last_word.get(node));
        let silent_since = word.map_or(self.at, |word| self.at.max(*word));
        (silent_since + WAIT).min(self.at + LONGEST_WAIT)
    }
}

#[derive(Default)]
struct Records {
    /// By session UID.
    added: HashMap<String, Added>,
    /// By node: when its kubelet last gave its first word on a container added here.
    last_word: HashMap<String, Instant>,
    /// Counts the pod changes that woke sessions, to order news and reconciles.
    clock: u64,
}

/// When each session's container was added and what the kubelets have said since.
#[derive(Default)]
pub struct FirstReports {
    records: Mutex<Records>,
}

impl FirstReports {
    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().expect("first reports lock")
    }

    /// The session with `uid` just had its container added, to a pod on `node`.
    pub fn injected(&self, uid: &str, node: Option<&str>) {
        let mut records = self.records();
        records.added.retain(|_, added| added.at.elapsed() < LONGEST_WAIT);
        records.last_word.retain(|_, at| at.elapsed() < LONGEST_WAIT);
        let added = Added {
            at: Instant::now(),
            node: node.map(str::to_string),
            heard: false,
            released: false,
            record: Vec::new(),
            held: None,
            // The addition is news to a reconcile that began before it.
            last_news: records.clock + 1,
        };
        records.clock += 1;
        records.added.insert(uid.to_string(), added);
    }

    /// How much longer `status`, decided for `session`, may wait before it is
    /// written: some, while it only adds that the container this process just
    /// added is in the pod and on its way (see [`status::awaits_kubelet`]) and
    /// its node's kubelet has not been silent for [`WAIT`]. `due` is how long
    /// until the status itself changes with time (its start timeout), and
    /// `began` what [`Self::quiet_recheck`] said when the reconcile began.
    pub fn wait_left(
        &self,
        session: &DebugSession,
        status: &DebugSessionStatus,
        due: Option<Duration>,
        began: Began,
    ) -> Option<Duration> {
        let uid = session.metadata.uid.as_deref()?;
        let mut records = self.records();
        let Records { added, last_word, .. } = &mut *records;
        let entry = added.get_mut(uid)?;
        entry.held = None;
        if !entry.heard && status::kubelet_spoke(status) {
            // Its first word on this container: the node's kubelet is at work.
            entry.heard = true;
            if let Some(node) = &entry.node {
                last_word.insert(node.clone(), Instant::now());
            }
        }
        if !status::awaits_kubelet(status) {
            added.remove(uid);
            return None;
        }
        let now = Instant::now();
        let left = entry.wait_ends(last_word).saturating_duration_since(now);
        if entry.released || left.is_zero() {
            // Written now; kept only to hear the kubelet's first word.
            entry.released = true;
            return None;
        }
        if entry.record.is_empty() {
            entry.record.clone_from(&status.ephemeral_containers_at_injection);
        }
        let version = session.metadata.resource_version.clone();
        entry.held = Some(Held { version, due: due.map(|d| now + d), began: began.0 });
        Some(left)
    }

    /// How long until `session`'s held status must be looked at again, when
    /// nothing can have changed it since the reconcile that held it began: no
    /// news of its pod ([`Self::news`]), the same session version, and neither
    /// the wait nor the status's own deadline over. `Err`: reconcile as usual,
    /// and pass what it says to [`Self::wait_left`].
    pub fn quiet_recheck(&self, session: &DebugSession) -> Result<Duration, Began> {
        let mut records = self.records();
        let Records { added, last_word, clock } = &mut *records;
        let began = Began(*clock);
        let Some(entry) = session.metadata.uid.as_deref().and_then(|uid| added.get_mut(uid)) else {
            return Err(began);
        };
        let Some(held) = entry.held.take() else { return Err(began) };
        if held.version != session.metadata.resource_version || entry.last_news > held.began {
            return Err(began);
        }
        let wait_ends = entry.wait_ends(last_word);
        let left = held.due.map_or(wait_ends, |due| due.min(wait_ends)).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(began);
        }
        entry.held = Some(held);
        Ok(left)
    }

    /// The session with `uid` was woken by a change of its pod: its next reconcile reads.
    pub fn news(&self, uid: &str) {
        let mut records = self.records();
        records.clock += 1;
        let clock = records.clock;
        if let Some(entry) = records.added.get_mut(uid) {
            entry.last_news = clock;
        }
    }

    /// Every pod may have changed unseen (the pod watch started again).
    pub fn news_for_all(&self) {
        let mut records = self.records();
        records.clock += 1;
        let clock = records.clock;
        for entry in records.added.values_mut() {
            entry.last_news = clock;
        }
    }

    /// Gives `session` the record of the pod its write answered with
    /// (`ephemeralContainersAtInjection`), while the status that carries it
    /// waits here and the published one (the claim) has none. Its reconciles
    /// and pod wakes then see what they would after that write: the record
    /// stays as first taken, and the session is no longer woken by other
    /// containers going in ([`crate::status::reads_only_own_containers`]).
    pub fn hold_record(&self, session: &mut DebugSession) {
        let Some(uid) = session.metadata.uid.as_deref() else { return };
        let records = self.records();
        let Some(record) = records.added.get(uid).map(|added| &added.record).filter(|r| !r.is_empty()) else {
            return;
        };
        let status = session.status.get_or_insert_with(Default::default);
        if status.ephemeral_containers_at_injection.is_empty() {
            status.ephemeral_containers_at_injection.clone_from(record);
        }
    }

    pub fn forget(&self, uid: &str) {
        self.records().added.remove(uid);
    }

    /// Containers added whose start is still awaited.
    pub fn len(&self) -> usize {
        self.records().added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ContainerState, DebugContainerStatus, Phase};

    fn status(phase: Phase, state: ContainerState, reason: Option<&str>) -> DebugSessionStatus {
        DebugSessionStatus {
            phase: Some(phase),
            waiting_reason: reason.map(str::to_string),
            containers: vec![DebugContainerStatus { name: "debugger-a".into(), state, ..Default::default() }],
            ..Default::default()
        }
    }

    fn silent() -> DebugSessionStatus {
        status(Phase::Injected, ContainerState::Unknown, None)
    }

    fn running() -> DebugSessionStatus {
        status(Phase::Running, ContainerState::Running, None)
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn session(uid: &str, version: &str) -> DebugSession {
        let mut session = DebugSession::new("s", Default::default());
        session.metadata.uid = Some(uid.into());
        session.metadata.resource_version = Some(version.into());
        session
    }

    /// The wait left for `status` of the session with `uid`, with no deadline of its own.
    fn left(reports: &FirstReports, uid: &str, status: &DebugSessionStatus) -> Option<Duration> {
        let began = Began(reports.records().clock);
        reports.wait_left(&session(uid, "1"), status, None, began)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_only_for_the_kubelets_first_word_and_never_long() {
        let reports = FirstReports::default();
        assert_eq!(left(&reports, "uid", &silent()), None, "nothing added here: write at once");

        reports.injected("uid", Some("node"));
        assert_eq!(left(&reports, "uid", &silent()), Some(WAIT));
        tokio::time::advance(MS(500)).await;
        assert_eq!(left(&reports, "uid", &silent()), Some(WAIT - MS(500)));

        let creating = status(Phase::Injected, ContainerState::Waiting, Some("ContainerCreating"));
        assert_eq!(
            left(&reports, "uid", &creating),
            Some(WAIT),
            "creating it is the kubelet's routine, and its word: wait on"
        );
        tokio::time::advance(MS(500)).await;
        assert_eq!(
            left(&reports, "uid", &creating),
            Some(WAIT - MS(500)),
            "the same word, heard again, is no new word"
        );
        let cannot_pull = status(Phase::Injected, ContainerState::Waiting, Some("ErrImagePull"));
        assert_eq!(left(&reports, "uid", &cannot_pull), None, "the kubelet reports a problem: write");
        assert!(reports.is_empty(), "a problem ends the wait for good");
        assert_eq!(left(&reports, "uid", &silent()), None);

        reports.injected("uid", Some("node"));
        tokio::time::advance(WAIT).await;
        assert_eq!(left(&reports, "uid", &silent()), None, "the kubelet stayed silent: write");
        assert_eq!(reports.len(), 1, "kept to hear the kubelet's first word");
        tokio::time::advance(MS(500)).await;
        assert_eq!(left(&reports, "uid", &creating), None, "written once without waiting, never waits again");
        assert_eq!(left(&reports, "uid", &running()), None);
        assert!(reports.is_empty(), "its start ends the record");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kubelet_at_work_on_other_containers_is_not_silent() {
        let reports = FirstReports::default();
        for uid in ["first", "queued"] {
            reports.injected(uid, Some("busy"));
        }
        reports.injected("elsewhere", Some("quiet"));
        reports.injected("unscheduled", None);
        tokio::time::advance(MS(1500)).await;
        assert_eq!(left(&reports, "first", &running()), None, "started: write");

        tokio::time::advance(MS(1000)).await;
        assert_eq!(left(&reports, "queued", &silent()), Some(MS(1000)), "its kubelet spoke 1 s ago");
        assert_eq!(left(&reports, "elsewhere", &silent()), None, "another node's kubelet says nothing on it");
        assert_eq!(left(&reports, "unscheduled", &silent()), None, "no node, no kubelet to hear");

        // The kubelet keeps starting others, each within WAIT of the last.
        let mut waited = MS(2500);
        for i in 0.. {
            let other = format!("other-{i}");
            reports.injected(&other, Some("busy"));
            tokio::time::advance(MS(1500)).await;
            waited += MS(1500);
            assert_eq!(left(&reports, &other, &running()), None);
            let left = left(&reports, "queued", &silent());
            if waited >= LONGEST_WAIT {
                assert_eq!(left, None, "however busy the kubelet, the wait ends");
                break;
            }
            assert_eq!(left, Some(WAIT.min(LONGEST_WAIT - waited)), "at {waited:?}");
        }
        assert_eq!(left(&reports, "queued", &silent()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kubelet_silent_on_every_container_is_silent() {
        let reports = FirstReports::default();
        for uid in ["a", "b", "c"] {
            reports.injected(uid, Some("stopped"));
            tokio::time::advance(MS(700)).await;
        }
        assert_eq!(left(&reports, "a", &silent()), None, "2.1 s of silence");
        assert_eq!(left(&reports, "b", &silent()), Some(MS(600)));
        tokio::time::advance(MS(700)).await;
        assert_eq!(left(&reports, "b", &silent()), None);
        assert_eq!(left(&reports, "c", &silent()), Some(MS(600)), "a write without the kubelet's word is no word");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_status_lends_its_record_of_the_pod_to_what_comes_next() {
        let reports = FirstReports::default();
        let mut session = DebugSession::new("s", Default::default());
        session.metadata.uid = Some("uid".into());
        let claim = DebugSessionStatus { phase: Some(Phase::Pending), ..Default::default() };
        session.status = Some(claim.clone());
        let record = vec!["kubectl-debug-x".to_string(), "debugger-a".to_string()];
        let mut held = silent();
        held.ephemeral_containers_at_injection.clone_from(&record);

        reports.injected("uid", Some("node"));
        let mut view = session.clone();
        reports.hold_record(&mut view);
        assert_eq!(view.status, session.status, "nothing held yet");

        assert_eq!(left(&reports, "uid", &held), Some(WAIT));
        reports.hold_record(&mut view);
        assert_eq!(view.status.as_ref().unwrap().ephemeral_containers_at_injection, record);
        assert_eq!(view.status.as_ref().unwrap().phase, Some(Phase::Pending), "only the record");

        let mut later = held.clone();
        later.ephemeral_containers_at_injection.insert(0, "added-since".into());
        assert_eq!(left(&reports, "uid", &later), Some(WAIT));
        let mut view = session.clone();
        reports.hold_record(&mut view);
        assert_eq!(view.status.unwrap().ephemeral_containers_at_injection, record, "the first record stays");

        let mut published = session.clone();
        published.status.as_mut().unwrap().ephemeral_containers_at_injection = vec!["debugger-a".into()];
        let before = published.clone();
        reports.hold_record(&mut published);
        assert_eq!(published.status, before.status, "a published record is not replaced");

        assert_eq!(left(&reports, "uid", &running()), None);
        let mut view = session.clone();
        reports.hold_record(&mut view);
        assert_eq!(view.status, session.status, "written: nothing held any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recheck_with_no_news_reads_nothing_until_a_deadline() {
        let reports = FirstReports::default();
        let (v1, v2) = (session("uid", "1"), session("uid", "2"));
        // A full reconcile that begins now, and what it decides.
        let reconcile = |session: &DebugSession, due| {
            let began = Began(reports.records().clock);
            reports.wait_left(session, &silent(), due, began)
        };
        assert!(reports.quiet_recheck(&v1).is_err(), "nothing added: reconcile");
        let began = reports.quiet_recheck(&v1).unwrap_err();
        reports.injected("uid", Some("node"));
        assert_eq!(reports.wait_left(&v1, &silent(), None, began), Some(WAIT), "held by the reconcile that added it");
        assert!(reports.quiet_recheck(&v1).is_err(), "which began before the addition: read once more");

        assert_eq!(reconcile(&v1, None), Some(WAIT));
        tokio::time::advance(MS(500)).await;
        assert_eq!(reports.quiet_recheck(&v1), Ok(WAIT - MS(500)), "no news: wait on");
        assert_eq!(reports.quiet_recheck(&v1), Ok(WAIT - MS(500)), "still none");
        assert!(reports.quiet_recheck(&v2).is_err(), "the session changed");
        assert!(reports.quiet_recheck(&v1).is_err(), "a full reconcile holds it again, or not");

        assert_eq!(reconcile(&v1, None), Some(WAIT - MS(500)));
        reports.news("uid");
        assert!(reports.quiet_recheck(&v1).is_err(), "its pod changed");
        assert_eq!(reconcile(&v1, None), Some(WAIT - MS(500)));
        reports.news_for_all();
        assert!(reports.quiet_recheck(&v1).is_err(), "every pod may have changed");

        // News while a reconcile runs, after its read: that reconcile's hold does not hide it.
        let began = reports.quiet_recheck(&v1).unwrap_err();
        reports.news("uid");
        assert_eq!(reports.wait_left(&v1, &silent(), None, began), Some(WAIT - MS(500)));
        assert!(reports.quiet_recheck(&v1).is_err(), "the news came after its read");
        reports.news("other-uid");
        assert_eq!(reconcile(&v1, None), Some(WAIT - MS(500)));
        reports.news("other-uid");
        assert!(reports.quiet_recheck(&v1).is_ok(), "another session's news is none of its own");

        assert_eq!(reconcile(&v1, Some(MS(300))), Some(WAIT - MS(500)));
        assert_eq!(reports.quiet_recheck(&v1), Ok(MS(300)), "the start timeout comes first");
        tokio::time::advance(MS(300)).await;
        assert!(reports.quiet_recheck(&v1).is_err(), "the start timeout is due: reconcile");

        assert_eq!(reconcile(&v1, Some(LONGEST_WAIT)), Some(WAIT - MS(800)));
        tokio::time::advance(WAIT).await;
        assert!(reports.quiet_recheck(&v1).is_err(), "the kubelet stayed silent: reconcile and write");
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_that_never_come_back_are_not_kept() {
        let reports = FirstReports::default();
        for uid in ["a", "b", "c"] {
            reports.injected(uid, Some("node"));
        }
        reports.forget("a");
        assert_eq!(reports.len(), 2);
        tokio::time::advance(LONGEST_WAIT).await;
        reports.injected("d", Some("node"));
        assert_eq!(reports.len(), 1, "an addition drops the records that are over");
    }
}
