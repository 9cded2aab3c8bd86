//! Debian packages the tests and local runs need (redis-server, chromium, …), installed
//! with apt when missing.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::process;

/// `dpkg-query` answers at once; the bound only catches a wedged dpkg lock.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Downloading package lists.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(600);
/// Downloading and installing packages (chromium is large).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);

/// Makes sure each Debian package is installed: asks dpkg about each, and when some are
/// missing runs `apt-get update` once and `apt-get install` for exactly those.
pub fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        if !is_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    process::run(apt_get().arg("update"), UPDATE_TIMEOUT)
        .context("`apt-get update` failed (needs root and access to the Debian mirrors)")?;
    process::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        INSTALL_TIMEOUT,
    )
    .with_context(|| format!("cannot install Debian packages {}", missing.join(" ")))?;
    for package in missing {
        anyhow::ensure!(
            is_installed(package)?,
            "apt-get reported success but `{package}` is still not installed"
        );
    }
    Ok(())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Asks dpkg; a package dpkg has never heard of is simply not installed.
fn is_installed(package: &str) -> Result<bool> {
    let out = process::output_unchecked(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", package]),
        QUERY_TIMEOUT,
    )
    .with_context(|| format!("cannot ask dpkg whether `{package}` is installed"))?;
    Ok(out.status.success() && status_is_installed(&String::from_utf8_lossy(&out.stdout)))
}

/// Reads dpkg's `${Status}`: `want flag status`, e.g. `install ok installed`. Only the
/// `installed` state counts; `config-files`, `half-installed`, `unpacked` and the like do not.
fn status_is_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

/// Fails early, naming the shortfall, when the filesystem holding `path` has less than
/// `needed` bytes free: a full disk otherwise surfaces as a linker error minutes into a build.
pub fn ensure_free_space(path: &std::path::Path, needed: u64, purpose: &str) -> Result<()> {
    let stats = nix::sys::statvfs::statvfs(path)
        .with_context(|| format!("cannot read free space of {}", path.display()))?;
    let free = stats.blocks_available() * stats.fragment_size();
    const GIB: u64 = 1 << 30;
    anyhow::ensure!(
        free >= needed,
        "{} has {:.1} GiB free; {purpose} needs about {:.0} GiB: free some space \
         (for example `cargo clean` in old clones) and run again",
        path.display(),
        free as f64 / GIB as f64,
        needed as f64 / GIB as f64,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_installed_state_counts() {
        assert!(status_is_installed("install ok installed"));
        assert!(status_is_installed("hold ok installed\n"));
        for status in [
            "",
            "deinstall ok config-files",
            "install ok half-installed",
            "install ok unpacked",
            "unknown ok not-installed",
            "install ok",
        ] {
            assert!(!status_is_installed(status), "{status:?}");
        }
    }

    #[test]
    fn asks_dpkg_about_real_packages() {
        // dpkg itself is always installed on Debian; the odd name never is.
        assert!(is_installed("dpkg").expect("dpkg-query runs"));
        assert!(!is_installed("no-such-package-pixel-playground").expect("dpkg-query runs"));
    }
}
