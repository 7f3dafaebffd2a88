//! `crds/debugsession.yaml` must be exactly what `ephemera crd` prints.

#[test]
fn committed_crds_match_the_generated_one() {
    for path in ["crds/debugsession.yaml", "charts/ephemera/crds/debugsession.yaml"] {
        let committed = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(committed == ephemera::crd::crd_yaml(), "{path} is stale: run `make crds`");
    }
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
