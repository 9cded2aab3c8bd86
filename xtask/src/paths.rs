//! Where things live: the repository, and the per-machine cache outside any clone.

use std::path::PathBuf;

/// The repository root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The machine-wide cache: built tools and the cluster's state. Outside the clone, so a
/// fresh clone on the same machine (as CI uses) reuses what an earlier one built.
/// Override with `PIXEL_PLAYGROUND_CACHE`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIXEL_PLAYGROUND_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pixel-playground")
}
