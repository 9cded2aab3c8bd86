//! The test suites: `cargo test --workspace` (needs no cluster), then the end-to-end
//! suites, run by chainsaw against a local cluster.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use clap::ValueEnum;
use pixel_harness::{cluster::Cluster, operator::Operator, paths, process, toolchain};

use crate::scenarios::{self, Scenario};

/// Directory of chainsaw suites; each sub-directory holding a `chainsaw-test.yaml` is a test.
const SUITES_DIR: &str = "e2e/suites";
/// Disk a cold `cargo test --workspace` takes (1.7 GiB measured), with headroom for the
/// operator build and the cluster's etcd.
const TEST_BUILD_BYTES: u64 = 4 << 30;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Keep the test cluster after the run, to inspect it (its kubeconfig path is printed).
    #[arg(long)]
    keep_cluster: bool,
}

/// `cargo xtask test`: everything, on a cluster started for the run and removed after it.
pub fn test_all(args: &TestArgs) -> Result<()> {
    // The services' tests start a real redis-server; the frontend's drives headless Chromium;
    // the harness's image tests build and unpack images with umoci.
    pixel_harness::deps::ensure_debian_packages(&["redis-server", "chromium", "umoci"])?;
    pixel_harness::deps::ensure_free_space(&paths::repo_root(), TEST_BUILD_BYTES, "a test build")?;
    // On a fresh machine the Go tools take half an hour to build; they need no test's
    // result, so they build meanwhile on the cores the tests leave idle.
    let toolchain = toolchain::BackgroundBuild::start(true);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The backup tests' S3-compatible server, a real one.
    let s3_server = pixel_harness::object_store::ensure_server()?;
    let cargo_test = |extra: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(paths::repo_root())
            .args(["test", "--workspace", "--locked"])
            .args(extra)
            .env(pixel_common::ports::ENV_TEST_S3_SERVER, &s3_server);
        if std::env::var_os("CI").is_some() {
            // A one-off build gains nothing from incremental state, which doubles target/.
            cmd.env("CARGO_INCREMENTAL", "0");
        }
        cmd
    };
    println!("== cargo test --workspace");
    process::run(&mut cargo_test(&["--no-run"]), Duration::from_secs(3600))?;
    // Flush the gigabytes the build just wrote before any test runs: the Redis crash tests
    // fsync every write under a 500 ms command timeout, and a fresh clone's writeback made
    // such fsyncs slower than that.
    process::run(&mut Command::new("sync"), Duration::from_secs(300))?;
    process::run(&mut cargo_test(&[]), Duration::from_secs(3600))?;

    println!("== sign-in: Chromium against a real OpenID Connect provider (zitadel/oidc)");
    let provider = toolchain::ensure_oidc_provider()?;
    // The same build as above (`--workspace`, so no feature set differs), one test of it.
    let mut sign_in = cargo_test(&["--test", "browser", "--", "--ignored", "sign_in"]);
    sign_in.env(pixel_common::ports::ENV_TEST_OIDC_PROVIDER, &provider);
    process::run(&mut sign_in, Duration::from_secs(600))?;

    println!("== fuzzing: the decoders and the client-message parser (cargo-fuzz)");
    crate::fuzz::run(&crate::fuzz::FuzzArgs::default())?;
    println!("== fuzzing: canvas-api against its OpenAPI document (schemathesis)");
    crate::api_fuzz::run()?;
    println!("== cargo deny: licenses, bans, sources");
    crate::deny::run()?;
    println!("== kube-score: the children of every example");
    crate::kube_score::run()?;

    println!("== end-to-end suites");
    let tools = toolchain.wait()?;
    let cluster = Cluster::TEST;
    let kernel_settings = pixel_harness::node::host_sysctls();
    cluster.up(&tools, None)?;
    let outcome = chainsaw(&tools, &cluster, Suites::WithRealPods);
    if args.keep_cluster {
        println!(
            "Keeping the test cluster: KUBECONFIG={}",
            cluster.kubeconfig().display()
        );
        return outcome?.report();
    }
    // `down` itself fails when the real node left anything behind (processes, mounts,
    // namespaces, links, routes, nftables tables, cgroups, CNI results, directories).
    let removed = cluster
        .down(&tools)
        .context("`cluster down` left the machine unclean");
    let restored = check_restored(&kernel_settings, &pixel_harness::node::host_sysctls());
    let summary = outcome?;
    removed?;
    restored?;
    println!("PASS cluster-down-leaves-nothing");
    // The summary is the run's last line.
    summary.report()
}

