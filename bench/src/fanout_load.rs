//! The WebSocket fan-out load generator, run as its own process (`pixel-bench fanout-load`)
//! so it can be pinned to other cores than the servers.
//!
//! It opens N WebSocket clients to our gateway (`/ws`, binary update frames) or to
//! Centrifugo (its JSON protocol: connect, subscribe to one channel), then places pixels at
//! R per second (through canvas-api, or Centrifugo's HTTP publish API). Placement `i` is
//! pixel `(i % W, i / W)` in colour `i % colours`, so every delivered update names its
//! placement by its content; the delay from that placement's send time is recorded per
//! update and per client into one shared [`Histogram`]. It also reads the servers' CPU time
//! and memory from `/proc`, and prints one JSON [`FanoutSummary`] on stdout.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpSocket, sync::watch};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use pixel_common::{
    ports::{API_PIXELS_PATH, CLIENT_ID_HEADER},
    wire::UpdateFrame,
};

use crate::{
    histogram::Histogram,
    procfs::{own_cpu_seconds, pids_cpu, pids_kib, raise_open_files},
    summary::{last_json_line, run_and_print},
};

/// The canvas side the placements walk (canvas-api's benchmark canvas is 1000x1000).
const SIDE: u64 = 1000;
/// The Centrifugo channel every client subscribes to.
pub const CHANNEL: &str = "pixels";
/// Handshakes in flight at once: enough to connect 10,000 clients in seconds without a
/// SYN flood on the listen backlog.
const CONNECTING: usize = 128;
/// Each client's read buffer (frames are a few hundred bytes).
const READ_BUFFER_BYTES: usize = 8192;
/// Placements in flight at once; past it the sender waits (the server is not keeping up).
const IN_FLIGHT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Our gateway; placements through canvas-api.
    Gateway,
    /// Centrifugo; placements through its HTTP API.
    Centrifugo,
}

#[derive(Debug, clap::Args)]
pub struct FanoutLoadArgs {
    #[arg(long, value_enum)]
    pub target: Target,
    /// The WebSocket URL: ws://127.0.0.1:<port>/ws or …/connection/websocket.
    #[arg(long)]
    pub ws_url: String,
    /// Where placements go: canvas-api's base URL, or Centrifugo's (its API is under /api).
    #[arg(long)]
    pub publish_url: String,
    /// Centrifugo's HTTP API key.
    #[arg(long, default_value = "")]
    pub api_key: String,
    #[arg(long)]
    pub clients: usize,
    /// Placements per second.
    #[arg(long)]
    pub rate: u32,
    /// Placements before the measured window (not counted).
    #[arg(long, default_value_t = 1000)]
    pub warmup_ms: u64,
    /// The measured window.
    #[arg(long, default_value_t = 5000)]
    pub duration_ms: u64,
    /// How long to wait after the window for the last deliveries.
    #[arg(long, default_value_t = 3000)]
    pub drain_ms: u64,
    /// The servers whose CPU time and memory are measured.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<i32>,
    /// Source addresses 127.0.0.1..=127.0.0.<n> the clients spread over, so no single
    /// address runs out of ephemeral ports.
    #[arg(long, default_value_t = 8)]
    pub source_addrs: u8,
    /// Only connect every client, measure the memory and the time taken, and end: no
    /// placement.
    #[arg(long)]
    pub idle: bool,
}

/// What one fan-out run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanoutSummary {
    pub clients_connected: usize,
    /// Clients whose connection ended before the run did.
    pub clients_lost: usize,
    /// Messages after the setup that carried no recognised update (pushes of another
    /// shape, malformed frames); JSON text of ours (online counts) is not counted.
    #[serde(default)]
    pub unrecognised_messages: u64,
    /// Seconds to connect (and subscribe) every client.
    pub connect_s: f64,
    /// Placements sent in the measured window and accepted.
    pub updates_sent: u64,
    /// Placements that failed (status, transport).
    pub placement_errors: u64,
    /// Deliveries of the accepted placements, over all clients.
    pub updates_delivered: u64,
    /// `updates_sent * clients_connected`.
    pub updates_expected: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Deliveries per second of the measured window.
    pub delivered_per_s: f64,
    /// CPU seconds (user + system) of the servers from the window's start until the last
    /// delivery (or the drain bound).
    pub server_cpu_s: f64,
    /// Every delivery in that interval, also of warm-up placements a saturated server was
    /// still sending: what `server_cpu_s` bought.
    #[serde(default)]
    pub delivered_during_cpu: u64,
    /// Resident memory of the servers, summed: before any client, with every client
    /// connected and idle, and the peak (VmHWM) at the end; KiB.
    pub rss_base_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
    /// This process's CPU time over the run, per core it may use.
    pub load_cpu_share: f64,
}

