//! `cargo xtask image`: the app, Redis and pause images as OCI archives in target/images,
//! built without a daemon (pixel-harness's `images`).

use anyhow::{Context, Result};
use pixel_harness::images;

pub fn run() -> Result<()> {
    let built = images::build_all(&images::output_dir())?;
    for image in &built {
        let bytes = std::fs::metadata(&image.archive)
            .with_context(|| format!("cannot read {}", image.archive.display()))?
            .len();
        println!(
            "{}\n  {} ({:.1} MiB)",
            image.reference,
            image.archive.display(),
            bytes as f64 / f64::from(1 << 20)
        );
    }
    println!("\nImport into a node's containerd:");
    for image in &built {
        println!(
            "  ctr -n k8s.io images import --base-name {} {}",
            image.base_name,
            image.archive.display()
        );
    }
    Ok(())
}
