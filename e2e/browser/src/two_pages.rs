//! `two-pages`: two pages of the canvas in headless Chromium (Debian's `chromium`, driven
//! over the DevTools protocol as `services/frontend/tests/browser.rs` drives it), loaded
//! through the Ingress, their WebSockets on two different gateway pods. A pixel clicked in
//! the first page must show in the second: the placement crossed from one gateway pod to
//! the other through Redis.
//!
//! Which pod serves a page is read from the pods' connection gauges before and after the
//! page connects; the Ingress balances `/ws` round-robin, so when the second page lands on
//! the first one's pod it is closed and opened again, a bounded number of times.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use chromiumoxide::{
    Browser, BrowserConfig, Page,
    cdp::{
        browser_protocol::target::CreateTargetParams,
        js_protocol::runtime::{EvaluateParams, EventExceptionThrown},
    },
    layout::Point,
};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::{task::JoinHandle, time::Instant};

use pixel_common::ports::API_INFO_PATH;

use crate::{
    POLL, Resolve,
    gateways::{self, Gateway},
};

/// Board pixels are zoomed to at least this many CSS pixels before the click, so the click
/// and the colour read back both land well inside the pixel.
const MIN_SCALE: f64 = 8.0;
/// The browser window, in CSS pixels.
const WINDOW: (u32, u32) = (1000, 800);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The canvas's page through the Ingress: `http://<host>:<port>/`.
    #[arg(long)]
    url: String,
    /// `HOST=ADDRESS` (repeatable): Chromium connects to ADDRESS for HOST
    /// (`--host-resolver-rules`).
    #[arg(long)]
    resolve: Vec<Resolve>,
    /// `[NAME=]http://<pod IP>:<port>/metrics` of every gateway pod of the canvas (at
    /// least two; repeat the flag).
    #[arg(long = "gateway-metrics", required = true)]
    gateways: Vec<Gateway>,
    /// Chromium's executable.
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: PathBuf,
    /// How many times the second page is opened at most to land on another gateway pod.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=50))]
    attempts: u32,
    /// Bound on each wait (a page to connect, the pixel to show), in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    patience_secs: u64,
}

/// What `two-pages` prints on success.
#[derive(Debug, Serialize)]
pub struct Summary {
    check: &'static str,
    /// The painting page, then the watching page.
    pages: [PageSummary; 2],
    /// How many times the watching page was opened until it landed on another pod.
    watcher_opened: u32,
    pixel: PixelSummary,
    /// From the click's `pointerup` in the painting page to the first animation frame of
    /// the watching page that shows the colour (both clocks are the browser's).
    click_to_seen_ms: f64,
    /// The canvas version the watching page holds afterwards.
    version: u64,
}

#[derive(Debug, Serialize)]
struct PageSummary {
    page: &'static str,
    gateway: String,
    handle: String,
}

#[derive(Debug, Serialize)]
struct PixelSummary {
    x: u32,
    y: u32,
    color: usize,
    hex: String,
    was: String,
}

pub async fn run(args: Args) -> Result<Summary> {
    ensure!(
        args.gateways.len() >= 2,
        "two pages on different gateway pods need at least two --gateway-metrics, got {}",
        args.gateways.len()
    );
    ensure!(
        args.chromium.is_file(),
        "no Chromium at {}: install the Debian package `chromium` (apt-get install -y chromium)",
        args.chromium.display()
    );
    gateways::all_counts(&args.gateways).await?;
    let profile = tempfile::Builder::new()
        .prefix("pixel-browser-check-")
        .tempdir()
        .context("cannot create Chromium's profile directory")?;
    let (mut browser, events) = launch(&args, profile.path()).await?;
    let patience = Duration::from_secs(args.patience_secs);
    // A safety net over the bounded steps: every page opening, zoom and wait.
    let overall = patience * (2 * args.attempts + 12);
    let mut session = Session {
        browser: &browser,
        args: &args,
        patience,
        errors: Arc::default(),
        listeners: Vec::new(),
    };
    let outcome = match tokio::time::timeout(overall, session.check()).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!(
            "the check did not finish within {overall:?}"
        )),
    };
    for listener in session.listeners.drain(..) {
        listener.abort();
    }
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
    outcome
}

