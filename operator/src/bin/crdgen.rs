//! Prints the PixelCanvas CustomResourceDefinition. `cargo xtask crd` writes it to `crds/`.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", pixel_operator::crd::manifest()?);
    Ok(())
}
