//! Headless Chromium (Debian's `chromium`) drives two pages of the real frontend against
//! real servers: a redis-server, canvas-api and a gateway, all in this process on port 0.
//!
//! Same origin, like production: one test server routes `/api/…` to canvas-api, `/ws` to
//! the gateway and everything else to the frontend, the rules the Ingress has. The page
//! runs with its default `/config.json` (relative locations), so canvas-api needs no CORS
//! and the gateway's own-host Origin check passes as it does behind the Ingress.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use axum::{Router, extract::Request};
use chromiumoxide::{
    Browser, BrowserConfig, Page,
    cdp::{
        browser_protocol::{
            browser::BrowserContextId,
            emulation::{SetDeviceMetricsOverrideParams, SetTouchEmulationEnabledParams},
            input::{GestureSourceType, SynthesizeTapGestureParams},
            page::CaptureScreenshotFormat,
            target::{CreateBrowserContextParams, CreateTargetParams},
        },
        js_protocol::runtime::{EvaluateParams, EventExceptionThrown},
    },
    layout::Point,
    page::ScreenshotParams,
};
use clap::Parser;
use futures_util::StreamExt;
use pixel_common::testing::RedisServer;
use serde_json::Value;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The moderator token of the canvases that moderate.
const MODERATOR_TOKEN: &str = "browser-test-moderator-token";
/// Bound on any single wait; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(50);
const CANVAS: [&str; 6] = [
    "--canvas-width",
    "16",
    "--canvas-height",
    "8",
    "--canvas-palette",
    "#FFFFFF,#000000,#FF0000,#0000FF",
];
/// The pixel the test paints, and with which palette entry.
const PIXEL: (u32, u32) = (5, 3);
const RED: (usize, &str) = (2, "#FF0000");
/// The pixel the phone-sized page taps, and its colour.
const PHONE_PIXEL: (u32, u32) = (6, 3);
const BLUE: (usize, &str) = (3, "#0000FF");
/// A phone's layout viewport (CSS pixels) and pixel density.
const PHONE: (i64, i64, f64) = (390, 740, 2.0);

/// Serves `router` on a loopback port; the task ends with the test's runtime.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// canvas-api, the gateway and the frontend behind one address, routed like the Ingress.
struct Site {
    addr: SocketAddr,
    gateway: gateway::Gateway,
    _redis: RedisServer,
}

/// The site with `canvas` flags given to canvas-api and the gateway besides [`CANVAS`].
async fn start_site(canvas: &[&str]) -> Site {
    start_site_with(canvas, &[]).await
}

/// [`start_site`], with `api_only` flags for canvas-api alone.
async fn start_site_with(canvas: &[&str], api_only: &[&str]) -> Site {
    start_site_full(canvas, api_only, |_| Vec::new()).await
}

/// [`start_site_with`], with flags for the gateway alone made from the site's address
/// (sign-in's callback URL names it).
async fn start_site_full(
    canvas: &[&str],
    api_only: &[&str],
    gateway_only: impl FnOnce(SocketAddr) -> Vec<String>,
) -> Site {
    let site = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = site.local_addr().expect("addr");
    let redis = RedisServer::start().await;
    let redis_url = redis.url();

    let token = pixel_common::testing::API_TOKEN;
    let mut api_argv = vec![
        "canvas-api",
        "--redis-url",
        &redis_url,
        "--api-token",
        token,
    ];
    api_argv.extend_from_slice(&CANVAS);
    api_argv.extend_from_slice(canvas);
    api_argv.extend_from_slice(api_only);
    let api_args = canvas_api::Args::try_parse_from(api_argv).expect("canvas-api flags");
    let api = canvas_api::app(
        canvas_api::AppState::new(&api_args).expect("canvas-api state"),
        api_args.max_body_bytes,
    );
    // The gateway reaches canvas-api directly, as it does through its Service in a cluster.
    let api_addr = serve(api.clone()).await;

    let api_url = format!("http://{api_addr}");
    let mut gateway_argv = vec![
        "gateway",
        "--redis-url",
        &redis_url,
        "--api-url",
        &api_url,
        "--batch-ms",
        "5",
        "--online-interval-ms",
        "100",
        "--api-token",
        token,
        "--identity-key",
        pixel_common::testing::IDENTITY_KEY,
    ];
    gateway_argv.extend_from_slice(&CANVAS);
    gateway_argv.extend_from_slice(canvas);
    let gateway_only = gateway_only(addr);
    gateway_argv.extend(gateway_only.iter().map(String::as_str));
    let gateway_args = gateway::Args::try_parse_from(gateway_argv).expect("gateway flags");
    let gateway = gateway::Gateway::start(&gateway_args).expect("gateway starts");
    let ws = gateway::app(gateway.clone());

    let frontend = frontend::app(&frontend::Args::try_parse_from(["frontend"]).expect("flags"));

    let ingress = Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let path = request.uri().path();
        let backend = if path.starts_with("/api/") {
            api.clone()
        } else if path == pixel_common::ports::WS_PATH
            || path.starts_with(&format!("{}/", pixel_common::ports::AUTH_PATH_PREFIX))
        {
            ws.clone()
        } else {
            frontend.clone()
        };
        backend.oneshot(request)
    }));
    tokio::spawn(async move { axum::serve(site, ingress).await });

    let live = Arc::clone(&gateway.live);
    poll("the gateway to subscribe to Redis", || {
        let live = Arc::clone(&live);
        async move { live.load(Ordering::Acquire).then_some(()) }
    })
    .await;
    Site {
        addr,
        gateway,
        _redis: redis,
    }
}

