//! Drives a real binary in tests: starts it on port 0, finds the bound address in its JSON
//! log, talks HTTP to it and stops it with SIGTERM like Kubernetes would.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

/// Generous bound for a local process to start or stop; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);

/// A binary under test, listening on a loopback port.
#[derive(Debug)]
pub struct RunningBinary {
    child: Child,
    log: Lines<BufReader<ChildStdout>>,
    /// The address the binary bound (from its `listening` log line).
    pub addr: SocketAddr,
}

impl RunningBinary {
    /// Starts `exe` with `--listen-addr 127.0.0.1:0 --log-format json` plus `args` and waits
    /// for its `listening` log line.
    pub async fn start(exe: impl AsRef<Path>, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let exe = exe.as_ref();
        let mut child = Command::new(exe)
            .args(["--listen-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .envs(envs.iter().copied())
            .env_remove(crate::ports::ENV_LISTEN_ADDR)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut log = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = log.next_line().await.expect("read log") {
                if let Some(addr) = listening_addr(&line) {
                    return addr;
                }
            }
            panic!("{} exited before it logged `listening`", exe.display());
        })
        .await
        .unwrap_or_else(|_| panic!("{} did not log `listening` in time", exe.display()));
        Self { child, log, addr }
    }

    /// GETs `path` and returns the status code and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Sends SIGTERM and waits for the process to exit. Returns the exit code and the log
    /// lines printed after the signal.
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let pid = self.child.id().expect("still running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        nix::sys::signal::kill(pid, Signal::SIGTERM).expect("send SIGTERM");
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exits within the grace period after SIGTERM")
            .expect("wait");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.log.next_line().await {
            rest.push(line);
        }
        (status.code(), rest)
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// The standard checks every binary passes at this stage: it serves `/healthz`, logs JSON,
/// and exits 0 promptly on SIGTERM.
pub async fn assert_serves_health_and_stops_on_sigterm(
    exe: impl AsRef<Path>,
    envs: &[(&str, &str)],
) {
    let running = RunningBinary::start(exe, &[], envs).await;
    assert_eq!(
        running.get(crate::ports::HEALTHZ_PATH).await,
        (200, "ok".to_owned())
    );
    let (code, log) = running.terminate().await;
    assert_eq!(
        code,
        Some(0),
        "clean exit on SIGTERM; log after signal: {log:?}"
    );
    assert!(
        log.iter().any(|line| line.contains("shutting down")),
        "logs the shutdown: {log:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn finds_the_bound_address_in_a_json_log_line() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:4321"},"target":"x"}"#;
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:4321".parse().expect("addr"))
        );
        assert_eq!(
            listening_addr(r#"{"fields":{"message":"other","addr":"127.0.0.1:1"}}"#),
            None
        );
        assert_eq!(listening_addr("not json"), None);
    }
}
