//! Abuse of a real gateway process: connections over the per-address limit, 500 idle
//! connections and 20 clients that never read while 30,000 updates flow, with the
//! process's resident memory measured from /proc (the figures are printed for
//! docs/reliability.md).

mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use pixel_common::{
    redis_schema::UPDATES_CHANNEL,
    testing::RedisServer,
    wire::{FRAME_HEADER_LEN, FRAME_UPDATE_LEN, MAX_FRAME_UPDATES},
};
use tokio::{net::TcpSocket, sync::Semaphore};
use tokio_tungstenite::{
    client_async, connect_async,
    tungstenite::{Error as WsError, Message, client::IntoClientRequest, http::HeaderValue},
};

use support::{HANG, memory, metric, start_gateway, wait_for};

/// canvas-api is not needed to fan out: nothing listens here.
const NO_API: &str = "127.0.0.1:1";

fn no_api() -> SocketAddr {
    NO_API.parse().expect("addr")
}

/// Upgrades to `/ws` with an optional `X-Forwarded-For`; the HTTP status when refused.
async fn open(addr: SocketAddr, forwarded_for: Option<&'static str>) -> Result<impl Sized, u16> {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    if let Some(value) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static(value));
    }
    match connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

/// One address holds at most `--max-connections-per-address`; behind a trusted proxy
/// (127.0.0.1 is one by default) the address is the one it forwarded.
#[tokio::test]
async fn connections_over_the_per_address_limit_are_refused_with_429() {
    let redis = RedisServer::start().await;
    let gateway = start_gateway(&redis, no_api(), &["--max-connections-per-address", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(gateway.addr, None).await.expect("under the limit"));
    }
    assert_eq!(open(gateway.addr, None).await.err(), Some(429));
    let mut forwarded = Vec::new();
    for _ in 0..3 {
        let ws = open(gateway.addr, Some("198.51.100.1, 203.0.113.9"))
            .await
            .expect("another client behind the proxy");
        forwarded.push(ws);
    }
    assert_eq!(
        open(gateway.addr, Some("203.0.113.9")).await.err(),
        Some(429),
        "203.0.113.9 is full whatever the client wrote before it"
    );
    drop(held.pop());
    let reopened = wait_for("a released slot", HANG, || async {
        open(gateway.addr, None).await.ok()
    })
    .await;
    let (_, metrics) = gateway.get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "gateway_connections_refused_total{reason=\"address\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    drop((held, forwarded, reopened));
    let (code, log) = gateway.terminate().await;
    assert_eq!(code, Some(0), "{log:?}");
}

/// On the dual-stack wildcard, an IPv4 peer arrives as `::ffff:127.0.0.1`: it must still be
/// the trusted proxy `127.0.0.1/32` is, and be counted as the address it forwarded.
#[tokio::test]
async fn an_ipv4_proxy_on_the_dual_stack_listener_is_still_trusted() {
    let redis = RedisServer::start().await;
    let gateway = start_gateway(
        &redis,
        no_api(),
        &[
            "--listen-addr",
            "[::]:0",
            "--max-connections-per-address",
            "3",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    )
    .await;
    assert!(gateway.addr.is_ipv6(), "bound {}", gateway.addr);
    let over_ipv4 = SocketAddr::from(([127, 0, 0, 1], gateway.addr.port()));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            open(over_ipv4, Some("203.0.113.9"))
                .await
                .expect("a client behind the proxy"),
        );
    }
    assert_eq!(open(over_ipv4, Some("203.0.113.9")).await.err(), Some(429));
    held.push(
        open(over_ipv4, Some("198.51.100.1"))
            .await
            .expect("another client: the proxy's own address is not what is counted"),
    );
    drop(held);
    let (code, log) = gateway.terminate().await;
    assert_eq!(code, Some(0), "{log:?}");
}