/// The host-wide kernel settings kubelet changes are back to what they were.
fn check_restored(before: &[(String, String)], after: &[(String, String)]) -> Result<()> {
    let changed: Vec<String> = before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a)
        .map(|((key, was), (_, now))| format!("{key}: {was} -> {now}"))
        .collect();
    if !changed.is_empty() {
        bail!(
            "the real node left kernel settings changed: {}",
            changed.join(", ")
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Run only this scenario, not the chainsaw suites (the operator `cargo xtask up`
    /// deployed is scaled to zero meanwhile).
    #[arg(long, value_enum, conflicts_with = "real_pods")]
    scenario: Option<Scenario>,
    /// Run only the real-pods suite (it runs the operator in the cluster, as `cargo xtask
    /// up` does).
    #[arg(long)]
    real_pods: bool,
}

/// `cargo xtask e2e`: the suites alone, against the running developer cluster.
pub fn run_suites(args: &E2eArgs) -> Result<()> {
    let tools = toolchain::ensure()?;
    let cluster = Cluster::DEV;
    if !cluster.is_healthy(&tools) {
        bail!(
            "the end-to-end suites need the local cluster, and none answers at {}: \
             run `cargo xtask cluster up` first (or `cargo xtask test`, which starts its own)",
            cluster.kubeconfig().display()
        );
    }
    if args.real_pods {
        let results = crate::real_pods::run(&tools, &cluster);
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        for (name, result) in &results {
            match result {
                Ok(()) => println!("PASS {name}"),
                Err(error) => println!("FAIL {name}: {error:#}"),
            }
        }
        println!(
            "real-pods: {} passed, {failed} failed",
            results.len() - failed
        );
        if failed > 0 {
            bail!("the real-pods suite failed");
        }
        return Ok(());
    }
    if let Some(scenario) = args.scenario {
        cluster.install_operator_config(&tools)?;
        cluster.scale_in_cluster_operator(&tools, 0)?;
        cluster.ensure_storage(&tools)?;
        let report_dir = paths::repo_root().join("target/e2e");
        std::fs::create_dir_all(&report_dir)?;
        let operator_kubeconfig = report_dir.join("operator.kubeconfig");
        cluster.write_operator_kubeconfig(&tools, &operator_kubeconfig)?;
        return scenario.run(&scenarios::Stage {
            tools: &tools,
            cluster: &cluster,
            operator_kubeconfig: &operator_kubeconfig,
            report_dir: &report_dir,
        });
    }
    chainsaw(&tools, &cluster, Suites::Kwok)?.report()
}

/// Which suites run after chainsaw's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suites {
    /// The scenarios.
    Kwok,
    /// The scenarios, then the real-pods suite (which leaves the operator running in the
    /// cluster, so it runs on the test cluster only).
    WithRealPods,
}

/// Runs the suites; the summary says whether they passed.
fn chainsaw(tools: &toolchain::Tools, cluster: &Cluster, suites_to_run: Suites) -> Result<Summary> {
    let suites = paths::repo_root().join(SUITES_DIR);
    let count = count_tests(&suites)?;
    if count == 0 {
        bail!("no chainsaw tests found under {}", suites.display());
    }
    cluster.install_operator_config(tools)?;
    // The operator under test runs beside the cluster; one `cargo xtask up` deployed in the
    // cluster would hold the lease (the real-pods suite and `up` scale it back).
    cluster.scale_in_cluster_operator(tools, 0)?;
    cluster.ensure_storage(tools)?;
    let report_dir = paths::repo_root().join("target/e2e");
    std::fs::create_dir_all(&report_dir)?;
    let operator_kubeconfig = report_dir.join("operator.kubeconfig");
    cluster.write_operator_kubeconfig(tools, &operator_kubeconfig)?;
    let operator = Operator::start(&operator_kubeconfig, &report_dir.join("operator.log"), &[])?;
    let path = prepend_path(tools.kubectl.parent().context("kubectl has a directory")?);
    let run = process::output_unchecked(
        Command::new(toolchain::ensure_chainsaw()?)
            .env("KUBECONFIG", cluster.kubeconfig())
            // Scripts in the suites run the pinned kubectl.
            .env("PATH", path)
            // The operator's metrics, for suites that count its API writes.
            .env(
                "OPERATOR_METRICS_URL",
                format!("http://{}/metrics", operator.addr),
            )
            // Suites that start an operator of their own (for example, a restart).
            .env("OPERATOR_BIN", &operator.binary)
            .env("OPERATOR_KUBECONFIG", &operator_kubeconfig)
            .args(["test", "--no-color", "--parallel", "4"])
            // Four suites at once on two cores: a script of a dozen kubectl calls took over
            // chainsaw's 5 s default (operator-rbac was killed), and applies can be slow too.
            .args([
                "--assert-timeout",
                "90s",
                "--error-timeout",
                "90s",
                "--delete-timeout",
                "90s",
                "--exec-timeout",
                "60s",
                "--apply-timeout",
                "30s",
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
    );
    // Stopped whatever chainsaw did.
    if let Err(error) = operator.stop() {
        eprintln!("warning: {error:#}");
    }
    let out = run?;
    // Scenarios that control processes and the control plane, which chainsaw cannot.
    let stage = scenarios::Stage {
        tools,
        cluster,
        operator_kubeconfig: &operator_kubeconfig,
        report_dir: &report_dir,
    };
    let mut outcomes: Vec<(String, Result<()>)> = Scenario::value_variants()
        .iter()
        .map(|scenario| {
            let name = format!("scenario {}", scenario.name());
            println!("== {name}");
            (name, scenario.run(&stage))
        })
        .collect();
    if suites_to_run == Suites::WithRealPods {
        println!("== real-pods suite");
        outcomes.extend(crate::real_pods::run(tools, cluster));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let mut summary = parse_summary(&stdout)
        .with_context(|| format!("chainsaw ({}) printed no test summary", out.status))?;
    summary.expected = count + outcomes.len();
    summary.runner_succeeded = out.status.success();
    for (name, outcome) in outcomes {
        match outcome {
            Ok(()) => {
                println!("PASS {name}");
                summary.passed += 1;
            }
            Err(error) => {
                println!("FAIL {name}: {error:#}");
                summary.failed += 1;
            }
        }
    }
    summary.report_path = report_dir.join("chainsaw-report.json");
    Ok(summary)
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

#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    passed: usize,
    failed: usize,
    /// Tests found in the suites: each must pass.
    expected: usize,
    runner_succeeded: bool,
    report_path: PathBuf,
}

impl Summary {
    /// Prints the closing line and fails unless every expected test passed.
    fn report(self) -> Result<()> {
        println!("e2e: {} passed, {} failed", self.passed, self.failed);
        if !self.runner_succeeded || self.failed > 0 || self.passed != self.expected {
            bail!(
                "end-to-end suites failed: {} of {} tests passed (report: {})",
                self.passed,
                self.expected,
                self.report_path.display()
            );
        }
        Ok(())
    }
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
        ..Summary::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_chainsaw_summary() {
        let out =
            "Tests Summary...\n- Passed  tests 4\n- Failed  tests 1\n- Skipped tests 0\nDone.\n";
        let summary = parse_summary(out).expect("summary");
        assert_eq!((summary.passed, summary.failed), (4, 1));
        assert_eq!(parse_summary("Loading...\nerror: boom\n"), None);
    }

    #[test]
    fn a_run_passes_only_when_every_expected_test_passed() {
        let run = |passed, failed, expected, runner_succeeded| {
            Summary {
                passed,
                failed,
                expected,
                runner_succeeded,
                ..Summary::default()
            }
            .report()
        };
        assert!(run(4, 0, 4, true).is_ok());
        assert!(run(3, 1, 4, false).is_err());
        assert!(
            run(3, 0, 4, true).is_err(),
            "a test that did not run is a failure"
        );
        assert!(
            run(4, 0, 4, false).is_err(),
            "so is a runner that exited non-zero"
        );
    }

    #[test]
    fn changed_kernel_settings_fail_the_run() {
        let setting = |value: &str| vec![("kernel/panic".to_owned(), value.to_owned())];
        assert!(check_restored(&setting("1"), &setting("1")).is_ok());
        let error = check_restored(&setting("1"), &setting("10")).expect_err("changed");
        assert!(
            error.to_string().contains("kernel/panic: 1 -> 10"),
            "{error}"
        );
    }

    #[test]
    fn the_cluster_suites_are_found() {
        let count = count_tests(&paths::repo_root().join(SUITES_DIR)).expect("suites");
        assert!(count >= 4, "found {count} tests");
    }
}