async fn launch(args: &Args, profile: &Path) -> Result<(Browser, JoinHandle<()>)> {
    let mut config = BrowserConfig::builder()
        .chrome_executable(&args.chromium)
        // A fresh profile: nothing cached or remembered from another run.
        .user_data_dir(profile)
        .no_sandbox()
        .window_size(WINDOW.0, WINDOW.1)
        // The canvas is plain http on a host name that is not local: no HTTPS upgrade.
        .disable_https_first()
        // As the frontend's browser test: no background fetches, no QUIC probes, no GPU.
        .args([
            "disable-gpu",
            "disable-quic",
            "no-first-run",
            "disable-background-networking",
            "disable-component-update",
            "disable-sync",
        ])
        .launch_timeout(Duration::from_secs(args.patience_secs))
        .request_timeout(Duration::from_secs(args.patience_secs));
    if !args.resolve.is_empty() {
        let rules: Vec<String> = args
            .resolve
            .iter()
            .map(|r| format!("MAP {} {}", r.host, r.addr))
            .collect();
        config = config.arg(format!("host-resolver-rules={}", rules.join(",")));
    }
    let config = config.build().map_err(anyhow::Error::msg)?;
    let (browser, mut handler) = Browser::launch(config)
        .await
        .with_context(|| format!("cannot launch {}", args.chromium.display()))?;
    // The DevTools connection makes progress only while its handler is polled.
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    Ok((browser, events))
}

/// A page, and the gateway (index into `--gateway-metrics`) its WebSocket is on.
#[derive(Debug)]
struct Opened {
    page: Page,
    gateway: usize,
    /// That gateway's connections before the page connected.
    count_before: i64,
    handle: String,
}

struct Session<'a> {
    browser: &'a Browser,
    args: &'a Args,
    patience: Duration,
    /// Uncaught exceptions of every page.
    errors: Arc<Mutex<Vec<String>>>,
    listeners: Vec<JoinHandle<()>>,
}

