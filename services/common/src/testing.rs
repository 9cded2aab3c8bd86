//! Drives a real binary in tests: starts it on port 0, finds the bound address in its JSON
//! log, talks HTTP to it and stops it with SIGTERM like Kubernetes would.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

/// The internal token (`--api-token`) the tests give canvas-api and the gateway.
pub const API_TOKEN: &str = "test-internal-token-0123456789";
/// The identity key (`--identity-key`) the tests give the gateway.
pub const IDENTITY_KEY: &str = "the tests' identity key, 32 bytes or more";

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

    /// The process id (for /proc/<pid>/status, signals).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the binary is still running")
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

/// The shutdown future a test hands to a binary's `run(args, shutdown)`.
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The `run(args, shutdown)` contract, in process: `run` binds and serves (it polls the
/// shutdown future only from the server loop), keeps serving while `shutdown` is pending,
/// and returns `Ok` once it resolves.
pub async fn assert_runs_until_shutdown<F, E>(run: impl FnOnce(Shutdown) -> F)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let (serving, polled) = tokio::sync::oneshot::channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(Box::pin(async move {
        // Polled only once the port is bound and requests are being served.
        let _ = serving.send(());
        let _ = stopped.await;
    })));
    tokio::time::timeout(PATIENCE, polled)
        .await
        .expect("run reaches serving")
        .expect("shutdown future polled");
    assert!(!server.is_finished(), "run returned before its shutdown");
    stop.send(()).expect("run still waits for its shutdown");
    let result = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("run returns once shutdown resolves")
        .expect("no panic");
    if let Err(error) = result {
        panic!("run failed: {}", crate::error::ErrorChain(&error));
    }
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

/// A real `redis-server` for a test: its own temporary directory, a free loopback port,
/// no RDB snapshots, append-only file on. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    appendfsync: &'static str,
}

impl RedisServer {
    /// Starts one with `appendfsync always`, so every acknowledged write survives a kill.
    pub async fn start() -> Self {
        Self::start_with_appendfsync("always").await
    }

    /// Starts one with the given `appendfsync` policy (`always`, `everysec` or `no`).
    pub async fn start_with_appendfsync(appendfsync: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pixel-redis-")
            .tempdir()
            .expect("create a temporary directory for redis-server");
        let port = free_port();
        let mut server = Self {
            child: None,
            dir,
            port,
            appendfsync,
        };
        server.spawn().await;
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The data directory (where the append-only files are).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts the server again on the same port, from the same directory (so from its
    /// append-only file), after [`kill`](Self::kill).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing answers, like a
    /// hung Redis. Undo with [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused server run again.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        nix::sys::signal::kill(pid, signal).expect("signal redis-server");
    }

    async fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", self.appendfsync])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the tests need a real Redis; \
                     install the Debian package `redis-server` (apt-get install redis-server)"
                )
            });
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("redis-server exited ({status}) before it answered PING; its log:\n{log}");
            }
            if ping(self.port).await {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "redis-server did not answer PING on port {} in time",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// True when a Redis server answers PING on the port (and has finished loading its data).
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await;
    matches!(read, Ok(Ok(_))) && &reply == b"+PONG\r\n"
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
