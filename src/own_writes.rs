//! The status writes this operator made itself, as its watch of sessions
//! catches up with them.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::crd::{DebugSession, DebugSessionStatus};

/// What this operator last wrote to each session's status, so that the echo
/// of its own write wakes nothing, so that only a status it wrote (or
/// checked) itself may spare a finished session its reads, and so that a
/// reconcile woken (by a pod event) before the echo arrived starts from what
/// it wrote, not from the older copy in the cache.
#[derive(Default)]
pub(crate) struct OwnWrites {
    by_uid: Mutex<HashMap<String, OwnWrite>>,
}

#[derive(Clone)]
struct OwnWrite {
    /// The resourceVersion the write produced.
    written: Option<String>,
    status_hash: u64,
    /// Until the echo arrives: what the cache may still hold, and what was written.
    pending: Option<Pending>,
}

/// Writes whose echo has not arrived yet.
#[derive(Clone)]
struct Pending {
    /// The versions these writes replaced, oldest first: the one the first was
    /// based on, then each write of ours that a later one was based on. The
    /// watch may lag more than one write behind (seen with 200 sessions at once).
    superseded: Vec<Option<String>>,
    /// What the last write put in the status.
    status: Arc<DebugSessionStatus>,
}

/// More writes than this in a row without an echo are not expected; the oldest are dropped.
const SUPERSEDED_KEPT: usize = 8;

fn status_hash(status: Option<&DebugSessionStatus>) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(&status).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

impl OwnWrites {
    fn entry(&self, session: &DebugSession) -> Option<OwnWrite> {
        let uid = session.metadata.uid.as_ref()?;
        self.by_uid.lock().expect("own writes lock").get(uid).cloned()
    }

    /// The watch event that our own status write caused: nothing new in it.
    /// From then on the cache has the write, and its copy is dropped.
    pub(crate) fn is_echo(&self, session: &DebugSession) -> bool {
        let (Some(uid), Some(rv)) = (session.metadata.uid.as_ref(), session.metadata.resource_version.as_ref()) else {
            return false;
        };
        let mut by_uid = self.by_uid.lock().expect("own writes lock");
        let Some(own) = by_uid.get_mut(uid) else { return false };
        if own.written.as_ref() == Some(rv) {
            own.pending = None;
            return true;
        }
        // One of our earlier writes, while a later one waits for its echo: the
        // cache moved on, but not past anything this operator does not know.
        let Some(pending) = own.pending.as_mut() else { return false };
        // The first version was someone else's: only later ones echo our writes.
        let ours = |at: &usize| *at > 0;
        let Some(at) = pending.superseded.iter().position(|v| v.as_ref() == Some(rv)).filter(ours) else {
            return false;
        };
        // The cache holds `rv` now, which our later writes replaced; it never goes back before it.
        pending.superseded.drain(..at);
        true
    }

    pub(crate) fn status_is_own(&self, session: &DebugSession) -> bool {
        self.entry(session).is_some_and(|own| own.status_hash == status_hash(session.status.as_ref()))
    }

    /// `session` as the API server has it after our last write, when the cache
    /// still holds a version that our writes since replaced. Any other version
    /// (a newer spec, a status someone else wrote) is taken as it is.
    pub(crate) fn caught_up(&self, session: &DebugSession) -> Option<DebugSession> {
        let own = self.entry(session)?;
        let pending = own.pending?;
        let at = pending.superseded.iter().position(|v| *v == session.metadata.resource_version)?;
        if own.written == session.metadata.resource_version {
            return None;
        }
        tracing::debug!(session = %session.name_any(), writes_behind = pending.superseded.len() - at, "the session cache lags behind our own status writes");
        let mut current = session.clone();
        current.metadata.resource_version = own.written;
        current.status = Some(pending.status.as_ref().clone());
        Some(current)
    }