impl FanoutSummary {
    /// What an idle run measured: the connections, their memory `[before, with them]`.
    fn idle(connected: usize, lost: usize, connect_s: f64, [base, idle]: [u64; 2]) -> Self {
        Self {
            clients_connected: connected,
            clients_lost: lost,
            unrecognised_messages: 0,
            connect_s,
            updates_sent: 0,
            placement_errors: 0,
            updates_delivered: 0,
            updates_expected: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            delivered_per_s: 0.0,
            server_cpu_s: 0.0,
            delivered_during_cpu: 0,
            rss_base_kib: base,
            rss_idle_kib: idle,
            rss_peak_kib: idle,
            load_cpu_share: 0.0,
        }
    }

    /// Parses the load generator's stdout.
    pub fn parse(stdout: &str) -> Result<Self> {
        last_json_line(stdout, "the fan-out load generator")
    }
}

/// The placement a delivered update names, from its pixel.
fn placement_of(x: u64, y: u64) -> usize {
    usize::try_from(y * SIDE + x).unwrap_or(usize::MAX)
}

/// What the clients and the sender share.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Per placement: nanoseconds after `epoch` it was sent, plus one; 0 while unsent.
    sent_at: Vec<AtomicU64>,
    /// Placements below this index are the warm-up's.
    measured_from: usize,
    latency_us: Histogram,
    /// Deliveries of measured placements.
    delivered: AtomicU64,
    /// Deliveries of any placement, warm-up included: what the servers' CPU time bought.
    delivered_all: AtomicU64,
    lost: AtomicUsize,
    /// Messages that carried no update the generator recognised.
    unrecognised: AtomicU64,
}

impl Shared {
    /// Counts a message that named no update; the first is shown, to diagnose a protocol
    /// mismatch.
    fn unrecognised(&self, what: &str) {
        if self.unrecognised.fetch_add(1, Ordering::Relaxed) == 0 {
            let shown: String = what.chars().take(300).collect();
            eprintln!("first unrecognised message: {shown}");
        }
    }

