//! `cargo xtask crd`: regenerates the committed CRD from the operator's Rust types.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::{paths, process};

/// Where the generator writes, relative to the repository root (the operator's
/// `crd::COMMITTED_PATH`, which its drift test compares against).
pub const CRD_PATH: &str = "crds/pixelcanvases.pixel-playground.dev.yaml";

pub fn generate() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let yaml = process::output(
        Command::new(cargo).current_dir(paths::repo_root()).args([
            "run",
            "--quiet",
            "--package",
            "pixel-operator",
            "--bin",
            "crdgen",
        ]),
        Duration::from_secs(1800),
    )?;
    let path = paths::repo_root().join(CRD_PATH);
    std::fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    println!("Wrote {}", path.display());
    Ok(())
}
