//! `frontend`: the real page in headless Chromium (Debian's `chromium`, driven over the
//! DevTools protocol) against release builds of redis-server, canvas-api, the gateway and the
//! frontend, on a 1000x1000 canvas and on a 4096x4096 one (the largest the CRD allows), each
//! filled with random colours.
//!
//! At each size, each round launches a fresh browser (fresh profile: nothing cached) and measures
//! 1. first full paint: navigation start → the page's `canvas-painted` mark, set one
//!    animation frame after the fetched snapshot was drawn whole on the visible canvas
//!    (services/frontend/assets/view.js), checked against the canvas's real pixels;
//! 2. main-thread busy share while a driver places 1,000 pixels/s through canvas-api and the
//!    gateway fans them out to the page: the renderer's `TaskDuration` over wall time
//!    (`Performance.getMetrics`), beside the share of the placements the page drew.
//!
//! Both figures are reported as ratios to the issues' limits (1 s at 1000x1000, 2 s at
//! 4096x4096; 50% at both), lower is better.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use chromiumoxide::{
    Browser, BrowserConfig, Page,
    cdp::{
        browser_protocol::{
            performance::{EnableParams, GetMetricsParams},
            target::CreateTargetParams,
        },
        js_protocol::runtime::{EvaluateParams, EventExceptionThrown},
    },
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use pixel_common::{
    ports::{
        API_CANVAS_PATH, API_INFO_PATH, ENV_LISTEN_ADDR, ENV_PUBLIC_API_URL, ENV_PUBLIC_WS_URL,
        ENV_WS_ALLOWED_ORIGINS, READYZ_PATH, WS_PATH,
    },
    redis_schema::PIXELS_KEY,
    wire::Snapshot,
};
use pixel_harness::{
    deps,
    process::{self, free_port},
};

use crate::{
    placer,
    report::BenchResult,
    run::BenchCtx,
    servers::{CANVAS_SIDE, LARGEST_CANVAS_SIDE, Servers},
    stats::med,
};

/// The issues' limits: the first paint's by canvas size, the busy share's at every size.
const SIZES: [CanvasSize; 2] = [
    CanvasSize {
        side: CANVAS_SIDE,
        paint_limit_ms: 1000.0,
    },
    CanvasSize {
        side: LARGEST_CANVAS_SIDE,
        paint_limit_ms: 2000.0,
    },
];
const BUSY_LIMIT_PERCENT: f64 = 50.0;
/// Placements per second during the busy-share window.
const RATE: u32 = 1000;
/// The shortest busy-share window; `--seconds` may make it longer.
const MIN_WINDOW: Duration = Duration::from_secs(10);
/// Driver time before the window opens, so the pipeline is in its steady state.
const WARM_UP: Duration = Duration::from_secs(1);
/// Driver time after the window closes, so the stream does not stop inside it.
const TAIL: Duration = Duration::from_millis(500);
/// Bound on any single wait; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// The browser window: the stage fits the 1000x1000 board at about one CSS pixel per
/// canvas pixel, so every pixel of the snapshot is on screen; the 4096x4096 board fits it at
/// about a quarter of one, as on a desktop screen.
const WINDOW: (u32, u32) = (1280, 1200);
/// Canvas pixels compared between the screen and the server after each first paint.
const SAMPLES: usize = 300;

/// One canvas size the benchmark measures, with its first paint's limit.
#[derive(Debug, Clone, Copy)]
struct CanvasSize {
    side: u32,
    paint_limit_ms: f64,
}

/// `pixel-bench run frontend`.
pub fn frontend(ctx: &BenchCtx) -> Result<Vec<BenchResult>> {
    println!("\n== frontend");
    deps::ensure_debian_packages(&["chromium"])?;
    let chromium = chromium_on_path()?;
    let (gateway_bin, frontend_bin) = build_release()?;
    let launcher = PinnedChromium::new(&chromium, &ctx.machine.load_cores)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let mut rows = Vec::new();
    for size in SIZES {
        rows.extend(at_size(
            ctx,
            &runtime,
            &launcher,
            (&gateway_bin, &frontend_bin),
            size,
        )?);
    }
    Ok(rows)
}

