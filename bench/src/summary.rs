//! How a load generator hands its figures back: one JSON object on the last such line of its
//! stdout (anything it printed before is progress or noise).

use anyhow::{Context, Result};

/// The summary a load generator prints: the last line of its stdout that is a JSON object.
pub fn last_json_line<T: serde::de::DeserializeOwned>(stdout: &str, who: &str) -> Result<T> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .with_context(|| format!("{who} printed no JSON summary"))?;
    serde_json::from_str(line).with_context(|| format!("cannot parse the summary of {who}"))
}