    /// Records a write (or a check that found nothing to write). `cached_version` tells which
    /// version the watch cache holds: when the echo came before the write's answer, the cache
    /// is current already and no copy waits for an echo that has passed.
    pub(crate) fn record(
        &self,
        session: &DebugSession,
        resource_version: Option<String>,
        status: &DebugSessionStatus,
        cached_version: impl FnOnce() -> Option<String>,
    ) {
        if let Some(uid) = &session.metadata.uid {
            // Under the lock: an echo applied to the cache after this check is seen by `is_echo`.
            let mut by_uid = self.by_uid.lock().expect("own writes lock");
            let pending = if resource_version != session.metadata.resource_version {
                (cached_version() != resource_version).then(|| {
                    let based_on = &session.metadata.resource_version;
                    // Based on our own last write: the versions it replaced are still replaced.
                    let mut superseded = by_uid
                        .get(uid)
                        .filter(|own| own.written == *based_on)
                        .and_then(|own| own.pending.as_ref())
                        .map(|pending| pending.superseded.clone())
                        .unwrap_or_default();
                    superseded.push(based_on.clone());
                    if superseded.len() > SUPERSEDED_KEPT {
                        superseded.remove(0);
                    }
                    Pending { superseded, status: Arc::new(status.clone()) }
                })
            } else {
                // Nothing written: a copy still waiting for its echo stays.
                by_uid.get(uid).filter(|own| own.written == resource_version).and_then(|own| own.pending.clone())
            };
            let own = OwnWrite { written: resource_version, status_hash: status_hash(Some(status)), pending };
            by_uid.insert(uid.clone(), own);
        }
    }

    pub(crate) fn forget(&self, uid: &str) {
        self.by_uid.lock().expect("own writes lock").remove(uid);
    }