/// The rounds on one canvas size, each server started afresh for it (and stopped after).
fn at_size(
    ctx: &BenchCtx,
    runtime: &tokio::runtime::Runtime,
    launcher: &PinnedChromium,
    (gateway_bin, frontend_bin): (&Path, &Path),
    size: CanvasSize,
) -> Result<Vec<BenchResult>> {
    let side = size.side;
    let mut servers =
        Servers::start_sized(&ctx.api_bin, &ctx.machine.server_cores, &ctx.log_dir, side)?;
    let palette = info(&servers.api_url)?.palette;
    fill_canvas(&servers, palette.len())?;
    let mut site = Site::start(ctx, &servers, gateway_bin, frontend_bin)?;
    let window = ctx.duration.max(MIN_WINDOW);
    let mut rounds = Vec::new();
    for round in 1..=ctx.rounds {
        let figures = runtime.block_on(run_round(launcher, &site, &palette, window))?;
        servers.check_running()?;
        site.check_running()?;
        println!(
            "frontend {side}x{side} round {round}/{}: first paint {:.0} ms (FCP {:.0} ms, snapshot \
             requested at {:.0} ms, loaded at {:.0} ms, hello at {:.0} \
             ms; page steps, ms: {}), busy {:.1}% at {:.0} placements/s, {:.1}% of them drawn \
             in the window{}",
            ctx.rounds,
            figures.paint_ms,
            figures.fcp_ms,
            figures.snapshot_asked_ms,
            figures.snapshot_loaded_ms,
            figures.hello_ms,
            stages_text(&figures.stages),
            figures.busy_percent,
            figures.placed_per_s,
            100.0 * figures.delivered,
            if figures.caught_up {
                ""
            } else {
                "; the page did NOT catch up afterwards"
            },
        );
        rounds.push(figures);
    }
    Ok(results(&rounds, window, size))
}

/// What one round measured.
#[derive(Debug, Clone, PartialEq)]
struct RoundFigures {
    /// Navigation start → `canvas-painted`.
    paint_ms: f64,
    /// First Contentful Paint (Paint Timing API), for context: the page's first text.
    fcp_ms: f64,
    /// Navigation start → the gateway's hello (the page needs its palette to draw).
    hello_ms: f64,
    /// Navigation start → the snapshot request's start.
    snapshot_asked_ms: f64,
    /// Navigation start → the snapshot's last byte.
    snapshot_loaded_ms: f64,
    /// The page's `performance.measure` entries up to the paint: (name, ms), in order.
    stages: Vec<(String, f64)>,
    /// Renderer main thread: task time / wall time, in percent.
    busy_percent: f64,
    /// The part of it spent running script.
    script_percent: f64,
    /// Placements the page drew during the window / placements accepted in it.
    delivered: f64,
    /// Placements accepted per second during the window (canvas versions).
    placed_per_s: f64,
    /// The driver's requests that were not answered `200`.
    failed_placements: u64,
    /// Whether the page drew every placement once the driver stopped.
    caught_up: bool,
}