const IDLE: usize = 500;
const SLOW: usize = 20;
const UPDATES: u64 = 30_000;
/// `--client-queue`: the update batches one client may fall behind.
const QUEUE: usize = 64;
/// The largest update frame (4,096 updates).
const MAX_FRAME_BYTES: u64 = (FRAME_HEADER_LEN + FRAME_UPDATE_LEN * MAX_FRAME_UPDATES) as u64;
/// What glibc's allocator may keep beyond live data: a heap arena per runtime worker
/// (the gateway runs one per core), trimmed lazily.
const ALLOCATOR_SLACK: u64 = 8 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// Publishes `count` updates after `from` straight to the channel, as canvas-api does,
/// 1,000 at a time every 10 ms.
async fn publish(redis: &RedisServer, from: u64, count: u64) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let mut version = from;
    while version < from + count {
        let mut pipe = redis::pipe();
        for _ in 0..1000 {
            version += 1;
            let message = format!(
                "{version} {} {} {}",
                version % 1000,
                (version / 1000) % 1000,
                version % 16
            );
            pipe.cmd("PUBLISH")
                .arg(UPDATES_CHANNEL)
                .arg(message)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.expect("PUBLISH");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_never_reading_clients_keep_memory_bounded() {
    support::raise_open_files(4096);
    let redis = RedisServer::start().await;
    let queue = QUEUE.to_string();
    let gateway = start_gateway(
        &redis,
        no_api(),
        &[
            "--max-connections-per-address",
            "0",
            "--client-queue",
            &queue,
            "--send-timeout-ms",
            "2000",
            "--batch-ms",
            "5",
        ],
    )
    .await;
    let pid = gateway.pid();
    let addr = gateway.addr;
    let baseline = memory(pid);

    // Idle: connected, reading (and answering pings), sending nothing.
    let limit = Arc::new(Semaphore::new(50));
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let permit = Arc::clone(&limit).acquire_owned().await.expect("semaphore");
        idle.push(tokio::spawn(async move {
            let (mut ws, _) = connect_async(format!("ws://{addr}/ws"))
                .await
                .expect("idle upgrade");
            let hello = ws.next().await;
            assert!(matches!(hello, Some(Ok(Message::Text(_)))), "{hello:?}");
            drop(permit);
            let mut frames = 0u64;
            while let Some(Ok(message)) = ws.next().await {
                frames += u64::from(matches!(message, Message::Binary(_)));
            }
            frames
        }));
    }
    wait_for("the idle connections", HANG, || async {
        let (_, metrics) = gateway.get("/metrics").await;
        (metric(&metrics, "gateway_connections") == Some(IDLE as f64)).then_some(())
    })
    .await;
    let with_idle = memory(pid);
    let per_idle = with_idle.rss.saturating_sub(baseline.rss) / IDLE as u64;

    // Never reading: a small receive buffer so the gateway's writes block soon.
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (mut ws, _) = client_async(format!("ws://{addr}/ws"), stream)
            .await
            .expect("slow upgrade");
        let hello = ws.next().await;
        assert!(matches!(hello, Some(Ok(Message::Text(_)))), "{hello:?}");
        slow.push(ws);
    }

    let sampler = {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = 0;
                while !stop.is_cancelled() {
                    peak = peak.max(memory(pid).rss);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                peak
            }
        });
        (stop, task)
    };
    publish(&redis, 0, UPDATES).await;
    let (sent_timed_out, too_slow) = wait_for(
        "the gateway to take every update",
        Duration::from_secs(60),
        || async {
            let (_, metrics) = gateway.get("/metrics").await;
            let count = |name: &str| metric(&metrics, name).unwrap_or(0.0);
            (count("gateway_updates_received_total") >= UPDATES as f64).then(|| {
                (
                    count("gateway_disconnects_total{reason=\"send_timed_out\"}"),
                    count("gateway_disconnects_total{reason=\"too_slow\"}"),
                )
            })
        },
    )
    .await;
    sampler.0.cancel();
    let peak_sampled = sampler.1.await.expect("sampler");
    let after = memory(pid);

    let (_, metrics) = gateway.get("/metrics").await;
    let count = |name: &str| metric(&metrics, name).unwrap_or(0.0);
    let connections = count("gateway_connections");
    let dropped_slow = count("gateway_disconnects_total{reason=\"send_timed_out\"}")
        + count("gateway_disconnects_total{reason=\"too_slow\"}");
    // Every client is still held or was dropped for falling behind, the documented answer
    // (on a loaded machine an idle reader may fall behind too); none is lost otherwise.
    assert_eq!(
        connections + dropped_slow,
        (IDLE + SLOW) as f64,
        "{connections} connections held, {dropped_slow} dropped as too slow"
    );
    let bound = with_idle.rss
        + QUEUE as u64 * MAX_FRAME_BYTES
        + (IDLE + SLOW) as u64 * MAX_FRAME_BYTES
        + SLOW as u64 * per_idle
        + ALLOCATOR_SLACK;
    println!(
        "memory: baseline RSS {:.1} MiB; {IDLE} idle connections {:.1} MiB ({} KiB each); \
         {SLOW} never-reading clients while {UPDATES} updates flowed: peak RSS {:.1} MiB \
         (sampled), VmHWM {:.1} MiB, after {:.1} MiB; bound {:.1} MiB; never-readers \
         dropped: {sent_timed_out} by send timeout, {too_slow} with 4008",
        baseline.rss as f64 / MIB,
        with_idle.rss as f64 / MIB,
        per_idle / 1024,
        peak_sampled as f64 / MIB,
        after.hwm as f64 / MIB,
        after.rss as f64 / MIB,
        bound as f64 / MIB,
    );
    assert!(
        after.hwm <= bound,
        "peak RSS {} over the bound {bound}",
        after.hwm
    );
    drop(slow);
    let (code, log) = gateway.terminate().await;
    assert_eq!(code, Some(0), "{log:?}");
    for task in idle {
        let frames = tokio::time::timeout(HANG, task)
            .await
            .expect("ends")
            .expect("no panic");
        assert!(frames > 0, "the idle clients got the updates");
    }
}
