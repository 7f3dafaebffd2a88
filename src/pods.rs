//! Reading target pods: at most one GET per change of a pod, whatever the
//! number of sessions that look at it. The pod metadata watch says which
//! resourceVersion each pod of interest is at; a pod read at that version is
//! shared by every reconcile until the pod changes again. Only pods that
//! unfinished sessions target are kept, so memory does not grow with the
//! cluster's pods. A pod nobody watches (say, one that only finished sessions
//! target, when they are checked after a restart) is read once for all who
//! ask while a read is under way, and not kept after that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::metrics::Metrics;

type Key = (String, String);

#[derive(Default)]
struct Slot {
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    /// Reads finished, so a waiter can tell whether one ended while it waited.
    reads: AtomicU64,
    /// Reconciles waiting for this pod's lock.
    waiting: AtomicUsize,
}

#[derive(Default)]
pub struct PodReader {
    /// One lock per pod, so concurrent reconciles of one pod wait for one read.
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    /// The newest resourceVersion the watch reported for each pod of interest.
    seen: Mutex<HashMap<Key, String>>,
}

/// Nothing reads who wrote which field of a pod, and on a pod with many
/// containers that record is as large as the rest of the pod.
fn without_managed_fields(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

impl PodReader {
    /// The watch reported `namespace/name` at `resource_version`, and sessions care about it.
    pub fn saw(&self, namespace: &str, name: &str, resource_version: Option<&str>) {
        let mut seen = self.seen.lock().expect("pod reader lock");
        match resource_version {
            Some(rv) => seen.insert(key(namespace, name), rv.to_string()),
            None => seen.remove(&key(namespace, name)),
        };
    }

    /// No unfinished session cares about the pod any more.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = key(namespace, name);
        self.seen.lock().expect("pod reader lock").remove(&key);
        self.slots.lock().expect("pod reader lock").remove(&key);
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        self.slots.lock().expect("pod reader lock").entry(key.clone()).or_default().clone()
    }

    fn seen(&self, key: &Key) -> Option<String> {
        self.seen.lock().expect("pod reader lock").get(key).cloned()
    }

    /// The pod as the watch last reported it: from memory when it was read at
    /// that version already, else read (once, for all who ask at the same time).
    /// `fresh` always asks the API server (after a write met a pod that had changed).
    pub async fn read(
        &self,
        api: &Api<Pod>,
        namespace: &str,
        name: &str,
        metrics: &Metrics,
        fresh: bool,
    ) -> Result<Option<Pod>, kube::Error> {
        let key = key(namespace, name);
        let slot = self.slot(&key);
        let reads_before = slot.reads.load(Ordering::Acquire);
        slot.waiting.fetch_add(1, Ordering::AcqRel);
        let mut cached = slot.pod.lock().await;
        slot.waiting.fetch_sub(1, Ordering::AcqRel);
        let seen = self.seen(&key);
        let reusable = match (&*cached, &seen) {
            _ if fresh => false,
            (Some(pod), Some(seen)) => pod.metadata.resource_version.as_ref() == Some(seen),
            // No version to compare with: only a read that ended while we waited is new enough.
            (Some(_), None) => slot.reads.load(Ordering::Acquire) > reads_before,
            (None, _) => false,
        };
        let pod = if reusable {
            cached.as_deref().cloned()
        } else {
            metrics.request("get", "pods");
            let pod = api.get_opt(name).await?.map(without_managed_fields);
            *cached = pod.clone().map(Arc::new);
            slot.reads.fetch_add(1, Ordering::AcqRel);
            pod
        };
        // Without a version from the watch the copy cannot be reused later: keep
        // it only for those already waiting.
        if seen.is_none() && slot.waiting.load(Ordering::Acquire) == 0 {
            *cached = None;
            drop(cached);
            let mut slots = self.slots.lock().expect("pod reader lock");
            if slot.waiting.load(Ordering::Acquire) == 0 && self.seen(&key).is_none() {
                slots.remove(&key);
            }
        }
        Ok(pod)
    }

    /// A pod as a write of ours returned it: newer than what the watch said so far.
    pub async fn wrote(&self, pod: &Pod) {
        let (Some(namespace), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else {
            return;
        };
        let slot = self.slot(&key(namespace, name));
        *slot.pod.lock().await = Some(Arc::new(without_managed_fields(pod.clone())));
    }

    /// Pods kept in memory (for tests and /metrics).
    pub fn len(&self) -> usize {
        self.slots.lock().expect("pod reader lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn pod(rv: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.resource_version = Some(rv.into());
        pod
    }

    #[tokio::test]
    async fn one_read_per_version_the_watch_reports() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Pod> = Api::namespaced(kube::Client::new(service, "ns"), "ns");
        let served = tokio::spawn(async move {
            let mut count = 0;
            for rv in ["1", "2", "3"] {
                let Some((_, send)) = handle.next_request().await else { break };
                count += 1;
                send.send_response(
                    Response::builder().body(Body::from(serde_json::to_vec(&pod(rv)).unwrap())).unwrap(),
                );
            }
            count
        });
        let reader = PodReader::default();
        let metrics = Metrics::new();
        // The resourceVersion of the pod a read returns.
        let version = async |fresh| {
            reader.read(&api, "ns", "web", &metrics, fresh).await.unwrap().unwrap().metadata.resource_version
        };
        reader.saw("ns", "web", Some("1"));
        for _ in 0..5 {
            assert_eq!(version(false).await.as_deref(), Some("1"));
        }
        reader.saw("ns", "web", Some("2"));
        assert_eq!(version(false).await.as_deref(), Some("2"));
        assert_eq!(version(false).await.as_deref(), Some("2"));
        // A fresh read always asks.
        assert_eq!(version(true).await.as_deref(), Some("3"));
        reader.forget("ns", "web");
        assert!(reader.is_empty());
        drop(api);
        drop(reader);
        assert_eq!(served.await.unwrap(), 3, "five reads at version 1 cost one request");
    }

    #[tokio::test]
    async fn a_pod_nobody_watches_is_read_once_for_those_waiting_and_not_kept() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Pod> = Api::namespaced(kube::Client::new(service, "ns"), "ns");
        let reader = Arc::new(PodReader::default());
        let metrics = Arc::new(Metrics::new());
        let read = |reader: Arc<PodReader>, api: Api<Pod>, metrics: Arc<Metrics>| {
            tokio::spawn(async move { reader.read(&api, "ns", "web", &metrics, false).await.unwrap() })
        };
        let first = read(reader.clone(), api.clone(), metrics.clone());
        let (_, send) = handle.next_request().await.expect("the first read asks");
        // Two more ask while the first read is under way.
        let waiting =
            [read(reader.clone(), api.clone(), metrics.clone()), read(reader.clone(), api.clone(), metrics.clone())];
        while reader.slot(&key("ns", "web")).waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&pod("1")).unwrap())).unwrap());
        assert!(first.await.unwrap().is_some());
        for waiter in waiting {
            assert_eq!(waiter.await.unwrap().unwrap().metadata.resource_version.as_deref(), Some("1"));
        }
        assert!(reader.is_empty(), "nothing is kept of a pod whose version nobody reports");
        // A later read cannot know whether the pod changed since: it asks again.
        let later = read(reader.clone(), api.clone(), metrics.clone());
        let (_, send) = handle.next_request().await.expect("a later read asks again");
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&pod("2")).unwrap())).unwrap());
        assert_eq!(later.await.unwrap().unwrap().metadata.resource_version.as_deref(), Some("2"));
    }
}
