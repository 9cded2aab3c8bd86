//! The gateway against real servers: a real redis-server, canvas-api and gateways served
//! in-process on port 0, and real WebSocket clients (tokio-tungstenite).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use pixel_common::{
    testing::RedisServer,
    wire::{PixelUpdate, Snapshot, UpdateFrame},
};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

mod support;

use support::{HANG, ServedGateway};

/// The canvas both services are given: 16x8, 4 colours, no cooldown.
const CANVAS: [&str; 6] = [
    "--canvas-width",
    "16",
    "--canvas-height",
    "8",
    "--canvas-palette",
    "#FFFFFF,#000000,#FF0000,#0000FF",
];

/// canvas-api on `redis`, with no snapshot caching.
async fn start_api(redis: &RedisServer, extra: &[&str]) -> SocketAddr {
    let mut flags = vec!["--snapshot-max-age-ms", "0"];
    flags.extend_from_slice(&CANVAS);
    flags.extend_from_slice(extra);
    support::serve_api(redis, &flags).await
}

/// A gateway on `redis` and the canvas-api at `api`, ready (subscribed).
async fn start_gateway(redis: &RedisServer, api: SocketAddr, extra: &[&str]) -> ServedGateway {
    let mut flags = vec![
        "--batch-ms",
        "5",
        "--online-interval-ms",
        "100",
        "--placement-rate",
        "1000",
        "--placement-burst",
        "100",
        // Every client here is another person (tests/identity.rs holds them to the limit).
        "--identity-issue-limit",
        "1000",
    ];
    flags.extend_from_slice(&CANVAS);
    flags.extend_from_slice(extra);
    support::serve_gateway(redis, api, &flags).await
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What a client reads.
#[derive(Debug)]
enum Incoming {
    Json(Value),
    Frame(UpdateFrame),
    Closed(Option<u16>),
}

struct Client {
    ws: Socket,
    hello: Value,
}

/// Connects to `/ws?<query>`, reading nothing yet.
async fn upgrade(gateway: &ServedGateway, query: &str) -> Client {
    let (ws, _) = connect_async(format!("ws://{}/ws?{query}", gateway.addr))
        .await
        .expect("upgrade");
    Client {
        ws,
        hello: Value::Null,
    }
}

/// Connects to `/ws?<query>` and reads the hello.
async fn connect(gateway: &ServedGateway, query: &str) -> Client {
    let mut client = upgrade(gateway, query).await;
    match client.next().await {
        Incoming::Json(hello) if hello["type"] == "hello" => client.hello = hello,
        other => panic!("expected the hello, got {other:?}"),
    }
    client
}

impl Client {
    async fn next(&mut self) -> Incoming {
        loop {
            let message = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("the gateway sends instead of hanging");
            return match message {
                Some(Ok(Message::Text(text))) => {
                    Incoming::Json(serde_json::from_str(&text).expect("JSON"))
                }
                Some(Ok(Message::Binary(bytes))) => {
                    Incoming::Frame(UpdateFrame::decode(&bytes).expect("a valid frame"))
                }
                Some(Ok(Message::Close(frame))) => {
                    Incoming::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Incoming::Closed(None),
            };
        }
    }

    async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    async fn place(&mut self, id: u64, x: u16, y: u16, color: u8) {
        self.send_text(
            json!({"type": "place", "x": x, "y": y, "color": color, "id": id}).to_string(),
        )
        .await;
    }

    /// Reads until the close frame and returns its code; then reads on (which sends the
    /// close reply) until the gateway ends the connection.
    async fn close_code(&mut self) -> Option<u16> {
        let code = loop {
            if let Incoming::Closed(code) = self.next().await {
                break code;
            }
        };
        while let Ok(Some(Ok(_))) = tokio::time::timeout(HANG, self.ws.next()).await {}
        code
    }
}

/// The placements canvas-api recorded, by version.
async fn history(api: SocketAddr) -> Vec<PixelUpdate> {
    let (status, body) = get(api, "/api/v1/history?since=0").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    serde_json::from_value(body["updates"].clone()).expect("updates")
}

async fn snapshot(api: SocketAddr) -> Snapshot {
    let response = reqwest::get(format!("http://{api}/api/v1/canvas"))
        .await
        .expect("GET");
    Snapshot::decode(&response.bytes().await.expect("body")).expect("a snapshot")
}

/// Two gateways, each on its own canvas-api, one Redis: 50 clients spread over both all
/// receive every placement (made through the clients themselves), in version order, once.
#[tokio::test]
async fn every_client_on_every_gateway_receives_every_placement_once_in_order() {
    const CLIENTS: u64 = 50;
    const EACH: u64 = 4;
    let redis = RedisServer::start().await;
    let apis = [start_api(&redis, &[]).await, start_api(&redis, &[]).await];
    let gateways = [
        start_gateway(&redis, apis[0], &[]).await,
        start_gateway(&redis, apis[1], &[]).await,
    ];
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let client = connect(&gateways[(i % 2) as usize], "").await;
        assert_eq!(client.hello["version"], 0);
        clients.push(client);
    }
    let total = CLIENTS * EACH;
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(0u64..)
        .map(|(mut client, i)| {
            tokio::spawn(async move {
                for k in 0..EACH {
                    let (x, y, color) = (
                        (i % 16) as u16,
                        ((i / 16 + k) % 8) as u16,
                        ((i + k) % 4) as u8,
                    );
                    client.place(k, x, y, color).await;
                }
                let mut received: Vec<PixelUpdate> = Vec::new();
                let mut acks = 0;
                while acks < EACH || received.last().map_or(0, |u| u.version) < total {
                    match client.next().await {
                        Incoming::Frame(frame) => received.extend_from_slice(frame.updates()),
                        Incoming::Json(answer) if answer["type"] == "placed" => acks += 1,
                        Incoming::Json(answer) if answer["type"] == "online" => {}
                        other => panic!("client {i}: unexpected {other:?}"),
                    }
                }
                received
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.push(
            tokio::time::timeout(HANG, task)
                .await
                .expect("in time")
                .expect("no panic"),
        );
    }
    let recorded = history(apis[1]).await;
    assert_eq!(recorded.len() as u64, total);
    for (i, received) in all.into_iter().enumerate() {
        let versions: Vec<u64> = received.iter().map(|u| u.version).collect();
        assert_eq!(
            versions,
            (1..=total).collect::<Vec<_>>(),
            "client {i}: every version once, in order"
        );
        assert_eq!(received, recorded, "client {i}: the placements as recorded");
    }
    for gateway in gateways {
        gateway.stop().await;
    }
}

/// A client drops, placements happen, it reconnects (to the other gateway) with its last
/// version and ends with exactly the server's canvas.
#[tokio::test]
async fn a_reconnecting_client_catches_up_to_the_exact_canvas() {
    let redis = RedisServer::start().await;
    let api = start_api(&redis, &[]).await;
    let gateways = [
        start_gateway(&redis, api, &[]).await,
        start_gateway(&redis, api, &[]).await,
    ];
    let mut canvas: BTreeMap<usize, u8> = BTreeMap::new();
    let apply = |canvas: &mut BTreeMap<usize, u8>, frame: &UpdateFrame, last: &mut u64| {
        for update in frame.updates() {
            if update.version <= *last {
                continue;
            }
            assert_eq!(update.version, *last + 1, "no gap");
            canvas.insert(
                usize::from(update.y) * 16 + usize::from(update.x),
                update.color,
            );
            *last = update.version;
        }
    };

    // Subscribe, then the snapshot, then the updates newer than it.
    let mut client = connect(&gateways[0], "").await;
    let start = snapshot(api).await;
    let mut last = start.version();
    for (i, color) in start.pixels().iter().enumerate() {
        canvas.insert(i, *color);
    }
    for k in 0..5u8 {
        client.place(u64::from(k), u16::from(k), 1, k % 4).await;
    }
    while last < 5 {
        if let Incoming::Frame(frame) = client.next().await {
            apply(&mut canvas, &frame, &mut last);
        }
    }
    drop(client);

    let mut other = connect(&gateways[1], "").await;
    for k in 0..30u64 {
        other
            .place(k, (k % 16) as u16, (k % 8) as u16, (k % 3 + 1) as u8)
            .await;
    }
    let mut acked = 0;
    while acked < 30 {
        if let Incoming::Json(answer) = other.next().await {
            assert_ne!(answer["type"], "error", "{answer}");
            acked += u64::from(answer["type"] == "placed");
        }
    }

    let mut back = connect(&gateways[1], &format!("since={last}")).await;
    while last < 35 {
        match back.next().await {
            Incoming::Frame(frame) => apply(&mut canvas, &frame, &mut last),
            Incoming::Json(answer) => assert_ne!(answer["type"], "refetch", "{answer}"),
            Incoming::Closed(code) => panic!("closed: {code:?}"),
        }
    }
    let server = snapshot(api).await;
    assert_eq!(server.version(), 35);
    assert_eq!(
        canvas.into_values().collect::<Vec<_>>(),
        server.pixels(),
        "exactly the server's canvas"
    );
    for gateway in gateways {
        gateway.stop().await;
    }
}

/// A reconnect too far behind, or past what the history keeps, is told to refetch.
#[tokio::test]
async fn a_reconnect_beyond_the_history_is_told_to_refetch() {
    let redis = RedisServer::start().await;
    let api = start_api(&redis, &["--history-max-len", "3"]).await;
    let gateway = start_gateway(&redis, api, &["--resync-max", "5"]).await;
    let mut placer = connect(&gateway, "").await;
    for k in 0..8 {
        placer.place(k, 1, 1, 1).await;
    }
    let mut seen = 0;
    while seen < 8 {
        if let Incoming::Frame(frame) = placer.next().await {
            seen = frame.versions().1;
        }
    }
    // The gateway that saw the placements keeps them in memory (since=4 is answered from
    // there); one started after them must ask canvas-api's history, which no longer has 5.
    let fresh = start_gateway(&redis, api, &["--resync-max", "5"]).await;
    let mut kept = connect(&gateway, "since=4").await;
    match kept.next().await {
        Incoming::Frame(frame) => assert_eq!(frame.versions(), (5, 8)),
        other => panic!("expected the kept updates, got {other:?}"),
    }
    for (since, reason) in [("1", "too_far_behind"), ("4", "history_gone")] {
        let mut client = connect(&fresh, &format!("since={since}")).await;
        match client.next().await {
            Incoming::Json(answer) => assert_eq!(
                answer,
                json!({"type": "refetch", "version": 8, "reason": reason})
            ),
            other => panic!("expected a refetch, got {other:?}"),
        }
    }
    let mut near = connect(&gateway, "since=6").await;
    match near.next().await {
        Incoming::Frame(frame) => assert_eq!(frame.versions(), (7, 8)),
        other => panic!("expected the missed updates, got {other:?}"),
    }
    gateway.stop().await;
    fresh.stop().await;
}

/// Redis comes back without its newest writes (as after a crash between fsyncs): the
/// versions it lost will be issued again for other pixels, so clients start over from the
/// snapshot, and the placements that follow reach them.
#[tokio::test]
async fn a_canvas_version_that_went_back_makes_clients_refetch() {
    let redis = RedisServer::start().await;
    let api = start_api(&redis, &[]).await;
    let gateway = start_gateway(&redis, api, &[]).await;
    let mut client = connect(&gateway, "").await;
    for k in 0..5 {
        client.place(k, 2, 2, 1).await;
    }
    let mut seen = 0;
    while seen < 5 {
        if let Incoming::Frame(frame) = client.next().await {
            seen = frame.versions().1;
        }
    }
    // What an AOF that lost its last three placements replays to (the version, and the
    // history stream with its last ID), then a dropped subscription: the gateway
    // resubscribes and reads version 2.
    let mut admin = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let history = pixel_common::redis_schema::HISTORY_KEY;
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(pixel_common::redis_schema::VERSION_KEY)
        .arg(2)
        .ignore()
        .cmd("XDEL")
        .arg(history)
        .arg(&["3-0", "4-0", "5-0"])
        .ignore()
        .cmd("XSETID")
        .arg(history)
        .arg("2-0")
        .ignore()
        .query_async(&mut admin)
        .await
        .expect("the lost tail");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("client kill");
    assert!(killed >= 1, "the gateway's subscription was not killed");
    // Online counts and the placements' acks (`placed`) may come first; anything else but the
    // refetch is wrong.
    let refetch = tokio::time::timeout(HANG, async {
        loop {
            match client.next().await {
                Incoming::Json(message)
                    if ["online", "placed"]
                        .contains(&message["type"].as_str().unwrap_or_default()) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("a refetch after the version went back");
    match refetch {
        Incoming::Json(message) => assert_eq!(
            message,
            json!({"type": "refetch", "version": 2, "reason": "gap"})
        ),
        other => panic!("expected a refetch, got {other:?}"),
    }
    // Version 3 again, for another pixel: delivered, not dropped as a duplicate.
    client.place(9, 5, 5, 2).await;
    let frame = tokio::time::timeout(HANG, async {
        loop {
            if let Incoming::Frame(frame) = client.next().await {
                return frame;
            }
        }
    })
    .await
    .expect("the placement after the refetch is delivered");
    assert_eq!(frame.versions(), (3, 3));
    gateway.stop().await;
}

/// Malformed, binary and oversized messages, over-rate floods, unknown origins, bad
/// queries and connections over the maximum: each gets its documented answer.
#[tokio::test]
async fn limits_give_their_documented_answers() {
    let redis = RedisServer::start().await;
    let api = start_api(&redis, &[]).await;
    let gateway = start_gateway(
        &redis,
        api,
        &[
            "--max-message-bytes",
            "128",
            "--placement-rate",
            "0.001",
            "--placement-burst",
            "2",
            "--flood-limit",
            "4",
            "--allowed-origins",
            "http://app.example",
        ],
    )
    .await;

    let mut client = connect(&gateway, "").await;
    client.send_text("{not json".to_owned()).await;
    match client.next().await {
        Incoming::Json(answer) => assert_eq!(answer["code"], "invalid_message", "{answer}"),
        other => panic!("expected an error answer, got {other:?}"),
    }
    client.place(1, 99, 0, 1).await;
    match client.next().await {
        Incoming::Json(answer) => assert_eq!(
            (
                answer["type"].clone(),
                answer["code"].clone(),
                answer["id"].clone()
            ),
            (json!("error"), json!("out_of_bounds"), json!(1)),
            "canvas-api's error is relayed: {answer}"
        ),
        other => panic!("expected canvas-api's error, got {other:?}"),
    }
    client.send_text("x".repeat(129)).await;
    assert_eq!(client.close_code().await, Some(1009));

    let mut binary = connect(&gateway, "").await;
    binary
        .ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(binary.close_code().await, Some(1003));

    let mut flood = connect(&gateway, "").await;
    for id in 0..10 {
        flood.place(id, 2, 2, 2).await;
    }
    let mut limited = 0;
    let code = loop {
        match flood.next().await {
            Incoming::Json(answer) if answer["code"] == "rate_limited" => limited += 1,
            Incoming::Json(_) | Incoming::Frame(_) => {}
            Incoming::Closed(code) => break code,
        }
    };
    assert_eq!((code, limited), (Some(1008), 3));

    let mut request = format!("ws://{}/ws", gateway.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("http://evil.example"));
    match connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let mut request = format!("ws://{}/ws", gateway.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("http://app.example"));
    let (mut allowed, _) = connect_async(request)
        .await
        .expect("an allowed origin upgrades");
    allowed.close(None).await.expect("close");
    match connect_async(format!("ws://{}/ws?since=-1", gateway.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected 400, got {other:?}"),
    }

    let wanted = [
        "gateway_connections ",
        "gateway_connections_refused_total{reason=\"origin\"} 1",
        "gateway_disconnects_total{reason=\"flood\"} 1",
        "gateway_messages_received_total",
        "gateway_placements_total{result=\"refused\"}",
        "gateway_fanout_lag_seconds_bucket",
        "gateway_subscription_live 1",
    ];
    // Connections are counted as closed once the gateway has seen the close reply.
    let started = tokio::time::Instant::now();
    loop {
        let (status, metrics) = get(gateway.addr, "/metrics").await;
        assert_eq!(status, 200);
        let missing: Vec<_> = wanted
            .iter()
            .filter(|name| !metrics.contains(*name))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(started.elapsed() < HANG, "{missing:?} not in {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.stop().await;
}

/// Connections over `--max-connections` are closed with 1013.
#[tokio::test]
async fn connections_over_the_maximum_are_closed_with_1013() {
    let redis = RedisServer::start().await;
    let api = start_api(&redis, &[]).await;
    let gateway = start_gateway(&redis, api, &["--max-connections", "2"]).await;
    let _first = connect(&gateway, "").await;
    let _second = connect(&gateway, "").await;
    let mut over = upgrade(&gateway, "").await;
    assert_eq!(over.close_code().await, Some(1013));
    gateway.stop().await;
}

/// `/readyz` follows Redis; after Redis comes back the subscription is live again and
/// updates flow.
#[tokio::test]
async fn readiness_follows_redis_and_the_subscription_recovers() {
    let mut redis = RedisServer::start().await;
    let api = start_api(&redis, &[]).await;
    let gateway = start_gateway(&redis, api, &["--redis-timeout-ms", "200"]).await;
    assert_eq!(get(gateway.addr, "/healthz").await, (200, "ok".to_owned()));
    redis.kill().await;
    gateway.wait_ready(503).await;
    redis.restart().await;
    gateway.wait_ready(200).await;
    let mut client = connect(&gateway, "").await;
    client.place(0, 3, 3, 3).await;
    let frame = loop {
        if let Incoming::Frame(frame) = client.next().await {
            break frame;
        }
    };
    assert_eq!(
        frame.updates(),
        [PixelUpdate {
            version: 1,
            x: 3,
            y: 3,
            color: 3
        }]
    );
    gateway.stop().await;
}

/// Stopping the gateway closes its clients with 1001.
#[tokio::test]
async fn stopping_closes_clients_with_1001() {
    let redis = RedisServer::start().await;
    let api = start_api(&redis, &[]).await;
    let gateway = start_gateway(&redis, api, &[]).await;
    let mut clients = vec![connect(&gateway, "").await, connect(&gateway, "").await];
    let stopping = tokio::spawn(gateway.stop());
    for client in &mut clients {
        assert_eq!(client.close_code().await, Some(1001));
    }
    tokio::time::timeout(HANG, stopping)
        .await
        .expect("stops")
        .expect("no panic");
}
