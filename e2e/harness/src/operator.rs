//! Runs the operator binary against a local cluster: for the end-to-end suites (started
//! before them, stopped with SIGTERM after) and for `cargo xtask up` (left running).

use std::{
    fs::File,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::process;

/// A running operator.
#[derive(Debug)]
pub struct Operator {
    child: Child,
    /// Its health and metrics endpoint.
    pub addr: SocketAddr,
    /// The binary, for suites that start one of their own.
    pub binary: std::path::PathBuf,
    /// Left running on purpose (`detach`); otherwise dropping it kills the process.
    detached: bool,
}

impl Drop for Operator {
    /// An operator that a failed step leaves behind must not outlive xtask.
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Operator {
    /// Builds and starts the operator with `kubeconfig` and `args`, and waits until it is
    /// ready (leading with synced caches, or standing by).
    pub fn start(kubeconfig: &Path, log_path: &Path, args: &[&str]) -> Result<Self> {
        let binary = Self::build(false)?;
        Self::start_binary(&binary, kubeconfig, log_path, args)
    }

    /// Builds the operator binary (debug, or release for benchmarks) and returns its path.
    pub fn build(release: bool) -> Result<std::path::PathBuf> {
        Ok(process::cargo_build(release, &["pixel-operator"])?.join("pixel-operator"))
    }

    /// Starts `binary` as [`Operator::start`] does.
    pub fn start_binary(
        binary: &Path,
        kubeconfig: &Path,
        log_path: &Path,
        args: &[&str],
    ) -> Result<Self> {
        let binary = binary.to_path_buf();
        let log = File::create(log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        // The log file, not a pipe, holds its output, so it can outlive this process.
        let mut child = process::spawn(
            Command::new(&binary)
                .args(["--listen-addr", "127.0.0.1:0", "--log-format", "json"])
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .env("RUST_LOG", "info,kube=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0),
        )?;
        let mut addr = None;
        let listening =
            process::wait_until("the operator to listen", Duration::from_secs(60), || {
                if child.try_wait()?.is_some() {
                    bail!("the operator exited");
                }
                let text = std::fs::read_to_string(log_path).unwrap_or_default();
                addr = text.lines().find_map(listening_addr);
                Ok(addr.is_some())
            });
        if let Err(error) = listening {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error.context(format!("see {}", log_path.display())));
        }
        let addr = addr.context("the operator logged no address")?;
        let operator = Self {
            child,
            addr,
            binary,
            detached: false,
        };
        // On failure, dropping it kills the process.
        operator.wait_ready(log_path)?;
        println!(
            "Operator running (metrics at http://{addr}/metrics, log {})",
            log_path.display()
        );
        Ok(operator)
    }

    fn wait_ready(&self, log_path: &Path) -> Result<()> {
        let url = format!("http://{}/readyz", self.addr);
        process::wait_until(
            "the operator to become ready",
            Duration::from_secs(60),
            || Ok(ureq::get(&url).call().is_ok()),
        )
        .with_context(|| format!("see {}", log_path.display()))
    }

    /// Leaves it running after xtask exits, its pid in `pid_file` for `stop_detached`.
    pub fn detach(mut self, pid_file: &Path) -> Result<()> {
        self.detached = true;
        std::fs::write(pid_file, self.child.id().to_string())
            .with_context(|| format!("cannot write {}", pid_file.display()))
    }

    /// Stops an operator left running by `detach`, if it still runs.
    pub fn stop_detached(pid_file: &Path) -> Result<()> {
        process::stop_detached(pid_file, "pixel-operator").map(drop)
    }

    /// Its process id, to read its memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads one sample of its metrics, e.g. `pixel_operator_leader`.
    pub fn metric(&self, name: &str) -> Result<Option<f64>> {
        let body = ureq::get(&format!("http://{}/metrics", self.addr))
            .call()
            .context("reading the operator's metrics")?
            .body_mut()
            .read_to_string()
            .context("reading the operator's metrics")?;
        Ok(body.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        }))
    }

    /// Kills it outright (SIGKILL): a crash, leaving its lease to expire.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill().context("kill the operator")?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops it with SIGTERM, as Kubernetes would, and waits for it to exit.
    pub fn stop(mut self) -> Result<()> {
        if !process::terminate(&mut self.child, Duration::from_secs(30))? {
            bail!("the operator did not exit within 30 s of SIGTERM");
        }
        Ok(())
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    (fields.get("message")?.as_str()? == "listening").then_some(())?;
    fields.get("addr")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_bound_address() {
        let line = r#"{"fields":{"message":"listening","addr":"127.0.0.1:4000"}}"#;
        assert_eq!(
            super::listening_addr(line),
            Some("127.0.0.1:4000".parse().expect("addr"))
        );
        assert_eq!(
            super::listening_addr(r#"{"fields":{"message":"other"}}"#),
            None
        );
    }
}