/// Calls `probe` until it gives `Some`, at most [`PATIENCE`].
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Debian's Chromium, or a failure that says what to install. Never a skip.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the browser test needs Chromium and found no `chromium` on PATH: install the \
                 Debian package `chromium` (apt-get install -y chromium)"
            )
        })
}

async fn launch(chromium: &Path, profile: &Path) -> (Browser, tokio::task::JoinHandle<()>) {
    let config = BrowserConfig::builder()
        .chrome_executable(chromium)
        // A fresh profile per run: nothing cached or remembered from another test.
        .user_data_dir(profile)
        .no_sandbox()
        .window_size(800, 600)
        // The machine has no network: no background fetches, no QUIC probes, no GPU.
        .args([
            "disable-gpu",
            "disable-quic",
            "no-first-run",
            "disable-background-networking",
            "disable-component-update",
            "disable-sync",
        ])
        .launch_timeout(PATIENCE)
        .request_timeout(PATIENCE)
        .build()
        .unwrap_or_else(|e| panic!("browser config: {e}"));
    let (browser, mut handler) = Browser::launch(config)
        .await
        .unwrap_or_else(|e| panic!("cannot launch {}: {e}", chromium.display()));
    // The DevTools connection makes progress only while its handler is polled.
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, events)
}

/// Uncaught exceptions the pages threw, collected for [`finish`].
type Errors = Arc<Mutex<Vec<String>>>;

/// Chromium on a fresh profile (kept while the returned directory lives), its event
/// task, and the collector of its pages' uncaught exceptions.
async fn start_chromium(
    chromium: &Path,
) -> (
    Browser,
    tokio::task::JoinHandle<()>,
    Errors,
    tempfile::TempDir,
) {
    let profile = tempfile::Builder::new()
        .prefix("pixel-chromium-")
        .tempdir()
        .expect("profile dir");
    let (browser, events) = launch(chromium, profile.path()).await;
    (browser, events, Arc::new(Mutex::new(Vec::new())), profile)
}

/// [`open`] in a browser context of its own: its own cookies, so another person.
async fn open_as_another_person(browser: &Browser, url: &str, errors: &Errors) -> Page {
    let context = browser
        .create_browser_context(CreateBrowserContextParams::default())
        .await
        .expect("a browser context");
    open_in(browser, Some(context), url, errors).await
}

/// A page in its own window, so it is visible and draws (a background tab in the same
/// window would not run requestAnimationFrame). Uncaught exceptions are collected.
async fn open(browser: &Browser, url: &str, errors: &Arc<Mutex<Vec<String>>>) -> Page {
    open_in(browser, None, url, errors).await
}

/// [`open`] in a browser context of its own (its own cookies: another person), or the
/// default one.
async fn open_in(
    browser: &Browser,
    context: Option<BrowserContextId>,
    url: &str,
    errors: &Arc<Mutex<Vec<String>>>,
) -> Page {
    let mut target = CreateTargetParams::builder()
        .url("about:blank")
        .new_window(true);
    if let Some(context) = context {
        target = target.browser_context_id(context);
    }
    let target = target.build().expect("target params");
    let page = browser.new_page(target).await.expect("new page");
    let mut exceptions = page
        .event_listener::<EventExceptionThrown>()
        .await
        .expect("listen for exceptions");
    let errors = Arc::clone(errors);
    tokio::spawn(async move {
        while let Some(event) = exceptions.next().await {
            let details = &event.exception_details;
            let text = details
                .exception
                .as_ref()
                .and_then(|e| e.description.clone())
                .unwrap_or_else(|| details.text.clone());
            errors.lock().expect("lock").push(text);
        }
    });
    page.goto(url).await.expect("navigate");
    page
}

/// Fails on any uncaught exception a page threw, then closes the browser and stops the
/// site's gateway.
async fn finish(
    mut browser: Browser,
    events: tokio::task::JoinHandle<()>,
    errors: &Arc<Mutex<Vec<String>>>,
    site: Site,
) {
    let errors = errors.lock().expect("lock").clone();
    assert!(
        errors.is_empty(),
        "uncaught exceptions in the page: {errors:?}"
    );
    browser.close().await.expect("close the browser");
    browser.wait().await.expect("browser exits");
    events.abort();
    site.gateway.stop(Duration::from_secs(5)).await;
}

/// Chooses palette entry `index` with a real click on its swatch.
async fn pick_colour(page: &Page, index: usize) {
    click(page, &format!("button.swatch[data-index='{index}']")).await;
}

/// Evaluates a JavaScript expression: its JSON value, or why it could not be evaluated.
async fn try_eval(page: &Page, expression: &str) -> Result<Value, chromiumoxide::error::CdpError> {
    let params = EvaluateParams::builder()
        .expression(expression)
        .return_by_value(true)
        .await_promise(true)
        .build()
        .expect("evaluate params");
    let evaluated = page.evaluate_expression(params).await?;
    Ok(evaluated.value().cloned().unwrap_or(Value::Null))
}

