//! `cargo xtask fuzz`: the cargo-fuzz targets in `services/fuzz`, each for a bounded time.
//!
//! Builds with the stable toolchain and `RUSTC_BOOTSTRAP=1`: cargo-fuzz needs nightly flags
//! (`-Zsanitizer=address`, sancov passes), a nightly toolchain cannot be downloaded on every
//! machine that runs this, and stable ships the AddressSanitizer runtime. Each target then runs
//! on a scratch copy of its committed corpus, so CI never dirties `services/fuzz/corpus`;
//! `--grow-corpus` merges what the run found back into it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use pixel_harness::{paths, process};

/// The cargo-fuzz release installed when missing: pinned so every machine builds the same way.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz crate, its own workspace (the root `Cargo.toml` excludes it).
const FUZZ_DIR: &str = "services/fuzz";
/// Seconds per target by default: three targets stay near two minutes with the build cached.
const DEFAULT_SECONDS: u64 = 30;
/// Disk a cold instrumented build takes (0.95 GiB measured), with headroom.
const BUILD_BYTES: u64 = 2 << 30;
/// The committed corpus above which `--grow-corpus` suggests minimising it.
const CORPUS_SOFT_LIMIT_BYTES: u64 = 1 << 20;

/// One fuzz target and the libFuzzer options that fit its input.
#[derive(Debug)]
struct Target {
    name: &'static str,
    /// Longest input libFuzzer generates: enough to reach the format's limits.
    max_len: usize,
    /// A libFuzzer dictionary under `services/fuzz`, for text formats.
    dict: Option<&'static str>,
}

const TARGETS: [Target; 3] = [
    // A 64x64 canvas and a 4096-pixel row fit; larger canvases only repeat the same code.
    Target {
        name: "snapshot_decode",
        max_len: 1 << 16,
        dict: None,
    },
    // The largest frame, 12 + 5 * 4096 = 20492 bytes, and some past it.
    Target {
        name: "frame_decode",
        max_len: 1 << 15,
        dict: None,
    },
    // The gateway's default message limit is 1024 bytes.
    Target {
        name: "client_message",
        max_len: 1 << 12,
        dict: Some("dicts/client_message.dict"),
    },
];

#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = DEFAULT_SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Afterwards, merge the inputs that reached new code into the committed corpus
    /// (`services/fuzz/corpus/<target>`), to commit.
    #[arg(long)]
    pub grow_corpus: bool,
    /// Fuzz only this target (repeatable); all of them by default.
    #[arg(long = "target", value_parser = TARGETS.map(|t| t.name))]
    pub targets: Vec<String>,
}

impl Default for FuzzArgs {
    fn default() -> Self {
        Self {
            seconds: DEFAULT_SECONDS,
            grow_corpus: false,
            targets: Vec::new(),
        }
    }
}

/// `cargo xtask fuzz`: installs cargo-fuzz if needed, builds every target, fuzzes each for
/// `args.seconds`, and fails naming each target that crashed and its saved input.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let started = Instant::now();
    let fuzz_dir = paths::repo_root().join(FUZZ_DIR);
    pixel_harness::deps::ensure_free_space(&paths::repo_root(), BUILD_BYTES, "the fuzz build")?;
    ensure_cargo_fuzz()?;
    let triple = host_triple()?;
    build(&fuzz_dir, &triple)?;
    let build_secs = started.elapsed().as_secs();

    let scratch = fuzz_dir.join("target/xtask-fuzz");
    let bins = target_dir().join(&triple).join("release");
    let mut failures = Vec::new();
    for target in TARGETS
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
    {
        let run = TargetRun {
            target,
            bin: bins.join(target.name),
            corpus: fuzz_dir.join("corpus").join(target.name),
            scratch_corpus: scratch.join("corpus").join(target.name),
            artifacts: scratch.join("artifacts").join(target.name),
            log: scratch.join(format!("{}.log", target.name)),
        };
        match run.fuzz(&fuzz_dir, args.seconds) {
            Ok(()) if args.grow_corpus => run.merge_into_corpus()?,
            Ok(()) => {}
            Err(error) => {
                eprintln!("{error:#}");
                failures.push(target.name);
            }
        }
    }
    println!(
        "fuzz: {} s in all ({build_secs} s installing and building)",
        started.elapsed().as_secs()
    );
    if !failures.is_empty() {
        bail!("fuzzing failed for {}: see above", failures.join(", "));
    }
    Ok(())
}

