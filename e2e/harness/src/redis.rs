//! The redis-server processes the tooling starts (for `cargo xtask dev` and the benchmarks):
//! on loopback, and ready once `redis-cli` gets its PONG.

use std::{ffi::OsString, path::Path, process::Command, time::Duration};

use anyhow::Result;

use crate::process;

/// How long a freshly started redis-server may take to answer.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The arguments of a redis-server on `127.0.0.1:port` keeping its data in `dir`, persisted
/// as the operator's default persists it: an append-only file, fsynced every second, no RDB
/// snapshots.
pub fn server_args(port: u16, dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--bind", "127.0.0.1", "--port", &port.to_string()]
        .into_iter()
        .chain([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .map(OsString::from)
        .collect();
    args.push("--dir".into());
    args.push(dir.into());
    args
}

/// Runs `redis-cli` against the redis-server on `127.0.0.1:port` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    process::output(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        Duration::from_secs(10),
    )
}

/// Waits until the redis-server on `port` answers PING, failing early when `still_running`
/// finds that the server (or anything started with it) exited.
pub fn wait_until_answering(
    port: u16,
    mut still_running: impl FnMut() -> Result<()>,
) -> Result<()> {
    process::wait_until(
        &format!("redis-server on port {port} to answer PING"),
        START_LIMIT,
        || {
            still_running()?;
            Ok(cli(port, &["ping"]).is_ok_and(|out| out.trim() == "PONG"))
        },
    )
}