/// `frontend-first-paint` and `frontend-busy` at 1000x1000 (the rows' names since issue 5);
/// at other sizes the names say the size, as the snapshot rows do.
fn results(rounds: &[RoundFigures], window: Duration, size: CanvasSize) -> Vec<BenchResult> {
    let n = rounds.len();
    let side = size.side;
    let suffix = if side == CANVAS_SIDE {
        String::new()
    } else {
        format!(" {side}x{side}")
    };
    let limit_s = size.paint_limit_ms / 1000.0;
    let verdict = |ratio: Option<f64>| match ratio {
        Some(r) if r <= 1.0 => "met",
        Some(_) => "MISSED",
        None => "not measured",
    };
    let per_round = |f: fn(&RoundFigures) -> f64, digits: usize| {
        rounds
            .iter()
            .map(|r| format!("{:.digits$}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut paint = BenchResult::new(
        &format!("frontend-first-paint{suffix}"),
        &format!("navigation → whole {side}x{side} snapshot painted, ms"),
        med(rounds.iter().map(|r| r.paint_ms)),
        &format!("limit {limit_s} s"),
        size.paint_limit_ms,
        None,
        n,
    )
    .at_most(1.0);
    paint.details = vec![
        format!(
            "first paint / {limit_s} s = {}: {} the ≤ {limit_s} s target",
            paint.ratio.map_or("n/a".to_owned(), |r| format!("{r:.2}x")),
            verdict(paint.ratio)
        ),
        format!(
            "for context: First Contentful Paint {:.0} ms; snapshot requested at {:.0} ms, \
             its last byte at {:.0} ms; the gateway's hello at {:.0} ms",
            med(rounds.iter().map(|r| r.fcp_ms)),
            med(rounds.iter().map(|r| r.snapshot_asked_ms)),
            med(rounds.iter().map(|r| r.snapshot_loaded_ms)),
            med(rounds.iter().map(|r| r.hello_ms)),
        ),
        format!(
            "the page's steps (medians, ms): {}",
            stages_text(&median_stages(rounds))
        ),
        format!(
            "per round, first paint ms: {}",
            per_round(|r| r.paint_ms, 0)
        ),
    ];
    let mut busy = BenchResult::new(
        &format!("frontend-busy{suffix}"),
        &format!(
            "main-thread busy %, {RATE} placements/s for {} s, {side}x{side}",
            window.as_secs()
        ),
        med(rounds.iter().map(|r| r.busy_percent)),
        "limit 50%",
        BUSY_LIMIT_PERCENT,
        None,
        n,
    )
    .at_most(1.0);
    let failed: u64 = rounds.iter().map(|r| r.failed_placements).sum();
    let caught_up = rounds.iter().filter(|r| r.caught_up).count();
    busy.details = vec![
        format!(
            "busy share / 50% = {}: {} the ≤ 50% target",
            busy.ratio.map_or("n/a".to_owned(), |r| format!("{r:.2}x")),
            verdict(busy.ratio)
        ),
        format!(
            "placements accepted {:.0}/s; drawn by the page within the window: {:.1}% of them; \
             the page drew all of them afterwards in {caught_up} of {n} rounds; {failed} \
             placements failed",
            med(rounds.iter().map(|r| r.placed_per_s)),
            100.0 * med(rounds.iter().map(|r| r.delivered)),
        ),
        format!(
            "script share of the main thread: {:.1}%",
            med(rounds.iter().map(|r| r.script_percent))
        ),
        format!("per round, busy %: {}", per_round(|r| r.busy_percent, 1)),
    ];
    vec![paint, busy]
}

/// `name 12, other 3` (ms), or `none measured`.
fn stages_text(stages: &[(String, f64)]) -> String {
    if stages.is_empty() {
        return "none measured".to_owned();
    }
    stages
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each step's median over the rounds that measured it, in the first round's order.
fn median_stages(rounds: &[RoundFigures]) -> Vec<(String, f64)> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in rounds.iter().flat_map(|r| &r.stages) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let values = rounds
                .iter()
                .filter_map(|r| r.stages.iter().find(|(n, _)| n == name).map(|(_, ms)| *ms));
            (name.to_owned(), med(values))
        })
        .collect()
}

/// Debian's Chromium on PATH.
fn chromium_on_path() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .context("no `chromium` on PATH although the Debian package is installed")
}

/// The gateway and the frontend in release mode (canvas-api is built by `bench` itself).
fn build_release() -> Result<(PathBuf, PathBuf)> {
    let release = process::cargo_build(true, &["gateway", "frontend"])?;
    Ok((release.join("gateway"), release.join("frontend")))
}

#[derive(Debug, Deserialize)]
struct Info {
    palette: Vec<String>,
    version: u64,
}

fn info(api_url: &str) -> Result<Info> {
    let url = format!("{api_url}{API_INFO_PATH}");
    let text = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .read_to_string()?;
    serde_json::from_str(&text).with_context(|| format!("GET {url} answered {text}"))
}