/// Evaluates a JavaScript expression and returns its JSON value.
async fn eval(page: &Page, expression: &str) -> Value {
    try_eval(page, expression)
        .await
        .unwrap_or_else(|e| panic!("evaluating `{expression}`: {e}"))
}

/// [`eval`] while the page may be navigating: `None` when its document is being replaced.
async fn eval_navigating(page: &Page, expression: &str) -> Option<Value> {
    try_eval(page, expression).await.ok()
}

/// Clicks the element `selector` finds, as a person would.
async fn click(page: &Page, selector: &str) {
    page.find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("no {selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
}

/// Waits until the page is connected and its board equals the server's version.
async fn wait_live(page: &Page) -> u64 {
    poll("the page to connect and sync", || async {
        let state = eval(page, "window.pixelPlayground?.state() ?? null").await;
        let live = state["connected"] == true && state["synced"] == true;
        live.then(|| state["version"].as_u64()).flatten()
    })
    .await
}

/// The colour drawn on the visible canvas at the centre of board pixel (x, y), as #RRGGBB.
async fn drawn_colour(page: &Page, (x, y): (u32, u32)) -> String {
    let js = format!(
        "(() => {{
            const canvas = document.getElementById('board');
            const rect = canvas.getBoundingClientRect();
            const at = window.pixelPlayground.centreOf({x}, {y});
            const k = window.devicePixelRatio || 1;
            const d = canvas.getContext('2d')
                .getImageData(Math.floor((at.x - rect.left) * k), Math.floor((at.y - rect.top) * k), 1, 1)
                .data;
            return '#' + [d[0], d[1], d[2]].map((v) => v.toString(16).padStart(2, '0')).join('').toUpperCase();
        }})()"
    );
    eval(page, &js)
        .await
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default()
}

async fn wait_colour(page: &Page, which: &str, pixel: (u32, u32), colour: &str) {
    poll(
        &format!("{which} to draw {pixel:?} as {colour}"),
        || async { (drawn_colour(page, pixel).await == colour).then_some(()) },
    )
    .await;
}

/// Waits until the text of element `#id` satisfies `wanted`, and returns it.
async fn wait_text(page: &Page, id: &str, wanted: impl Fn(&str) -> bool) -> String {
    let js = format!("document.getElementById('{id}').textContent");
    poll(&format!("the text of #{id}"), || async {
        let text = eval(page, &js).await;
        text.as_str().filter(|t| wanted(t)).map(str::to_owned)
    })
    .await
}

async fn centre_of(page: &Page, (x, y): (u32, u32)) -> Point {
    let at = eval(page, &format!("window.pixelPlayground.centreOf({x}, {y})")).await;
    Point {
        x: at["x"].as_f64().expect("x"),
        y: at["y"].as_f64().expect("y"),
    }
}

async fn save_screenshot(page: &Page, name: &str) -> PathBuf {
    let path = screenshot_dir().join(name);
    let params = ScreenshotParams::builder()
        .format(CaptureScreenshotFormat::Png)
        .build();
    page.save_screenshot(params, &path)
        .await
        .expect("screenshot");
    println!("screenshot: {}", path.display());
    path
}

/// Turns `page` into a phone (small viewport, high density, touch) and taps `pixel` in
/// `colour` with a finger: touch events, not mouse clicks.
async fn tap_as_phone(page: &Page, pixel: (u32, u32), colour: usize) {
    let (width, height, density) = PHONE;
    page.execute(SetDeviceMetricsOverrideParams::new(
        width, height, density, true,
    ))
    .await
    .expect("phone metrics");
    page.execute(SetTouchEmulationEnabledParams::new(true))
        .await
        .expect("touch emulation");
    // The board refits the smaller stage on its next resize; nothing overflows sideways.
    let fits = format!(
        "(() => {{
            const c = document.getElementById('board');
            return document.documentElement.clientWidth === {width}
                && document.documentElement.scrollWidth <= {width}
                && c.width === Math.round(c.clientWidth * devicePixelRatio);
        }})()"
    );
    poll("the page to lay out at phone size", || async {
        (eval(page, &fits).await == true).then_some(())
    })
    .await;
    pick_colour(page, colour).await;
    let at = centre_of(page, pixel).await;
    // A tap synthesized from a touch source: the page sees pointer events of type "touch".
    let tap = SynthesizeTapGestureParams::builder()
        .x(at.x)
        .y(at.y)
        .gesture_source_type(GestureSourceType::Touch)
        .build()
        .expect("tap params");
    page.execute(tap).await.expect("tap");
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            // services/frontend → the workspace root.
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2);
            root.expect("workspace root").join("target")
        },
        PathBuf::from,
    );
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_in_one_page_shows_in_the_other() {
    // First, so a machine without the package fails with the message that says so.
    let chromium = chromium();
    let site = start_site(&[]).await;
    let url = format!("http://{}/", site.addr);
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;

    let painter = open(&browser, &url, &errors).await;
    let watcher = open(&browser, &url, &errors).await;
    let start_version = wait_live(&painter).await;
    wait_live(&watcher).await;
    // The pixel starts white in both, so red later can only come from the click.
    wait_colour(&watcher, "the watching page", PIXEL, "#FFFFFF").await;

    // Choose red in the palette, then click the pixel, both with real mouse events.
    pick_colour(&painter, RED.0).await;
    let target = centre_of(&painter, PIXEL).await;
    painter.click(target).await.expect("click the pixel");

    wait_colour(&watcher, "the watching page", PIXEL, RED.1).await;
    wait_colour(&painter, "the painting page", PIXEL, RED.1).await;
    let version = wait_live(&watcher).await;
    assert_eq!(version, start_version + 1, "one placement, one version");

    // Hovering asks canvas-api who placed the pixel: the painter's handle.
    let placer = eval(&painter, "window.pixelPlayground.state().handle").await;
    let placer = placer
        .as_str()
        .expect("the painter has an identity")
        .to_owned();
    assert!(placer.starts_with("anon-"), "{placer}");
    let hover = centre_of(&watcher, PIXEL).await;
    watcher.move_mouse(hover).await.expect("hover");
    let info = wait_text(&watcher, "pixel-info", |t| t.contains(&placer)).await;
    assert!(info.starts_with("(5, 3) · "), "{info}");

    // A reload starts from the snapshot (plus history) and still shows it.
    watcher.reload().await.expect("reload");
    wait_live(&watcher).await;
    wait_colour(&watcher, "the reloaded page", PIXEL, RED.1).await;

    // Both pages count in the cluster-wide online number.
    wait_text(&painter, "online", |t| t == "2 online").await;
    // The painter's pointer still rests on the pixel (it looked it up before the click):
    // its info follows the placement.
    wait_text(&painter, "pixel-info", |t| t.contains(&placer)).await;

    save_screenshot(&painter, "frontend-two-pages.png").await;

    // The other way round, from a phone: a tap paints, the desktop page shows it.
    tap_as_phone(&watcher, PHONE_PIXEL, BLUE.0).await;
    wait_colour(&painter, "the desktop page", PHONE_PIXEL, BLUE.1).await;
    wait_colour(&watcher, "the phone page", PHONE_PIXEL, BLUE.1).await;
    save_screenshot(&watcher, "frontend-phone.png").await;

    finish(browser, events, &errors, site).await;
}

