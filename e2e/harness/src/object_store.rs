//! The S3-compatible server the backup tests run against: s3s-fs, a real S3 server over a
//! directory, built from its crate with `cargo install` into the machine cache.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{paths, process};

/// The s3s-fs release installed: the newest that builds with the project's Rust (1.88+;
/// 0.15 and later need 1.96).
pub const S3S_FS_VERSION: &str = "0.14.1";
/// A cold `cargo install` on a busy 2-core machine takes a few minutes.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The s3s-fs binary, installed into the machine cache when missing.
pub fn ensure_server() -> Result<PathBuf> {
    let root = paths::cache_dir().join(format!("s3s-fs-{S3S_FS_VERSION}"));
    let binary = root.join("bin/s3s-fs");
    if binary.is_file() {
        return Ok(binary);
    }
    println!("== installing s3s-fs {S3S_FS_VERSION}, the backup tests' S3 server (a few minutes)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            .args(["install", "--locked", "s3s-fs", "--version", S3S_FS_VERSION])
            .args(["--features", "binary", "--root"])
            .arg(&root),
        INSTALL_TIMEOUT,
    )?;
    if !binary.is_file() {
        bail!("`cargo install s3s-fs` did not leave {}", binary.display());
    }
    Ok(binary)
}

/// A running s3s-fs serving `root` (each directory a bucket), stopped when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub endpoint: String,
}

impl Server {
    /// Starts it on `address` with one access key, and waits until it listens.
    pub fn start(
        binary: &Path,
        address: SocketAddr,
        root: &Path,
        (access_key, secret_key): (&str, &str),
    ) -> Result<Self> {
        let child = Command::new(binary)
            .args(["--host", &address.ip().to_string()])
            .args(["--port", &address.port().to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self {
            child,
            endpoint: format!("http://{address}"),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!("s3s-fs exited ({status}) before it listened on {address}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("s3s-fs did not listen on {address} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
