//! A rolling restart of two gateway processes under 1,000 WebSocket clients while
//! placements flow: every client reconnects with the documented jittered backoff
//! (docs/protocol.md, Reconnecting), the reconnects of one restart are spread out, and
//! every client ends with exactly the server's canvas.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use pixel_common::{
    testing::RedisServer,
    wire::{PixelUpdate, Snapshot, UpdateFrame},
};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::{connect_async, tungstenite::Message};
use tokio_util::sync::CancellationToken;

use support::{HANG, start_api, start_gateway, wait_for};

const CLIENTS: usize = 1000;
/// Placements per second the placer posts throughout.
const PLACEMENT_RATE: u64 = 40;
const SIDE: u16 = 32;
const CANVAS: [&str; 6] = [
    "--canvas-width",
    "32",
    "--canvas-height",
    "32",
    "--canvas-palette",
    "#FFFFFF,#000000,#FF0000,#0000FF",
];
/// The reconnect policy (docs/protocol.md, Reconnecting; the frontend's connection.js).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// No window this long may hold more than [`STORM_SHARE`] of one restart's reconnects as
/// the clients planned them (close time plus random delay)...
const STORM_WINDOW: Duration = Duration::from_millis(10);
const STORM_SHARE: f64 = 0.10;
/// ...nor more than [`BURST_SHARE`] of them as they happened: timers of this busy test
/// process fire in bunches, so the real arrivals are judged over a coarser window (a
/// uniform spread over 250 ms puts 20% in 50 ms; a storm, all of them).
const BURST_WINDOW: Duration = Duration::from_millis(50);
const BURST_SHARE: f64 = 0.40;
/// The 10th to 90th percentile of one restart's reconnects spans at least this (the policy
/// spreads the first retry uniformly over 250 ms, so 200 ms is expected).
const MIN_SPREAD: Duration = Duration::from_millis(100);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client dropped by a gateway, and when it first tried again.
#[derive(Debug, Clone, Copy)]
struct Reconnect {
    from: SocketAddr,
    closed_at: Instant,
    /// When the backoff meant it to try: the close plus its random delay.
    scheduled_at: Instant,
    /// When it did (later when this process's runtime was busy).
    attempted_at: Instant,
}

/// What all clients share.
#[derive(Debug)]
struct World {
    /// The gateways that take connections (a Service's endpoints).
    endpoints: Mutex<Vec<SocketAddr>>,
    http: reqwest::Client,
    api: SocketAddr,
    connected: AtomicUsize,
    snapshot_fetches: AtomicU64,
    history_fetches: AtomicU64,
    /// `refetch` messages, by reason.
    refetches: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Reconnects with `since` behind the hello's version: the gateway sent the missed
    /// updates from history.
    resumed_behind: AtomicU64,
    reconnects: Mutex<Vec<Reconnect>>,
    failures: Mutex<Vec<String>>,
}

impl World {
    fn fail(&self, failure: String) {
        lock(&self.failures).push(failure);
    }

    async fn snapshot(&self) -> Result<Snapshot, String> {
        self.snapshot_fetches.fetch_add(1, Ordering::Relaxed);
        let response = self
            .http
            .get(format!("http://{}/api/v1/canvas", self.api))
            .send()
            .await
            .map_err(|e| format!("GET canvas: {e}"))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("canvas body: {e}"))?;
        Snapshot::decode(&bytes).map_err(|e| format!("snapshot: {e}"))
    }
}

/// One client's canvas, built from snapshots, history and frames.
#[derive(Debug, Clone)]
struct Canvas {
    pixels: Vec<u8>,
    version: u64,
}

impl Canvas {
    fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self {
            pixels: snapshot.pixels().to_vec(),
            version: snapshot.version(),
        }
    }

    /// Applies updates newer than the canvas; they must follow it without a gap.
    fn apply(&mut self, updates: &[PixelUpdate]) -> Result<(), String> {
        for update in updates {
            if update.version <= self.version {
                continue;
            }
            if update.version != self.version + 1 {
                return Err(format!("gap: at {} got {}", self.version, update.version));
            }
            if update.x >= SIDE || update.y >= SIDE {
                return Err(format!("update off the canvas: {update:?}"));
            }
            self.pixels[usize::from(update.y) * usize::from(SIDE) + usize::from(update.x)] =
                update.color;
            self.version = update.version;
        }
        Ok(())
    }
}

struct Client {
    world: Arc<World>,
    canvas: Option<Canvas>,
    version: Arc<AtomicU64>,
}

