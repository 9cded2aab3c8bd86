//! The test suites: `cargo test --workspace` (needs no cluster), then the end-to-end
//! suites, run by chainsaw against a local cluster.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{cluster::Cluster, paths, process, toolchain};

/// Directory of chainsaw suites; each sub-directory holding a `chainsaw-test.yaml` is a test.
const SUITES_DIR: &str = "e2e/suites";

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Keep the test cluster after the run, to inspect it (its kubeconfig path is printed).
    #[arg(long)]
    keep_cluster: bool,
}

/// `cargo xtask test`: everything, on a cluster started for the run and removed after it.
pub fn test_all(args: &TestArgs) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("== cargo test --workspace");
    process::run(
        Command::new(cargo).current_dir(paths::repo_root()).args([
            "test",
            "--workspace",
            "--locked",
        ]),
        Duration::from_secs(3600),
    )?;

    println!("== end-to-end suites");
    let tools = toolchain::ensure()?;
    let cluster = Cluster::TEST;
    cluster.up(&tools, &crate::cluster::UpArgs { port: None })?;
    let result = chainsaw(&tools, &cluster);
    if args.keep_cluster {
        println!(
            "Keeping the test cluster: KUBECONFIG={}",
            cluster.kubeconfig().display()
        );
    } else if let Err(error) = cluster.down(&tools) {
        eprintln!("warning: could not remove the test cluster: {error:#}");
    }
    result
}

/// `cargo xtask e2e`: the suites alone, against the running developer cluster.
pub fn run_suites() -> Result<()> {
    let tools = toolchain::ensure()?;
    let cluster = Cluster::DEV;
    if !cluster.is_healthy(&tools) {
        bail!(
            "the end-to-end suites need the local cluster, and none answers at {}: \
             run `cargo xtask cluster up` first (or `cargo xtask test`, which starts its own)",
            cluster.kubeconfig().display()
        );
    }
    chainsaw(&tools, &cluster)
}

fn chainsaw(tools: &toolchain::Tools, cluster: &Cluster) -> Result<()> {
    let suites = paths::repo_root().join(SUITES_DIR);
    let count = count_tests(&suites)?;
    if count == 0 {
        bail!("no chainsaw tests found under {}", suites.display());
    }
    let report_dir = paths::repo_root().join("target/e2e");
    std::fs::create_dir_all(&report_dir)?;
    let path = prepend_path(tools.kubectl.parent().context("kubectl has a directory")?);
    let out = process::output_unchecked(
        Command::new(&tools.chainsaw)
            .env("KUBECONFIG", cluster.kubeconfig())
            // Scripts in the suites run the pinned kubectl.
            .env("PATH", path)
            .args(["test", "--no-color", "--parallel", "4"])
            .args([
                "--assert-timeout",
                "90s",
                "--error-timeout",
                "90s",
                "--delete-timeout",
                "90s",
            ])
            .args([
                "--report-format",
                "JSON",
                "--report-name",
                "chainsaw-report",
            ])
            .arg("--report-path")
            .arg(&report_dir)
            .arg("--test-dir")
            .arg(&suites),
        Duration::from_secs(1800),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = parse_summary(&stdout)
        .with_context(|| format!("chainsaw ({}) printed no test summary", out.status))?;
    println!("e2e: {} passed, {} failed", summary.passed, summary.failed);
    if !out.status.success() || summary.failed > 0 || summary.passed != count {
        bail!(
            "end-to-end suites failed: {} of {count} tests passed (report: {})",
            summary.passed,
            report_dir.join("chainsaw-report.json").display()
        );
    }
    Ok(())
}

fn prepend_path(dir: &std::path::Path) -> std::ffi::OsString {
    let mut parts = vec![dir.to_path_buf()];
    parts.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(parts).unwrap_or_default()
}

/// Number of test files (`chainsaw-test.yaml`) under `dir`, recursively.
fn count_tests(dir: &std::path::Path) -> Result<usize> {
    let mut count = 0;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .is_some_and(|name| name == "chainsaw-test.yaml")
            {
                // A file may hold several tests, separated by `---`.
                count += std::fs::read_to_string(&path)?
                    .matches("kind: Test\n")
                    .count();
            }
        }
    }
    Ok(count)
}

#[derive(Debug, PartialEq, Eq)]
struct Summary {
    passed: usize,
    failed: usize,
}

/// Reads chainsaw's closing summary (`- Passed  tests N`, `- Failed  tests N`).
fn parse_summary(stdout: &str) -> Option<Summary> {
    let count = |label: &str| {
        stdout.lines().rev().find_map(|line| {
            let rest = line
                .trim()
                .strip_prefix('-')?
                .trim()
                .strip_prefix(label)?
                .trim();
            rest.strip_prefix("tests")?.trim().parse().ok()
        })
    };
    Some(Summary {
        passed: count("Passed")?,
        failed: count("Failed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_chainsaw_summary() {
        let out =
            "Tests Summary...\n- Passed  tests 4\n- Failed  tests 1\n- Skipped tests 0\nDone.\n";
        assert_eq!(
            parse_summary(out),
            Some(Summary {
                passed: 4,
                failed: 1
            })
        );
        assert_eq!(parse_summary("Loading...\nerror: boom\n"), None);
    }

    #[test]
    fn the_cluster_suites_are_found() {
        let count = count_tests(&paths::repo_root().join(SUITES_DIR)).expect("suites");
        assert!(count >= 4, "found {count} tests");
    }
}