/// One cooldown per person: after a placement, a reload keeps the page's identity and shows
/// the cooldown still running (the hello's `cooldownMs`), and a click then places nothing;
/// another person (a browser context with its own cookies) may place meanwhile. The
/// history names both by their handles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_cooldown_and_another_person_may_place() {
    let chromium = chromium();
    let site = start_site(&["--canvas-cooldown-seconds", "60"]).await;
    let url = format!("http://{}/", site.addr);
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;
    let state = |page: &Page| {
        let page = page.clone();
        async move { eval(&page, "window.pixelPlayground.state()").await }
    };
    let version_reaches = |page: &Page, version: u64| {
        let page = page.clone();
        async move {
            poll(&format!("the page to reach version {version}"), || async {
                let now = eval(&page, "window.pixelPlayground.state().version").await;
                (now.as_u64() == Some(version)).then_some(())
            })
            .await;
        }
    };

    let page = open(&browser, &url, &errors).await;
    let start = wait_live(&page).await;
    let handle = state(&page).await["handle"]
        .as_str()
        .expect("the page has an identity")
        .to_owned();
    page.click(centre_of(&page, PIXEL).await)
        .await
        .expect("click the pixel");
    version_reaches(&page, start + 1).await;
    wait_text(&page, "cooldown", |t| t.starts_with("wait ")).await;

    page.reload().await.expect("reload");
    wait_live(&page).await;
    let reloaded = state(&page).await;
    assert_eq!(
        reloaded["handle"],
        handle.as_str(),
        "the same person after a reload"
    );
    let left = reloaded["cooldownLeftMs"].as_u64().expect("cooldownLeftMs");
    assert!(
        (40_000..=60_000).contains(&left),
        "cooldown left after the reload: {left}"
    );
    let shown = wait_text(&page, "cooldown", |t| t.starts_with("wait ")).await;
    let seconds: u64 = shown
        .trim_start_matches("wait ")
        .trim_end_matches(" s")
        .parse()
        .expect("wait <n> s");
    assert!((40..=60).contains(&seconds), "{shown}");
    wait_text(&page, "identity", |t| t == format!("you: {handle}")).await;
    // A click during the cooldown places nothing (checked with the history below).
    page.click(centre_of(&page, PHONE_PIXEL).await)
        .await
        .expect("click during the cooldown");

    let other = open_as_another_person(&browser, &url, &errors).await;
    wait_live(&other).await;
    let other_handle = state(&other).await["handle"]
        .as_str()
        .expect("the other person has an identity")
        .to_owned();
    assert_ne!(other_handle, handle, "another person, another identity");
    other
        .click(centre_of(&other, PHONE_PIXEL).await)
        .await
        .expect("click as the other person");
    version_reaches(&page, start + 2).await;

    let history: Value = reqwest::get(format!("http://{}/api/v1/history?since={start}", site.addr))
        .await
        .expect("GET history")
        .json()
        .await
        .expect("JSON");
    let placers: Vec<&str> = history["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .filter_map(|u| u["placedBy"].as_str())
        .collect();
    assert_eq!(
        placers,
        [handle.as_str(), other_handle.as_str()],
        "exactly the two placements, one per person (the click during the cooldown placed nothing): {history}"
    );

    finish(browser, events, &errors, site).await;
}