impl Client {
    /// Brings the canvas to at least `target` from canvas-api's history (the snapshot when
    /// the history is gone), as the page does.
    async fn catch_up(&mut self, target: u64) -> Result<(), String> {
        let world = Arc::clone(&self.world);
        let canvas = self.canvas.as_mut().ok_or("no canvas yet")?;
        while canvas.version < target {
            world.history_fetches.fetch_add(1, Ordering::Relaxed);
            let response = world
                .http
                .get(format!(
                    "http://{}/api/v1/history?since={}",
                    world.api, canvas.version
                ))
                .send()
                .await
                .map_err(|e| format!("GET history: {e}"))?;
            if response.status() == 410 {
                *canvas = Canvas::from_snapshot(&world.snapshot().await?);
                continue;
            }
            let body: Value = response.json().await.map_err(|e| format!("history: {e}"))?;
            let updates: Vec<PixelUpdate> = serde_json::from_value(body["updates"].clone())
                .map_err(|e| format!("history updates: {e}"))?;
            if updates.is_empty() {
                return Err(format!(
                    "history has nothing after {}, wanted {target}",
                    canvas.version
                ));
            }
            canvas.apply(&updates)?;
        }
        Ok(())
    }

    async fn frame(&mut self, frame: &UpdateFrame) -> Result<(), String> {
        let (first, _) = frame.versions();
        let behind = self
            .canvas
            .as_ref()
            .ok_or("a frame before the hello")?
            .version;
        if first > behind + 1 {
            self.catch_up(first - 1).await?;
        }
        self.canvas
            .as_mut()
            .ok_or("no canvas")?
            .apply(frame.updates())
    }

