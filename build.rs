//! Build facts the server embeds: the git commit (for
//! `user_service_build_info`) and the migrations. The gRPC code is
//! generated from `proto/` by `crates/user-service-api/build.rs`, so the
//! client can be built without the server.

use std::env;

fn main() {
    // sqlx::migrate! embeds migrations/ at compile time.
    println!("cargo:rerun-if-changed=migrations");

    // user_service_build_info{git_sha}: from the environment (CI, image
    // builds) or the checkout; "unknown" outside one.
    println!("cargo:rerun-if-env-changed=USER_SERVICE_GIT_SHA");
    if env::var("USER_SERVICE_GIT_SHA").is_err() {
        watch_git_head();
        if let Some(sha) = git(&["rev-parse", "--short=12", "HEAD"]) {
            println!("cargo:rustc-env=USER_SERVICE_GIT_SHA={sha}");
        }
    }
}

/// Reruns this script when the checked-out commit changes. `.git/HEAD`
/// alone is not enough: on a branch it names the ref (`refs/heads/main`)
/// and stays the same across commits, so watch the ref too (its loose file,
/// or `packed-refs` where git keeps packed ones). Only existing paths are
/// printed: cargo reruns a script on every build for a missing one.
fn watch_git_head() {
    let mut paths = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(git(&["rev-parse", "--git-path", &reference]));
        paths.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in paths.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// One line of `git` output, or None outside a checkout / without git.
fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
