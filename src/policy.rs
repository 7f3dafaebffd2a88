//! What a platform team allows debug containers to be (flags of `ephemera
//! run`, set from the chart's `policy.*` values), checked before each
//! container is added. A session that breaks a rule fails with
//! `PolicyViolation`, naming the rule.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::crd::{DebugSession, Profile};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Image patterns (globs such as `docker.io/library/busybox:*`); `None` allows any image.
    allowed_images: Option<(GlobSet, Vec<String>)>,
    pub require_image_digest: bool,
    /// `None` allows every profile.
    pub allowed_profiles: Option<Vec<Profile>>,
    pub max_active_per_namespace: Option<usize>,
    pub max_active_per_requester: Option<usize>,
    /// Refuse sessions on which admission recorded no requester (see [`crate::requester`]).
    pub require_requester: bool,
    /// Let `volumeMounts: target` and `envFrom: target` take Secrets and ServiceAccount tokens.
    pub allow_secret_mounts: bool,
    /// The most `captureOutput` may keep per container; 0 turns capturing off.
    pub max_capture_bytes: i32,
    /// The most pods one `target.mode: All` session may debug.
    pub max_fan_out: Option<usize>,
}

/// Sessions that have (or are about to have) a debug container that may still run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveSessions {
    /// In the session's namespace, the session itself left out.
    pub in_namespace: usize,
    /// Asked for by the same requester, the session itself left out.
    pub by_requester: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule, as the chart's value names it.
    pub rule: &'static str,
    pub message: String,
}

impl ActiveSessions {
    /// Counts, among `sessions`, the others whose debug container may still run.
    pub fn among<'a>(session: &DebugSession, sessions: impl IntoIterator<Item = &'a DebugSession>) -> Self {
        let requester = crate::requester::requester(session).map(|r| r.username);
        let namespace = session.metadata.namespace.as_deref();
        let mut active = ActiveSessions::default();
        for other in sessions {
            let running = other.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                matches!(p, crate::crd::Phase::Pending | crate::crd::Phase::Injected | crate::crd::Phase::Running)
            });
            if !running
                || other.metadata.uid == session.metadata.uid
                || other.metadata.namespace.as_deref() != namespace
            {
                continue;
            }
            active.in_namespace += 1;
            if requester.is_some() && crate::requester::requester(other).map(|r| r.username) == requester {
                active.by_requester += 1;
            }
        }
        active
    }
}

impl Policy {
    pub fn with_allowed_images(mut self, patterns: &[String]) -> Result<Self, globset::Error> {
        if patterns.is_empty() {
            self.allowed_images = None;
            return Ok(self);
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(Glob::new(pattern)?);
        }
        self.allowed_images = Some((builder.build()?, patterns.to_vec()));
        Ok(self)
    }

    /// Checks `session`'s current attempt against every rule.
    pub fn check(&self, session: &DebugSession, active: ActiveSessions) -> Result<(), Violation> {
        let spec = &session.spec;
        if let Some((globs, patterns)) = &self.allowed_images
            && !globs.is_match(&spec.image)
        {
            return Err(Violation {
                rule: "policy.allowedImages",
                message: format!("image {} matches none of the allowed images ({})", spec.image, patterns.join(", ")),
            });
        }
        if let Some(capture) = spec.capture_output
            && self.max_capture_bytes == 0
        {
            return Err(Violation {
                rule: "capture.enabled",
                message: format!("captureOutput ({} bytes) is turned off on this cluster", capture.max_bytes),
            });
        }
        if self.require_image_digest && !spec.image.contains("@sha256:") {
            return Err(Violation {
                rule: "policy.requireImageDigest",
                message: format!("image {} is not pinned by digest (name@sha256:...)", spec.image),
            });
        }
        if let Some(allowed) = &self.allowed_profiles
            && !allowed.contains(&spec.profile)
        {
            let names: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
            return Err(Violation {
                rule: "policy.allowedProfiles",
                message: format!(
                    "profile {} is not allowed here; allowed: {}",
                    spec.profile.as_str(),
                    names.join(", ")
                ),
            });
        }
        if let Some(max) = self.max_active_per_namespace
            && active.in_namespace >= max
        {
            return Err(Violation {
                rule: "policy.maxActiveSessionsPerNamespace",
                message: format!(
                    "{} other sessions of this namespace are active; at most {max} may be",
                    active.in_namespace
                ),
            });
        }
        if let Some(max) = self.max_active_per_requester
            && active.by_requester >= max
        {
            return Err(Violation {
                rule: "policy.maxActiveSessionsPerUser",
                message: format!(
                    "{} other sessions of the same requester are active; at most {max} may be",
                    active.by_requester
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DebugSessionSpec;

    fn session(image: &str, profile: &str) -> DebugSession {
        let spec: DebugSessionSpec = serde_json::from_value(serde_json::json!({
            "target": { "pod": "web" }, "image": image, "profile": profile,
        }))
        .unwrap();
        DebugSession::new("s", spec)
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // the image globs are built through with_allowed_images
    fn rules_are_checked_and_named() {
        let mut policy = Policy::default();
        policy.allowed_profiles = Some(vec![Profile::General, Profile::Restricted]);
        policy.max_active_per_namespace = Some(2);
        policy.max_active_per_requester = Some(1);
        let policy =
            policy.with_allowed_images(&["localhost/busybox:*".into(), "registry.example/tools/*".into()]).unwrap();
        let none = ActiveSessions::default();
        let rule = |s: &DebugSession, active| policy.check(s, active).err().map(|v| v.rule);
        assert_eq!(rule(&session("localhost/busybox:1.36", "general"), none), None);
        assert_eq!(rule(&session("registry.example/tools/jdk:21", "restricted"), none), None);
        assert_eq!(rule(&session("evil/busybox:1.36", "general"), none), Some("policy.allowedImages"));
        assert_eq!(rule(&session("localhost/busybox:1.36", "sysadmin"), none), Some("policy.allowedProfiles"));
        let busy = ActiveSessions { in_namespace: 2, by_requester: 0 };
        assert_eq!(
            rule(&session("localhost/busybox:1.36", "general"), busy),
            Some("policy.maxActiveSessionsPerNamespace")
        );
        let mine = ActiveSessions { in_namespace: 1, by_requester: 1 };
        assert_eq!(rule(&session("localhost/busybox:1.36", "general"), mine), Some("policy.maxActiveSessionsPerUser"));

        let digest = Policy { require_image_digest: true, ..Policy::default() };
        assert!(digest.check(&session("busybox:1.36", "general"), none).is_err());
        let pinned = format!("busybox@sha256:{}", "0".repeat(64));
        assert!(digest.check(&session(&pinned, "general"), none).is_ok());
        assert!(Policy::default().check(&session("anything", "sysadmin"), none).is_ok(), "no rules, no limits");
    }
}
