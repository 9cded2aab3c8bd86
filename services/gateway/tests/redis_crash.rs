//! Redis killed with SIGKILL while placements stream in at a steady rate, once per
//! `appendfsync` policy: canvas-api answers 503 within its Redis bound during the outage,
//! the gateway keeps its WebSocket clients and resumes fan-out, and after Redis restarts
//! from its append-only file every placement acknowledged outside the policy's loss window
//! is in the canvas. Each run prints a one-line summary (copied into docs/reliability.md).
//!
//! Real redis-server; canvas-api and one gateway in-process on port 0 (`support`); real
//! WebSocket clients that follow docs/protocol.md (snapshot, frames, history
//! on a gap, snapshot on `refetch`).

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use clap::Parser;
use futures_util::StreamExt;
use pixel_common::{
    testing::RedisServer,
    wire::{PixelUpdate, Snapshot, UpdateFrame},
};
use serde_json::{Value, json};
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};
use tokio_util::sync::CancellationToken;

mod support;

use support::ServedGateway;

/// Bound on any single wait; reached only when something hangs.
const HANG: Duration = Duration::from_secs(10);
/// 64x64 = 4096 pixels: every placement attempt gets its own pixel (attempt `k` writes pixel
/// index `k`), so no acknowledged placement is ever overwritten by a later one.
const SIDE: u16 = 64;
const CANVAS: [&str; 6] = [
    "--canvas-width",
    "64",
    "--canvas-height",
    "64",
    "--canvas-palette",
    "#FFFFFF,#000000,#FF0000,#0000FF",
];
const CLIENTS: usize = 20;
const CLIENT_ID: &str = "crash-placer";
/// 200 placements per second (cooldown 0, the default).
const PLACE_EVERY: Duration = Duration::from_millis(5);
/// Long enough that, even with everysec's window, over a second of placements must survive.
const BEFORE_KILL: Duration = Duration::from_millis(3500);
const OUTAGE: Duration = Duration::from_secs(2);
const AFTER_READY: Duration = Duration::from_secs(1);
/// The fewest placements a check must cover not to be vacuous (the placer reaches ~150/s
/// on two idle cores, far fewer when they are busy with builds).
const MIN_CHECKED: usize = 20;
/// canvas-api's Redis timeout: its default (`--redis-timeout-ms`, docs/protocol.md).
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// `Store::bounded` (canvas-api/src/store.rs) cuts every Redis call at twice the timeout
/// (EVALSHA, then EVAL when the script is not cached): that is the longest a 503 may take;
/// 250 ms more covers loopback HTTP and scheduling on two shared cores.
const MAX_503: Duration = Duration::from_millis(2 * 500 + 250);