/// The `side` x `side` canvas as canvas-api serves it: (version, pixels).
fn snapshot(api_url: &str, side: u32) -> Result<(u64, Vec<u8>)> {
    let url = format!("{api_url}{API_CANVAS_PATH}");
    let body = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    let snapshot =
        Snapshot::decode(&body).with_context(|| format!("GET {url} answered no snapshot"))?;
    let side = side as usize;
    ensure!(
        snapshot.pixels().len() == side * side,
        "GET {url} answered {} pixels, not a {side}x{side} snapshot",
        snapshot.pixels().len()
    );
    Ok((snapshot.version(), snapshot.pixels().to_vec()))
}

/// Writes every pixel of the canvas in Redis (the layout of docs/protocol.md: one byte per
/// pixel, row-major, a palette index) with random colours, so the first paint draws a whole
/// canvas of real data; then checks canvas-api serves exactly that.
fn fill_canvas(servers: &Servers, colours: usize) -> Result<()> {
    let colours = u32::try_from(colours)?;
    let mut random = fastrand::Rng::with_seed(0x00C0_FFEE);
    let side = servers.side as usize;
    // Below the palette length (at most 32), so the cast keeps the value.
    let pixels: Vec<u8> = (0..side * side)
        .map(|_| random.u32(..colours) as u8)
        .collect();
    // One SET in the Redis protocol: redis-cli cannot take a 1 MB (or 16 MiB) argument on its
    // command line (Linux caps one argument at 128 KiB).
    let mut command = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{PIXELS_KEY}\r\n${}\r\n",
        PIXELS_KEY.len(),
        pixels.len()
    )
    .into_bytes();
    command.extend_from_slice(&pixels);
    command.extend_from_slice(b"\r\n");
    let mut redis = TcpStream::connect(("127.0.0.1", servers.redis_port))?;
    redis.set_read_timeout(Some(PATIENCE))?;
    redis.set_write_timeout(Some(PATIENCE))?;
    redis.write_all(&command)?;
    let mut answer = [0u8; 5];
    redis.read_exact(&mut answer)?;
    ensure!(
        &answer == b"+OK\r\n",
        "Redis answered {:?} to SET {PIXELS_KEY}",
        String::from_utf8_lossy(&answer)
    );
    let (_, served) = snapshot(&servers.api_url, servers.side)?;
    ensure!(
        served == pixels,
        "canvas-api does not serve the pixels just written to Redis"
    );
    Ok(())
}

/// The gateway and the frontend, started beside [`Servers`] and pinned like them; stopped
/// when dropped (the frontend first), before the Servers they use.
#[derive(Debug)]
struct Site {
    children: process::Group,
    page_url: String,
    api_url: String,
    /// The canvas's width and height.
    side: u32,
}

impl Site {
    fn start(
        ctx: &BenchCtx,
        servers: &Servers,
        gateway_bin: &Path,
        frontend_bin: &Path,
    ) -> Result<Self> {
        let gateway_port = free_port()?;
        let frontend_port = free_port()?;
        let page_origin = format!("http://127.0.0.1:{frontend_port}");
        let mut site = Self {
            children: process::Group::new(Duration::from_secs(15)),
            page_url: format!("{page_origin}/"),
            api_url: servers.api_url.clone(),
            side: servers.side,
        };
        // The hello carries the canvas settings to the page.
        let mut gateway =
            servers.gateway_command(gateway_bin, &ctx.machine.server_cores, gateway_port);
        gateway.env(ENV_WS_ALLOWED_ORIGINS, &page_origin);
        site.spawn("gateway", &mut gateway, &ctx.log_dir)?;
        let mut frontend = Command::new("taskset");
        frontend
            .args(["-c", &ctx.machine.server_cores])
            .arg(frontend_bin)
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{frontend_port}"))
            .env(ENV_PUBLIC_API_URL, format!("{}/api/v1", servers.api_url))
            .env(
                ENV_PUBLIC_WS_URL,
                format!("ws://127.0.0.1:{gateway_port}{WS_PATH}"),
            )
            .env("RUST_LOG", "warn");
        site.spawn("frontend", &mut frontend, &ctx.log_dir)?;
        for port in [gateway_port, frontend_port] {
            let url = format!("http://127.0.0.1:{port}{READYZ_PATH}");
            process::wait_until(&format!("{url} to answer 200"), PATIENCE, || {
                site.check_running()?;
                Ok(ureq::get(&url).call().is_ok())
            })
            .with_context(|| format!("see the logs in {}", ctx.log_dir.display()))?;
        }
        Ok(site)
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log_dir: &Path) -> Result<()> {
        self.children
            .spawn(name, cmd, &log_dir.join(format!("{name}.log")))
            .map(drop)
    }

