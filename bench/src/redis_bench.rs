//! The limit side: `redis-benchmark` against the same redis-server, its `--csv` output read.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use pixel_harness::process;

/// One `redis-benchmark` test's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisFigures {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `redis-benchmark` pinned to `cores`: `clients` connections, no pipelining,
/// `requests` requests of the custom `command`.
pub fn run(
    cores: &str,
    port: u16,
    clients: usize,
    requests: u64,
    command: &[&str],
    log_dir: &Path,
) -> Result<RedisFigures> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cores, "redis-benchmark", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-P", "1", "-n", &requests.to_string(), "--csv"])
        .args(command);
    let out = process::output(&mut cmd, Duration::from_secs(300))?;
    let _ = std::fs::write(log_dir.join("redis-benchmark.last.csv"), &out);
    parse_csv(&out).with_context(|| format!("`{}` printed: {out}", process::describe(&cmd)))
}

/// Reads `redis-benchmark --csv`: a header line naming the columns, then one line per test
/// (we run one). A server error (e.g. a rejected argument) is printed instead of the line.
pub fn parse_csv(text: &str) -> Result<RedisFigures> {
    if text.contains("Error from server") {
        bail!("redis-server rejected the command");
    }
    // Progress lines end in a bare carriage return; only the CSV lines start with a quote.
    let mut lines = text
        .split(['\r', '\n'])
        .filter(|line| line.starts_with('"'));
    let header = split(lines.next().context("no CSV header")?);
    let row = split(lines.next().context("no CSV row")?);
    let column = |name: &str| -> Result<f64> {
        let index = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no `{name}` column"))?;
        let value = row
            .get(index)
            .with_context(|| format!("no `{name}` value"))?;
        value
            .parse::<f64>()
            .with_context(|| format!("`{name}` is not a number: {value}"))
    };
    Ok(RedisFigures {
        requests_per_s: column("rps")?,
        p50_ms: column("p50_latency_ms")?,
        p99_ms: column("p99_latency_ms")?,
    })
}

/// Splits one CSV line of quoted fields. The test name may hold commas inside its quotes.
fn split(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in line.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
        \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
        \"BITFIELD some-key SET u8 #123456 5\",\"26773.76\",\"1.024\",\"0.168\",\"0.631\",\
        \"4.007\",\"8.287\",\"12.223\"\n";

    #[test]
    fn reads_rps_and_latencies() {
        let figures = parse_csv(SAMPLE).expect("parses");
        assert_eq!(
            figures,
            RedisFigures {
                requests_per_s: 26773.76,
                p50_ms: 0.631,
                p99_ms: 8.287
            }
        );
    }

    #[test]
    fn progress_lines_and_commas_in_names_are_skipped() {
        let text = format!("GET: rps=10.0\r{}", SAMPLE.replace("SET u8", "SET, u8"));
        assert_eq!(parse_csv(&text).expect("parses").requests_per_s, 26773.76);
    }

    #[test]
    fn server_errors_and_empty_output_fail() {
        let error = parse_csv("Error from server: ERR bit offset is not an integer")
            .expect_err("server error");
        assert!(error.to_string().contains("rejected"), "{error}");
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n\"GET\",\"fast\"\n").is_err());
    }
}