    /// One connection to `addr`: until it closes (`Ok(close code)`) or `stop`.
    async fn session(
        &mut self,
        addr: SocketAddr,
        stop: &CancellationToken,
    ) -> Result<Option<Option<u16>>, String> {
        let since = self.canvas.as_ref().map(|c| c.version);
        let query = since.map(|v| format!("?since={v}")).unwrap_or_default();
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(HANG, connect_async(format!("ws://{addr}/ws{query}"))).await
        else {
            return Ok(None);
        };
        let hello = match tokio::time::timeout(HANG, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                serde_json::from_str::<Value>(&text).map_err(|e| format!("hello: {e}"))?
            }
            // Refused or closed before the hello: a failed attempt.
            _ => return Ok(None),
        };
        let hello_version = hello["version"].as_u64().ok_or(format!("hello: {hello}"))?;
        match since {
            None => self.canvas = Some(Canvas::from_snapshot(&self.world.snapshot().await?)),
            Some(since) if since < hello_version => {
                self.world.resumed_behind.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {}
        }
        self.world.connected.fetch_add(1, Ordering::AcqRel);
        let ended = loop {
            self.version.store(
                self.canvas.as_ref().map_or(0, |c| c.version),
                Ordering::Release,
            );
            let message = tokio::select! {
                () = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    break Ok(Some(None));
                }
                message = ws.next() => message,
            };
            match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = UpdateFrame::decode(&bytes).map_err(|e| format!("frame: {e}"))?;
                    if let Err(error) = self.frame(&frame).await {
                        break Err(error);
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let message: Value =
                        serde_json::from_str(&text).map_err(|e| format!("message: {e}"))?;
                    if message["type"] == "refetch" {
                        let reason = message["reason"].as_str().unwrap_or("none").to_owned();
                        *lock(&self.world.refetches).entry(reason).or_default() += 1;
                        let version = message["version"].as_u64().unwrap_or(0);
                        self.canvas = Some(Canvas::from_snapshot(&self.world.snapshot().await?));
                        self.catch_up(version).await?;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Ok(Some(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Ok(Some(None)),
            }
        };
        self.world.connected.fetch_sub(1, Ordering::AcqRel);
        ended
    }

    /// Connects (first to `first`, then to any endpoint) and reconnects after every close
    /// with the documented backoff, until `stop`; returns the canvas.
    async fn run(mut self, first: SocketAddr, stop: CancellationToken) -> Option<Canvas> {
        let mut attempt: u32 = 0;
        let mut target = Some(first);
        let mut dropped: Option<(SocketAddr, Instant, Instant)> = None;
        while !stop.is_cancelled() {
            let addr = target.take().unwrap_or_else(|| {
                let endpoints = lock(&self.world.endpoints);
                endpoints[rand::random_range(0..endpoints.len())]
            });
            if let Some((from, closed_at, scheduled_at)) = dropped.take() {
                lock(&self.world.reconnects).push(Reconnect {
                    from,
                    closed_at,
                    scheduled_at,
                    attempted_at: Instant::now(),
                });
            }
            match self.session(addr, &stop).await {
                Err(error) => {
                    self.world.fail(error);
                    return None;
                }
                Ok(None) => attempt += 1,
                Ok(Some(code)) => {
                    if stop.is_cancelled() {
                        break;
                    }
                    if code != Some(1001) {
                        self.world
                            .fail(format!("closed by {addr} with {code:?}, not 1001"));
                        return None;
                    }
                    let now = Instant::now();
                    dropped = Some((addr, now, now));
                    attempt = 0;
                }
            }
            let ceiling = BACKOFF_MAX.min(BACKOFF_FIRST * 2u32.saturating_pow(attempt.min(16)));
            let half = ceiling / 2;
            let delay = half + half.mul_f64(rand::random::<f64>());
            if let Some((_, closed_at, scheduled_at)) = &mut dropped {
                *scheduled_at = *closed_at + delay;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.canvas
    }
}

/// The reconnects of clients dropped by `gateway`: how many, the 10th–90th percentile
/// spread, and the most within any [`STORM_WINDOW`].
fn spread(
    reconnects: &[Reconnect],
    gateway: SocketAddr,
    when: fn(&Reconnect) -> Instant,
    window: Duration,
) -> (usize, Duration, usize) {
    let mut at: Vec<Instant> = reconnects
        .iter()
        .filter(|r| r.from == gateway)
        .map(when)
        .collect();
    at.sort();
    if at.is_empty() {
        return (0, Duration::ZERO, 0);
    }
    let percentile = |p: usize| at[(at.len() - 1) * p / 100];
    let densest = (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t - at[i] < window).count())
        .max()
        .unwrap_or(0);
    (at.len(), percentile(90) - percentile(10), densest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_1000_clients_loses_nothing_and_spreads_reconnects() {
    let began = Instant::now();
    // 1,000 client sockets here, and as many in the gateway that holds them all.
    support::raise_open_files(4 * CLIENTS as u64);
    let redis = RedisServer::start_with_appendfsync("everysec").await;
    let api = start_api(&redis, &CANVAS).await;
    let mut flags: Vec<&str> = CANVAS.to_vec();
    // Every client comes from 127.0.0.1.
    flags.extend([
        "--max-connections-per-address",
        "0",
        "--shutdown-grace-ms",
        "10000",
    ]);
    let mut a = start_gateway(&redis, api, &flags).await;
    let mut b = start_gateway(&redis, api, &flags).await;
    let world = Arc::new(World {
        endpoints: Mutex::new(vec![a.addr, b.addr]),
        http: reqwest::Client::new(),
        api,
        connected: AtomicUsize::new(0),
        snapshot_fetches: AtomicU64::new(0),
        history_fetches: AtomicU64::new(0),
        refetches: Mutex::default(),
        resumed_behind: AtomicU64::new(0),
        reconnects: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
    });
    let check = |world: &World| {
        let failures = lock(&world.failures);
        assert!(
            failures.is_empty(),
            "clients failed: {:?}",
            &failures[..failures.len().min(5)]
        );
    };
    let all_connected = |world: Arc<World>| async move {
        check(&world);
        (world.connected.load(Ordering::Acquire) == CLIENTS).then_some(())
    };

    let stop = CancellationToken::new();
    let mut versions = Vec::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let version = Arc::new(AtomicU64::new(0));
        versions.push(Arc::clone(&version));
        let client = Client {
            world: Arc::clone(&world),
            canvas: None,
            version,
        };
        let first = if i % 2 == 0 { a.addr } else { b.addr };
        clients.push(tokio::spawn(client.run(first, stop.clone())));
    }
    wait_for("1,000 clients to connect", Duration::from_secs(60), || {
        all_connected(Arc::clone(&world))
    })
    .await;
    let connected_after = began.elapsed();

    // The placer: one placement every 1/PLACEMENT_RATE s until told to stop.
    let placing = CancellationToken::new();
    let placer = tokio::spawn({
        let (http, placing) = (world.http.clone(), placing.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PLACEMENT_RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = 0;
            while !placing.is_cancelled() {
                tick.tick().await;
                let body = serde_json::json!({
                    "x": rand::random_range(0..SIDE),
                    "y": rand::random_range(0..SIDE),
                    "color": rand::random_range(0..4u8),
                });
                let response = http
                    .post(format!("http://{api}/api/v1/pixels"))
                    .header("x-client-id", "placer")
                    .bearer_auth(pixel_common::testing::API_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .expect("POST pixels");
                assert_eq!(response.status(), 200, "placement refused");
                let placed: Value = response.json().await.expect("JSON");
                last = placed["version"].as_u64().expect("version");
            }
            last
        }
    });

    // Roll: take each gateway out of the endpoints, SIGTERM it, start its replacement.
    let mut rolled = Vec::new();
    for old in [&mut a, &mut b] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        check(&world);
        lock(&world.endpoints).retain(|e| *e != old.addr);
        let replacement = start_gateway(&redis, api, &flags).await;
        let stopping = std::mem::replace(old, replacement);
        rolled.push(stopping.addr);
        let (code, log) = stopping.terminate().await;
        assert_eq!(code, Some(0), "a clean exit on SIGTERM: {log:?}");
        lock(&world.endpoints).push(old.addr);
        wait_for("every client to reconnect", HANG, || {
            all_connected(Arc::clone(&world))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    placing.cancel();
    let last = tokio::time::timeout(HANG, placer)
        .await
        .expect("the placer stops")
        .expect("the placer did not fail");
    let settling = Instant::now();
    wait_for("every client to reach the last placement", HANG, || {
        let world = Arc::clone(&world);
        let behind = versions
            .iter()
            .filter(|v| v.load(Ordering::Acquire) < last)
            .count();
        async move {
            check(&world);
            (behind == 0).then_some(())
        }
    })
    .await;
    let converged = settling.elapsed();

    let server = world.snapshot().await.expect("the server's snapshot");
    assert_eq!(
        server.version(),
        last,
        "nothing placed after the placer stopped"
    );
    stop.cancel();
    for (i, client) in clients.into_iter().enumerate() {
        let canvas = tokio::time::timeout(HANG, client)
            .await
            .expect("the client stops")
            .expect("the client did not panic")
            .expect("the client has a canvas");
        assert_eq!(canvas.version, last, "client {i}'s version");
        assert!(
            canvas.pixels == server.pixels(),
            "client {i}'s canvas differs from the server's"
        );
    }
    check(&world);

    let reconnects = lock(&world.reconnects).clone();
    println!(
        "rolling restart: {CLIENTS} clients (connected in {connected_after:?}), {last} placements \
         at {PLACEMENT_RATE}/s, converged {converged:?} after the last one; total {:?}",
        began.elapsed()
    );
    println!(
        "resync: {} reconnects resumed from the gateway's history, refetch messages {:?}, \
         {} client history reads, {} snapshot reads ({CLIENTS} of them initial)",
        world.resumed_behind.load(Ordering::Relaxed),
        lock(&world.refetches),
        world.history_fetches.load(Ordering::Relaxed),
        world.snapshot_fetches.load(Ordering::Relaxed) - 1,
    );
    for gateway in rolled {
        let (count, p10_p90, densest) =
            spread(&reconnects, gateway, |r| r.attempted_at, BURST_WINDOW);
        let (_, planned_p10_p90, planned_densest) =
            spread(&reconnects, gateway, |r| r.scheduled_at, STORM_WINDOW);
        let first_close = reconnects
            .iter()
            .filter(|r| r.from == gateway)
            .map(|r| r.closed_at)
            .min();
        let closes = reconnects
            .iter()
            .filter(|r| r.from == gateway)
            .map(|r| r.closed_at - first_close.unwrap_or(r.closed_at))
            .max()
            .unwrap_or_default();
        println!(
            "restart of {gateway}: {count} clients dropped with 1001 within {closes:?}; their \
             reconnects planned over p10-p90 {planned_p10_p90:?} (at most {planned_densest} in \
             any {STORM_WINDOW:?}), made over p10-p90 {p10_p90:?} (at most {densest} in any \
             {BURST_WINDOW:?})"
        );
        assert!(
            count >= CLIENTS / 4,
            "{count}: the restart dropped its clients"
        );
        assert!(
            p10_p90 >= MIN_SPREAD,
            "reconnects within {p10_p90:?}: a storm"
        );
        assert!(
            planned_densest as f64 <= STORM_SHARE * count as f64,
            "{planned_densest} of {count} reconnects planned within {STORM_WINDOW:?}: a storm"
        );
        assert!(
            densest as f64 <= BURST_SHARE * count as f64,
            "{densest} of {count} reconnects made within {BURST_WINDOW:?}: a storm"
        );
    }
    for gateway in [a, b] {
        let (code, log) = gateway.terminate().await;
        assert_eq!(code, Some(0), "{log:?}");
    }
}
