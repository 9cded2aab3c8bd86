//! Writes the seed corpus, `corpus/<target>/seed-<name>`, from `pixel_fuzz::seeds()`.
//! Run after changing a format: `cargo run --manifest-path services/fuzz/Cargo.toml --example write_seeds`.
//! Files the fuzzer added are left alone.

use std::{fs, path::Path};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for seed in pixel_fuzz::seeds() {
        seed.verify();
        let dir = corpus.join(seed.target);
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("seed-{}", seed.name));
        fs::write(&path, &seed.bytes)?;
        println!("{} ({} bytes)", path.display(), seed.bytes.len());
    }
    Ok(())
}
