//! Prints the children the operator would apply for each PixelCanvas in the given
//! manifests (files, or `-` for stdin), with the operator's default images: what
//! `kubectl apply -f canvas.yaml` leads to, without a cluster. The Secrets it prints hold no
//! credential (the operator generates those in the cluster). Each is a JSON document after
//! a `---` line: YAML to kubectl and kube-score, and no string such as `yes` that a YAML 1.1
//! reader would take for a boolean. `cargo xtask test` lints this output with kube-score.

use std::io::Read;

use serde::Deserialize as _;

use pixel_operator::{
    api::PixelCanvas,
    children::{self, Credentials, Defaults, Inputs},
};

/// Where a manifest without a namespace is rendered, as `kubectl apply` would place it.
const NAMESPACE: &str = "default";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("usage: render <manifest.yaml | -> ...".into());
    }
    let mut out = String::new();
    for path in paths {
        let text = if path == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        } else {
            std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?
        };
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document)?;
            if value.get("kind").and_then(serde_yaml::Value::as_str) != Some("PixelCanvas") {
                continue;
            }
            let mut canvas: PixelCanvas =
                serde_yaml::from_value(value).map_err(|e| format!("{path}: {e}"))?;
            let meta = &mut canvas.metadata;
            meta.namespace.get_or_insert_with(|| NAMESPACE.to_owned());
            meta.uid
                .get_or_insert_with(|| "rendered-without-a-cluster".to_owned());
            let inputs = Inputs::new(&canvas, Credentials::default(), &Defaults::default())?;
            for child in children::desired(&inputs).apply {
                out.push_str("---\n");
                out.push_str(&serde_json::to_string_pretty(&child.to_json())?);
                out.push('\n');
            }
        }
    }
    print!("{out}");
    Ok(())
}
