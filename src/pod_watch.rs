//! Pod changes from now on. Pod events only wake the sessions that care about
//! a pod, and every session reads its own pod when it is reconciled, so the
//! pods that exist when the operator starts are of no use to it. kube's
//! watcher would list them all first (10,000 pods on a start or a failover,
//! and on every relist); this watch lists none. It takes the pods' current
//! resourceVersion from a list of one item and watches from there.
//!
//! When the API server no longer has that history (410 Expired), the changes
//! since are unknown: the watch takes the current version again and yields
//! `InitDone`, and the caller wakes every session that listens to pods.

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};

/// The pods' resourceVersion as of now: a watch from it misses no later change.
/// A consistent read (no resourceVersion), so that it is not older than what a
/// reconcile reads after it.
pub async fn current_version(api: &Api<Pod>) -> Result<String, kube::Error> {
    let list = api.list(&ListParams::default().limit(1)).await?;
    // Without one the watch could not start; the server always sends it.
    Ok(list.metadata.resource_version.unwrap_or_default())
}

enum State {
    /// The server forgot the version the watch was at: take the current one.
    Expired,
    /// Watch (again) from this version.
    From(String),
    Watching {
        version: String,
        events: BoxStream<'static, kube::Result<WatchEvent<Pod>>>,
    },
}

/// The changes of pods after `version`: `Apply` or `Delete` for each, and
/// `InitDone` when the watch had to start again from the current version.
/// Errors are yielded and the next poll retries (the caller backs off).
pub fn changes_since(
    api: Api<Pod>,
    version: String,
    timeout_seconds: u32,
) -> impl Stream<Item = Result<Event<Pod>, watcher::Error>> + Send {
    let params = WatchParams::default().timeout(timeout_seconds);
    futures::stream::unfold(State::From(version), move |state| {
        let (api, params) = (api.clone(), params.clone());
        async move { Some(next(&api, &params, state).await) }
    })
}

fn expired(status: &kube::core::Status) -> bool {
    status.code == 410
}