    fn check_running(&mut self) -> Result<()> {
        self.children.check_running()
    }
}

/// Chromium started through `taskset`, so the browser and every process it forks (the
/// renderer measured here among them) run on the load cores, away from the servers.
#[derive(Debug)]
struct PinnedChromium {
    dir: tempfile::TempDir,
}

impl PinnedChromium {
    fn new(chromium: &Path, cores: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("pixel-bench-chromium")
            .tempdir()?;
        let script = dir.path().join("chromium");
        // chromiumoxide runs one executable with its arguments; `exec` keeps the pid, so it
        // still controls (and on failure kills) the browser itself.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec taskset -c '{cores}' '{}' \"$@\"\n",
                chromium.display()
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir })
    }

    fn executable(&self) -> PathBuf {
        self.dir.path().join("chromium")
    }
}

/// One round in a fresh browser, which is closed (or killed) whatever happens.
async fn run_round(
    launcher: &PinnedChromium,
    site: &Site,
    palette: &[String],
    window: Duration,
) -> Result<RoundFigures> {
    let profile = tempfile::Builder::new()
        .prefix("pixel-bench-profile")
        .tempdir()?;
    let config = BrowserConfig::builder()
        .chrome_executable(launcher.executable())
        .user_data_dir(profile.path())
        .no_sandbox()
        .window_size(WINDOW.0, WINDOW.1)
        // The page gets the window's size, not chromiumoxide's emulated 800x600.
        .viewport(None)
        .args([
            "disable-gpu",
            "disable-quic",
            "no-first-run",
            "disable-background-networking",
            "disable-component-update",
            "disable-sync",
            // The page (its own port) reads canvas-api on another port, which this bench's
            // canvas-api serves without CORS; behind the Ingress both share one origin and
            // no CORS check happens either, which this reproduces.
            "disable-web-security",
        ])
        .launch_timeout(PATIENCE)
        .request_timeout(PATIENCE)
        .build()
        .map_err(anyhow::Error::msg)?;
    let (mut browser, mut handler) = Browser::launch(config)
        .await
        .context("cannot launch chromium")?;
    // The DevTools connection makes progress only while its handler is polled.
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let figures = measure(&browser, site, palette, window).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        browser.close().await?;
        browser.wait().await?;
        anyhow::Ok(())
    })
    .await;
    if !matches!(closed, Ok(Ok(()))) {
        let _ = browser.kill().await;
    }
    events.abort();
    figures
}

async fn measure(
    browser: &Browser,
    site: &Site,
    palette: &[String],
    window: Duration,
) -> Result<RoundFigures> {
    let target = CreateTargetParams::builder()
        .url("about:blank")
        .new_window(true)
        .build()
        .map_err(anyhow::Error::msg)?;
    let page = browser.new_page(target).await?;
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut exceptions = page.event_listener::<EventExceptionThrown>().await?;
    let sink = Arc::clone(&errors);
    let listener = tokio::spawn(async move {
        while let Some(event) = exceptions.next().await {
            let details = &event.exception_details;
            let text = details
                .exception
                .as_ref()
                .and_then(|e| e.description.clone())
                .unwrap_or_else(|| details.text.clone());
            if let Ok(mut errors) = sink.lock() {
                errors.push(text);
            }
        }
    });
    let figures = first_paint_then_busy(&page, site, palette, window).await;
    listener.abort();
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    ensure!(errors.is_empty(), "the page threw: {errors:?}");
    figures
}