/// `rustup run stable <program>`: the stable toolchain whatever the default or an override
/// says, for cargo and for the cargo and rustc that cargo-fuzz starts in turn.
fn stable(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "stable", program])
        .current_dir(paths::repo_root())
        // A RUSTC from the caller (cargo sets it for build scripts) could name another
        // toolchain's compiler; cargo-fuzz also reads it to pick its flags.
        .env_remove("RUSTC");
    cmd
}

/// Installs the pinned cargo-fuzz unless that version is already on PATH.
fn ensure_cargo_fuzz() -> Result<()> {
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let installed = process::output_unchecked(
        stable("cargo").args(["fuzz", "--version"]),
        Duration::from_secs(60),
    )?;
    let version = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && version.trim() == wanted {
        return Ok(());
    }
    println!("== installing {wanted} (about 2 minutes)");
    process::run(
        stable("cargo").args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
        Duration::from_secs(30 * 60),
    )
}

/// The host's target triple, under which cargo-fuzz puts the binaries.
fn host_triple() -> Result<String> {
    let version = process::output(stable("rustc").arg("-vV"), Duration::from_secs(60))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` printed no host triple")
}

/// The fuzz build's target directory, in the machine cache: a fresh clone (as CI uses)
/// then rebuilds only what changed instead of the whole instrumented dependency tree.
fn target_dir() -> PathBuf {
    paths::cache_dir().join("fuzz-target")
}

/// Builds every target with AddressSanitizer in one cargo run, so the dependencies are
/// compiled once.
fn build(fuzz_dir: &Path, triple: &str) -> Result<()> {
    // cargo-fuzz has no --locked: check the committed lock first, as `cargo test --locked`
    // does for the main workspace.
    let manifest = fuzz_dir.join("Cargo.toml");
    let mut fetch = stable("cargo");
    fetch
        .args(["fetch", "--locked", "--manifest-path"])
        .arg(&manifest);
    process::run(&mut fetch, Duration::from_secs(10 * 60)).context(
        "services/fuzz/Cargo.lock does not match the crates it fuzzes: run \
         `cargo fetch --manifest-path services/fuzz/Cargo.toml` and commit the lock",
    )?;
    println!("== cargo fuzz build (cold: about 7 minutes on 2 cores)");
    let mut build = stable("cargo");
    build
        .args([
            "fuzz",
            "build",
            "--sanitizer",
            "address",
            "--target",
            triple,
        ])
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(target_dir())
        .env("RUSTC_BOOTSTRAP", "1");
    process::run(&mut build, Duration::from_secs(45 * 60))
}

/// Where one target's run reads and writes.
#[derive(Debug)]
struct TargetRun<'a> {
    target: &'a Target,
    bin: PathBuf,
    /// The committed corpus: read, never written, unless `--grow-corpus`.
    corpus: PathBuf,
    /// A fresh copy of the committed corpus that libFuzzer adds to.
    scratch_corpus: PathBuf,
    artifacts: PathBuf,
    log: PathBuf,
}

impl TargetRun<'_> {
    fn fuzz(&self, fuzz_dir: &Path, seconds: u64) -> Result<()> {
        let name = self.target.name;
        println!("== fuzz {name} for {seconds} s");
        let seeds = fresh_copy(&self.corpus, &self.scratch_corpus)?;
        if seeds == 0 {
            bail!(
                "{name}: no seed inputs in {}; write them with `cargo run --manifest-path \
                 services/fuzz/Cargo.toml --example write_seeds`",
                self.corpus.display()
            );
        }
        recreate_dir(&self.artifacts)?;
        let mut cmd = self.libfuzzer();
        cmd.arg(format!("-max_total_time={seconds}"))
            // One input taking seconds is a hang: these parsers are linear.
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .arg(artifact_prefix(&self.artifacts));
        if let Some(dict) = self.target.dict {
            cmd.arg(format!("-dict={}", fuzz_dir.join(dict).display()));
        }
        cmd.arg(&self.scratch_corpus);
        // Loading the corpus and printing the statistics come on top of the fuzzing time.
        let out = process::output_unchecked(&mut cmd, Duration::from_secs(seconds + 120))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        fs::write(&self.log, stderr.as_bytes())
            .with_context(|| format!("cannot write {}", self.log.display()))?;
        if !out.status.success() {
            for line in crash_summary(&stderr) {
                eprintln!("    {line}");
            }
            let artifact = newest_file(&self.artifacts)?.map_or_else(
                || "no input was saved".to_owned(),
                |path| {
                    format!(
                        "the input is {p}; reproduce with `{bin} {p}`",
                        p = path.display(),
                        bin = self.bin.display()
                    )
                },
            );
            bail!(
                "fuzz target `{name}` failed ({}): {artifact}; full log {}",
                out.status,
                self.log.display()
            );
        }
        let runs = final_stat(&stderr, "number_of_executed_units").unwrap_or(0);
        let added = final_stat(&stderr, "new_units_added").unwrap_or(0);
        println!(
            "{name}: {runs} executions, no crash; {seeds} seeds, {added} new inputs (in {})",
            self.scratch_corpus.display()
        );
        Ok(())
    }

    /// libFuzzer's `-merge=1` adds to the committed corpus only the scratch inputs that reach
    /// code it does not: the corpus grows by what is new, not by everything tried. Existing
    /// files (the seeds among them) are kept.
    fn merge_into_corpus(&self) -> Result<()> {
        let name = self.target.name;
        let before = count_files(&self.corpus)?;
        let mut cmd = self.libfuzzer();
        cmd.arg("-merge=1")
            // New edges only, not new hit counts: a short client_message run otherwise
            // commits a thousand near-duplicate JSON texts; the runs regrow the rest.
            .arg("-use_counters=0")
            .arg(artifact_prefix(&self.artifacts))
            .arg(&self.corpus)
            .arg(&self.scratch_corpus);
        process::output(&mut cmd, Duration::from_secs(10 * 60))
            .with_context(|| format!("cannot merge {name}'s new inputs into its corpus"))?;
        let after = count_files(&self.corpus)?;
        println!(
            "{name}: {} inputs added to {}",
            after.saturating_sub(before),
            self.corpus.display()
        );
        let bytes = dir_bytes(self.corpus.parent().unwrap_or(&self.corpus))?;
        if bytes > CORPUS_SOFT_LIMIT_BYTES {
            println!(
                "note: the committed corpus is {} KiB; minimise it with \
                 `cargo fuzz cmin --fuzz-dir services/fuzz <target>`",
                bytes / 1024
            );
        }
        Ok(())
    }

    /// The target's binary with the options every run shares.
    fn libfuzzer(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(paths::repo_root())
            .arg(format!("-max_len={}", self.target.max_len))
            // A single allocation past this is reported as a crash: a length field must not
            // make a decoder reserve memory the input does not back.
            .arg("-rss_limit_mb=2048")
            // The same ASan option cargo-fuzz sets for `cargo fuzz run`.
            .env("ASAN_OPTIONS", "detect_odr_violation=0");
        cmd
    }
}

/// libFuzzer concatenates the prefix and the file name, so a directory needs its slash.
fn artifact_prefix(dir: &Path) -> String {
    format!("-artifact_prefix={}/", dir.display())
}

fn recreate_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Replaces `to` with a copy of the files in `from`; returns how many.
fn fresh_copy(from: &Path, to: &Path) -> Result<usize> {
    recreate_dir(to)?;
    let mut copied = 0;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

fn count_files(dir: &Path) -> Result<usize> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut count = 0;
    for entry in entries {
        if entry?.file_type()?.is_file() {
            count += 1;
        }
    }
    Ok(count)
}

/// Total size of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// The file libFuzzer wrote last (a crash, leak, timeout or out-of-memory input).
fn newest_file(dir: &Path) -> Result<Option<PathBuf>> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let modified = entry.metadata()?.modified()?;
        if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
            newest = Some((modified, entry.path()));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// The lines of a failed run that say what happened: the panic and its message, the
/// sanitizer's or libFuzzer's error, and the input in base64 (CI may not keep the file). The
/// last lines when none of those is there.
fn crash_summary(stderr: &str) -> Vec<&str> {
    let lines: Vec<&str> = stderr.lines().collect();
    let mut summary = Vec::new();
    for (i, &line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            summary.extend(lines.get(i..=i + 1).unwrap_or(&lines[i..]));
        } else if line.contains("ERROR:")
            || line.starts_with("SUMMARY:")
            || line.starts_with("Base64:")
        {
            summary.push(line);
        }
    }
    if summary.is_empty() {
        summary = lines[lines.len().saturating_sub(20)..].to_vec();
    }
    summary
}

/// A value of libFuzzer's `-print_final_stats` block, such as `stat::new_units_added: 12`.
fn final_stat(stderr: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    stderr
        .lines()
        .find_map(|line| line.strip_prefix(key.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read_from_libfuzzer_output() {
        let stderr = "Done 347538 runs in 6 second(s)\n\
                      stat::number_of_executed_units: 347538\n\
                      stat::average_exec_per_sec:     57923\n\
                      stat::new_units_added:          3039\n";
        assert_eq!(final_stat(stderr, "number_of_executed_units"), Some(347538));
        assert_eq!(final_stat(stderr, "new_units_added"), Some(3039));
        assert_eq!(final_stat(stderr, "peak_rss_mb"), None);
    }

    #[test]
    fn a_crash_is_summarised_by_its_panic_error_and_input() {
        let stderr = "INFO: Seed: 1\n\
                      thread '<unnamed>' (10100) panicked at src/lib.rs:49:5:\n\
                      frame versions 1..=3 do not cover its 2 updates\n\
                      ==10100== ERROR: libFuzzer: deadly signal\n\
                      \x20   #0 0x55 in __sanitizer_print_stack_trace\n\
                      SUMMARY: libFuzzer: deadly signal\n\
                      Base64: AQEA\n\
                      stat::number_of_executed_units: 4\n";
        assert_eq!(
            crash_summary(stderr),
            [
                "thread '<unnamed>' (10100) panicked at src/lib.rs:49:5:",
                "frame versions 1..=3 do not cover its 2 updates",
                "==10100== ERROR: libFuzzer: deadly signal",
                "SUMMARY: libFuzzer: deadly signal",
                "Base64: AQEA",
            ]
        );
        assert_eq!(crash_summary("a\nb\n"), ["a", "b"]);
    }

    #[test]
    fn every_target_has_a_committed_seed_corpus() {
        let fuzz_dir = paths::repo_root().join(FUZZ_DIR);
        for target in &TARGETS {
            let corpus = fuzz_dir.join("corpus").join(target.name);
            assert!(
                count_files(&corpus).expect("corpus dir") > 0,
                "{}",
                corpus.display()
            );
            if let Some(dict) = target.dict {
                assert!(fuzz_dir.join(dict).is_file(), "{dict}");
            }
        }
    }

    #[test]
    fn the_scratch_copy_replaces_what_was_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        fs::create_dir_all(&from).expect("from");
        fs::create_dir_all(&to).expect("to");
        fs::write(from.join("a"), b"a").expect("a");
        fs::write(to.join("stale"), b"s").expect("stale");
        assert_eq!(fresh_copy(&from, &to).expect("copy"), 1);
        assert!(to.join("a").is_file() && !to.join("stale").exists());
        assert!(from.join("a").is_file());
    }
}