async fn next(api: &Api<Pod>, params: &WatchParams, mut state: State) -> (Result<Event<Pod>, watcher::Error>, State) {
    loop {
        state = match state {
            State::Expired => {
                return match current_version(api).await {
                    Ok(version) => (Ok(Event::InitDone), State::From(version)),
                    Err(error) => (Err(watcher::Error::InitialListFailed(error)), State::Expired),
                };
            }
            State::From(version) => match api.watch(params, &version).await {
                Ok(events) => State::Watching { version, events: events.boxed() },
                Err(kube::Error::Api(status)) if expired(&status) => {
                    return (Err(watcher::Error::WatchError(status)), State::Expired);
                }
                Err(error) => return (Err(watcher::Error::WatchStartFailed(error)), State::From(version)),
            },
            State::Watching { version, mut events } => match events.next().await {
                Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                    let version = pod.metadata.resource_version.clone().unwrap_or(version);
                    return (Ok(Event::Apply(pod)), State::Watching { version, events });
                }
                Some(Ok(WatchEvent::Deleted(pod))) => {
                    let version = pod.metadata.resource_version.clone().unwrap_or(version);
                    return (Ok(Event::Delete(pod)), State::Watching { version, events });
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                    State::Watching { version: bookmark.metadata.resource_version, events }
                }
                Some(Ok(WatchEvent::Error(status))) if expired(&status) => {
                    return (Err(watcher::Error::WatchError(status)), State::Expired);
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    return (Err(watcher::Error::WatchError(status)), State::From(version));
                }
                Some(Err(error)) => return (Err(watcher::Error::WatchFailed(error)), State::From(version)),
                // The server ends every watch after its timeout: go on from where it was.
                None => State::From(version),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::Client;
    use kube::client::Body;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn pods(handle_client: Client) -> Api<Pod> {
        Api::all(handle_client)
    }

    fn query(request: &Request<Body>) -> String {
        request.uri().query().unwrap_or_default().to_string()
    }

    fn pod_line(kind: &str, name: &str, version: &str) -> String {
        serde_json::json!({
            "type": kind,
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": { "name": name, "namespace": "ns", "resourceVersion": version },
            },
        })
        .to_string()
    }

    fn bookmark_line(version: &str) -> String {
        serde_json::json!({
            "type": "BOOKMARK",
            "object": { "kind": "Pod", "apiVersion": "v1", "metadata": { "resourceVersion": version } },
        })
        .to_string()
    }

    fn expired_line() -> String {
        serde_json::json!({
            "type": "ERROR",
            "object": { "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version" },
        })
        .to_string()
    }

    /// Answers the next request, which must be a watch from `version`, with these lines.
    async fn answer_watch(handle: &mut Handle, version: &str, lines: &[String]) {
        let (request, send) = handle.next_request().await.expect("a request");
        let query = query(&request);
        assert!(query.contains("watch=true"), "a watch: {query}");
        assert!(query.contains(&format!("resourceVersion={version}")), "from {version}: {query}");
        assert!(query.contains("allowWatchBookmarks=true"), "{query}");
        let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        send.send_response(Response::builder().status(200).body(Body::from(body.into_bytes())).unwrap());
    }

    fn name(event: Result<Event<Pod>, watcher::Error>) -> String {
        match event {
            Ok(Event::Apply(pod)) => format!("apply {}", pod.metadata.name.unwrap_or_default()),
            Ok(Event::Delete(pod)) => format!("delete {}", pod.metadata.name.unwrap_or_default()),
            Ok(Event::InitDone) => "resync".into(),
            Ok(_) => "other".into(),
            Err(error) => format!("error {error}"),
        }
    }

    #[tokio::test]
    async fn watches_from_the_given_version_and_goes_on_where_it_ended_without_listing() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut changes = Box::pin(changes_since(pods(Client::new(service, "default")), "100".into(), 290));
        let server = tokio::spawn(async move {
            answer_watch(&mut handle, "100", &[pod_line("ADDED", "a", "101"), bookmark_line("150")]).await;
            // The watch ended (its timeout): the next starts at the bookmark.
            answer_watch(&mut handle, "150", &[pod_line("MODIFIED", "a", "151"), pod_line("DELETED", "b", "152")])
                .await;
            handle
        });
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(name(changes.next().await.unwrap()));
        }
        assert_eq!(seen, ["apply a", "apply a", "delete b"]);
        let mut handle = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        // No list was ever asked for; the next request is the watch from the last version.
        let next = tokio::spawn(async move { changes.next().await.map(name) });
        let (request, _send) = handle.next_request().await.expect("a request");
        assert!(query(&request).contains("watch=true") && query(&request).contains("resourceVersion=152"));
        next.abort();
    }

    #[tokio::test]
    async fn an_expired_history_takes_the_current_version_and_says_so() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut changes = Box::pin(changes_since(pods(Client::new(service, "default")), "100".into(), 290));
        let server = tokio::spawn(async move {
            answer_watch(&mut handle, "100", &[expired_line()]).await;
            // The current version, from a list of one item.
            let (request, send) = handle.next_request().await.expect("a list");
            let query = query(&request);
            assert!(!query.contains("watch=true") && query.contains("limit=1"), "{query}");
            assert!(!query.contains("resourceVersion="), "a consistent read: {query}");
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "PodList",
                "metadata": { "resourceVersion": "500", "continue": "more" },
                "items": [{ "metadata": { "name": "x", "namespace": "ns", "resourceVersion": "7" } }],
            });
            send.send_response(
                Response::builder().status(200).body(Body::from(list.to_string().into_bytes())).unwrap(),
            );
            answer_watch(&mut handle, "500", &[pod_line("MODIFIED", "c", "501")]).await;
            handle
        });
        let first = changes.next().await.unwrap();
        assert!(matches!(&first, Err(watcher::Error::WatchError(status)) if status.code == 410), "{first:?}");
        assert_eq!(name(changes.next().await.unwrap()), "resync", "the changes in between are unknown");
        assert_eq!(name(changes.next().await.unwrap()), "apply c", "the listed pod is not yielded");
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }
}