async fn first_paint_then_busy(
    page: &Page,
    site: &Site,
    palette: &[String],
    window: Duration,
) -> Result<RoundFigures> {
    page.goto(site.page_url.as_str()).await?;
    let painted = poll("the page's canvas-painted mark", || async {
        let js = "(() => {
            const mark = performance.getEntriesByName('canvas-painted')[0];
            if (!mark) return null;
            const fcp = performance.getEntriesByName('first-contentful-paint')[0];
            const hello = performance.getEntriesByName('gateway-hello')[0];
            const snapshot = performance.getEntriesByType('resource')
                .find((r) => new URL(r.name).pathname.endsWith('/api/v1/canvas'));
            return {
                paint: mark.startTime,
                version: mark.detail.version,
                fcp: fcp ? fcp.startTime : null,
                hello: hello ? hello.startTime : null,
                snapshotStart: snapshot ? snapshot.startTime : null,
                snapshotEnd: snapshot ? snapshot.responseEnd : null,
                stages: performance.getEntriesByType('measure')
                    .filter((m) => m.startTime <= mark.startTime)
                    .map((m) => [m.name, m.duration]),
            };
        })()";
        Ok(Some(eval(page, js).await?).filter(|v| !v.is_null()))
    })
    .await?;
    let number = |key: &str| {
        painted[key]
            .as_f64()
            .with_context(|| format!("the page reported no `{key}`: {painted}"))
    };
    let (paint_ms, fcp_ms, hello_ms) = (number("paint")?, number("fcp")?, number("hello")?);
    let (snapshot_asked_ms, snapshot_loaded_ms) =
        (number("snapshotStart")?, number("snapshotEnd")?);
    // The page's own timings of the first paint's steps, summed by name.
    let mut stages: Vec<(String, f64)> = Vec::new();
    let measured: Vec<(String, f64)> =
        serde_json::from_value(painted["stages"].clone()).context("the page's stages")?;
    for (name, ms) in measured {
        match stages.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += ms,
            None => stages.push((name, ms)),
        }
    }
    let painted_version = painted["version"].as_u64().context("no painted version")?;
    check_screen(page, site, palette, painted_version).await?;

    let (busy_percent, script_percent, delivered, placed_per_s, failed, caught_up) =
        busy_share(page, site, palette.len(), window).await?;
    Ok(RoundFigures {
        paint_ms,
        fcp_ms,
        hello_ms,
        snapshot_asked_ms,
        snapshot_loaded_ms,
        stages,
        busy_percent,
        script_percent,
        delivered,
        placed_per_s,
        failed_placements: failed,
        caught_up,
    })
}