impl Session<'_> {
    async fn check(&mut self) -> Result<Summary> {
        let gateways = &self.args.gateways;
        let painter = self.open_on_a_gateway().await?;
        eprintln!(
            "the painting page is on gateway {}",
            gateways[painter.gateway].name
        );
        let mut watcher_opened = 0;
        let watcher = loop {
            watcher_opened += 1;
            let opened = self.open_on_a_gateway().await?;
            if opened.gateway != painter.gateway {
                break opened;
            }
            eprintln!(
                "the watching page landed on gateway {} too (opening {watcher_opened}); \
                 closing it",
                gateways[opened.gateway].name
            );
            let (gateway, count) = (opened.gateway, opened.count_before);
            opened.page.close().await.context("closing the page")?;
            gateways::wait_count(gateways, gateway, count, self.patience).await?;
            if watcher_opened >= self.args.attempts {
                bail!(
                    "the second page's WebSocket landed on gateway {} like the first page's in \
                     all {watcher_opened} openings: does the Ingress balance {} over every \
                     gateway pod?",
                    gateways[gateway],
                    pixel_common::ports::WS_PATH
                );
            }
        };
        eprintln!(
            "the watching page is on gateway {}",
            gateways[watcher.gateway].name
        );

        let info = eval(
            &painter.page,
            &format!("fetch('{API_INFO_PATH}').then((r) => r.json())"),
        )
        .await?;
        let dimension = |key: &str| {
            info[key]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .with_context(|| format!("{API_INFO_PATH} has no {key}: {info}"))
        };
        let (width, height) = (dimension("width")?, dimension("height")?);
        let palette: Vec<String> = info["palette"]
            .as_array()
            .with_context(|| format!("{API_INFO_PATH} has no palette: {info}"))?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_ascii_uppercase))
            .collect();
        // The middle of the board stays in the middle of the stage when zooming with the
        // page's buttons.
        let pixel = (width / 2, height / 2);
        for opened in [&painter, &watcher] {
            zoom_in_on(&opened.page, pixel).await?;
        }
        self.wait_drawn(&watcher.page).await?;
        let was = drawn_colour(&watcher.page, pixel).await?;
        let color = (1..palette.len())
            .chain([0])
            .find(|&i| palette[i] != was)
            .with_context(|| format!("every palette colour is {was}"))?;
        let hex = palette[color].clone();

        // The watching page notes the first animation frame that shows the colour; the
        // painting page notes the click's release (when it sends the placement).
        eval(&watcher.page, &watch_script(pixel, &hex)).await?;
        eval(
            &painter.page,
            "(() => {
                window.__pixelCheck = { releasedAt: null };
                document.getElementById('board').addEventListener('pointerup', (event) => {
                    window.__pixelCheck.releasedAt = performance.timeOrigin + event.timeStamp;
                }, { once: true });
                return true;
            })()",
        )
        .await?;
        painter
            .page
            .find_element(format!("button.swatch[data-index='{color}']"))
            .await
            .with_context(|| format!("the page has no swatch {color}"))?
            .click()
            .await
            .context("clicking the swatch")?;
        let target = centre_of(&painter.page, pixel).await?;
        painter
            .page
            .click(target)
            .await
            .context("clicking the pixel")?;

        let seen_at = poll(
            &format!("the watching page to show {pixel:?} as {hex}"),
            self.patience,
            || async {
                Ok(eval(&watcher.page, "window.__pixelCheck.seenAt")
                    .await?
                    .as_f64())
            },
        )
        .await?;
        let released_at = eval(&painter.page, "window.__pixelCheck.releasedAt")
            .await?
            .as_f64()
            .context("the painting page saw no click on the board")?;
        ensure!(
            drawn_colour(&watcher.page, pixel).await? == hex,
            "the watching page showed {hex} at {pixel:?} and then lost it"
        );
        poll(
            &format!("the painting page to show {pixel:?} as {hex}"),
            self.patience,
            || async { Ok((drawn_colour(&painter.page, pixel).await? == hex).then_some(())) },
        )
        .await?;
        let state = eval(&watcher.page, "window.pixelPlayground.state()").await?;
        ensure!(
            state["connected"] == true && state["synced"] == true,
            "the watching page is no longer live: {state}"
        );
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        ensure!(
            errors.is_empty(),
            "uncaught exceptions in the pages: {errors:?}"
        );
        Ok(Summary {
            check: "two-pages",
            pages: [
                PageSummary {
                    page: "painter",
                    gateway: gateways[painter.gateway].name.clone(),
                    handle: painter.handle,
                },
                PageSummary {
                    page: "watcher",
                    gateway: gateways[watcher.gateway].name.clone(),
                    handle: watcher.handle,
                },
            ],
            watcher_opened,
            pixel: PixelSummary {
                x: pixel.0,
                y: pixel.1,
                color,
                hex,
                was,
            },
            click_to_seen_ms: ((seen_at - released_at) * 10.0).round() / 10.0,
            version: state["version"].as_u64().unwrap_or_default(),
        })
    }

    /// Opens the canvas in a new window, waits until it is live, and tells which gateway
    /// its WebSocket is on.
    async fn open_on_a_gateway(&mut self) -> Result<Opened> {
        let gateways = &self.args.gateways;
        let before = gateways::counts(gateways).await;
        let page = self.open().await?;
        self.wait_live(&page).await?;
        let gateway = gateways::which_gained(gateways, &before, self.patience).await?;
        let handle = eval(&page, "window.pixelPlayground.state().handle")
            .await?
            .as_str()
            .context("the page has no identity")?
            .to_owned();
        Ok(Opened {
            page,
            gateway,
            count_before: before[gateway].unwrap_or_default(),
            handle,
        })
    }

    /// A page in its own window, so it is visible and draws (a background tab would not run
    /// requestAnimationFrame). Its uncaught exceptions are collected.
    async fn open(&mut self) -> Result<Page> {
        let target = CreateTargetParams::builder()
            .url("about:blank")
            .new_window(true)
            .build()
            .map_err(anyhow::Error::msg)?;
        let page = self
            .browser
            .new_page(target)
            .await
            .context("cannot open a page")?;
        let mut exceptions = page.event_listener::<EventExceptionThrown>().await?;
        let errors = Arc::clone(&self.errors);
        self.listeners.push(tokio::spawn(async move {
            while let Some(event) = exceptions.next().await {
                let details = &event.exception_details;
                let text = details
                    .exception
                    .as_ref()
                    .and_then(|e| e.description.clone())
                    .unwrap_or_else(|| details.text.clone());
                if let Ok(mut errors) = errors.lock() {
                    errors.push(text);
                }
            }
        }));
        page.goto(self.args.url.as_str())
            .await
            .with_context(|| format!("cannot load {}", self.args.url))?;
        Ok(page)
    }

    /// Waits until the page is connected and its board is synced with the gateway.
    async fn wait_live(&self, page: &Page) -> Result<()> {
        poll(
            &format!("{} to connect and sync", self.args.url),
            self.patience,
            || async {
                let state = eval(page, "window.pixelPlayground?.state() ?? null").await?;
                Ok((state["connected"] == true && state["synced"] == true).then_some(()))
            },
        )
        .await
    }

    /// Waits until the page has drawn every version it holds.
    async fn wait_drawn(&self, page: &Page) -> Result<()> {
        poll("the page to draw its board", self.patience, || async {
            let state = eval(page, "window.pixelPlayground.state()").await?;
            let drawn = state["drawnVersion"].as_u64().is_some()
                && state["drawnVersion"] == state["version"];
            Ok(drawn.then_some(()))
        })
        .await
    }
}

