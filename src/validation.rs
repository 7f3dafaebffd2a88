//! Checks of a DebugSession's spec that the controller makes itself. The CRD
//! holds the same rules where the API server can enforce them (patterns on
//! every version, CEL from 1.25); here they hold on every server, so a session
//! that slipped past admission (an old cluster, an object stored before a rule
//! existed) ends `Failed`/`Invalid` at once instead of failing later or never.

use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use regex::Regex;

use crate::crd::{DNS1123_LABEL, DNS1123_SUBDOMAIN, DebugSessionSpec, LABEL_VALUE, QUALIFIED_NAME};

/// The most a debug container may add to the pod per attempt, as JSON. Every
/// attempt stays in the pod for good, and etcd refuses objects over 1.5 MiB.
pub const MAX_CONTAINER_BYTES: usize = 32 * 1024;

static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| Regex::new(DNS1123_LABEL).unwrap());
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| Regex::new(DNS1123_SUBDOMAIN).unwrap());
static QUALIFIED: LazyLock<Regex> = LazyLock::new(|| Regex::new(QUALIFIED_NAME).unwrap());
static VALUE: LazyLock<Regex> = LazyLock::new(|| Regex::new(LABEL_VALUE).unwrap());

pub fn is_dns1123_label(name: &str) -> bool {
    name.len() <= 63 && DNS_LABEL.is_match(name)
}

pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && DNS_SUBDOMAIN.is_match(name)
}

/// Checks a label key: `prefix/name` with a DNS subdomain prefix of at most 253
/// characters and a name of at most 63.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let valid = QUALIFIED.is_match(key) && name.len() <= 63 && prefix.is_none_or(|p| p.len() <= 253);
    if valid { Ok(()) } else { Err(format!("{key:?} is not a valid label key")) }
}

pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() <= 63 && VALUE.is_match(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

/// Checks a label selector the way the API server checks one in a ListOptions,
/// and that it selects something less than every pod.
pub fn check_selector(selector: &LabelSelector) -> Result<(), String> {
    let labels = selector.match_labels.iter().flatten();
    let expressions = selector.match_expressions.iter().flatten();
    if labels.clone().next().is_none() && expressions.clone().next().is_none() {
        return Err("target.selector must not be empty: it would match every pod".into());
    }
    for (key, value) in labels {
        check_label_key(key)?;
        check_label_value(value)?;
    }
    for requirement in expressions {
        check_label_key(&requirement.key)?;
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("operator {} on {:?} needs values", requirement.operator, requirement.key));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("operator {} on {:?} takes no values", requirement.operator, requirement.key));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(format!("unknown selector operator {other:?}")),
        }
        values.iter().try_for_each(|v| check_label_value(v))?;
    }
    Ok(())
}

/// Checks an image reference against the grammar of distribution/reference,
/// which the kubelet applies (it reports `InvalidImageName` otherwise).
pub fn check_image(image: &str) -> Result<(), String> {
    container_image_dist_ref::ImgRef::new(image).map(|_| ()).map_err(|error| {
        format!("image {image:?} is not a valid image reference (at character {}: {:?})", error.index(), error.kind())
    })
}

/// Everything about a spec that can be known without the cluster.
pub fn check_spec(spec: &DebugSessionSpec) -> Result<(), String> {
    let target = &spec.target;
    match (&target.pod, &target.selector) {
        (Some(pod), None) if !is_dns1123_subdomain(pod) => {
            return Err(format!("target.pod {pod:?} is not a pod name (a DNS-1123 subdomain)"));
        }
        (Some(_), None) => {}
        (None, Some(selector)) => check_selector(selector).map_err(|e| format!("target.selector: {e}"))?,
        _ => return Err("set exactly one of target.pod and target.selector".into()),
    }
    if target.mode == crate::crd::TargetMode::All && (target.selector.is_none() || target.max_pods.is_none()) {
        return Err("target.mode All needs target.selector and target.maxPods".into());
    }
    if let Some(container) = &target.container
        && !is_dns1123_label(container)
    {
        return Err(format!("target.container {container:?} is not a container name (a DNS-1123 label)"));
    }
    if let Some(name) = &spec.container_name
        && !(name.len() <= 56 && is_dns1123_label(name))
    {
        return Err(format!("containerName {name:?} is not a DNS-1123 label of at most 56 characters"));
    }
    if let Some(custom) = &spec.custom {
        let refused = custom.refused_fields();
        if !refused.is_empty() {
            return Err(format!(
                "custom may not set {} (as kubectl debug --custom); use the session's own fields",
                refused.join(", ")
            ));
        }
    }
    check_image(&spec.image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    #[test]
    fn names() {
        for good in ["web", "web-1", "a", "x.y-z"] {
            assert!(is_dns1123_subdomain(good), "{good}");
        }
        for bad in ["", "../../x", "tgt/ephemeralcontainers", "a b", "a\0b", "Web", "-a", "a-", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        assert!(is_dns1123_label("app"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }

    #[test]
    fn label_keys_and_values() {
        for good in ["app", "app.kubernetes.io/name", "a_b.c", "A"] {
            assert!(check_label_key(good).is_ok(), "{good}");
        }
        for bad in ["a b", "", "/a", "a/", "-a", "x/y/z", &"a".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("web-1").is_ok());
        assert!(check_label_value("a b").is_err());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn selectors() {
        let labels = |k: &str, v: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            ..Default::default()
        };
        let expression = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
            ..Default::default()
        };
        assert!(check_selector(&labels("app", "web")).is_ok());
        assert!(check_selector(&labels("a b", "web")).is_err());
        assert!(check_selector(&labels("app", "we b")).is_err());
        assert!(check_selector(&LabelSelector::default()).is_err());
        assert!(check_selector(&expression("In", Some(vec!["web"]))).is_ok());
        assert!(check_selector(&expression("Exists", None)).is_ok());
        assert!(check_selector(&expression("In", None)).is_err());
        assert!(check_selector(&expression("Exists", Some(vec!["x"]))).is_err());
        assert!(check_selector(&expression("Near", Some(vec!["x"]))).is_err());
    }

    #[test]
    fn images() {
        for good in [
            "busybox",
            "busybox:1.36",
            "localhost/busybox:1.36",
            "registry:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(check_image(good).is_ok(), "{good}");
        }
        for bad in ["", "Busybox", "busy box", "busybox:", "a\x07b", "busybox::1"] {
            assert!(check_image(bad).is_err(), "{bad:?}");
        }
    }
}