/// How much acknowledged work a SIGKILL may lose. The kernel keeps what Redis `write()`s, so a
/// killed process loses only what it acknowledged without writing. `always`: it writes and
/// fsyncs before replying, nothing. `everysec`: it replies while postponing the write for
/// as long as a background fsync is in flight, up to 2000 ms (`flushAppendOnlyFile` in
/// aof.c: `mstime - aof_flush_postponed_start < 2000`); the retry runs at the next event-loop
/// pass (at most 100 ms at hz 10), hence 250 ms of margin. Measured from our acknowledgement
/// time, which is later than Redis's, so the bound is conservative.
fn loss_window(appendfsync: &str) -> Duration {
    match appendfsync {
        "always" => Duration::ZERO,
        _ => Duration::from_millis(2250),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_with_appendfsync_always_loses_no_acknowledged_placement() {
    redis_crash("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_with_appendfsync_everysec_loses_only_the_fsync_window() {
    redis_crash("everysec").await;
}

// ---- canvas-api and gateway in-process ----

async fn start_api(redis: &RedisServer) -> SocketAddr {
    let mut flags = vec!["--snapshot-max-age-ms", "0"];
    flags.extend_from_slice(&CANVAS);
    let url = redis.url();
    let mut argv = vec![
        "canvas-api",
        "--redis-url",
        &url,
        "--api-token",
        pixel_common::testing::API_TOKEN,
    ];
    argv.extend_from_slice(&flags);
    let args = canvas_api::Args::try_parse_from(argv).expect("valid flags");
    assert_eq!(
        args.redis.timeout(),
        REDIS_TIMEOUT,
        "the bound MAX_503 assumes"
    );
    support::serve_api(redis, &flags).await
}

async fn start_gateway(redis: &RedisServer, api: SocketAddr) -> ServedGateway {
    let mut flags = vec!["--batch-ms", "5", "--online-interval-ms", "100"];
    flags.extend_from_slice(&CANVAS);
    support::serve_gateway(redis, api, &flags).await
}

/// Polls `/readyz` until 200; returns how long that took.
async fn wait_ready(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    loop {
        let ready = reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return started.elapsed();
        }
        assert!(started.elapsed() < HANG, "{addr}/readyz never answered 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- the placer ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked {
        version: u64,
    },
    Unavailable,
    /// Any other status, or no HTTP answer at all within HANG: both are failures.
    Other(Option<u16>),
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    x: u16,
    y: u16,
    color: u8,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

impl Attempt {
    fn key(&self, version: u64) -> (u64, u16, u16, u8) {
        (version, self.x, self.y, self.color)
    }
}

/// POSTs one placement every PLACE_EVERY, each on its own task so a slow answer never
/// slows the rate, until `stop`; returns every attempt, in the order sent.
async fn place_steadily(api: SocketAddr, stop: CancellationToken) -> Vec<Attempt> {
    let http = reqwest::Client::builder()
        .timeout(HANG)
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(PLACE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut inflight = JoinSet::new();
    let mut k: u16 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        assert!(k < SIDE * SIDE, "more attempts than pixels");
        let (index, x, y, color) = (k, k % SIDE, k / SIDE, (k % 3 + 1) as u8);
        k += 1;
        let http = http.clone();
        inflight.spawn(async move {
            let sent = Instant::now();
            let answer = http
                .post(format!("http://{api}/api/v1/pixels"))
                .header("x-client-id", CLIENT_ID)
                .bearer_auth(pixel_common::testing::API_TOKEN)
                .json(&json!({"x": x, "y": y, "color": color}))
                .send()
                .await;
            let outcome = match answer {
                Ok(response) if response.status() == 200 => {
                    let body: Value = response.json().await.unwrap_or_default();
                    body["version"]
                        .as_u64()
                        .map_or(Outcome::Other(Some(200)), |version| Outcome::Acked {
                            version,
                        })
                }
                Ok(response) if response.status() == 503 => {
                    let body: Value = response.json().await.unwrap_or_default();
                    if body["error"]["code"] == "unavailable" {
                        Outcome::Unavailable
                    } else {
                        Outcome::Other(Some(503))
                    }
                }
                Ok(response) => Outcome::Other(Some(response.status().as_u16())),
                Err(_) => Outcome::Other(None),
            };
            (
                index,
                Attempt {
                    x,
                    y,
                    color,
                    sent,
                    done: Instant::now(),
                    outcome,
                },
            )
        });
    }
    let mut attempts = BTreeMap::new();
    while let Some(joined) = inflight.join_next().await {
        let (k, attempt) = joined.expect("no panic");
        attempts.insert(k, attempt);
    }
    attempts.into_values().collect()
}

// ---- canvas-api reads ----

/// GET with retries while canvas-api answers 503 (Redis still down for it), within HANG.
async fn get_retrying(http: &reqwest::Client, url: &str) -> Result<reqwest::Response, String> {
    let started = Instant::now();
    loop {
        match http.get(url).send().await {
            Ok(response) if response.status() != 503 => return Ok(response),
            Ok(_) | Err(_) if started.elapsed() < HANG => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => return Err(format!("{url}: still 503 after {HANG:?}")),
            Err(error) => return Err(format!("{url}: {error}")),
        }
    }
}

async fn fetch_snapshot(http: &reqwest::Client, api: SocketAddr) -> Result<Snapshot, String> {
    let response = get_retrying(http, &format!("http://{api}/api/v1/canvas")).await?;
    if response.status() != 200 {
        return Err(format!("snapshot: {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    Snapshot::decode(&bytes).map_err(|e| e.to_string())
}

/// One history page after `since`: `Ok(None)` on 410 (refetch the snapshot).
async fn history_page(
    http: &reqwest::Client,
    api: SocketAddr,
    since: u64,
) -> Result<Option<Value>, String> {
    let url = format!("http://{api}/api/v1/history?since={since}");
    let response = get_retrying(http, &url).await?;
    match response.status().as_u16() {
        200 => response.json().await.map(Some).map_err(|e| e.to_string()),
        410 => Ok(None),
        status => Err(format!("{url}: {status}")),
    }
}

/// The whole history, as canvas-api's raw JSON entries, and its current version.
async fn full_history(api: SocketAddr) -> (Vec<Value>, u64) {
    let http = reqwest::Client::new();
    let mut entries: Vec<Value> = Vec::new();
    loop {
        let since = entries
            .last()
            .map_or(0, |e| e["version"].as_u64().unwrap_or(0));
        let page = history_page(&http, api, since)
            .await
            .expect("history readable")
            .expect("history kept whole");
        entries.extend(page["updates"].as_array().cloned().unwrap_or_default());
        if page["more"] != true {
            let current = page["currentVersion"].as_u64().expect("currentVersion");
            return (entries, current);
        }
    }
}

// ---- a WebSocket client following docs/protocol.md ----

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct Viewer {
    ws: Socket,
    http: reqwest::Client,
    api: SocketAddr,
    canvas: Vec<u8>,
    version: u64,
    /// Every update applied one by one (from a frame or a history resync).
    seen: HashSet<(u64, u16, u16, u8)>,
    /// The newest snapshot applied because of a `refetch`: covers updates not seen one by one.
    refetched_to: u64,
    refetches: usize,
    history_resyncs: usize,
}

impl Viewer {
    /// Subscribes (connects, reads the hello), then fetches the snapshot.
    async fn connect(gateway: SocketAddr, api: SocketAddr) -> Self {
        let (mut ws, _) = connect_async(format!("ws://{gateway}/ws"))
            .await
            .expect("upgrade");
        let hello = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("a hello in time");
        match hello {
            Some(Ok(Message::Text(text))) => {
                let hello: Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(hello["type"], "hello", "{hello}");
            }
            other => panic!("expected the hello, got {other:?}"),
        }
        let http = reqwest::Client::new();
        let snapshot = fetch_snapshot(&http, api).await.expect("a snapshot");
        Self {
            ws,
            http,
            api,
            canvas: snapshot.pixels().to_vec(),
            version: snapshot.version(),
            seen: HashSet::new(),
            refetched_to: 0,
            refetches: 0,
            history_resyncs: 0,
        }
    }

    /// Reads until its version reaches the target the test sets; any close is an error.
    async fn run(mut self, mut target: watch::Receiver<Option<u64>>) -> Result<Self, String> {
        loop {
            if target
                .borrow_and_update()
                .is_some_and(|t| self.version >= t)
            {
                return Ok(self);
            }
            tokio::select! {
                message = self.ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        let frame = UpdateFrame::decode(&bytes).map_err(|e| e.to_string())?;
                        self.frame(&frame).await?;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let message: Value =
                            serde_json::from_str(&text).map_err(|e| e.to_string())?;
                        match message["type"].as_str() {
                            Some("online") => {}
                            Some("refetch") => self.refetch().await?,
                            _ => return Err(format!("unexpected message {message}")),
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(format!("closed by the gateway: {frame:?}"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(format!("connection failed: {error}")),
                    None => return Err("connection ended".to_owned()),
                },
                changed = target.changed() => changed.map_err(|e| e.to_string())?,
            }
        }
    }

    fn apply(&mut self, update: &PixelUpdate) {
        self.canvas[usize::from(update.y) * usize::from(SIDE) + usize::from(update.x)] =
            update.color;
        self.version = update.version;
        self.seen
            .insert((update.version, update.x, update.y, update.color));
    }

    /// Applies the updates after our version; a frame starting past it resyncs from history.
    async fn frame(&mut self, frame: &UpdateFrame) -> Result<(), String> {
        for update in frame.updates() {
            if update.version <= self.version {
                continue;
            }
            if update.version > self.version + 1 {
                self.history_resync().await?;
                if update.version <= self.version {
                    continue;
                }
                if update.version != self.version + 1 {
                    return Err(format!(
                        "history ends at {} below frame version {}",
                        self.version, update.version
                    ));
                }
            }
            self.apply(update);
        }
        Ok(())
    }

    async fn history_resync(&mut self) -> Result<(), String> {
        self.history_resyncs += 1;
        loop {
            let Some(page) = history_page(&self.http, self.api, self.version).await? else {
                return self.refetch().await;
            };
            let updates: Vec<PixelUpdate> =
                serde_json::from_value(page["updates"].clone()).map_err(|e| e.to_string())?;
            for update in &updates {
                if update.version != self.version + 1 {
                    return Err(format!("history not contiguous at {update:?}"));
                }
                self.apply(update);
            }
            if page["more"] != true {
                return Ok(());
            }
        }
    }

    async fn refetch(&mut self) -> Result<(), String> {
        self.refetches += 1;
        let snapshot = fetch_snapshot(&self.http, self.api).await?;
        self.canvas = snapshot.pixels().to_vec();
        self.version = snapshot.version();
        self.refetched_to = self.refetched_to.max(snapshot.version());
        Ok(())
    }
}

// ---- the scenario ----

async fn redis_crash(appendfsync: &'static str) {
    let window = loss_window(appendfsync);
    let mut redis = RedisServer::start_with_appendfsync(appendfsync).await;
    let api = start_api(&redis).await;
    let gateway = start_gateway(&redis, api).await;
    let (target, target_rx) = watch::channel(None);
    let mut viewers = Vec::new();
    for _ in 0..CLIENTS {
        let viewer = Viewer::connect(gateway.addr, api).await;
        viewers.push(tokio::spawn(viewer.run(target_rx.clone())));
    }

    let stop = CancellationToken::new();
    let placer = tokio::spawn(place_steadily(api, stop.clone()));
    // The phases are timed by the scenario itself (steady traffic for a set time), not
    // waits for a condition.
    tokio::time::sleep(BEFORE_KILL).await;
    let killed = Instant::now();
    redis.kill().await;
    tokio::time::sleep(OUTAGE).await;
    let restarting = Instant::now();
    redis.restart().await;
    let restarted = Instant::now();
    let gateway_ready = tokio::spawn(wait_ready(gateway.addr));
    let api_ready_after = wait_ready(api).await;
    let api_ready = Instant::now();
    tokio::time::sleep(AFTER_READY).await;
    stop.cancel();
    let attempts = tokio::time::timeout(HANG, placer)
        .await
        .expect("every placement answered")
        .expect("no panic");
    let gateway_ready_after = tokio::time::timeout(HANG, gateway_ready)
        .await
        .expect("the gateway gets ready")
        .expect("no panic");

    // Every request ended in a documented answer: 200, or 503 `unavailable`.
    let odd: Vec<_> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Other(_)))
        .collect();
    assert!(odd.is_empty(), "answers other than 200/503: {odd:?}");
    let before: Vec<_> = attempts.iter().filter(|a| a.done < killed).collect();
    assert!(
        before
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Acked { .. })),
        "every placement succeeds while Redis is up"
    );
    // Sent while no Redis ran (and early enough that the bound ends before the restart):
    // each one answered 503, before Redis came back, so no request hung on the outage.
    let outage: Vec<_> = attempts
        .iter()
        .filter(|a| a.sent >= killed && a.sent + MAX_503 < restarting)
        .collect();
    assert!(outage.len() >= MIN_CHECKED, "placements during the outage");
    for attempt in &outage {
        assert!(
            attempt.outcome == Outcome::Unavailable && attempt.done < restarting,
            "during the outage, {:?} after {:?}",
            attempt.outcome,
            attempt.done - attempt.sent
        );
    }
    let max_503 = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Unavailable)
        .map(|a| a.done - a.sent)
        .max()
        .expect("some 503s");
    assert!(
        max_503 < MAX_503,
        "a 503 took {max_503:?}, over {MAX_503:?}"
    );
    // Once /readyz says so, placements succeed again.
    let after_ready: Vec<_> = attempts.iter().filter(|a| a.sent >= api_ready).collect();
    // Few only when the machine is starved; enough to show recovery is not a fluke.
    assert!(
        after_ready.len() >= MIN_CHECKED,
        "{} placements after recovery",
        after_ready.len()
    );
    assert!(
        after_ready
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Acked { .. })),
        "placements succeed after canvas-api is ready"
    );

    // The recovered history: versions 1..=current without gaps, each one of our attempts
    // (attempt k wrote pixel k), and the snapshot is exactly that history's canvas.
    let (entries, current) = full_history(api).await;
    let versions: Vec<u64> = entries
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert_eq!(
        versions,
        (1..=current).collect::<Vec<_>>(),
        "contiguous history"
    );
    let mut present = HashSet::new();
    let mut history_canvas = vec![0u8; usize::from(SIDE) * usize::from(SIDE)];
    for entry in &entries {
        let update: PixelUpdate = serde_json::from_value(entry.clone()).expect("an update");
        assert_eq!(entry["placedBy"], CLIENT_ID, "{entry}");
        let k = usize::from(update.y) * usize::from(SIDE) + usize::from(update.x);
        let attempt = attempts.get(k).expect("an attempt wrote this pixel");
        assert_eq!(attempt.color, update.color, "{entry}");
        assert_eq!(history_canvas[k], 0, "each pixel is placed once: {entry}");
        history_canvas[k] = update.color;
        present.insert((update.version, update.x, update.y, update.color));
    }
    let server = fetch_snapshot(&reqwest::Client::new(), api)
        .await
        .expect("final snapshot");
    assert_eq!(server.version(), current);
    assert_eq!(
        server.pixels(),
        history_canvas,
        "the snapshot is the history"
    );

    // Acknowledged placements against what Redis recovered, by (version, pixel, colour):
    // after a lost tail, versions are issued again for other placements.
    let acked: Vec<(&Attempt, u64)> = attempts
        .iter()
        .filter_map(|a| match a.outcome {
            Outcome::Acked { version } => Some((a, version)),
            _ => None,
        })
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(a, v)| !present.contains(&a.key(*v)))
        .collect();
    let must_survive = acked
        .iter()
        .filter(|(a, _)| a.done + window < killed)
        .count();
    assert!(
        must_survive >= MIN_CHECKED,
        "{must_survive} placements outside the window"
    );
    for (attempt, version) in &lost {
        // Answered by the killed Redis, within the window before the kill.
        assert!(
            attempt.done < restarting && attempt.done + window >= killed,
            "lost acknowledged placement v{version} ({},{}), answered {:?} before the kill \
             (window {window:?})",
            attempt.x,
            attempt.y,
            killed.saturating_duration_since(attempt.done)
        );
    }
    let reissued = lost.iter().filter(|(_, v)| *v <= current).count();
    // A 503 may still have been applied, but only if Redis had it when the connection
    // died (in flight at the kill) or at the restart.
    for attempt in attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Unavailable)
    {
        let k = usize::from(attempt.y) * usize::from(SIDE) + usize::from(attempt.x);
        assert!(
            history_canvas[k] == 0 || attempt.sent < killed || attempt.done >= restarting,
            "a 503 sent during the outage was applied: {attempt:?}"
        );
    }

    // The gateway kept every client (no close, no reconnect: the loop above errs on any)
    // and each one holds the server's canvas, having received every placement acknowledged
    // after the restart (one by one, or in a snapshot after a `refetch`).
    target.send_replace(Some(current));
    let after_restart: Vec<_> = acked.iter().filter(|(a, _)| a.done >= restarted).collect();
    assert!(
        after_restart.len() >= MIN_CHECKED,
        "placements after the restart"
    );
    let mut refetches = 0;
    let mut resyncs = 0;
    for (i, viewer) in viewers.into_iter().enumerate() {
        let viewer = tokio::time::timeout(HANG, viewer)
            .await
            .unwrap_or_else(|_| panic!("client {i} never reached version {current}"))
            .expect("no panic")
            .unwrap_or_else(|error| panic!("client {i}: {error}"));
        assert_eq!(viewer.version, current, "client {i}");
        assert!(
            viewer.canvas == server.pixels(),
            "client {i}: the server's canvas"
        );
        for (attempt, version) in &after_restart {
            assert!(
                viewer.seen.contains(&attempt.key(*version)) || *version <= viewer.refetched_to,
                "client {i} never got v{version} placed after the restart"
            );
        }
        refetches += viewer.refetches;
        resyncs += viewer.history_resyncs;
    }
    gateway.stop().await;

    println!(
        "redis-crash {appendfsync}: {} acknowledged, {} lost (window {} ms{}), {} answered 503 \
         within {} ms, API ready {:.2} s and gateway {:.2} s after restart; {CLIENTS} clients \
         kept ({refetches} refetches, {resyncs} history resyncs)",
        acked.len(),
        lost.len(),
        window.as_millis(),
        if reissued > 0 {
            format!(", {reissued} versions re-issued")
        } else {
            String::new()
        },
        attempts
            .iter()
            .filter(|a| a.outcome == Outcome::Unavailable)
            .count(),
        max_503.as_millis(),
        api_ready_after.as_secs_f64(),
        gateway_ready_after.as_secs_f64(),
    );
}
