//! Whether the cluster serves ephemeral containers, in which API shape, and
//! adding one container to a pod in that shape.
//!
//! - 1.22 and later: the `pods/ephemeralcontainers` subresource takes a Pod;
//!   we send a JSON patch that appends one entry (a strategic merge patch, as
//!   `kubectl debug` sends, would put it first, or move others' entries when
//!   the pod changed in between). It needs no resourceVersion, so unrelated
//!   writers never conflict with it; a name taken in between, or a list that
//!   appeared in between, is refused and the caller decides again.
//! - 1.16 to 1.21 (alpha, behind the `EphemeralContainers` feature gate): it
//!   takes the `EphemeralContainers` kind, read with GET and written with PUT,
//!   and the PUT must list every earlier container unchanged; a concurrent
//!   writer makes it fail with 409, so it is read and written again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResourceList, ObjectMeta};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// How the server takes new ephemeral containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiShape {
    /// 1.22+: the subresource takes a Pod.
    PodSubresource,
    /// 1.16-1.21: the subresource takes kind `EphemeralContainers` by GET/PUT.
    LegacyEphemeralContainers,
}

impl ApiShape {
    pub fn describe(self) -> &'static str {
        match self {
            Self::PodSubresource => "it takes a Pod (Kubernetes 1.22 and later)",
            Self::LegacyEphemeralContainers => {
                "it takes kind EphemeralContainers by GET and PUT (Kubernetes 1.16 to 1.21)"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available(ApiShape),
    /// Not served; the message says what to change.
    Unavailable(String),
}

/// `(major, minor)` of a server version; minor may carry a vendor suffix ("22+").
pub fn parse_version(info: &Info) -> Option<(u32, u32)> {
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok();
    Some((digits(&info.major)?, digits(&info.minor)?))
}

/// Decides availability from `/version` and the `/api/v1` resource list.
pub fn assess(info: &Info, core_v1: &APIResourceList) -> Availability {
    let version = parse_version(info);
    let shown = format!("{}.{}", info.major, info.minor);
    if version.is_some_and(|v| v < (1, 16)) {
        return Availability::Unavailable(format!(
            "Kubernetes {shown} has no ephemeral containers; they need Kubernetes 1.16 or newer"
        ));
    }
    let served = core_v1.resources.iter().any(|r| r.name == "pods/ephemeralcontainers");
    if !served {
        let advice = match version {
            Some(v) if v < (1, 23) => {
                "enable the EphemeralContainers=true feature gate on kube-apiserver and on every kubelet (it is off by default before 1.23)"
            }
            Some(v) if v < (1, 25) => {
                "the EphemeralContainers feature gate is on by default in 1.23 and 1.24 but has been turned off: set EphemeralContainers=true on kube-apiserver and on every kubelet"
            }
            _ => {
                "ephemeral containers are always on from Kubernetes 1.25, so an API proxy or aggregation layer is hiding pods/ephemeralcontainers from discovery"
            }
        };
        return Availability::Unavailable(format!(
            "the API server (Kubernetes {shown}) does not serve pods/ephemeralcontainers: {advice}"
        ));
    }
    match version {
        Some(v) if v < (1, 22) => Availability::Available(ApiShape::LegacyEphemeralContainers),
        _ => Availability::Available(ApiShape::PodSubresource),
    }
}

/// What a refused write to `pods/ephemeralcontainers` says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Ephemeral containers are off; the message says what to change.
    Unavailable(String),
    /// The pod changed or went away since it was read: decide again from fresh state.
    StalePod,
    /// Refused for this container or this user: RBAC, admission or validation.
    Other,
}

/// Classifies a refused write the way `kubectl debug` does: a 404 that names no
/// object comes from a path the server does not serve, while one that names the
/// pod means the pod is gone. 1.22-1.24 answer 400 when only the gate is off.
pub fn classify_refusal(status: &kube::core::Status) -> Refusal {
    let names_an_object = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
    let gate_off = match status.code {
        404 => !names_an_object,
        400 => status.message.contains("feature EphemeralContainers disabled"),
        _ => false,
    };
    if gate_off {
        return Refusal::Unavailable(format!(
            "the API server refused pods/ephemeralcontainers ({}): ephemeral containers are turned off; set the EphemeralContainers=true feature gate on kube-apiserver and on every kubelet (it is off by default before 1.23 and always on from 1.25)",
            status.message
        ));
    }
    // The pod changed since it was read: a name was taken (by someone else, or by
    // this very container), or another pod of that name took its place.
    let name_taken = status.code == 422
        && (status.message.contains("may not be changed")
            || status.message.contains("Duplicate value")
            || status.message.contains("metadata.uid"));
    match status.code {
        404 | 409 => Refusal::StalePod,
        _ if name_taken => Refusal::StalePod,
        _ => Refusal::Other,
    }
}

/// Availability, asked of the server once and kept while it holds: a write
/// that finds ephemeral containers turned off invalidates it. A "no" is asked
/// again after `retry_unavailable`, so a gate turned on is noticed.
pub struct AvailabilityCache {
    client: Client,
    retry_unavailable: Duration,
    cached: Mutex<Option<(Instant, Availability)>>,
}

impl AvailabilityCache {
    pub fn new(client: Client, retry_unavailable: Duration) -> Arc<Self> {
        Arc::new(Self { client, retry_unavailable, cached: Mutex::new(None) })
    }

