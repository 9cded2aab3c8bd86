//! The processes under test: redis-server and a release canvas-api on loopback, pinned to
//! the server cores, always stopped when this value is dropped (also on error).

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pixel_common::{
    ports::{
        ENV_API_TOKEN, ENV_API_URL, ENV_CANVAS_COOLDOWN_SECONDS, ENV_CANVAS_HEIGHT,
        ENV_CANVAS_UNDO_SECONDS, ENV_CANVAS_WIDTH, ENV_HISTORY_MAX_LEN, ENV_IDENTITY_KEY,
        ENV_LISTEN_ADDR, ENV_PLACEMENT_BURST, ENV_PLACEMENT_RATE, ENV_REDIS_URL,
        ENV_WS_MAX_CONNECTIONS_PER_ADDRESS, READYZ_PATH,
    },
    redis_schema::PIXELS_KEY,
};
use pixel_harness::{
    process::{self, free_port},
    redis,
};

/// The internal token the benchmark's canvas-api requires on placements: the gateway and
/// the load generators that place directly both present it.
pub const API_TOKEN: &str = "bench-internal-token-0123456789";
/// The key the benchmark's gateways sign identity cookies with.
const IDENTITY_KEY: &str = "the benchmark's identity key, 32+ bytes";
/// The canvas the benchmarks use: 1000x1000, no cooldown.
pub const CANVAS_SIDE: u32 = 1000;
/// The largest canvas the CRD allows (16.7 M pixels), for the rows at that size.
pub const LARGEST_CANVAS_SIDE: u32 = 4096;
/// The per-person placement rate and burst of the benchmark's canvas-api: checked on every
/// placement, as in production, but above what the load's few client ids send.
pub const PLACEMENT_RATE: u32 = 1_000_000;
pub const PLACEMENT_BURST: u32 = 1_000_000;
/// Its undo window and history length: the services' defaults, spelled out so the
/// placement script's floor runs with the same.
pub const UNDO_SECONDS: u32 = 5;
pub const HISTORY_MAX_LEN: u32 = 100_000;

/// Running servers. Dropping stops them (SIGTERM, then SIGKILL) before the data directory
/// is removed.
#[derive(Debug)]
pub struct Servers {
    /// Stopped when dropped: canvas-api first, Redis last.
    children: process::Group,
    pub redis_port: u16,
    pub api_url: String,
    /// The canvas's width and height.
    pub side: u32,
    _data: tempfile::TempDir,
}

impl Servers {
    /// A release gateway on `port`, pinned to `cores`, on this Redis and canvas-api, with
    /// the same canvas settings canvas-api has (its size, the default palette, no
    /// cooldown). Callers add what their benchmark needs.
    pub fn gateway_command(&self, gateway_bin: &Path, cores: &str, port: u16) -> Command {
        let side = self.side.to_string();
        let mut gateway = Command::new("taskset");
        gateway
            .args(["-c", cores])
            .arg(gateway_bin)
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{port}"))
            .env(
                ENV_REDIS_URL,
                format!("redis://127.0.0.1:{}", self.redis_port),
            )
            .env(ENV_API_URL, &self.api_url)
            .env(ENV_API_TOKEN, API_TOKEN)
            .env(ENV_IDENTITY_KEY, IDENTITY_KEY)
            .env(ENV_CANVAS_WIDTH, &side)
            .env(ENV_CANVAS_HEIGHT, &side)
            .env(ENV_CANVAS_COOLDOWN_SECONDS, "0")
            // Every benchmark client comes from loopback: one address, as far as the
            // per-address limit can tell.
            .env(ENV_WS_MAX_CONNECTIONS_PER_ADDRESS, "0")
            .env("RUST_LOG", "warn");
        gateway
    }
}

/// Builds canvas-api in release mode, so it is not measured as a debug build (the load
/// generators are this binary, which `cargo xtask bench` builds in release mode too).
pub fn build_release() -> Result<PathBuf> {
    Ok(process::cargo_build(true, &["canvas-api"])?.join("canvas-api"))
}

impl Servers {
    /// Starts redis-server (AOF on, `appendfsync everysec`, the operator's default, in a
    /// fresh temporary directory), fills the pixels key to its full 1,000,000 bytes, then
    /// starts canvas-api; both pinned to `cores`. Logs go to `log_dir`.
    pub fn start(api_bin: &Path, cores: &str, log_dir: &Path) -> Result<Self> {
        Self::start_sized(api_bin, cores, log_dir, CANVAS_SIDE)
    }

    /// [`Self::start`] with a canvas of `side` x `side` pixels.
    pub fn start_sized(api_bin: &Path, cores: &str, log_dir: &Path, side: u32) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("pixel-bench-redis")
            .tempdir()
            .context("cannot create a temporary directory for Redis")?;
        let redis_port = free_port()?;
        let api_port = free_port()?;
        let mut servers = Self {
            children: process::Group::new(Duration::from_secs(10)),
            redis_port,
            api_url: format!("http://127.0.0.1:{api_port}"),
            side,
            _data: data,
        };
        let mut redis = Command::new("taskset");
        redis
            .args(["-c", cores, "redis-server"])
            .args(redis::server_args(redis_port, servers._data.path()));
        servers.spawn("redis-server", &mut redis, log_dir)?;
        redis::wait_until_answering(redis_port, || servers.check_running())?;
        // The whole canvas exists in Redis, so both sides read and write a full-size value.
        servers.redis_cli(&[
            "BITFIELD",
            PIXELS_KEY,
            "SET",
            "u8",
            &format!("#{}", u64::from(side) * u64::from(side) - 1),
            "0",
        ])?;
        let side = side.to_string();
        let mut api = Command::new("taskset");
        api.args(["-c", cores])
            .arg(api_bin)
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{api_port}"))
            .env(ENV_REDIS_URL, format!("redis://127.0.0.1:{redis_port}"))
            .env(ENV_CANVAS_WIDTH, &side)
            .env(ENV_CANVAS_HEIGHT, &side)
            .env(ENV_CANVAS_COOLDOWN_SECONDS, "0")
            .env(ENV_API_TOKEN, API_TOKEN)
            .env(ENV_PLACEMENT_RATE, PLACEMENT_RATE.to_string())
            .env(ENV_PLACEMENT_BURST, PLACEMENT_BURST.to_string())
            .env(ENV_CANVAS_UNDO_SECONDS, UNDO_SECONDS.to_string())
            .env(ENV_HISTORY_MAX_LEN, HISTORY_MAX_LEN.to_string())
            .env("RUST_LOG", "warn");
        servers.spawn("canvas-api", &mut api, log_dir)?;
        servers.wait_ready(log_dir)?;
        Ok(servers)
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log_dir: &Path) -> Result<()> {
        self.children
            .spawn(name, cmd, &log_dir.join(format!("{name}.log")))
            .map(drop)
    }

    /// Runs `redis-cli` against this Redis and returns its answer.
    pub fn redis_cli(&self, args: &[&str]) -> Result<String> {
        redis::cli(self.redis_port, args)
    }

    fn wait_ready(&mut self, log_dir: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}{READYZ_PATH}", self.api_url);
        while ureq::get(&url).call().is_err() {
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{url} did not become ready; see {}",
                    log_dir.join("canvas-api.log").display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Fails when a server has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.children.check_running()
    }
}