/// Compares [`SAMPLES`] random pixels of the visible canvas with the server's canvas, so a
/// mark set before the real data was on screen cannot pass for a first paint.
async fn check_screen(page: &Page, site: &Site, palette: &[String], version: u64) -> Result<()> {
    let (api_url, side) = (site.api_url.clone(), site.side);
    let (served_version, pixels) =
        tokio::task::spawn_blocking(move || snapshot(&api_url, side)).await??;
    ensure!(
        served_version == version,
        "the page painted version {version}, canvas-api serves {served_version}, and nothing \
         placed in between"
    );
    let mut random = fastrand::Rng::with_seed(version + 1);
    let points: Vec<(u32, u32)> = (0..SAMPLES)
        .map(|_| (random.u32(..side), random.u32(..side)))
        .collect();
    // For each sample, the device pixel holding its centre, its colour, and the board pixel
    // nearest-neighbour scaling shows there: the one under that device pixel's centre (at a
    // quarter of a device pixel per board pixel, a neighbour several pixels away).
    let js = format!(
        "(() => {{
            const canvas = document.getElementById('board');
            const rect = canvas.getBoundingClientRect();
            const k = window.devicePixelRatio || 1;
            const context = canvas.getContext('2d');
            const origin = window.pixelPlayground.centreOf(0, 0);
            const scale = window.pixelPlayground.centreOf(1, 0).x - origin.x;
            const left = (origin.x - rect.left - scale / 2) * k;
            const top = (origin.y - rect.top - scale / 2) * k;
            return {}.map(([x, y]) => {{
                const at = window.pixelPlayground.centreOf(x, y);
                const dx = Math.floor((at.x - rect.left) * k);
                const dy = Math.floor((at.y - rect.top) * k);
                const d = context.getImageData(dx, dy, 1, 1).data;
                return [Math.floor((dx + 0.5 - left) / (scale * k)),
                    Math.floor((dy + 0.5 - top) / (scale * k)),
                    '#' + [d[0], d[1], d[2]].map((v) => v.toString(16).padStart(2, '0'))
                        .join('').toUpperCase()];
            }});
        }})()",
        serde_json::to_string(&points)?
    );
    let shown: Vec<(i64, i64, String)> = serde_json::from_value(eval(page, &js).await?)
        .context("no colours read from the canvas")?;
    ensure!(shown.len() == points.len(), "read {} colours", shown.len());
    // The browser's scaling may round to a neighbour of the board pixel computed here (a
    // sub-pixel difference), so a neighbour's colour passes too. A canvas without the
    // snapshot still cannot: with 16 random colours one sample passes by chance with
    // p < 0.45, 300 with p < 1e-100.
    let colour_at = |x: i64, y: i64| {
        let side = i64::from(side);
        ((0..side).contains(&x) && (0..side).contains(&y))
            .then(|| palette.get(usize::from(pixels[(y * side + x) as usize])))
            .flatten()
            .map(|c| c.to_uppercase())
    };
    let mut wrong = Vec::new();
    for (x, y, shown) in &shown {
        let (x, y) = (*x, *y);
        let near = (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (x + dx, y + dy)));
        let matches = near
            .filter_map(|(nx, ny)| colour_at(nx, ny))
            .any(|c| *shown == c);
        if !matches {
            wrong.push(format!(
                "({x}, {y}) shows {shown}, is {:?}",
                colour_at(x, y)
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "after canvas-painted the screen differs from the canvas at {} of {SAMPLES} pixels: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    Ok(())
}

/// Main-thread busy share while the driver places [`RATE`] pixels/s: returns (busy %,
/// script %, fraction drawn, placements/s, failed placements, caught up).
async fn busy_share(
    page: &Page,
    site: &Site,
    colours: usize,
    window: Duration,
) -> Result<(f64, f64, f64, f64, u64, bool)> {
    // Up to date before the stream starts: synced and everything drawn.
    poll("the page to sync and draw", || async {
        let state = page_state(page).await?;
        Ok((state.synced && state.drawn_version == Some(state.version)).then_some(()))
    })
    .await?;
    page.execute(EnableParams::default()).await?;
    let (api_url, side) = (site.api_url.clone(), site.side);
    let colours = u32::try_from(colours)?;
    let driver = tokio::spawn(async move {
        placer::run(
            &api_url,
            (side, side, colours),
            RATE,
            WARM_UP + window + TAIL,
        )
        .await
    });
    tokio::time::sleep(WARM_UP).await;
    let start = sample(page, &site.api_url).await?;
    tokio::time::sleep(window).await;
    let end = sample(page, &site.api_url).await?;
    let placed = driver.await??;
    let wall = end.timestamp - start.timestamp;
    ensure!(wall > 0.0, "the browser's clock did not advance");
    let versions = end.server_version.saturating_sub(start.server_version);
    ensure!(versions > 0, "no placement was accepted in the window");
    let drawn = end.drawn_version.saturating_sub(start.drawn_version);
    // After the driver stopped, the page should draw the last placement too.
    let last = info_async(&site.api_url).await?.version;
    let caught_up = poll("the page to draw the last placement", || async {
        let state = page_state(page).await?;
        Ok(state.drawn_version.filter(|&v| v >= last).map(|_| ()))
    })
    .await
    .is_ok();
    Ok((
        100.0 * (end.task_s - start.task_s) / wall,
        100.0 * (end.script_s - start.script_s) / wall,
        drawn as f64 / versions as f64,
        versions as f64 / wall,
        placed.failed,
        caught_up,
    ))
}

/// One reading at a window's edge.
#[derive(Debug)]
struct Sample {
    /// `Performance.getMetrics`: seconds, cumulative for the page's main thread.
    timestamp: f64,
    task_s: f64,
    script_s: f64,
    drawn_version: u64,
    server_version: u64,
}

async fn sample(page: &Page, api_url: &str) -> Result<Sample> {
    let metrics = page
        .execute(GetMetricsParams::default())
        .await?
        .result
        .metrics;
    let metric = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
            .with_context(|| format!("Performance.getMetrics has no {name}"))
    };
    let state = page_state(page).await?;
    Ok(Sample {
        timestamp: metric("Timestamp")?,
        task_s: metric("TaskDuration")?,
        script_s: metric("ScriptDuration")?,
        drawn_version: state.drawn_version.context("the page has drawn nothing")?,
        server_version: info_async(api_url).await?.version,
    })
}

async fn info_async(api_url: &str) -> Result<Info> {
    let api_url = api_url.to_owned();
    tokio::task::spawn_blocking(move || info(&api_url)).await?
}

/// `window.pixelPlayground.state()`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageState {
    synced: bool,
    version: u64,
    drawn_version: Option<u64>,
}