/// Clearing cookies does not beat the cooldown: one address that drops its cookie and
/// reloads, again and again, is given at most `--identity-issue-limit` identities; after
/// that its page only watches, says so, and a click places nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_cookies_in_a_loop_is_held_to_the_issuance_limit() {
    const LIMIT: usize = 3;
    let chromium = chromium();
    // The limit is the gateway's: it counts per client address, across gateways, in Redis.
    let site = start_site_full(&["--canvas-cooldown-seconds", "60"], &[], |_| {
        vec!["--identity-issue-limit".to_owned(), LIMIT.to_string()]
    })
    .await;
    let url = format!("http://{}/", site.addr);
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;
    let page = open(&browser, &url, &errors).await;
    let mut handles = Vec::new();
    for round in 0..=LIMIT {
        if round > 0 {
            browser.clear_cookies().await.expect("clear cookies");
            page.reload().await.expect("reload");
        }
        wait_live(&page).await;
        let handle = eval(&page, "window.pixelPlayground.state().handle").await;
        handles.push(handle);
    }
    let given: Vec<&str> = handles[..LIMIT]
        .iter()
        .map(|h| h.as_str().expect("an identity within the limit"))
        .collect();
    let mut distinct = given.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), LIMIT, "a new identity each time: {given:?}");
    assert_eq!(
        handles[LIMIT],
        Value::Null,
        "past the limit, a watcher: {handles:?}"
    );
    wait_text(&page, "identity", |t| t == "watching").await;
    let before = wait_live(&page).await;
    page.click(centre_of(&page, PIXEL).await)
        .await
        .expect("click as a watcher");
    wait_text(&page, "cooldown", |t| t.starts_with("wait ")).await;
    assert_eq!(wait_live(&page).await, before, "the watcher placed nothing");

    finish(browser, events, &errors, site).await;
}

/// Undo (Pxls-style): right after a placement the page offers to take it back, also after
/// a reload; pressing the button restores the old colour in this page and another person's, and refunds the
/// cooldown, so the next click places at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_restores_the_old_colour_in_both_pages_and_refunds_the_cooldown() {
    let chromium = chromium();
    // A long window, so a slow machine still presses the button within it.
    let site = start_site(&[
        "--canvas-cooldown-seconds",
        "60",
        "--canvas-undo-seconds",
        "60",
    ])
    .await;
    let url = format!("http://{}/", site.addr);
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;

    let placer = open(&browser, &url, &errors).await;
    let watcher = open_as_another_person(&browser, &url, &errors).await;
    let start = wait_live(&placer).await;
    wait_live(&watcher).await;
    let undo_offered = "window.pixelPlayground.state().undoOffered";
    assert_eq!(
        eval(&placer, undo_offered).await,
        false,
        "nothing to undo yet"
    );

    pick_colour(&placer, RED.0).await;
    placer
        .click(centre_of(&placer, PIXEL).await)
        .await
        .expect("click the pixel");
    wait_colour(&watcher, "the other person's page", PIXEL, RED.1).await;
    poll("the undo button", || async {
        (eval(&placer, undo_offered).await == true).then_some(())
    })
    .await;
    wait_text(&placer, "cooldown", |t| t.starts_with("wait ")).await;
    // A reload keeps the offer: the hello says how long the undo still runs.
    placer.reload().await.expect("reload");
    wait_live(&placer).await;
    poll("the undo button after the reload", || async {
        (eval(&placer, undo_offered).await == true).then_some(())
    })
    .await;

    placer
        .find_element("#undo")
        .await
        .expect("the undo button")
        .click()
        .await
        .expect("click undo");
    wait_colour(&watcher, "the other person's page", PIXEL, "#FFFFFF").await;
    wait_colour(&placer, "the placer's page", PIXEL, "#FFFFFF").await;
    wait_text(&placer, "cooldown", |t| t == "undone").await;
    let state = eval(&placer, "window.pixelPlayground.state()").await;
    assert_eq!(state["cooldownLeftMs"], 0, "refunded: {state}");
    assert_eq!(
        state["undoOffered"], false,
        "one undo per placement: {state}"
    );
    assert_eq!(
        wait_live(&watcher).await,
        start + 2,
        "the undo is a new version"
    );

    // Refunded for real: the server takes the next placement at once (red again: the
    // reload reset the palette's choice).
    pick_colour(&placer, RED.0).await;
    placer
        .click(centre_of(&placer, PHONE_PIXEL).await)
        .await
        .expect("click again");
    wait_colour(&watcher, "the other person's page", PHONE_PIXEL, RED.1).await;
    let history: Value = reqwest::get(format!("http://{}/api/v1/history?since={start}", site.addr))
        .await
        .expect("GET history")
        .json()
        .await
        .expect("JSON");
    let entries: Vec<(u64, u64, bool)> = history["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| {
            (
                u["x"].as_u64().expect("x"),
                u["color"].as_u64().expect("color"),
                u["kind"] == "undo",
            )
        })
        .collect();
    assert_eq!(
        entries,
        [(5, 2, false), (5, 0, true), (6, 2, false)],
        "{history}"
    );

    finish(browser, events, &errors, site).await;
}

