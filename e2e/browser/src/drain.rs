//! `gateway-drain`: WebSocket clients through the Ingress while the caller scales the
//! canvas's gateway down. The clients on the pod that goes must get `1001` (a gateway that
//! shuts down says so, docs/protocol.md), the others must stay connected and keep receiving
//! updates, and each closed client must reconnect with `?since=<its version>` and resync:
//! a hello, then every update it missed as frames.
//!
//! The handshake with the caller, over stdout: once every client is connected (and, with
//! `--gateway-metrics`, each is known to be on one pod) it prints the line `ready`; the
//! caller then scales the gateway down. When at least `--expect-closed-at-least` clients
//! were closed (within `--timeout-secs` of `ready`) and the closes have settled, it places
//! one pixel through a surviving gateway, reconnects the closed clients, prints its JSON
//! summary as its last line and exits 0. Any failure ends it with a non-zero status and a
//! message on stderr. Every wait is bounded.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use pixel_common::wire::UpdateFrame;

use crate::{
    POLL,
    gateways::{self, Gateway},
    ws::{self, Hello, Socket, Target},
};

/// After the expected closes, how long without another close before they count as done.
const SETTLE: Duration = Duration::from_secs(2);
/// The most the settling may add after the expected closes.
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// The line that tells the caller every client is connected.
pub const READY: &str = "ready";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    endpoint: ws::Endpoint,
    /// The `Origin` header, as a browser on the canvas's page sends it; by default
    /// `http://` and the URL's host and port (the page's own origin).
    #[arg(long)]
    origin: Option<String>,
    /// How many clients to hold (each gateway accepts at most 100 from one address, and
    /// behind the Ingress every client has its address).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    clients: u32,
    /// Fail unless at least this many clients are closed with 1001.
    #[arg(long)]
    expect_closed_at_least: u32,
    /// How long after `ready` the closes may take to come, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=900))]
    timeout_secs: u64,
    /// `[NAME=]http://<pod IP>:<port>/metrics` of each gateway pod (repeatable). With
    /// them, each client is known to be on one pod (clients connect one at a time), and the
    /// clients closed must be exactly those of the pods that went.
    #[arg(long = "gateway-metrics")]
    gateways: Vec<Gateway>,
    /// Bound on each single step (a connection, a hello, a resync), in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=300))]
    patience_secs: u64,
}

/// What `gateway-drain` prints on success.
#[derive(Debug, Serialize)]
pub struct Summary {
    check: &'static str,
    clients: u32,
    /// Per gateway pod (with `--gateway-metrics`): clients it held, how many of them got
    /// 1001, and how many reconnections it took.
    by_pod: BTreeMap<String, PodSummary>,
    closed_1001: u32,
    stayed_open: u32,
    /// From `ready` to the first 1001 (the caller's scale-down, the operator's reconcile,
    /// the pod's termination), and from the first to the last.
    first_close_after_ready_ms: u64,
    close_spread_ms: u64,
    /// The pixel placed through a surviving gateway while the closed clients were away.
    placed_version: u64,
    /// Clients that stayed open and received that placement.
    survivors_saw_placement: u32,
    /// Closed clients that reconnected with `since` and received every update they missed.
    resynced: u32,
    /// The most connection attempts one reconnection took (503s and refusals while the
    /// Ingress still routes to the pod that went, each after the protocol's backoff).
    reconnect_attempts_max: u32,
    /// From the first attempt of a reconnection to its last missed update; they run one
    /// after another.
    resync_ms_median: u64,
    resync_ms_max: u64,
}

#[derive(Debug, Default, Serialize)]
struct PodSummary {
    connected: u32,
    closed_1001: u32,
    reconnected_here: u32,
}

