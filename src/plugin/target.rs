//! What `kubectl ephemera debug` is pointed at: a pod, a workload whose
//! selector picks the pod, or a label selector in kubectl's `-l` syntax.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::validation::{check_label_key, check_label_value, check_selector, is_dns1123_subdomain};

/// Workload kinds whose `spec.selector` chooses the pods to debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
}

impl WorkloadKind {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Deployment => "deploy",
            Self::StatefulSet => "sts",
            Self::DaemonSet => "ds",
            Self::ReplicaSet => "rs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    Pod(String),
    Workload(WorkloadKind, String),
}

impl TargetRef {
    /// `POD`, `pod/POD`, or `TYPE/NAME` with kubectl's names for the type
    /// (`deploy`, `deployment`, `deployments`, `deployment.apps`, ...).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, name) = match text.split_once('/') {
            None => return Self::named(text).map(TargetRef::Pod),
            Some((kind, name)) => (kind.to_ascii_lowercase(), Self::named(name)?),
        };
        let kind = kind.strip_suffix(".apps").unwrap_or(&kind);
        match kind.strip_suffix(".v1").unwrap_or(kind) {
            "po" | "pod" | "pods" => Ok(TargetRef::Pod(name)),
            "deploy" | "deployment" | "deployments" => Ok(TargetRef::Workload(WorkloadKind::Deployment, name)),
            "sts" | "statefulset" | "statefulsets" => Ok(TargetRef::Workload(WorkloadKind::StatefulSet, name)),
            "ds" | "daemonset" | "daemonsets" => Ok(TargetRef::Workload(WorkloadKind::DaemonSet, name)),
            "rs" | "replicaset" | "replicasets" => Ok(TargetRef::Workload(WorkloadKind::ReplicaSet, name)),
            other => {
                Err(format!("cannot debug a {other}: name a pod, or one of deploy/NAME, sts/NAME, ds/NAME, rs/NAME"))
            }
        }
    }

    fn named(name: &str) -> Result<String, String> {
        if is_dns1123_subdomain(name) { Ok(name.to_string()) } else { Err(format!("{name:?} is not a valid name")) }
    }

    /// The name part, for the generated session name.
    pub fn name(&self) -> &str {
        match self {
            TargetRef::Pod(name) | TargetRef::Workload(_, name) => name,
        }
    }
}

/// A label selector in kubectl's syntax (`-l`): comma-separated requirements
/// `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`,
/// `key` (exists) and `!key` (does not exist).
pub fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut labels = BTreeMap::new();
    let mut expressions = Vec::new();
    for requirement in split_requirements(text)? {
        let requirement = requirement.trim();
        let expression = |key: &str, operator: &str, values: Option<Vec<String>>| {
            check_label_key(key)?;
            Ok::<_, String>(LabelSelectorRequirement { key: key.into(), operator: operator.into(), values })
        };
        if let Some(key) = requirement.strip_prefix('!') {
            expressions.push(expression(key.trim(), "DoesNotExist", None)?);
        } else if let Some((key, value)) = requirement.split_once("!=") {
            check_label_value(value.trim())?;
            expressions.push(expression(key.trim(), "NotIn", Some(vec![value.trim().into()]))?);
        } else if let Some((key, value)) = requirement.split_once("==").or_else(|| requirement.split_once('=')) {
            let (key, value) = (key.trim(), value.trim());
            check_label_key(key)?;
            check_label_value(value)?;
            labels.insert(key.to_string(), value.to_string());
        } else if let Some((key, operator, values)) = set_requirement(requirement)? {
            expressions.push(expression(key, operator, Some(values))?);
        } else if !requirement.is_empty() && !requirement.contains([' ', '(', ')']) {
            expressions.push(expression(requirement, "Exists", None)?);
        } else {
            return Err(format!("{requirement:?} is not a label selector requirement"));
        }
    }
    let selector = LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    };
    check_selector(&selector)?;
    Ok(selector)
}

/// Splits at the commas that are not inside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in selector {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A set-based requirement: key, operator (`In`/`NotIn`) and values.
type SetRequirement<'a> = (&'a str, &'static str, Vec<String>);

/// `key in (a,b)` or `key notin (a,b)`.
fn set_requirement(requirement: &str) -> Result<Option<SetRequirement<'_>>, String> {
    let Some((head, rest)) = requirement.split_once('(') else { return Ok(None) };
    let Some(values) = rest.strip_suffix(')') else {
        return Err(format!("{requirement:?}: expected a closing parenthesis"));
    };
    let mut words = head.split_whitespace();
    let (Some(key), Some(operator), None) = (words.next(), words.next(), words.next()) else {
        return Ok(None);
    };
    let operator = match operator {
        "in" => "In",
        "notin" => "NotIn",
        other => return Err(format!("{other:?} is not a set operator (in, notin)")),
    };
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    values.iter().try_for_each(|v| check_label_value(v))?;
    Ok(Some((key, operator, values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_as_kubectl_names_them() {
        let table = [
            ("web", Ok(TargetRef::Pod("web".into()))),
            ("pod/web", Ok(TargetRef::Pod("web".into()))),
            ("po/web", Ok(TargetRef::Pod("web".into()))),
            ("deploy/web", Ok(TargetRef::Workload(WorkloadKind::Deployment, "web".into()))),
            ("deployment/web", Ok(TargetRef::Workload(WorkloadKind::Deployment, "web".into()))),
            ("deployments.apps/web", Ok(TargetRef::Workload(WorkloadKind::Deployment, "web".into()))),
            ("sts/db", Ok(TargetRef::Workload(WorkloadKind::StatefulSet, "db".into()))),
            ("statefulset.apps/db", Ok(TargetRef::Workload(WorkloadKind::StatefulSet, "db".into()))),
            ("ds/agent", Ok(TargetRef::Workload(WorkloadKind::DaemonSet, "agent".into()))),
            ("rs/web-123", Ok(TargetRef::Workload(WorkloadKind::ReplicaSet, "web-123".into()))),
        ];
        for (text, expected) in table {
            assert_eq!(TargetRef::parse(text), expected, "{text}");
        }
        for bad in ["node/n1", "job/x", "deploy/", "Web", "../web", "deploy/a b"] {
            assert!(TargetRef::parse(bad).is_err(), "{bad}");
        }
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty() || operator.ends_with("In"))
                .then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selectors_in_kubectl_syntax() {
        let s = parse_selector("app=web").unwrap();
        assert_eq!(s.match_labels, Some(BTreeMap::from([("app".into(), "web".into())])));
        assert_eq!(s.match_expressions, None);
        let s = parse_selector("app==web, tier=front").unwrap();
        assert_eq!(s.match_labels.unwrap().len(), 2);
        let s = parse_selector("app in (web, api),env notin (dev),!canary,track,tier!=db").unwrap();
        assert_eq!(s.match_labels, None);
        assert_eq!(
            s.match_expressions.unwrap(),
            vec![
                requirement("app", "In", &["web", "api"]),
                requirement("env", "NotIn", &["dev"]),
                requirement("canary", "DoesNotExist", &[]),
                requirement("track", "Exists", &[]),
                requirement("tier", "NotIn", &["db"]),
            ]
        );
        let s = parse_selector("app.kubernetes.io/name=web").unwrap();
        assert!(s.match_labels.unwrap().contains_key("app.kubernetes.io/name"));
        for bad in ["", "app=we b", "a b=c", "app in (web", "app in web)", "app near (x)", "app=web,,", "=web"] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }
}
