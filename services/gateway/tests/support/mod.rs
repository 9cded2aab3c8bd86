//! What the gateway tests share: canvas-api and gateways served in-process, gateway
//! binaries started as real processes, the open-files limit and a process's memory.

#![allow(dead_code)] // Each test file uses its own part.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use pixel_common::testing::{API_TOKEN, IDENTITY_KEY, RedisServer, RunningBinary};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Bound on one wait; reached only when something hangs.
pub const HANG: Duration = Duration::from_secs(30);

/// canvas-api's command line on the Redis at `url`, with the tests' token and no
/// per-person placement rate (the tests place fast as few people; the gateway's own limits
/// are under test here), before the caller's flags, which may override it.
fn api_argv(url: &str) -> Vec<&str> {
    vec![
        "canvas-api",
        "--redis-url",
        url,
        "--api-token",
        API_TOKEN,
        "--placement-rate",
        "0",
    ]
}

/// canvas-api on `redis` with `canvas` flags, in this process but on its own runtime
/// thread: the test's clients keep their runtime busy, which must not time canvas-api's
/// Redis calls out.
pub async fn start_api(redis: &RedisServer, canvas: &[&str]) -> SocketAddr {
    let url = redis.url();
    let mut argv = api_argv(&url);
    argv.extend_from_slice(canvas);
    let args = canvas_api::Args::try_parse_from(argv).expect("valid canvas-api flags");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("canvas-api runtime");
        runtime.block_on(async move {
            let router = canvas_api::app(
                canvas_api::AppState::new(&args).expect("canvas-api state"),
                args.max_body_bytes,
            );
            let listener = TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, router).await
        })
    });
    addr
}

/// The gateway's command line on `redis` and the canvas-api at `api`, with the tests'
/// credentials, then `extra` (which may override them).
fn gateway_argv(redis: &RedisServer, api: SocketAddr, extra: &[&str]) -> Vec<String> {
    let api_url = format!("http://{api}");
    let mut argv = vec![
        "gateway",
        "--redis-url",
        &redis.url(),
        "--api-url",
        &api_url,
        "--api-token",
        API_TOKEN,
        "--identity-key",
        IDENTITY_KEY,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    argv.extend(extra.iter().map(|flag| (*flag).to_owned()));
    argv
}

/// The gateway binary on `redis` and the canvas-api at `api`, with `extra` flags, once
/// `/readyz` answers 200. Logs only warnings and the info lines of the gateway and its
/// server (`listening` among them): nothing reads its stdout after the start, so a chatty
/// log would fill the pipe and stall it.
pub async fn start_gateway(redis: &RedisServer, api: SocketAddr, extra: &[&str]) -> RunningBinary {
    let argv = gateway_argv(redis, api, extra);
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    let gateway = RunningBinary::start(
        env!("CARGO_BIN_EXE_gateway"),
        &args,
        &[("RUST_LOG", "warn,gateway=info,pixel_common=info")],
    )
    .await;
    let started = tokio::time::Instant::now();
    while gateway.get("/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < HANG,
            "gateway at {} never became ready",
            gateway.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway
}

/// canvas-api on `redis` with `flags`, served on the calling test's runtime.
pub async fn serve_api(redis: &RedisServer, flags: &[&str]) -> SocketAddr {
    let url = redis.url();
    let mut argv = api_argv(&url);
    argv.extend_from_slice(flags);
    let args = canvas_api::Args::try_parse_from(argv).expect("valid canvas-api flags");
    let router = canvas_api::app(
        canvas_api::AppState::new(&args).expect("canvas-api state"),
        args.max_body_bytes,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A gateway served on the calling test's runtime, stopped by [`ServedGateway::stop`].
pub struct ServedGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), gateway::RunError>>,
}

/// A gateway on `redis` and the canvas-api at `api` with `flags`, once `/readyz` answers 200.
pub async fn serve_gateway(redis: &RedisServer, api: SocketAddr, flags: &[&str]) -> ServedGateway {
    let argv = gateway_argv(redis, api, flags);
    let args = gateway::Args::try_parse_from(argv).expect("valid gateway flags");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        gateway::serve(listener, &args, async {
            let _ = stopped.await;
        })
        .await
    });
    let gateway = ServedGateway {
        addr,
        stop: Some(stop),
        task,
    };
    gateway.wait_ready(200).await;
    gateway
}

impl ServedGateway {
    /// Polls `/readyz` until it answers `status`, within [`HANG`].
    pub async fn wait_ready(&self, status: u16) {
        let started = tokio::time::Instant::now();
        loop {
            let answered = reqwest::get(format!("http://{}/readyz", self.addr))
                .await
                .map(|response| response.status().as_u16());
            if answered.as_ref().is_ok_and(|s| *s == status) {
                return;
            }
            assert!(started.elapsed() < HANG, "/readyz never answered {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops it as SIGTERM would and waits for a clean exit, within [`HANG`].
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(HANG, self.task)
            .await
            .expect("the gateway stops within the bound")
            .expect("no panic")
            .expect("a clean stop");
    }
}

/// Raises this process's soft RLIMIT_NOFILE to at least `wanted` (the gateways it starts
/// inherit it); fails when the hard limit is lower.
pub fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= wanted {
        return;
    }
    assert!(
        hard >= wanted,
        "this test needs {wanted} open files and the hard limit is {hard}: raise it (ulimit -Hn)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).expect("setrlimit");
}

/// A process's resident memory, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
}

pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

/// Polls `check` every 20 ms until it gives a value, at most `within`; fails with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the metric line starting with `name` (labels included) in `/metrics`.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}