/// How one held connection ended.
#[derive(Debug)]
enum Ending {
    Closed { code: Option<u16>, reason: String },
    Broken(String),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed {
                code: Some(code),
                reason,
            } => write!(f, "closed with {code} {reason:?}"),
            Self::Closed { code: None, .. } => write!(f, "closed without a code"),
            Self::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

impl Ending {
    fn is_going_away(&self) -> bool {
        matches!(self, Self::Closed { code: Some(code), .. } if *code == u16::from(CloseCode::Away))
    }
}

/// One held client.
#[derive(Debug)]
struct Client {
    /// The gateway it is on (index into `--gateway-metrics`), when known.
    gateway: Option<usize>,
    /// The newest version it has applied, updated as frames arrive.
    version: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

pub async fn run(args: Args) -> Result<Summary> {
    ensure!(
        (1..=args.clients).contains(&args.expect_closed_at_least),
        "--expect-closed-at-least {} must be 1..={} (--clients)",
        args.expect_closed_at_least,
        args.clients
    );
    let target = Target::new(
        &args.endpoint.ws_url,
        &args.endpoint.resolve,
        args.origin.as_deref(),
        Duration::from_secs(args.patience_secs),
    )
    .await?;
    let gateways = &args.gateways;
    if !gateways.is_empty() {
        gateways::all_counts(gateways).await?;
    }
    let (stop, stopped) = watch::channel(false);
    let (ended_tx, mut ended) = mpsc::channel(args.clients as usize);
    let mut clients = Vec::new();
    let mut hello = None;
    for index in 0..args.clients as usize {
        let before = gateways::counts(gateways).await;
        let (socket, greeting) = target.connect(None).await.with_context(|| {
            format!("client {} of {} could not connect", index + 1, args.clients)
        })?;
        let gateway = if gateways.is_empty() {
            None
        } else {
            Some(gateways::which_gained(gateways, &before, target.patience).await?)
        };
        let version = Arc::new(AtomicU64::new(greeting.version));
        let task = tokio::spawn(hold(
            socket,
            index,
            Arc::clone(&version),
            stopped.clone(),
            ended_tx.clone(),
        ));
        clients.push(Client {
            gateway,
            version,
            task,
        });
        hello = Some(greeting);
    }
    let hello = hello.context("no client")?;
    let mut by_pod: BTreeMap<String, PodSummary> = BTreeMap::new();
    for client in &clients {
        if let Some(g) = client.gateway {
            by_pod
                .entry(gateways[g].name.clone())
                .or_default()
                .connected += 1;
        }
    }
    eprintln!(
        "{} clients connected through {}{}",
        args.clients,
        target.url(),
        if by_pod.is_empty() {
            String::new()
        } else {
            format!(
                ", per gateway pod: {}",
                by_pod
                    .iter()
                    .map(|(name, pod)| format!("{name}={}", pod.connected))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{READY}")?;
        stdout.flush()?;
    }
    let ready_at = Instant::now();

    // The closes, until enough came and no more follow; bounded by --timeout-secs.
    let expected = args.expect_closed_at_least as usize;
    let deadline = ready_at + Duration::from_secs(args.timeout_secs);
    let mut ends: BTreeMap<usize, (Instant, Ending)> = BTreeMap::new();
    let mut reached: Option<Instant> = None;
    loop {
        let going_away = ends.values().filter(|(_, e)| e.is_going_away()).count();
        if reached.is_none() && going_away >= expected {
            reached = Some(Instant::now());
        }
        let wait_until = match reached {
            Some(at) => {
                let last = ends.values().map(|(t, _)| *t).max().unwrap_or(at);
                (last + SETTLE).min(at + SETTLE_MAX)
            }
            None => deadline,
        };
        if ends.len() == clients.len() {
            break;
        }
        match tokio::time::timeout_at(wait_until, ended.recv()).await {
            Ok(Some((index, at, ending))) => {
                ends.insert(index, (at, ending));
            }
            Ok(None) => break,
            Err(_) if reached.is_some() => break,
            Err(_) => bail!(
                "only {going_away} of {} clients were closed with 1001 within {} s of `{READY}` \
                 (expected at least {expected}); other ends: {}",
                args.clients,
                args.timeout_secs,
                describe_other_ends(&ends)
            ),
        }
    }
    let others = describe_other_ends(&ends);
    ensure!(
        others == "none",
        "clients ended otherwise than with 1001: {others}"
    );
    let closed: Vec<usize> = ends.keys().copied().collect();
    let times: Vec<Instant> = ends.values().map(|(t, _)| *t).collect();
    let first = times.iter().min().copied().unwrap_or(ready_at);
    let last = times.iter().max().copied().unwrap_or(ready_at);
    eprintln!(
        "{} clients closed with 1001, {:.1} s after `{READY}`, within {} ms of each other",
        closed.len(),
        (first - ready_at).as_secs_f64(),
        (last - first).as_millis()
    );
    for &index in &closed {
        if let Some(g) = clients[index].gateway {
            by_pod
                .entry(gateways[g].name.clone())
                .or_default()
                .closed_1001 += 1;
        }
    }
    if !by_pod.is_empty() {
        // Whole pods went: every client of one got 1001, and none of another did.
        let split: Vec<&String> = by_pod
            .iter()
            .filter(|(_, pod)| pod.closed_1001 != 0 && pod.closed_1001 != pod.connected)
            .map(|(name, _)| name)
            .collect();
        ensure!(
            split.is_empty(),
            "the 1001 closes do not follow the pods: some but not all clients of {split:?} \
             were closed ({by_pod:?})"
        );
        ensure!(
            by_pod.values().any(|pod| pod.closed_1001 == 0),
            "every gateway pod closed its clients: none survived ({by_pod:?})"
        );
    }

    // From here on only the pods that kept their clients are asked for their counts: one
    // that went may no longer answer at all, and each read of it would wait out its timeout.
    let alive: Vec<Gateway> = gateways
        .iter()
        .filter(|g| by_pod.get(&g.name).is_some_and(|pod| pod.closed_1001 == 0))
        .cloned()
        .collect();
    // A placement through a surviving gateway: the clients still open receive it; the closed
    // ones must get it in their resync.
    let placed_version = place(&target, &alive, &hello).await?;
    let open: Vec<&Client> = clients
        .iter()
        .enumerate()
        .filter(|(i, _)| !ends.contains_key(i))
        .map(|(_, c)| c)
        .collect();
    let started = Instant::now();
    while open
        .iter()
        .any(|c| c.version.load(Ordering::Acquire) < placed_version)
    {
        ensure!(
            started.elapsed() < target.patience,
            "{} of the {} clients still connected did not receive version {placed_version} \
             within {:?}",
            open.iter()
                .filter(|c| c.version.load(Ordering::Acquire) < placed_version)
                .count(),
            open.len(),
            target.patience
        );
        tokio::time::sleep(POLL).await;
    }

    // Each closed client reconnects from its version, one after another.
    let mut resyncs = Vec::new();
    let mut reconnected = Vec::new();
    for &index in &closed {
        let since = clients[index].version.load(Ordering::Acquire);
        let before = gateways::counts(&alive).await;
        let resync = resync(&target, since, placed_version)
            .await
            .with_context(|| format!("client {} did not resync from version {since}", index + 1))?;
        if !alive.is_empty() {
            let g = gateways::which_gained(&alive, &before, target.patience).await?;
            by_pod
                .entry(alive[g].name.clone())
                .or_default()
                .reconnected_here += 1;
        }
        resyncs.push((resync.attempts, resync.took));
        // Held until the end, so the pods' counts stay still for the next one.
        reconnected.push(resync.socket);
    }
    eprintln!(
        "{} closed clients reconnected and resynced to version {placed_version} or later",
        resyncs.len()
    );

    let _ = stop.send(true);
    for mut socket in reconnected {
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
    let stayed_open = u32::try_from(open.len()).unwrap_or(u32::MAX);
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(3), client.task).await;
    }
    let mut took: Vec<u64> = resyncs
        .iter()
        .map(|(_, t)| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
        .collect();
    took.sort_unstable();
    Ok(Summary {
        check: "gateway-drain",
        clients: args.clients,
        by_pod,
        closed_1001: u32::try_from(closed.len()).unwrap_or(u32::MAX),
        stayed_open,
        first_close_after_ready_ms: u64::try_from((first - ready_at).as_millis())
            .unwrap_or(u64::MAX),
        close_spread_ms: u64::try_from((last - first).as_millis()).unwrap_or(u64::MAX),
        placed_version,
        survivors_saw_placement: stayed_open,
        resynced: u32::try_from(resyncs.len()).unwrap_or(u32::MAX),
        reconnect_attempts_max: resyncs.iter().map(|(a, _)| *a).max().unwrap_or(0),
        resync_ms_median: took.get(took.len() / 2).copied().unwrap_or(0),
        resync_ms_max: took.last().copied().unwrap_or(0),
    })
}

fn describe_other_ends(ends: &BTreeMap<usize, (Instant, Ending)>) -> String {
    let others: Vec<String> = ends
        .iter()
        .filter(|(_, (_, e))| !e.is_going_away())
        .map(|(index, (_, ending))| format!("client {}: {ending}", index + 1))
        .collect();
    if others.is_empty() {
        "none".to_owned()
    } else {
        others.join("; ")
    }
}

/// Reads one client's socket until it ends (reported on `ended`) or `stop` (then closes it
/// normally), keeping `version` at the newest version its frames brought.
async fn hold(
    mut socket: Socket,
    index: usize,
    version: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    ended: mpsc::Sender<(usize, Instant, Ending)>,
) {
    let ending = loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                return;
            }
            message = socket.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if let Ok(frame) = UpdateFrame::decode(&bytes) {
                        version.fetch_max(frame.versions().1, Ordering::AcqRel);
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    // After a refetch, frames continue after its version.
                    if let Ok(message) = serde_json::from_str::<Value>(text.as_str())
                        && message["type"] == "refetch"
                        && let Some(v) = message["version"].as_u64()
                    {
                        version.fetch_max(v, Ordering::AcqRel);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Ending::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => break Ending::Broken(error.to_string()),
                None => break Ending::Broken("ended without a close frame".to_owned()),
            },
        }
    };
    let at = Instant::now();
    // Reading on sends the reply to a close frame.
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.next()).await;
    let _ = ended.send((index, at, ending)).await;
}

/// Places one pixel through a new connection (the Ingress sends it to a surviving
/// gateway) and returns the version it made.
async fn place(target: &Target, gateways: &[Gateway], hello: &Hello) -> Result<u64> {
    let before = gateways::counts(gateways).await;
    let (mut socket, greeting) = target.connect_retrying(None).await?.0;
    let gateway = if gateways.is_empty() {
        None
    } else {
        Some(gateways::which_gained(gateways, &before, target.patience).await?)
    };
    // The last pixel of the board, in the palette's second colour.
    let (x, y) = (
        hello.width.saturating_sub(1),
        hello.height.saturating_sub(1),
    );
    let color = usize::from(hello.palette_len > 1);
    let version = ws::place(&mut socket, target.patience, 1, (x, y, color as u64)).await?;
    ensure!(
        version > greeting.version,
        "placed version {version} is not above the hello's {}",
        greeting.version
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    drop(socket);
    if let (Some(g), Some(count)) = (gateway, gateway.and_then(|g| before[g])) {
        gateways::wait_count(gateways, g, count, target.patience).await?;
    }
    Ok(version)
}

/// A reconnection that resynced.
#[derive(Debug)]
struct Resync {
    socket: Socket,
    attempts: u32,
    took: Duration,
}

/// Reconnects with `?since=<since>`: the hello, then frames covering every version after
/// `since` up to the hello's (or a refetch, which hands the client to the snapshot).
/// The hello must be at or above `at_least`, a version placed while it was away.
async fn resync(target: &Target, since: u64, at_least: u64) -> Result<Resync> {
    let started = Instant::now();
    let ((mut socket, hello), attempts) = target.connect_retrying(Some(since)).await?;
    ensure!(
        hello.version >= at_least,
        "the hello announces version {}, older than {at_least}, placed before the reconnect",
        hello.version
    );
    let mut next = since + 1;
    while next <= hello.version {
        let left = target.patience.saturating_sub(started.elapsed());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .with_context(|| {
                format!(
                    "received versions up to {} of {} within {:?}",
                    next - 1,
                    hello.version,
                    target.patience
                )
            })?;
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                let frame = UpdateFrame::decode(&bytes).context("a bad update frame")?;
                let (first, last) = frame.versions();
                ensure!(
                    first <= next,
                    "missed versions {next}..{first}: the resync frame starts at {first}"
                );
                next = next.max(last + 1);
            }
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(text.as_str())?;
                if message["type"] == "refetch" {
                    break;
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed during the resync: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("reading the resync"),
            None => bail!("ended during the resync"),
        }
    }
    Ok(Resync {
        socket,
        attempts,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1001_is_going_away() {
        let closed = |code| Ending::Closed {
            code,
            reason: String::new(),
        };
        assert!(closed(Some(1001)).is_going_away());
        assert!(!closed(Some(1000)).is_going_away());
        assert!(!closed(None).is_going_away());
        assert!(!Ending::Broken("reset".to_owned()).is_going_away());
    }
}