    pub async fn get(&self) -> Result<Availability, kube::Error> {
        let mut cached = self.cached.lock().await;
        match cached.as_ref() {
            Some((_, available @ Availability::Available(_))) => return Ok(available.clone()),
            Some((at, unavailable)) if at.elapsed() < self.retry_unavailable => return Ok(unavailable.clone()),
            _ => {}
        }
        let info = self.client.apiserver_version().await?;
        let core_v1 = self.client.list_core_api_resources("v1").await?;
        let availability = assess(&info, &core_v1);
        tracing::info!(?availability, version = %info.git_version, "checked ephemeral container support");
        *cached = Some((Instant::now(), availability.clone()));
        Ok(availability)
    }

    /// Records what a refused write said: ephemeral containers are off after all.
    pub async fn refused(&self, advice: String) {
        *self.cached.lock().await = Some((Instant::now(), Availability::Unavailable(advice)));
    }
}

/// The pre-1.22 body of `pods/ephemeralcontainers`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LegacyEphemeralContainers {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub ephemeral_containers: Vec<EphemeralContainer>,
}

fn subresource_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}/ephemeralcontainers")
}

/// How often a legacy PUT is tried again when another writer came first.
const LEGACY_CONFLICT_RETRIES: u32 = 10;

/// Adds `containers` to `pod` in one write and returns the pod as it is
/// afterwards (as far as its ephemeral containers go). A container of that
/// name already in the pod is left as it is: the caller then sees whose it is
/// and decides again.
pub async fn add_ephemeral_containers(
    client: &Client,
    shape: ApiShape,
    pod: &Pod,
    containers: &[EphemeralContainer],
) -> Result<Pod, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match shape {
        ApiShape::PodSubresource => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            pods.patch_ephemeral_containers(
                name,
                &PatchParams::default(),
                &Patch::Strategic(merge_patch(pod, containers)),
            )
            .await
        }
        ApiShape::LegacyEphemeralContainers => {
            let path = subresource_path(namespace, name);
            let mut tries = 0;
            loop {
                // GET for the earlier containers exactly as the server stores them,
                // PUT at that version: every one of them goes back unchanged.
                let get = http::Request::get(&path).body(Vec::new()).map_err(kube::Error::HttpError)?;
                let mut current: LegacyEphemeralContainers = client.request(get).await?;
                let there = |name: &str| current.ephemeral_containers.iter().any(|c| c.name == name);
                let new: Vec<EphemeralContainer> = containers.iter().filter(|c| !there(&c.name)).cloned().collect();
                if new.is_empty() {
                    return Ok(with_ephemeral_containers(pod, current.ephemeral_containers));
                }
                current.ephemeral_containers.extend(new);
                let body = serde_json::to_vec(&LegacyEphemeralContainers {
                    api_version: "v1".into(),
                    kind: "EphemeralContainers".into(),
                    ..current
                })
                .map_err(kube::Error::SerdeError)?;
                let put = http::Request::put(&path)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .map_err(kube::Error::HttpError)?;
                match client.request::<LegacyEphemeralContainers>(put).await {
                    Ok(written) => return Ok(with_ephemeral_containers(pod, written.ephemeral_containers)),
                    Err(kube::Error::Api(status)) if status.code == 409 && tries < LEGACY_CONFLICT_RETRIES => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(10 * u64::from(tries))).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
    }
}