/// A frozen canvas (`readOnly`) and one whose schedule has not begun: the page says so
/// (the hello carries both), a click places nothing, and the gateway refuses a placement
/// sent anyway with `canvas_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_canvas_refuses_placements_and_says_so() {
    let chromium = chromium();
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;

    let frozen = start_site(&["--canvas-read-only", "true"]).await;
    let page = open(&browser, &format!("http://{}/", frozen.addr), &errors).await;
    wait_live(&page).await;
    wait_text(&page, "opening", |t| t.starts_with("frozen")).await;
    assert_eq!(
        eval(&page, "window.pixelPlayground.state().closed").await,
        "frozen"
    );
    page.click(centre_of(&page, PIXEL).await)
        .await
        .expect("click the pixel");
    // The page does not send; a client that does is refused by the server.
    let answer = eval(
        &page,
        "new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/ws`);
            ws.onmessage = (event) => {
                const message = JSON.parse(event.data);
                if (message.type === 'hello') ws.send(JSON.stringify({type: 'place', x: 1, y: 1, color: 1, id: 7}));
                if (message.type === 'error' || message.type === 'placed') { resolve(message); ws.close(); }
            };
        })",
    )
    .await;
    assert_eq!(answer["code"], "canvas_closed", "{answer}");
    let info: Value = reqwest::get(format!("http://{}/api/v1/info", frozen.addr))
        .await
        .expect("GET info")
        .json()
        .await
        .expect("JSON");
    assert_eq!(info["version"], 0, "nothing was placed: {info}");

    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let opens_at = later.to_string();
    let scheduled = start_site(&["--canvas-opens-at", &opens_at]).await;
    let page = open(&browser, &format!("http://{}/", scheduled.addr), &errors).await;
    wait_live(&page).await;
    let notice = wait_text(&page, "opening", |t| t.starts_with("opens in ")).await;
    assert!(
        notice.starts_with("opens in 1 h 59 min") || notice.starts_with("opens in 2 h"),
        "{notice}"
    );
    assert_eq!(
        eval(&page, "window.pixelPlayground.state().closed").await,
        "not_open_yet"
    );

    scheduled.gateway.stop(Duration::from_secs(5)).await;
    finish(browser, events, &errors, frozen).await;
}

/// Moderation seen from the pages: a banned player's click is refused and the page says so;
/// a rollback of an area to the version before the vandalism restores exactly the earlier
/// pixels in every connected page, while the vandal's pixel outside the area stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_player_is_refused_and_a_rollback_restores_every_page() {
    const OUTSIDE: (u32, u32) = (12, 6);
    let chromium = chromium();
    let site = start_site_with(&[], &["--moderator-token", MODERATOR_TOKEN]).await;
    let url = format!("http://{}/", site.addr);
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;
    let api = |path: &str| format!("http://{}/api/v1/moderation/{path}", site.addr);
    let http = reqwest::Client::new();

    let player = open(&browser, &url, &errors).await;
    let vandal = open_as_another_person(&browser, &url, &errors).await;
    wait_live(&player).await;
    wait_live(&vandal).await;
    let paint = |page: &Page, pixel: (u32, u32)| {
        let page = page.clone();
        async move {
            page.click(centre_of(&page, pixel).await)
                .await
                .expect("click the pixel");
        }
    };

    pick_colour(&player, RED.0).await;
    paint(&player, PIXEL).await;
    wait_colour(&vandal, "the vandal's page", PIXEL, RED.1).await;
    let before = wait_live(&vandal).await;
    pick_colour(&vandal, BLUE.0).await;
    for pixel in [PIXEL, PHONE_PIXEL, OUTSIDE] {
        paint(&vandal, pixel).await;
        wait_colour(&player, "the player's page", pixel, BLUE.1).await;
    }

    let handle = eval(&vandal, "window.pixelPlayground.state().handle").await;
    let handle = handle.as_str().expect("the vandal has a handle");
    let banned = http
        .put(api(&format!("bans/{handle}")))
        .bearer_auth(MODERATOR_TOKEN)
        .json(&serde_json::json!({"reason": "vandalism"}))
        .send()
        .await
        .expect("PUT ban");
    assert!(banned.status().is_success(), "{}", banned.status());
    paint(&vandal, (0, 0)).await;
    wait_text(&vandal, "cooldown", |t| t.contains("banned")).await;

    let area =
        serde_json::json!({"area": {"x": 0, "y": 0, "width": 8, "height": 8}, "toVersion": before});
    let done: Value = http
        .post(api("rollbacks"))
        .bearer_auth(MODERATOR_TOKEN)
        .json(&area)
        .send()
        .await
        .expect("POST rollback")
        .json()
        .await
        .expect("JSON");
    assert_eq!(done["placed"], 2, "{done}");
    for (page, which) in [
        (&player, "the player's page"),
        (&vandal, "the vandal's page"),
    ] {
        wait_colour(page, which, PIXEL, RED.1).await;
        wait_colour(page, which, PHONE_PIXEL, "#FFFFFF").await;
        wait_colour(page, which, OUTSIDE, BLUE.1).await;
        wait_colour(page, which, (0, 0), "#FFFFFF").await;
    }
    let version = done["version"].as_u64().expect("version");
    assert_eq!(
        wait_live(&player).await,
        version,
        "the rollback's versions, in order"
    );

    finish(browser, events, &errors, site).await;
}

