//! Where things live: the repository, and the per-machine cache outside any clone.

use std::path::PathBuf;

/// The variable that moves the machine-wide cache (the tooling's own, not the services'
/// contract).
pub const ENV_CACHE: &str = "PIXEL_PLAYGROUND_CACHE";

/// The repository root (this crate lives in `e2e/harness`, two levels below it).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .map_or(manifest_dir.clone(), PathBuf::from)
}

/// Cargo's target directory for this workspace (`CARGO_TARGET_DIR`, relative to the root
/// when it is relative, as cargo takes it).
pub fn target_dir() -> PathBuf {
    let root = repo_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// This tree's operator manifests (`config/default`), as users install them.
pub fn operator_config() -> PathBuf {
    repo_root().join("config/default")
}

/// The machine-wide cache: built tools and the cluster's state. Outside the clone, so a
/// fresh clone on the same machine (as CI uses) reuses what an earlier one built.
/// Override with [`ENV_CACHE`].
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_CACHE) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pixel-playground")
}
