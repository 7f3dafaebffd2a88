//! Whether the cluster serves ephemeral containers, in which API shape, and
//! adding one container to a pod in that shape.
//!
//! - 1.22 and later: the `pods/ephemeralcontainers` subresource takes a Pod;
//!   we send a strategic merge patch that adds one entry.
//! - 1.16 to 1.21 (alpha, behind the `EphemeralContainers` feature gate): it
//!   takes the `EphemeralContainers` kind, read with GET and written with PUT,
//!   and the PUT must list every earlier container unchanged.

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
            Some(v) if v < (1, 23) => "enable the EphemeralContainers=true feature gate on kube-apiserver and on every kubelet (it is off by default before 1.23)",
            Some(v) if v < (1, 25) => "the EphemeralContainers feature gate is on by default in 1.23 and 1.24 but has been turned off: set EphemeralContainers=true on kube-apiserver and on every kubelet",
            _ => "ephemeral containers are always on from Kubernetes 1.25, so an API proxy or aggregation layer is hiding pods/ephemeralcontainers from discovery",
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

/// Availability, asked of the server at most once per `ttl`, so reconciles
/// never pay for discovery.
pub struct AvailabilityCache {
    client: Client,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Availability)>>,
}

impl AvailabilityCache {
    pub fn new(client: Client, ttl: Duration) -> Arc<Self> {
        Arc::new(Self { client, ttl, cached: Mutex::new(None) })
    }

    pub async fn get(&self) -> Result<Availability, kube::Error> {
        let mut cached = self.cached.lock().await;
        if let Some((at, availability)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(availability.clone());
        }
        let info = self.client.apiserver_version().await?;
        let core_v1 = self.client.list_core_api_resources("v1").await?;
        let availability = assess(&info, &core_v1);
        tracing::info!(?availability, version = %info.git_version, "checked ephemeral container support");
        *cached = Some((Instant::now(), availability.clone()));
        Ok(availability)
    }

    /// Forgets the answer, e.g. after the subresource answered 404.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
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

/// Adds `container` to `pod`, failing with 409 Conflict if the pod changed
/// since `pod.metadata.resourceVersion`, so that the caller decides again
/// from fresh state (and never injects twice). Returns the updated pod.
pub async fn add_ephemeral_container(
    client: &Client,
    shape: ApiShape,
    pod: &Pod,
    container: &EphemeralContainer,
) -> Result<Pod, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match shape {
        ApiShape::PodSubresource => {
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": pod.metadata.resource_version },
                "spec": { "ephemeralContainers": [container] },
            });
            pods.patch_ephemeral_containers(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
        }
        ApiShape::LegacyEphemeralContainers => {
            let path = subresource_path(namespace, name);
            let get = http::Request::get(&path).body(Vec::new()).map_err(kube::Error::HttpError)?;
            let mut current: LegacyEphemeralContainers = client.request(get).await?;
            if !current.ephemeral_containers.iter().any(|c| c.name == container.name) {
                current.ephemeral_containers.push(container.clone());
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
                let _: LegacyEphemeralContainers = client.request(put).await?;
            }
            pods.get(name).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn info(major: &str, minor: &str) -> Info {
        Info { major: major.into(), minor: minor.into(), git_version: format!("v{major}.{minor}.0"), ..Default::default() }
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
            ("1", "20", false, None, Some("EphemeralContainers=true feature gate on kube-apiserver and on every kubelet")),
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

    #[test]
    fn vendor_suffixes_are_ignored() {
        assert_eq!(parse_version(&info("1", "21+")), Some((1, 21)));
        assert_eq!(parse_version(&info("1", "")), None);
    }
}
