//! `crds/debugsession.yaml` must be exactly what `ephemera crd` prints, and
//! docs/reference.md what `ephemera crd --markdown` prints.

#[test]
fn committed_crds_match_the_generated_one() {
    for path in ["crds/debugsession.yaml", "charts/ephemera/crds/debugsession.yaml"] {
        let committed = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(committed == ephemera::crd::crd_yaml(), "{path} is stale: run `make crds`");
    }
}

#[test]
fn committed_reference_matches_the_schema() {
    let committed = std::fs::read_to_string(format!("{}/docs/reference.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(committed == ephemera::crd::reference_markdown(), "docs/reference.md is stale: run `make crds`");
}

#[test]
fn reference_documents_every_spec_field() {
    let reference = ephemera::crd::reference_markdown();
    for field in [
        "spec.target.pod",
        "spec.target.selector",
        "spec.attempt",
        "spec.ttlSecondsAfterFinished",
        "status.phase",
        "status.conditions",
    ] {
        assert!(reference.contains(&format!("| `{field}` |")), "{field} missing");
    }
    assert!(reference.contains("spec.attempt may only be raised"), "CEL rules are listed");
}

#[test]
fn crd_names_and_columns() {
    let yaml = ephemera::crd::crd_yaml();
    for expected in [
        "name: debugsessions.ephemera.dev",
        "group: ephemera.dev",
        "kind: DebugSession",
        "- dbgs",
        "scope: Namespaced",
        "name: v1alpha1",
        "name: Attachable",
        "rule: self.attempt >= oldSelf.attempt",
    ] {
        assert!(yaml.contains(expected), "CRD lacks {expected:?}");
    }
}
