//! Checks of architecture invariants that no compiler enforces.

#[cfg(test)]
mod tests {
    use pixel_harness::paths::repo_root;

    fn manifest(path: &str) -> String {
        std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn dependency_names(manifest: &str) -> Vec<String> {
        let mut in_deps = false;
        let mut names = Vec::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                in_deps = line.ends_with("dependencies]");
            } else if in_deps && let Some((name, _)) = line.split_once('=') {
                names.push(name.trim().to_owned());
            }
        }
        names
    }

    /// Architecture invariant: only operator/ talks to the Kubernetes API.
    #[test]
    fn services_never_depend_on_kube() {
        for crate_dir in [
            "services/common",
            "services/canvas-api",
            "services/gateway",
            "services/frontend",
            "services/backup",
        ] {
            let names = dependency_names(&manifest(&format!("{crate_dir}/Cargo.toml")));
            assert!(!names.is_empty(), "{crate_dir} lists its dependencies");
            for forbidden in ["kube", "kube-runtime", "k8s-openapi"] {
                assert!(
                    !names.iter().any(|n| n == forbidden),
                    "{crate_dir} depends on {forbidden}"
                );
            }
        }
    }

    /// k8s-openapi's API version feature is the minor version of the pinned control plane.
    #[test]
    fn k8s_openapi_feature_matches_the_control_plane() {
        let pin = manifest("e2e/toolchain/kubernetes/go.mod")
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("require k8s.io/kubernetes v1.")
                    .map(str::to_owned)
            })
            .expect("k8s.io/kubernetes is pinned");
        let minor = pin.split('.').next().expect("minor version");
        let workspace = manifest("Cargo.toml");
        let line = workspace
            .lines()
            .find(|l| l.starts_with("k8s-openapi"))
            .expect("k8s-openapi dependency");
        assert!(
            line.contains(&format!("\"v1_{minor}\"")),
            "{line} should enable v1_{minor}"
        );
    }

    /// Build invariant: `cargo xtask` (compiled by every `up`) builds none of what only the
    /// benchmarks or the running services need: pixel-common's runtime stays off, and the
    /// browser, WebSocket and async HTTP clients live in pixel-bench.
    #[test]
    fn xtask_builds_without_the_benchmark_and_service_runtime() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = std::process::Command::new(cargo)
            .current_dir(repo_root())
            .args([
                "tree",
                "--offline",
                "--locked",
                "-p",
                "xtask",
                "-e",
                "normal",
            ])
            .args(["--prefix", "none", "--format", "{p}"])
            .output()
            .expect("cargo tree runs");
        assert!(
            output.status.success(),
            "cargo tree: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        let crates: Vec<&str> = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert!(crates.contains(&"pixel-harness"), "{tree}");
        for heavy in [
            "chromiumoxide",
            "tokio-tungstenite",
            "reqwest",
            "futures-util",
            "tokio",
            "axum",
            "prometheus-client",
            "tracing-subscriber",
        ] {
            assert!(
                !crates.contains(&heavy),
                "xtask depends on {heavy}:\n{tree}"
            );
        }
    }
}
