//! Runs `pixel-browser-check` (`e2e/browser`), the real-pods suite's browser and WebSocket
//! client: built here like the benchmarks (`bench.rs`) and run as a process, never linked,
//! so xtask stays a build system. It prints one JSON summary as its last line on success
//! and exits non-zero with a message on failure; `gateway-drain` also prints `ready` once
//! its clients are connected, the cue for the caller to scale the gateway down.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pixel_harness::process;
use serde_json::Value;

/// The package and its binary.
const PACKAGE: &str = "pixel-browser-check";

/// Builds the binary (the dev profile, which the workspace's tests already built most of)
/// and returns its path.
pub fn build() -> Result<PathBuf> {
    Ok(process::cargo_build(false, &[PACKAGE])?.join(PACKAGE))
}

/// The summary: the last line of `stdout` that is a JSON object.
pub fn summary(stdout: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .with_context(|| format!("{PACKAGE} printed no JSON summary: {stdout:.400}"))?;
    serde_json::from_str(line).with_context(|| format!("cannot parse {PACKAGE}'s summary {line}"))
}

/// A running `pixel-browser-check`: its stdout line by line, its stderr kept for the error
/// message; killed if dropped before it exits.
pub struct Running {
    child: Child,
    description: String,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = process::spawn(cmd)?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut stderr = child.stderr.take().context("no stderr pipe")?;
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Self {
            child,
            description: process::describe(cmd),
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        })
    }

    /// Waits until the program prints the line `wanted`; fails if it ends first or after
    /// `limit`.
    pub fn wait_for_line(&mut self, wanted: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.trim() == wanted;
                    self.stdout.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let said = self.stderr_text();
                    bail!(
                        "`{}` did not print `{wanted}` within {} s; it printed {:?} and said: {said}",
                        self.description,
                        limit.as_secs(),
                        self.stdout,
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    let said = self.stderr_text();
                    bail!(
                        "`{}` ended ({status}) before printing `{wanted}`: {said}",
                        self.description,
                    );
                }
            }
        }
    }

    /// Waits (at most `limit`) for the program to exit and returns its stdout; fails, with
    /// what it said, unless it exited 0.
    pub fn finish(mut self, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let said = self.stderr_text();
                bail!(
                    "`{}` did not finish within {} s and was stopped: {said}",
                    self.description,
                    limit.as_secs(),
                );
            }
            thread::sleep(Duration::from_millis(100));
        };
        // The pipe closes with the process: the reader thread sends what is left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        if !status.success() {
            let said = self.stderr_text();
            bail!("`{}` failed ({status}): {said}", self.description);
        }
        Ok(self.stdout.join("\n"))
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_last_json_line() {
        let out = "ready\n{\"a\":1}\nnoise\n{\"check\":\"gateway-drain\",\"closed_1001\":10}\n";
        assert_eq!(summary(out).expect("a summary")["closed_1001"], 10);
        assert!(summary("ready\n").is_err());
    }
}
