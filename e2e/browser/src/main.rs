//! `pixel-browser-check`: end-to-end checks of a deployed canvas through its Ingress, as
//! browsers use it. The real-pods suite (`xtask/src/real_pods.rs`) runs it as a process and
//! reads the one JSON line it prints on success; on failure it exits non-zero and says why.
//!
//! - `two-pages`: two pages in headless Chromium, their WebSockets on different gateway
//!   pods; a click in one shows in the other.
//! - `gateway-drain`: WebSocket clients held while the caller scales the gateway down; the
//!   ones on the pod that goes get `1001`, reconnect and resync.
//! - `place`: pixels placed over one WebSocket through the Ingress, as the page places them.

mod drain;
mod gateways;
mod place;
mod two_pages;
mod ws;

use std::{fmt, net::IpAddr, process::ExitCode, str::FromStr, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// How often a bounded wait looks again.
pub const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
#[command(
    name = "pixel-browser-check",
    version,
    about = "End-to-end checks of a deployed canvas through its Ingress; prints one JSON summary line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two pages in headless Chromium served by different gateway pods: a pixel clicked in
    /// one shows in the other.
    TwoPages(two_pages::Args),
    /// WebSocket clients through the Ingress, held while the caller scales the gateway
    /// down: prints `ready` once they are connected, then counts the `1001` closes and
    /// checks that each closed client reconnects and resyncs.
    GatewayDrain(drain::Args),
    /// Pixels placed through the Ingress over one WebSocket, as the page places them;
    /// prints the version each produced.
    Place(place::Args),
}

/// `HOST=ADDRESS`: connect to ADDRESS wherever HOST is named (no DNS knows the canvas's
/// host here), as curl's `--resolve` and Chromium's `--host-resolver-rules` do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolve {
    pub host: String,
    pub addr: IpAddr,
}

impl FromStr for Resolve {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (host, addr) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?} is not HOST=ADDRESS"))?;
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() || host.contains([':', '/', ' ', ',']) {
            return Err(format!("{host:?} is not a host name"));
        }
        let addr = addr
            .trim()
            .parse()
            .map_err(|e| format!("{addr:?} is not an IP address: {e}"))?;
        Ok(Self { host, addr })
    }
}

impl fmt::Display for Resolve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.host, self.addr)
    }
}

/// Runs `check` on a multi-threaded runtime and prints its summary as one JSON line.
fn run<T: serde::Serialize>(check: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let summary = runtime.block_on(check)?;
    println!("{}", serde_json::to_string(&summary)?);
    // Tasks still reading closed sockets or the browser's events end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::TwoPages(args) => run(two_pages::run(args)),
        Command::GatewayDrain(args) => run(drain::run(args)),
        Command::Place(args) => run(place::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_is_host_equals_address() {
        let rule: Resolve = "Canvas.localtest.me=127.0.0.1".parse().expect("parses");
        assert_eq!(rule.host, "canvas.localtest.me");
        assert_eq!(rule.addr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(rule.to_string(), "canvas.localtest.me=127.0.0.1");
        assert!("canvas.localtest.me".parse::<Resolve>().is_err());
        assert!("canvas.localtest.me=localhost".parse::<Resolve>().is_err());
        assert!(
            "canvas.localtest.me:80=127.0.0.1"
                .parse::<Resolve>()
                .is_err()
        );
    }

    #[test]
    fn the_flags_parse() {
        Cli::try_parse_from([
            "pixel-browser-check",
            "two-pages",
            "--url",
            "http://canvas.localtest.me:8000/",
            "--resolve",
            "canvas.localtest.me=127.0.0.1",
            "--gateway-metrics",
            "a=http://198.18.0.9:9/metrics",
            "--gateway-metrics",
            "http://198.18.0.10:9/metrics",
        ])
        .expect("two-pages flags");
        Cli::try_parse_from([
            "pixel-browser-check",
            "gateway-drain",
            "--ws-url",
            "ws://canvas.localtest.me:8000/ws",
            "--resolve",
            "canvas.localtest.me=127.0.0.1",
            "--clients",
            "20",
            "--expect-closed-at-least",
            "5",
            "--timeout-secs",
            "90",
        ])
        .expect("gateway-drain flags");
    }
}
