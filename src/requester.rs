//! Who asked for a session. Admission records it in annotations (a
//! MutatingAdmissionPolicy where the cluster has one, see the chart), on
//! create and whenever `spec.attempt` is raised, and a ValidatingAdmissionPolicy
//! refuses any value that differs from the request's own user. The operator
//! checks, before each container it adds, that this user may add it by hand.

use std::collections::BTreeMap;

use crate::crd::DebugSession;

pub const USERNAME_ANNOTATION: &str = "ephemera.dev/requester";
pub const UID_ANNOTATION: &str = "ephemera.dev/requester-uid";
/// Groups joined by commas (group names cannot hold one).
pub const GROUPS_ANNOTATION: &str = "ephemera.dev/requester-groups";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
}

/// The requester recorded on the session, if any.
pub fn requester(session: &DebugSession) -> Option<Requester> {
    let empty = BTreeMap::new();
    let annotations = session.metadata.annotations.as_ref().unwrap_or(&empty);
    let username = annotations.get(USERNAME_ANNOTATION).filter(|u| !u.is_empty())?.clone();
    let uid = annotations.get(UID_ANNOTATION).filter(|u| !u.is_empty()).cloned();
    let groups = annotations
        .get(GROUPS_ANNOTATION)
        .map(|g| g.split(',').filter(|g| !g.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    Some(Requester { username, uid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_from_annotations() {
        let spec =
            serde_json::from_value(serde_json::json!({ "target": { "pod": "web" }, "image": "busybox" })).unwrap();
        let mut session = DebugSession::new("s", spec);
        assert_eq!(requester(&session), None);
        session.metadata.annotations = Some(BTreeMap::from([
            (USERNAME_ANNOTATION.to_string(), "alice".to_string()),
            (UID_ANNOTATION.to_string(), "alice-uid".to_string()),
            (GROUPS_ANNOTATION.to_string(), "oncall,system:authenticated".to_string()),
        ]));
        assert_eq!(
            requester(&session),
            Some(Requester {
                username: "alice".into(),
                uid: Some("alice-uid".into()),
                groups: vec!["oncall".into(), "system:authenticated".into()],
            })
        );
    }
}