/// The strategic merge patch that adds `containers` to the pod's ephemeral
/// containers, as `kubectl debug` sends one: merged by name into whatever list
/// the pod has by then, so no other writer's container is lost and no other
/// write conflicts with it. Only the pod that was read takes it: one deleted
/// and created again under the same name has another UID, which a patch may
/// not change, and the patch is refused.
pub fn merge_patch(pod: &Pod, containers: &[EphemeralContainer]) -> serde_json::Value {
    let mut patch = serde_json::json!({ "spec": { "ephemeralContainers": containers } });
    if let Some(uid) = &pod.metadata.uid {
        patch["metadata"] = serde_json::json!({ "uid": uid });
    }
    patch
}

fn with_ephemeral_containers(pod: &Pod, containers: Vec<EphemeralContainer>) -> Pod {
    let mut pod = pod.clone();
    pod.spec.get_or_insert_default().ephemeral_containers = Some(containers);
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: format!("v{major}.{minor}.0"),
            ..Default::default()
        }
    }

    fn core_v1(with_subresource: bool) -> APIResourceList {
        let resource = |name: &str| APIResource { name: name.into(), ..Default::default() };
        let mut resources = vec![resource("pods"), resource("pods/exec"), resource("pods/status")];
        if with_subresource {
            resources.push(resource("pods/ephemeralcontainers"));
        }
        APIResourceList { group_version: "v1".into(), resources }
    }

    #[test]
    fn availability_follows_version_and_discovery() {
        use ApiShape::*;
        let cases = [
            ("1", "15", true, None, Some("1.16 or newer")),
            ("1", "16", true, Some(LegacyEphemeralContainers), None),
            ("1", "21+", true, Some(LegacyEphemeralContainers), None),
            ("1", "22", true, Some(PodSubresource), None),
            ("1", "34", true, Some(PodSubresource), None),
            (
                "1",
                "20",
                false,
                None,
                Some("EphemeralContainers=true feature gate on kube-apiserver and on every kubelet"),
            ),
            ("1", "22", false, None, Some("off by default before 1.23")),
            ("1", "24", false, None, Some("on by default in 1.23 and 1.24")),
            ("1", "30", false, None, Some("always on from Kubernetes 1.25")),
        ];
        for (major, minor, served, shape, message) in cases {
            let got = assess(&info(major, minor), &core_v1(served));
            match (shape, message, &got) {
                (Some(shape), None, Availability::Available(s)) => assert_eq!(*s, shape, "{major}.{minor}"),
                (None, Some(text), Availability::Unavailable(m)) => assert!(m.contains(text), "{major}.{minor}: {m}"),
                _ => panic!("{major}.{minor} served={served}: got {got:?}"),
            }
        }
    }

    mod legacy {
        use super::*;
        use http::{Method, Request, Response};
        use kube::client::Body;

        const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy/");

        fn fixture(name: &str) -> Vec<u8> {
            std::fs::read(format!("{FIXTURES}{name}")).unwrap()
        }

        fn json(name: &str) -> serde_json::Value {
            serde_json::from_slice(&fixture(name)).unwrap()
        }

        /// The pod the fixtures were recorded from, as the caller read it before.
        fn recorded_pod() -> Pod {
            let get = json("get-ephemeralcontainers.json");
            let mut pod = Pod::default();
            pod.metadata.name = get["metadata"]["name"].as_str().map(String::from);
            pod.metadata.namespace = get["metadata"]["namespace"].as_str().map(String::from);
            pod.metadata.resource_version = Some("1".into());
            pod
        }

        fn path() -> String {
            let pod = recorded_pod();
            subresource_path(pod.metadata.namespace.as_deref().unwrap(), pod.metadata.name.as_deref().unwrap())
        }

        /// The container the PUT fixture adds: its last one.
        fn new_container() -> EphemeralContainer {
            let put = json("put-ephemeralcontainers.json");
            let last = put["ephemeralContainers"].as_array().unwrap().last().unwrap().clone();
            serde_json::from_value(last).unwrap()
        }

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        async fn expect(handle: &mut Handle, method: Method, path: &str, status: u16, body: Vec<u8>) -> Vec<u8> {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), method);
            assert_eq!(request.uri().path(), path);
            let sent = request.into_body().collect_bytes().await.unwrap().to_vec();
            send.send_response(Response::builder().status(status).body(Body::from(body)).unwrap());
            sent
        }

        async fn add(client: Client) -> Result<Pod, kube::Error> {
            add_ephemeral_containers(&client, ApiShape::LegacyEphemeralContainers, &recorded_pod(), &[new_container()])
                .await
        }

        #[tokio::test]
        async fn put_keeps_earlier_containers_and_appends_one() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let server = tokio::spawn(async move {
                expect(&mut handle, Method::GET, &path(), 200, fixture("get-ephemeralcontainers.json")).await;
                expect(&mut handle, Method::PUT, &path(), 200, fixture("put-ephemeralcontainers.json")).await
            });
            let pod = add(Client::new(service, "default")).await.unwrap();
            let put: serde_json::Value = serde_json::from_slice(&server.await.unwrap()).unwrap();
            let recorded = json("get-ephemeralcontainers.json");
            assert_eq!(put["kind"], "EphemeralContainers");
            assert_eq!(put["apiVersion"], "v1");
            assert_eq!(
                put["metadata"]["resourceVersion"], recorded["metadata"]["resourceVersion"],
                "PUT at the version it read"
            );
            let earlier = recorded["ephemeralContainers"].as_array().unwrap();
            let sent = put["ephemeralContainers"].as_array().unwrap();
            assert_eq!(sent.len(), earlier.len() + 1);
            assert_eq!(&sent[..earlier.len()], &earlier[..], "earlier containers go back unchanged");
            assert_eq!(sent[earlier.len()]["name"], new_container().name);
            let names: Vec<_> = pod.spec.unwrap().ephemeral_containers.unwrap().into_iter().map(|c| c.name).collect();
            assert_eq!(names.last(), Some(&new_container().name), "the pod as the server answered, no extra GET");
        }

        #[tokio::test]
        async fn a_concurrent_writer_is_met_with_a_fresh_read() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let server = tokio::spawn(async move {
                expect(&mut handle, Method::GET, &path(), 200, fixture("get-ephemeralcontainers.json")).await;
                expect(&mut handle, Method::PUT, &path(), 409, fixture("conflict.json")).await;
                expect(&mut handle, Method::GET, &path(), 200, fixture("get-ephemeralcontainers.json")).await;
                expect(&mut handle, Method::PUT, &path(), 200, fixture("put-ephemeralcontainers.json")).await
            });
            add(Client::new(service, "default")).await.unwrap();
            let put: serde_json::Value = serde_json::from_slice(&server.await.unwrap()).unwrap();
            assert_eq!(put["ephemeralContainers"].as_array().unwrap().last().unwrap()["name"], new_container().name);
        }

        #[tokio::test]
        async fn a_container_already_there_is_not_written_again() {
            // e.g. a second operator, or this one before a crash, added it already.
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            tokio::spawn(async move {
                expect(&mut handle, Method::GET, &path(), 200, fixture("put-ephemeralcontainers.json")).await;
                assert!(handle.next_request().await.is_none(), "no PUT may follow");
            });
            let pod = add(Client::new(service, "default")).await.unwrap();
            let names: Vec<_> = pod.spec.unwrap().ephemeral_containers.unwrap().into_iter().map(|c| c.name).collect();
            assert_eq!(names.iter().filter(|n| **n == new_container().name).count(), 1);
        }

        #[tokio::test]
        async fn pod_shape_merges_one_container_without_a_version() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let server = tokio::spawn(async move {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), Method::PATCH);
                assert_eq!(request.uri().path(), path());
                assert_eq!(request.headers()["content-type"], "application/strategic-merge-patch+json");
                let body = request.into_body().collect_bytes().await.unwrap();
                send.send_response(
                    Response::builder().body(Body::from(serde_json::to_vec(&recorded_pod()).unwrap())).unwrap(),
                );
                assert!(handle.next_request().await.is_none(), "one write, nothing before or after it");
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            });
            let client = Client::new(service, "default");
            let mut pod = recorded_pod();
            pod.metadata.uid = Some("uid-1".into());
            pod.spec.get_or_insert_default().ephemeral_containers =
                Some(vec![EphemeralContainer { name: "old".into(), ..Default::default() }]);
            add_ephemeral_containers(&client, ApiShape::PodSubresource, &pod, &[new_container()]).await.unwrap();
            drop(client);
            let patch = server.await.unwrap();
            assert_eq!(
                patch,
                serde_json::json!({
                    "metadata": { "uid": "uid-1" },
                    "spec": { "ephemeralContainers": [new_container()] },
                }),
                "only the new container (the others are kept by the merge), only the pod that was read, no resourceVersion"
            );
        }
    }

    #[test]
    fn refusals_are_told_apart_like_kubectl_does() {
        let status = |code: u16, message: &str, named: Option<&str>| -> kube::core::Status {
            let details = named.map(|name| serde_json::json!({ "name": name, "kind": "pods" }));
            serde_json::from_value(serde_json::json!({ "code": code, "message": message, "details": details })).unwrap()
        };
        let unavailable = |r: &Refusal| matches!(r, Refusal::Unavailable(m) if m.contains("EphemeralContainers=true"));
        let cases = [
            // (code, message, details.name, expected)
            (404, "the server could not find the requested resource", None, "unavailable"),
            (404, "pods \"web\" not found", Some("web"), "stale"),
            (409, "the object has been modified", Some("web"), "stale"),
            (400, "feature EphemeralContainers disabled", None, "unavailable"),
            (400, "some other bad request", None, "other"),
            (403, "forbidden", Some("web"), "other"),
            (422, "Pod \"web\" is invalid", Some("web"), "other"),
            (422, "existing ephemeral containers \"dbg\" may not be changed", Some("web"), "stale"),
            (
                422,
                "Pod \"web\" is invalid: spec.ephemeralContainers[1].name: Duplicate value: \"dbg\"",
                Some("web"),
                "stale",
            ),
            (
                422,
                "Pod \"web\" is invalid: metadata.uid: Invalid value: \"u-1\": field is immutable",
                Some("web"),
                "stale",
            ),
        ];
        for (code, message, named, expected) in cases {
            let refusal = classify_refusal(&status(code, message, named));
            let got = match &refusal {
                r if unavailable(r) => "unavailable",
                Refusal::StalePod => "stale",
                Refusal::Other => "other",
                Refusal::Unavailable(_) => "unavailable without advice",
            };
            assert_eq!(got, expected, "{code} {message:?} {named:?}: {refusal:?}");
        }
    }

    #[test]
    fn vendor_suffixes_are_ignored() {
        assert_eq!(parse_version(&info("1", "21+")), Some((1, 21)));
        assert_eq!(parse_version(&info("1", "")), None);
    }
}