/// The environment variable naming the OpenID Connect provider's binary (zitadel/oidc's
/// example server, built from its pinned module by `cargo xtask test`).
const OIDC_PROVIDER_ENV: &str = pixel_common::ports::ENV_TEST_OIDC_PROVIDER;
/// The provider's client (its example registers `web` with this secret).
const OIDC_CLIENT: (&str, &str) = ("web", "secret");
/// People the provider knows: one of the allowed email domain, one of another.
const ADA: (&str, &str) = ("ada", "analytical-engine");
const EVE: (&str, &str) = ("eve", "eavesdropper-1");

/// A real OpenID Connect provider on a loopback port, stopped when dropped.
struct OidcProvider {
    child: std::process::Child,
    issuer: String,
    _users: tempfile::NamedTempFile,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// Starts the provider with Ada and Eve, accepting `redirect` as the callback.
    fn start(redirect: &str) -> Self {
        let binary = std::env::var_os(OIDC_PROVIDER_ENV).unwrap_or_else(|| {
            panic!(
                "the sign-in test needs a real OpenID Connect provider: set {OIDC_PROVIDER_ENV} \
                 to zitadel/oidc's example server (`cargo xtask test` builds it from \
                 e2e/toolchain/oidc-provider and runs this test)"
            )
        });
        let users = tempfile::NamedTempFile::new().expect("users file");
        let person = |(id, password): (&str, &str), first: &str, last: &str, email: &str| {
            serde_json::json!({"ID": id, "Username": id, "Password": password,
                "FirstName": first, "LastName": last, "Email": email, "EmailVerified": true,
                "PreferredLanguage": "en"})
        };
        let people = serde_json::json!({
            ADA.0: person(ADA, "Ada", "Lovelace", "ada@painters.example"),
            EVE.0: person(EVE, "Eve", "Listener", "eve@elsewhere.example"),
        });
        std::fs::write(users.path(), people.to_string()).expect("write users");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(&binary)
            .env("PORT", port.to_string())
            .env("USERS_FILE", users.path())
            .env("REDIRECT_URI", redirect)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Path::new(&binary).display()));
        Self {
            child,
            // The example provider names itself by `localhost`.
            issuer: format!("http://localhost:{port}/"),
            _users: users,
        }
    }

    async fn wait_ready(&self) {
        let discovery = format!("{}.well-known/openid-configuration", self.issuer);
        poll(
            "the OpenID Connect provider to answer discovery",
            || async {
                let answer = reqwest::get(&discovery).await.ok()?;
                answer.status().is_success().then_some(())
            },
        )
        .await;
    }
}

/// Signs in at the provider's login form as `who`, as a person types it.
async fn sign_in_at_provider(page: &Page, issuer: &str, (user, password): (&str, &str)) {
    click(page, "#sign-in").await;
    poll("the provider's login form", || async {
        let href = eval_navigating(page, "location.href").await?;
        let at_provider = href.as_str().is_some_and(|h| h.starts_with(issuer));
        let form = eval_navigating(page, "document.getElementById('username') !== null").await?;
        (at_provider && form == true).then_some(())
    })
    .await;
    for (field, text) in [("#username", user), ("#password", password)] {
        page.find_element(field)
            .await
            .expect("a login field")
            .click()
            .await
            .expect("focus the field")
            .type_str(text)
            .await
            .expect("type");
    }
    click(page, "button[type=submit]").await;
}

