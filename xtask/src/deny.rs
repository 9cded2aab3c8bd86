//! `cargo xtask deny`: cargo-deny's license, ban and source checks of the workspace's
//! dependency graph, with the policy in `.ci/deny.toml`.
//!
//! Advisories are not checked here. cargo-deny reads them from the RustSec advisory database,
//! a git repository that it clones from GitHub, and neither the project's machines nor CI can
//! reach GitHub (only package registries), so that check could only fail or be skipped. To run
//! it by hand with a copy of the database: clone the copy to
//! `<dir>/advisory-db-3157b0e258782691` (the directory name cargo-deny derives from the
//! default database URL), then run, with a copy of the config that sets `db-path = "<dir>"` under
//! `[advisories]` (and `maximum-db-staleness` if the copy is over 90 days old),
//! `cargo deny --offline --config <that copy> check advisories`.

use std::{process::Command, time::Duration};

use anyhow::Result;

use pixel_harness::{paths, process};

/// The cargo-deny release installed when missing: pinned so every machine checks alike. Its
/// command line and config format change between releases.
const CARGO_DENY_VERSION: &str = "0.20.2";
/// A cold `cargo install` of it took about 4 minutes on two cores.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The checks read Cargo.lock and the crates' manifests: seconds, unless something hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// `cargo xtask deny`: installs the pinned cargo-deny if needed, then checks licenses, bans
/// and sources.
pub fn run() -> Result<()> {
    ensure_cargo_deny()?;
    let root = paths::repo_root();
    println!("== cargo deny: licenses, bans, sources (.ci/deny.toml)");
    process::run(
        Command::new("cargo")
            .current_dir(&root)
            .arg("deny")
            // Checks the committed lock file; never rewrites it.
            .arg("--locked")
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .arg("--config")
            .arg(root.join(".ci/deny.toml"))
            .args(["check", "licenses", "bans", "sources"]),
        CHECK_TIMEOUT,
    )
}

/// Installs the pinned cargo-deny unless that version is already there.
fn ensure_cargo_deny() -> Result<()> {
    let wanted = format!("cargo-deny {CARGO_DENY_VERSION}");
    // A missing cargo-deny makes cargo itself fail ("no such command"): that means install.
    let installed = process::output_unchecked(
        Command::new("cargo").args(["deny", "--version"]),
        CHECK_TIMEOUT,
    )?;
    if installed.status.success() && String::from_utf8_lossy(&installed.stdout).trim() == wanted {
        return Ok(());
    }
    println!("== installing {wanted} (about 4 minutes)");
    process::run(
        Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
        ]),
        INSTALL_TIMEOUT,
    )
}