async fn page_state(page: &Page) -> Result<PageState> {
    let state = eval(page, "window.pixelPlayground?.state() ?? null").await?;
    if state.is_null() {
        return Ok(PageState {
            synced: false,
            version: 0,
            drawn_version: None,
        });
    }
    serde_json::from_value(state.clone()).with_context(|| format!("page state {state}"))
}

/// Evaluates a JavaScript expression and returns its JSON value.
async fn eval(page: &Page, expression: &str) -> Result<Value> {
    let params = EvaluateParams::builder()
        .expression(expression)
        .return_by_value(true)
        .await_promise(true)
        .build()
        .map_err(anyhow::Error::msg)?;
    Ok(page
        .evaluate_expression(params)
        .await
        .with_context(|| format!("evaluating `{expression}`"))?
        .value()
        .cloned()
        .unwrap_or(Value::Null))
}

/// Calls `probe` until it gives `Some`, at most [`PATIENCE`].
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if started.elapsed() >= PATIENCE {
            bail!("gave up waiting for {what} after {PATIENCE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(paint_ms: f64, busy_percent: f64) -> RoundFigures {
        RoundFigures {
            paint_ms,
            fcp_ms: 50.0,
            hello_ms: 70.0,
            snapshot_asked_ms: 60.0,
            snapshot_loaded_ms: 100.0,
            stages: vec![("board-convert".to_owned(), 5.0)],
            busy_percent,
            script_percent: 5.0,
            delivered: 0.99,
            placed_per_s: 1000.0,
            failed_placements: 0,
            caught_up: true,
        }
    }

    #[test]
    fn ratios_are_against_the_limits_and_lower_is_better() {
        let rows = results(
            &[round(300.0, 20.0), round(500.0, 60.0), round(400.0, 30.0)],
            MIN_WINDOW,
            SIZES[0],
        );
        assert_eq!(rows[0].ours, 400.0);
        assert_eq!(rows[0].ratio, Some(0.4));
        assert!(rows[0].details[0].contains("met"), "{:?}", rows[0].details);
        assert_eq!(rows[1].ours, 30.0);
        assert_eq!(rows[1].ratio, Some(0.6));
        let slow = results(&[round(1500.0, 80.0)], MIN_WINDOW, SIZES[0]);
        assert!(
            slow[0].details[0].contains("MISSED"),
            "{:?}",
            slow[0].details
        );
        assert!(
            slow[1].details[0].contains("MISSED"),
            "{:?}",
            slow[1].details
        );
    }

    #[test]
    fn the_largest_canvas_has_its_own_rows_against_its_own_limit() {
        let rows = results(&[round(1500.0, 40.0)], MIN_WINDOW, SIZES[1]);
        assert_eq!(rows[0].name, "frontend-first-paint 4096x4096");
        assert_eq!(rows[0].ratio, Some(0.75));
        assert!(rows[0].details[0].contains("met"), "{:?}", rows[0].details);
        assert_eq!(rows[1].name, "frontend-busy 4096x4096");
        assert_eq!(rows[1].ratio, Some(0.8));
        let small = results(&[round(1500.0, 40.0)], MIN_WINDOW, SIZES[0]);
        assert_eq!(small[0].name, "frontend-first-paint");
        assert!(
            small[0].details[0].contains("MISSED"),
            "{:?}",
            small[0].details
        );
    }
}