/// Sign-in mode against a real OpenID Connect provider: a signed-out visitor watches and
/// cannot place; signed in (authorization code with PKCE), the page shows the provider's
/// name and places; a reload keeps the person and the cooldown; the pixel info shows the
/// name, never the email; as a member of the moderator group the person moderates through
/// the gateway from the page (and the audit log names them), but not from elsewhere;
/// signing out makes the page a watcher again; a person outside the allowed email domain
/// is refused at the callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the OpenID Connect provider: `cargo xtask test` builds it and runs this"]
async fn sign_in_places_keeps_the_cooldown_across_a_reload_and_signs_out() {
    let chromium = chromium();
    let mut provider = None;
    let api_only = ["--moderator-token", MODERATOR_TOKEN];
    let site = start_site_full(&["--canvas-cooldown-seconds", "60"], &api_only, |addr| {
        let started = OidcProvider::start(&format!("http://{addr}/auth/callback"));
        let flags = [
            "--oidc-issuer",
            &started.issuer,
            "--oidc-client-id",
            OIDC_CLIENT.0,
            "--oidc-client-secret",
            OIDC_CLIENT.1,
            "--oidc-redirect-url",
            &format!("http://{addr}/auth/callback"),
            "--oidc-allowed-email-domains",
            "painters.example",
            // The example provider lists no groups: its username stands in for the claim.
            "--oidc-groups-claim",
            "preferred_username",
            "--oidc-moderator-groups",
            ADA.0,
            "--moderator-token",
            MODERATOR_TOKEN,
        ]
        .map(str::to_owned)
        .to_vec();
        provider = Some(started);
        flags
    })
    .await;
    let provider = provider.expect("the provider started");
    provider.wait_ready().await;
    let url = format!("http://{}/", site.addr);
    let (browser, events, errors, _profile) = start_chromium(&chromium).await;
    let state = |page: &Page| {
        let page = page.clone();
        async move { eval(&page, "window.pixelPlayground.state()").await }
    };

    // Signed out: watching, with a way to sign in; a click places nothing.
    let page = open(&browser, &url, &errors).await;
    let start = wait_live(&page).await;
    assert_eq!(state(&page).await["handle"], Value::Null, "signed out");
    wait_text(&page, "identity", |t| t.contains("sign in to place")).await;
    page.click(centre_of(&page, PIXEL).await)
        .await
        .expect("click while signed out");
    wait_text(&page, "cooldown", |t| t.contains("signed-in")).await;

    // Signed in: back on the canvas as Ada, who places.
    sign_in_at_provider(&page, &provider.issuer, ADA).await;
    poll("the page to come back signed in", || async {
        let state = eval_navigating(&page, "window.pixelPlayground?.state() ?? null").await?;
        (state["signedIn"] == true && state["connected"] == true).then_some(())
    })
    .await;
    wait_live(&page).await;
    let handle = state(&page).await["handle"]
        .as_str()
        .expect("a handle")
        .to_owned();
    assert!(handle.starts_with("user-"), "{handle}");
    wait_text(&page, "identity", |t| t == "you: Ada Lovelace").await;
    pick_colour(&page, RED.0).await;
    page.click(centre_of(&page, PIXEL).await)
        .await
        .expect("click signed in");
    wait_colour(&page, "the signed-in page", PIXEL, RED.1).await;
    assert_eq!(wait_live(&page).await, start + 1, "one placement");

    // A reload: the same person, the cooldown still running.
    page.reload().await.expect("reload");
    wait_live(&page).await;
    let reloaded = state(&page).await;
    assert_eq!(reloaded["handle"], handle.as_str(), "{reloaded}");
    let left = reloaded["cooldownLeftMs"].as_u64().expect("cooldownLeftMs");
    assert!((40_000..=60_000).contains(&left), "cooldown left: {left}");
    wait_text(&page, "cooldown", |t| t.starts_with("wait ")).await;

    let info: Value = reqwest::get(format!(
        "http://{}/api/v1/pixels/{}/{}",
        site.addr, PIXEL.0, PIXEL.1
    ))
    .await
    .expect("GET pixel")
    .json()
    .await
    .expect("JSON");
    assert_eq!(info["placedBy"], handle.as_str(), "{info}");
    assert_eq!(info["placedByName"], "Ada Lovelace", "{info}");
    assert!(
        !info.to_string().contains("painters.example"),
        "no email: {info}"
    );

    // Ada moderates from the page: the gateway holds the token and names her.
    let banned = eval(
        &page,
        "fetch('/auth/moderation/bans/anon-0a1b2c3d', {method: 'PUT', \
         headers: {'Content-Type': 'application/json'}, body: JSON.stringify({reason: 'test'})}) \
         .then(r => r.status)",
    )
    .await;
    assert_eq!(banned, 200, "a ban through the gateway");
    let audit = eval(&page, "fetch('/auth/moderation/audit').then(r => r.json())").await;
    assert_eq!(audit["entries"][0]["by"], handle.as_str(), "{audit}");
    assert_eq!(audit["entries"][0]["action"], "ban", "{audit}");
    // Her cookie from elsewhere (no Origin of the canvas) changes nothing.
    let cookies = page.get_cookies().await.expect("cookies");
    let cookie = cookies
        .iter()
        .map(|c| format!("{}={}", c.name, c.value))
        .collect::<Vec<_>>()
        .join("; ");
    let forged = reqwest::Client::new()
        .delete(format!(
            "http://{}/auth/moderation/bans/anon-0a1b2c3d",
            site.addr
        ))
        .header("cookie", &cookie)
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .expect("DELETE from elsewhere");
    assert_eq!(forged.status(), 403, "a request from another site");
    let foreign_logout = reqwest::Client::new()
        .post(format!("http://{}/auth/logout", site.addr))
        .header("cookie", &cookie)
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .expect("POST logout from elsewhere");
    assert_eq!(
        foreign_logout.status(),
        403,
        "another site cannot sign her out"
    );
    let still: Value = reqwest::Client::new()
        .get(format!("http://{}/auth/moderation/bans", site.addr))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("GET bans")
        .json()
        .await
        .expect("JSON");
    assert!(
        still.to_string().contains("anon-0a1b2c3d"),
        "still banned: {still}"
    );

    // Signed out: a watcher again, however the page reconnects.
    click(&page, "#sign-out button").await;
    poll("the page to come back signed out", || async {
        let state = eval_navigating(&page, "window.pixelPlayground?.state() ?? null").await?;
        (state["connected"] == true && state["handle"].is_null()).then_some(())
    })
    .await;
    wait_text(&page, "identity", |t| t.contains("sign in to place")).await;

    // Eve's email is of another domain: the callback refuses her, and no cookie is set.
    let other = open_as_another_person(&browser, &url, &errors).await;
    wait_live(&other).await;
    sign_in_at_provider(&other, &provider.issuer, EVE).await;
    let refusal = poll("the callback's refusal", || async {
        let body = eval_navigating(&other, "document.body ? document.body.innerText : ''").await?;
        body.as_str()
            .filter(|b| b.contains("not_admitted"))
            .map(str::to_owned)
    })
    .await;
    assert!(refusal.contains("painters.example"), "{refusal}");
    other.goto(url.as_str()).await.expect("back to the canvas");
    wait_live(&other).await;
    assert_eq!(
        state(&other).await["handle"],
        Value::Null,
        "Eve only watches"
    );

    finish(browser, events, &errors, site).await;
}
