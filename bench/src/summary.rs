//! How a load generator hands its figures back: one JSON object on the last such line of its
//! stdout (anything it printed before is progress or noise).

use std::future::Future;

use anyhow::{Context, Result};

/// The body of a load generator's subcommand: runs `load` on a multi-threaded tokio runtime
/// and prints its summary as one JSON line, for [`last_json_line`] to read back.
pub fn run_and_print<T: serde::Serialize>(load: impl Future<Output = Result<T>>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let summary = runtime.block_on(load)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The summary a load generator prints: the last line of its stdout that is a JSON object.
pub fn last_json_line<T: serde::de::DeserializeOwned>(stdout: &str, who: &str) -> Result<T> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .with_context(|| format!("{who} printed no JSON summary"))?;
    serde_json::from_str(line).with_context(|| format!("cannot parse the summary of {who}"))
}
