//! Stamps the git revision into the binaries, for `--version` and the image label.
//!
//! `EPHEMERA_REVISION` wins when set (`make image` passes the one it labels the
//! image with); otherwise `git rev-parse --short HEAD` of this checkout; otherwise
//! "unknown", so that a build from a source tarball still works.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-env-changed=EPHEMERA_REVISION");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let revision = std::env::var("EPHEMERA_REVISION")
        .ok()
        .filter(|revision| !revision.is_empty())
        .or_else(|| git_revision(&manifest_dir))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=EPHEMERA_REVISION={revision}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn git_revision(manifest_dir: &Path) -> Option<String> {
    // A source tarball unpacked inside some other repository must not take its revision.
    let toplevel = PathBuf::from(git(manifest_dir, &["rev-parse", "--show-toplevel"])?);
    if toplevel.canonicalize().ok()? != manifest_dir.canonicalize().ok()? {
        return None;
    }
    let revision = git(manifest_dir, &["rev-parse", "--short", "HEAD"])?;
    // Build again when HEAD moves: HEAD itself (checkout), the branch it names
    // (commit) and packed-refs. Only files that exist: a missing one would make
    // cargo run this script on every build.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(manifest_dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(manifest_dir, &["rev-parse", "--git-path", &name]) {
            let path = manifest_dir.join(path);
            if path.exists() {
                println!("cargo::rerun-if-changed={}", path.display());
            }
        }
    }
    Some(revision)
}
