//! Build script: the version string `mongo-oidc-proxy --version` prints.
//!
//! Sets `MOP_VERSION` to `<crate version> (commit <short hash>)`. The hash is,
//! in order: `$MOP_GIT_COMMIT` when set (for builds without `.git`, e.g. the
//! Containerfile's `--build-arg GIT_COMMIT=...`), else `git rev-parse --short
//! HEAD` when this package is the top of a git work tree, else `unknown`
//! (a source tarball, or no `git` on PATH).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MOP_GIT_COMMIT");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = std::env::var("MOP_GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .or_else(|| git_commit(&manifest_dir))
        .unwrap_or_else(|| "unknown".to_owned());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=MOP_VERSION={version} (commit {commit})");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The short hash of HEAD, only when the package itself is a git work tree's
/// top (not a tarball unpacked inside some other repository). Registers the
/// files that change with HEAD (also for linked work trees, whose `.git` is a
/// file) so that a new commit re-runs this script.
fn git_commit(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), dir) {
        return None;
    }
    let git_path = |name: &str| git(dir, &["rev-parse", "--git-path", name]).map(|p| dir.join(p));
    let mut watched: Vec<PathBuf> = ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(git_path)
        .filter(|p| p.exists())
        .collect();
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]).and_then(|b| git_path(&b)) {
        // A branch kept only in packed-refs gets a loose file at its next
        // commit: watch its folder until then.
        if branch.exists() {
            watched.push(branch);
        } else if let Some(folder) = branch.parent().filter(|p| p.exists()) {
            watched.push(folder.to_owned());
        }
    }
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    git(dir, &["rev-parse", "--short", "HEAD"])
}
