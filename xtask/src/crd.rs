//! `cargo xtask crd`: regenerates the committed CRD from the operator's Rust types.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};

use pixel_common::operator_contract::CRD_PATH;
use pixel_harness::{paths, process};

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