/// Clicks the page's zoom-in button until a board pixel spans [`MIN_SCALE`] CSS pixels,
/// then checks `pixel` is on screen.
async fn zoom_in_on(page: &Page, pixel: (u32, u32)) -> Result<()> {
    let (x, y) = pixel;
    let scale = format!(
        "(() => {{ const p = window.pixelPlayground;
            return p.centreOf({}, {y}).x - p.centreOf({x}, {y}).x; }})()",
        x + 1
    );
    for _ in 0..16 {
        let now = eval(page, &scale).await?.as_f64().unwrap_or_default();
        if now >= MIN_SCALE {
            let visible = format!(
                "(() => {{ const r = document.getElementById('board').getBoundingClientRect();
                    const at = window.pixelPlayground.centreOf({x}, {y});
                    return at.x > r.left + {MIN_SCALE} && at.x < r.right - {MIN_SCALE}
                        && at.y > r.top + {MIN_SCALE} && at.y < r.bottom - {MIN_SCALE}; }})()"
            );
            ensure!(
                eval(page, &visible).await? == true,
                "pixel {pixel:?} is off the board's view after zooming in"
            );
            return Ok(());
        }
        page.find_element("#zoom-in")
            .await
            .context("the page has no #zoom-in button")?
            .click()
            .await
            .context("clicking #zoom-in")?;
    }
    bail!("the page does not zoom in: a board pixel stays under {MIN_SCALE} CSS pixels")
}

/// JavaScript reading the colour drawn on the visible canvas at the centre of board pixel
/// `(x, y)`, as `#RRGGBB`.
fn colour_js((x, y): (u32, u32)) -> String {
    format!(
        "(() => {{
            const canvas = document.getElementById('board');
            const rect = canvas.getBoundingClientRect();
            const at = window.pixelPlayground.centreOf({x}, {y});
            const k = window.devicePixelRatio || 1;
            const d = canvas.getContext('2d')
                .getImageData(Math.floor((at.x - rect.left) * k), Math.floor((at.y - rect.top) * k), 1, 1)
                .data;
            return '#' + [d[0], d[1], d[2]].map((v) => v.toString(16).padStart(2, '0')).join('').toUpperCase();
        }})"
    )
}

/// Installs a watch, one check per animation frame, noting in `window.__pixelCheck.seenAt`
/// (milliseconds since the epoch, the browser's clock) when `pixel` first shows `hex`.
fn watch_script(pixel: (u32, u32), hex: &str) -> String {
    format!(
        "(() => {{
            const colour = {};
            window.__pixelCheck = {{ seenAt: null }};
            const tick = () => {{
                if (colour() === '{hex}') {{
                    window.__pixelCheck.seenAt = performance.timeOrigin + performance.now();
                }} else {{
                    requestAnimationFrame(tick);
                }}
            }};
            requestAnimationFrame(tick);
            return true;
        }})()",
        colour_js(pixel)
    )
}

async fn drawn_colour(page: &Page, pixel: (u32, u32)) -> Result<String> {
    let colour = eval(page, &format!("({})()", colour_js(pixel))).await?;
    colour
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no colour read at {pixel:?}: {colour}"))
}

async fn centre_of(page: &Page, (x, y): (u32, u32)) -> Result<Point> {
    let at = eval(page, &format!("window.pixelPlayground.centreOf({x}, {y})")).await?;
    Ok(Point {
        x: at["x"].as_f64().context("no x")?,
        y: at["y"].as_f64().context("no y")?,
    })
}

/// Evaluates a JavaScript expression (awaiting a promise) and returns its JSON value.
async fn eval(page: &Page, expression: &str) -> Result<Value> {
    let params = EvaluateParams::builder()
        .expression(expression)
        .return_by_value(true)
        .await_promise(true)
        .build()
        .map_err(anyhow::Error::msg)?;
    let result = page
        .evaluate_expression(params)
        .await
        .with_context(|| format!("evaluating `{expression:.80}`"))?;
    Ok(result.value().cloned().unwrap_or(Value::Null))
}

/// Calls `probe` every [`POLL`] until it gives `Some`, at most `patience`.
async fn poll<T, F, Fut>(what: &str, patience: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if started.elapsed() >= patience {
            bail!("gave up waiting for {what} after {patience:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
