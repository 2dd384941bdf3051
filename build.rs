//! Embeds the source revision for `jogg-relay --version` (README, "Command
//! line"): the short git hash of the checkout, with `-dirty` when tracked
//! files differ from it.
//!
//! Without git (a source tarball, git not installed, or a checkout that is
//! not this crate's own repository) it falls back to `JOGG_RELAY_REVISION`
//! from the build environment, else to `unknown revision`. Nothing here may
//! fail the build: a missing revision is worth less than a missing binary.
//!
//! The script reruns only when the revision can have changed (HEAD, the
//! branch it points to, the index, the packed refs, the crate's sources, the
//! fallback variable), so an unchanged checkout is not rebuilt.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable the crate reads with `env!`.
const OUTPUT: &str = "JOGG_RELAY_BUILD_REVISION";

/// The fallback a packager may set when building without git.
const FALLBACK: &str = "JOGG_RELAY_REVISION";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={FALLBACK}");
    let revision = git_revision(&manifest_dir)
        .or_else(|| {
            std::env::var(FALLBACK)
                .ok()
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        })
        .unwrap_or_else(|| "unknown revision".to_owned());
    println!("cargo:rustc-env={OUTPUT}={revision}");
}

/// `git` run in `dir`, its trimmed standard output when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        // No opportunistic index refresh: `git status` would otherwise
        // rewrite the index, which this script watches, and so trigger
        // the next build's rerun.
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The short hash of HEAD, `-dirty` appended when tracked files differ
/// from it, or `None` when `dir` is not the top of a git checkout.
fn git_revision(dir: &Path) -> Option<String> {
    // A tarball unpacked inside some other repository must not take that
    // repository's revision.
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), dir) {
        return None;
    }
    watch_git_files(dir);
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let status = git(dir, &["status", "--porcelain", "--untracked-files=no"])?;
    Some(if status.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// Tells cargo which files decide the revision: HEAD, the ref it points to
/// (in a worktree the refs live in the common folder), the packed refs and
/// the index, and the crate's own files, whose edits make the tree dirty.
fn watch_git_files(dir: &Path) {
    let path = |name: &str| {
        git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", name],
        )
    };
    let mut watched: Vec<String> = ["HEAD", "index", "packed-refs"]
        .into_iter()
        .filter_map(path)
        .collect();
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(path(&reference));
    }
    for name in ["src", "migrations", "Cargo.toml", "Cargo.lock"] {
        watched.push(dir.join(name).display().to_string());
    }
    // A missing file would make cargo rerun the script on every build
    // (a branch whose ref is only in packed-refs, no packed-refs at all).
    for file in watched.into_iter().filter(|file| Path::new(file).exists()) {
        println!("cargo:rerun-if-changed={file}");
    }
}