    /// Records one delivery of placement `index` received at `now_ns`.
    fn delivered(&self, index: usize, now_ns: u64) {
        self.delivered_all.fetch_add(1, Ordering::Relaxed);
        if index < self.measured_from {
            return;
        }
        let Some(sent) = self.sent_at.get(index).map(|s| s.load(Ordering::Acquire)) else {
            return;
        };
        if sent == 0 {
            return;
        }
        self.latency_us
            .record(now_ns.saturating_sub(sent - 1) / 1000);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// `pixel-bench fanout-load`.
pub fn main(args: &FanoutLoadArgs) -> Result<()> {
    raise_open_files()?;
    run_and_print(run(args))
}

async fn run(args: &FanoutLoadArgs) -> Result<FanoutSummary> {
    if args.clients == 0 || args.rate == 0 {
        bail!("--clients and --rate must be at least 1");
    }
    let rate = u64::from(args.rate);
    let warmup = rate * args.warmup_ms / 1000;
    let total = warmup + rate * args.duration_ms / 1000;
    if total >= SIDE * SIDE {
        bail!("{total} placements would revisit pixels; shorten the run");
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        measured_from: usize::try_from(warmup)?,
        latency_us: Histogram::default(),
        delivered: AtomicU64::new(0),
        delivered_all: AtomicU64::new(0),
        lost: AtomicUsize::new(0),
        unrecognised: AtomicU64::new(0),
    });
    let cpu_before_all = own_cpu_seconds();
    let started = Instant::now();
    let rss_base_kib = pids_kib(&args.server_pids, "VmRSS:")?;

    let (stop_tx, stop) = watch::channel(false);
    let connected = connect_all(args, &shared, stop).await?;
    let connect_s = started.elapsed().as_secs_f64();
    // Let the servers settle (the gateway's online count, allocator) before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_kib = pids_kib(&args.server_pids, "VmRSS:")?;
    if args.idle {
        let lost = shared.lost.load(Ordering::Relaxed);
        let _ = stop_tx.send(true);
        return Ok(FanoutSummary::idle(
            connected,
            lost,
            connect_s,
            [rss_base_kib, rss_idle_kib],
        ));
    }

    let sender = Sender::new(args)?;
    // Warm-up: placements whose deliveries are not counted.
    let warm = sender.send_range(&shared, 0..warmup, rate).await;
    if warm.ok == 0 {
        bail!("no warm-up placement was accepted: {}", warm.last_error);
    }
    let cpu_before = pids_cpu(&args.server_pids)?;
    let all_before = shared.delivered_all.load(Ordering::Relaxed);
    let window = Instant::now();
    let measured = sender.send_range(&shared, warmup..total, rate).await;
    let window_s = window.elapsed().as_secs_f64();
    if measured.ok == 0 {
        bail!("no placement was accepted: {}", measured.last_error);
    }
    let expected = measured.ok * connected as u64;
    let drain_until = Instant::now() + Duration::from_millis(args.drain_ms);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_cpu_s = pids_cpu(&args.server_pids)? - cpu_before;
    let delivered_during_cpu = shared.delivered_all.load(Ordering::Relaxed) - all_before;
    let rss_peak_kib = pids_kib(&args.server_pids, "VmHWM:")?;
    let lost = shared.lost.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);

    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let load_cpu_share =
        (own_cpu_seconds() - cpu_before_all) / started.elapsed().as_secs_f64() / cores;
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let ms = |p: f64| {
        shared
            .latency_us
            .percentile(p)
            .map_or(0.0, |us| us as f64 / 1e3)
    };
    Ok(FanoutSummary {
        clients_connected: connected,
        clients_lost: lost,
        unrecognised_messages: shared.unrecognised.load(Ordering::Relaxed),
        connect_s,
        updates_sent: measured.ok,
        placement_errors: warm.errors + measured.errors,
        updates_delivered: delivered,
        updates_expected: expected,
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        max_ms: shared.latency_us.max() as f64 / 1e3,
        delivered_per_s: delivered as f64 / window_s,
        server_cpu_s,
        delivered_during_cpu,
        rss_base_kib,
        rss_idle_kib,
        rss_peak_kib,
        load_cpu_share: if load_cpu_share.is_finite() {
            load_cpu_share
        } else {
            0.0
        },
    })
}