    pub(crate) fn len(&self) -> usize {
        self.by_uid.lock().expect("own writes lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;

    /// Session `s` (UID u1) as read at resourceVersion 7.
    fn session_at_version_7() -> DebugSession {
        let mut session = DebugSession::new(
            "s",
            serde_json::from_value(serde_json::json!({ "target": { "pod": "web" }, "image": "busybox" })).unwrap(),
        );
        session.metadata.uid = Some("u1".into());
        session.metadata.resource_version = Some("7".into());
        session
    }

    #[test]
    fn own_writes_tell_echoes_and_believed_status() {
        let own = OwnWrites::default();
        let mut session = session_at_version_7();
        let status = DebugSessionStatus { phase: Some(Phase::Running), ..Default::default() };
        assert!(!own.is_echo(&session) && !own.status_is_own(&session), "nothing known after a start");
        own.record(&session, Some("8".into()), &status, || Some("7".into()));
        session.metadata.resource_version = Some("8".into());
        session.status = Some(status.clone());
        assert!(own.is_echo(&session));
        assert!(own.status_is_own(&session));
        session.metadata.resource_version = Some("9".into());
        assert!(!own.is_echo(&session), "a later change (e.g. spec.attempt) is no echo");
        assert!(own.status_is_own(&session), "but the status is still ours");
        session.status.as_mut().unwrap().pod_name = Some("elsewhere".into());
        assert!(!own.status_is_own(&session), "a status someone else wrote is checked first");
    }

    #[test]
    fn an_echo_before_the_writes_answer_leaves_no_copy_behind() {
        let own = OwnWrites::default();
        let mut cached = session_at_version_7();
        let injected = DebugSessionStatus { phase: Some(Phase::Injected), ..Default::default() };
        // The watch delivered version 8 before the write that made it returned: not yet known as ours.
        let mut echo = cached.clone();
        echo.metadata.resource_version = Some("8".into());
        echo.status = Some(injected.clone());
        assert!(!own.is_echo(&echo));
        own.record(&cached, Some("8".into()), &injected, || Some("8".into()));
        assert!(own.by_uid.lock().unwrap()["u1"].pending.is_none(), "no copy waits for an echo that has passed");
        assert!(own.status_is_own(&echo), "the status is still known as ours");
        cached.metadata.resource_version = Some("8".into());
        assert!(own.caught_up(&cached).is_none());
    }

    #[test]
    fn a_reconcile_before_the_echo_starts_from_what_was_written() {
        let own = OwnWrites::default();
        let mut cached = session_at_version_7();
        cached.status = Some(DebugSessionStatus { phase: Some(Phase::Pending), ..Default::default() });
        let injected = DebugSessionStatus { phase: Some(Phase::Injected), ..Default::default() };
        assert!(own.caught_up(&cached).is_none(), "nothing written yet");
        own.record(&cached, Some("8".into()), &injected, || Some("7".into()));
        let current = own.caught_up(&cached).expect("the cache still has version 7");
        assert_eq!(current.metadata.resource_version.as_deref(), Some("8"));
        assert_eq!(current.status, Some(injected.clone()));
        // A reconcile that finds nothing new to write keeps the copy until the echo.
        own.record(&current, Some("8".into()), &injected, || Some("7".into()));
        assert!(own.caught_up(&cached).is_some());
        let mut newer = cached.clone();
        newer.metadata.resource_version = Some("9".into());
        assert!(own.caught_up(&newer).is_none(), "a newer version (another writer, a spec change) is taken as it is");
        let mut echo = current.clone();
        assert!(own.is_echo(&echo));
        assert!(own.caught_up(&cached).is_none(), "after the echo the cache is current");
        echo.metadata.resource_version = Some("10".into());
        assert!(!own.is_echo(&echo));
    }

    #[test]
    fn a_cache_two_writes_behind_starts_from_the_last_write() {
        let own = OwnWrites::default();
        let cached = session_at_version_7();
        let claim = DebugSessionStatus { phase: Some(Phase::Pending), ..Default::default() };
        let injected = DebugSessionStatus { phase: Some(Phase::Injected), ..Default::default() };
        own.record(&cached, Some("8".into()), &claim, || Some("7".into()));
        let after_claim = own.caught_up(&cached).expect("the cache still has version 7");
        own.record(&after_claim, Some("9".into()), &injected, || Some("7".into()));
        // Still at 7 (no status): deciding from it would write Injected again.
        let current = own.caught_up(&cached).expect("7 was replaced by the claim and then by Injected");
        assert_eq!(current.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(current.status, Some(injected.clone()));
        // The claim's echo: ours, nothing new, and the cache is still one write behind.
        let mut claim_echo = cached.clone();
        claim_echo.metadata.resource_version = Some("8".into());
        claim_echo.status = Some(claim);
        assert!(own.is_echo(&claim_echo));
        assert_eq!(own.caught_up(&claim_echo).and_then(|s| s.status), Some(injected.clone()));
        assert!(own.caught_up(&cached).is_none(), "the watch does not go back to 7");
        let mut injected_echo = claim_echo.clone();
        injected_echo.metadata.resource_version = Some("9".into());
        injected_echo.status = Some(injected.clone());
        assert!(own.is_echo(&injected_echo));
        assert!(own.caught_up(&claim_echo).is_none() && own.caught_up(&injected_echo).is_none());
    }

    #[test]
    fn a_write_based_on_someone_elses_version_starts_a_new_chain() {
        let own = OwnWrites::default();
        let cached = session_at_version_7();
        let injected = DebugSessionStatus { phase: Some(Phase::Injected), ..Default::default() };
        let running = DebugSessionStatus { phase: Some(Phase::Running), ..Default::default() };
        own.record(&cached, Some("8".into()), &injected, || Some("7".into()));
        // Someone else wrote 9 (the cache has it); ours then goes 9 -> 10.
        let mut theirs = cached.clone();
        theirs.metadata.resource_version = Some("9".into());
        own.record(&theirs, Some("10".into()), &running, || Some("9".into()));
        assert!(own.caught_up(&cached).is_none(), "7 was not what our write to 10 replaced");
        assert_eq!(own.caught_up(&theirs).and_then(|s| s.status), Some(running));
        let mut late_echo = cached.clone();
        late_echo.metadata.resource_version = Some("8".into());
        assert!(!own.is_echo(&late_echo), "8 is not in the chain that leads to 10");
    }
}
