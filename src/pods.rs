//! Reading target pods: at most one GET per change of a pod, whatever the
//! number of sessions that look at it. The pod metadata watch says which
//! resourceVersion each pod of interest is at; a pod read at that version is
//! shared by every reconcile until the pod changes again. Only pods that
//! unfinished sessions target are kept, so memory does not grow with the
//! cluster's pods.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::metrics::Metrics;

type Key = (String, String);

#[derive(Default)]
struct Entry {
    pod: Option<Arc<Pod>>,
}

#[derive(Default)]
pub struct PodReader {
    /// One lock per pod, so concurrent reconciles of one pod wait for one read.
    entries: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Entry>>>>,
    /// The newest resourceVersion the watch reported for each pod of interest.
    seen: Mutex<HashMap<Key, String>>,
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
        self.entries.lock().expect("pod reader lock").remove(&key);
    }

    fn entry(&self, key: &Key) -> Arc<tokio::sync::Mutex<Entry>> {
        self.entries.lock().expect("pod reader lock").entry(key.clone()).or_default().clone()
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
        let entry = self.entry(&key);
        let mut entry = entry.lock().await;
        let seen = self.seen.lock().expect("pod reader lock").get(&key).cloned();
        if !fresh
            && let (Some(pod), Some(seen)) = (&entry.pod, &seen)
            && pod.metadata.resource_version.as_ref() == Some(seen)
        {
            return Ok(Some(pod.as_ref().clone()));
        }
        metrics.request("get", "pods");
        let pod = api.get_opt(name).await?;
        entry.pod = pod.clone().map(Arc::new);
        Ok(pod)
    }

    /// A pod as a write of ours returned it: newer than what the watch said so far.
    pub async fn wrote(&self, pod: &Pod) {
        let (Some(namespace), Some(name)) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) else {
            return;
        };
        let entry = self.entry(&key(namespace, name));
        entry.lock().await.pod = Some(Arc::new(pod.clone()));
    }

    /// Pods kept in memory (for tests and /metrics).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("pod reader lock").len()
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
}