/// Connects every client; each then reads until `stop`. Returns how many connected; fails
/// when none did.
async fn connect_all(
    args: &FanoutLoadArgs,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<usize> {
    let url: tokio_tungstenite::tungstenite::http::Uri =
        args.ws_url.parse().context("bad --ws-url")?;
    let host = url.host().context("--ws-url has no host")?;
    let port = url.port_u16().context("--ws-url has no port")?;
    let server: SocketAddr = format!("{host}:{port}")
        .parse()
        .context("--ws-url must name an IPv4 address and port")?;
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
    let mut handshakes = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + u8::try_from(index % usize::from(args.source_addrs.max(1)))?,
        );
        let gate = Arc::clone(&gate);
        let ws_url = args.ws_url.clone();
        let target = args.target;
        handshakes.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            tokio::time::timeout(
                Duration::from_secs(30),
                open(target, &ws_url, source, server),
            )
            .await
            .context("the handshake timed out")?
        });
    }
    let mut connected = 0;
    let mut first_error = None;
    while let Some(joined) = handshakes.join_next().await {
        match joined.context("a client task panicked")? {
            Ok(socket) => {
                connected += 1;
                tokio::spawn(read_client(
                    target_reader(args.target),
                    socket,
                    Arc::clone(shared),
                    stop.clone(),
                ));
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match (connected, first_error) {
        (0, Some(error)) => Err(error.context("no client could connect")),
        (_, Some(error)) => {
            eprintln!(
                "{} of {} clients could not connect: {error:#}",
                args.clients - connected,
                args.clients
            );
            Ok(connected)
        }
        (_, None) => Ok(connected),
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens one client from `source`: the handshake, then the gateway's hello or
/// Centrifugo's connect and subscribe replies.
async fn open(target: Target, url: &str, source: Ipv4Addr, server: SocketAddr) -> Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    // Ports of earlier rounds linger in TIME_WAIT; they may be reused for a new server port.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("cannot connect from {source} to {server}"))?;
    // tungstenite's default read buffer is 128 KiB per socket; updates are small.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake failed")?;
    match target {
        Target::Gateway => {
            let hello = next_text(&mut ws).await?;
            if !hello.contains(r#""type":"hello""#) {
                bail!("the gateway's first message is not a hello: {hello}");
            }
        }
        Target::Centrifugo => {
            ws.send(Message::text(r#"{"id":1,"connect":{}}"#)).await?;
            expect_reply(&mut ws, 1).await?;
            let subscribe = format!(r#"{{"id":2,"subscribe":{{"channel":"{CHANNEL}"}}}}"#);
            ws.send(Message::text(subscribe)).await?;
            expect_reply(&mut ws, 2).await?;
        }
    }
    Ok(ws)
}

async fn next_text(ws: &mut Socket) -> Result<String> {
    loop {
        match ws.next().await.context("closed during setup")?? {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(frame) => bail!("closed during setup: {frame:?}"),
            _ => {}
        }
    }
}

/// Waits for Centrifugo's reply to command `id` (pings may come first), failing on an
/// error reply.
async fn expect_reply(ws: &mut Socket, id: u64) -> Result<()> {
    for _ in 0..16 {
        let text = next_text(ws).await?;
        for line in text.lines() {
            let reply: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
            if reply.get("id").and_then(serde_json::Value::as_u64) == Some(id) {
                if let Some(error) = reply.get("error") {
                    bail!("Centrifugo refused command {id}: {error}");
                }
                return Ok(());
            }
        }
    }
    bail!("no reply to Centrifugo command {id}")
}

/// How a client reads what it receives.
#[derive(Debug, Clone, Copy)]
enum Reader {
    /// Binary update frames (docs/protocol.md, pixel-update frame).
    Frames,
    /// Centrifugo's JSON pushes, possibly several per message, one per line.
    Pushes,
}

fn target_reader(target: Target) -> Reader {
    match target {
        Target::Gateway => Reader::Frames,
        Target::Centrifugo => Reader::Pushes,
    }
}

async fn read_client(
    reader: Reader,
    mut ws: Socket,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let Some(Ok(message)) = message else {
            shared.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now_ns = shared.now_ns();
        match (reader, message) {
            (Reader::Frames, Message::Binary(bytes)) => {
                let pixels = frame_pixels(&bytes);
                if pixels.is_empty() {
                    shared.unrecognised(&format!("{bytes:02x?}"));
                }
                for (x, y) in pixels {
                    shared.delivered(placement_of(x, y), now_ns);
                }
            }
            (Reader::Pushes, Message::Text(text)) => {
                for line in text.as_str().lines() {
                    // Centrifugo's ping is an empty object; it expects one back.
                    if line == "{}" {
                        if ws.send(Message::text("{}")).await.is_err() {
                            shared.lost.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    } else if let Some((x, y)) = push_pixel(line) {
                        shared.delivered(placement_of(x, y), now_ns);
                    } else {
                        shared.unrecognised(line);
                    }
                }
            }
            (_, Message::Close(_)) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// The pixels of a gateway update frame (docs/protocol.md); none when it is not one.
fn frame_pixels(bytes: &[u8]) -> Vec<(u64, u64)> {
    UpdateFrame::decode(bytes).map_or_else(
        |_| Vec::new(),
        |frame| {
            frame
                .updates()
                .iter()
                .map(|u| (u64::from(u.x), u64::from(u.y)))
                .collect()
        },
    )
}

/// The pixel of a Centrifugo push whose publication data is `[x,y,colour]`, found without
/// parsing the whole JSON (the generator reads millions of them).
fn push_pixel(line: &str) -> Option<(u64, u64)> {
    let start = line.find(r#""data":["#)? + r#""data":["#.len();
    let mut numbers = line[start..].split([',', ']']);
    let x = numbers.next()?.trim().parse().ok()?;
    let y = numbers.next()?.trim().parse().ok()?;
    Some((x, y))
}

/// Sends placements on a schedule.
#[derive(Debug)]
struct Sender {
    client: reqwest::Client,
    target: Target,
    url: String,
    api_key: String,
    colors: u64,
}

#[derive(Debug, Default)]
struct Sent {
    ok: u64,
    errors: u64,
    last_error: String,
}

impl Sender {
    fn new(args: &FanoutLoadArgs) -> Result<Self> {
        let base = args.publish_url.trim_end_matches('/');
        let url = match args.target {
            Target::Gateway => format!("{base}{API_PIXELS_PATH}"),
            Target::Centrifugo => format!("{base}/api/publish"),
        };
        Ok(Self {
            // Keep-alive connections, as many as placements in flight need.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(IN_FLIGHT)
                .build()?,
            target: args.target,
            url,
            api_key: args.api_key.clone(),
            // canvas-api's default palette has 16 colours.
            colors: 16,
        })
    }

    /// Sends placements `range` at `rate` per second (each at its scheduled time, in
    /// separate tasks, so a slow answer does not delay the next), and waits for every answer.
    async fn send_range(
        &self,
        shared: &Arc<Shared>,
        range: std::ops::Range<u64>,
        rate: u64,
    ) -> Sent {
        let start = tokio::time::Instant::now();
        let first = range.start;
        let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for index in range {
            let due = start + Duration::from_nanos((index - first) * 1_000_000_000 / rate);
            tokio::time::sleep_until(due).await;
            let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
                break;
            };
            let request = self.request(index);
            let shared = Arc::clone(shared);
            tasks.spawn(async move {
                let _permit = permit;
                if let Ok(slot) = usize::try_from(index)
                    && let Some(sent_at) = shared.sent_at.get(slot)
                {
                    sent_at.store(shared.now_ns() + 1, Ordering::Release);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let body = response.bytes().await.unwrap_or_default();
                        // Centrifugo answers 200 with an `error` member on failure.
                        if body.windows(8).any(|w| w == br#""error":"#) {
                            Err(String::from_utf8_lossy(&body).into_owned())
                        } else {
                            Ok(())
                        }
                    }
                    Ok(response) => Err(format!("status {}", response.status())),
                    Err(error) => Err(error.to_string()),
                }
            });
        }
        let mut sent = Sent::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => sent.ok += 1,
                Ok(Err(error)) => {
                    sent.errors += 1;
                    sent.last_error = error;
                }
                Err(error) => {
                    sent.errors += 1;
                    sent.last_error = error.to_string();
                }
            }
        }
        sent
    }

    fn request(&self, index: u64) -> reqwest::RequestBuilder {
        let (x, y, color) = (index % SIDE, index / SIDE, index % self.colors);
        match self.target {
            Target::Gateway => self
                .client
                .post(&self.url)
                .header(CLIENT_ID_HEADER, "bench-fanout")
                .bearer_auth(crate::servers::API_TOKEN)
                .json(&serde_json::json!({"x": x, "y": y, "color": color})),
            Target::Centrifugo => self
                .client
                .post(&self.url)
                .header("x-api-key", &self.api_key)
                .json(&serde_json::json!({"channel": CHANNEL, "data": [x, y, color]})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_name_their_pixels() {
        let mut frame = vec![0x01, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 2];
        frame.extend([0, 3, 0, 4, 9, 1, 0, 0, 2, 1]);
        assert_eq!(frame_pixels(&frame), [(3, 4), (256, 2)]);
        assert!(frame_pixels(&frame[..frame.len() - 1]).is_empty());
        assert!(frame_pixels(b"{}").is_empty());
        assert_eq!(placement_of(3, 4), 4003);
    }

    #[test]
    fn pushes_name_their_pixels() {
        let push = r#"{"push":{"channel":"pixels","pub":{"data":[12,3,5],"offset":1}}}"#;
        assert_eq!(push_pixel(push), Some((12, 3)));
        assert_eq!(push_pixel(r#"{"id":1,"connect":{}}"#), None);
        assert_eq!(push_pixel(r#"{"data":[1]}"#), None);
    }

    #[test]
    fn summary_is_parsed_from_the_last_json_line() {
        let summary = FanoutSummary {
            clients_connected: 10,
            clients_lost: 0,
            unrecognised_messages: 0,
            connect_s: 0.5,
            updates_sent: 100,
            placement_errors: 0,
            updates_delivered: 1000,
            updates_expected: 1000,
            p50_ms: 5.0,
            p99_ms: 20.0,
            max_ms: 30.0,
            delivered_per_s: 200.0,
            server_cpu_s: 1.5,
            delivered_during_cpu: 1000,
            rss_base_kib: 1000,
            rss_idle_kib: 2000,
            rss_peak_kib: 3000,
            load_cpu_share: 0.2,
        };
        let stdout = format!(
            "noise\n{}\n",
            serde_json::to_string(&summary).expect("JSON")
        );
        assert_eq!(FanoutSummary::parse(&stdout).expect("parses"), summary);
        assert!(FanoutSummary::parse("none\n").is_err());
    }
}
