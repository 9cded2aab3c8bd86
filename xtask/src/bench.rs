//! `cargo xtask bench`: builds the benchmarks (`pixel-bench`, a crate of their own) in
//! release mode and runs `pixel-bench run` with the arguments given; the benchmarks
//! themselves, and their load generators, live there.

use std::{ffi::OsString, process::Command};

use anyhow::{Result, bail};
use pixel_harness::{paths, process};

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// `[NAME] [--rounds N] [--seconds S] [--clients C]`, as `pixel-bench run --help` lists
    /// them (also shown by `cargo xtask bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let bench = process::cargo_build(true, &["pixel-bench"])?.join("pixel-bench");
    let mut cmd = Command::new(bench);
    cmd.current_dir(paths::repo_root())
        .arg("run")
        .args(&args.args);
    // As long as its rounds take (the operator benchmarks run for many minutes); Ctrl-C
    // reaches it as well as this process.
    let status = process::spawn(&mut cmd)?.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", process::describe(&cmd));
    }
    Ok(())
}
