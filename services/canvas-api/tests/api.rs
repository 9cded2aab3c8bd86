//! canvas-api's router against a real redis-server, through `tower::ServiceExt::oneshot`.

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
};
use canvas_api::{AppState, Args, app};
use clap::Parser;
use futures_util::StreamExt;
use pixel_common::{
    ports::{API_PIXELS_BATCH_PATH, CLIENT_ID_HEADER, IDEMPOTENCY_KEY_HEADER, PLACEMENT_BATCH_MAX},
    redis_schema::{RATE_KEY_PREFIX, UPDATES_CHANNEL, parse_update_message},
    testing::{API_TOKEN, RedisServer},
    wire::{PixelUpdate, Snapshot},
};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Generous bound for a request against a killed or frozen Redis (whose timeout in these
/// tests is 200 ms): reached only when the service hangs.
const HANG: Duration = Duration::from_secs(10);

struct Api {
    router: Router,
}

/// Another replica on the same Redis.
fn api_on(redis: &RedisServer, extra: &[&str]) -> Api {
    api(redis, extra)
}

/// An app on `redis` with a 16x8 canvas, 4 colours, no snapshot caching, no placement rate,
/// plus `extra` flags.
fn api(redis: &RedisServer, extra: &[&str]) -> Api {
    let url = redis.url();
    let mut argv = vec![
        "canvas-api",
        "--redis-url",
        &url,
        "--redis-timeout-ms",
        "200",
        "--canvas-width",
        "16",
        "--canvas-height",
        "8",
        "--canvas-palette",
        "#FFFFFF,#000000,#FF0000,#0000FF",
        "--snapshot-max-age-ms",
        "0",
        "--api-token",
        API_TOKEN,
        // Tests place as few clients, fast; the rate has its own test.
        "--placement-rate",
        "0",
    ];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).expect("valid flags");
    let state = AppState::new(&args).expect("state");
    Api {
        router: app(state, args.max_body_bytes),
    }
}

/// A fresh redis-server and an app on it.
async fn started(extra: &[&str]) -> (RedisServer, Api) {
    let redis = RedisServer::start().await;
    let api = api(&redis, extra);
    (redis, api)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer: the status and `{"error": {"code", "message"}}`.
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

impl Api {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = tokio::time::timeout(HANG, self.router.clone().oneshot(request))
            .await
            .expect("the API answers instead of hanging")
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .expect("body")
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    async fn get_with(&self, path: &str, name: &str, value: &str) -> Answer {
        self.send(
            Request::get(path)
                .header(name, value)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    async fn post_raw(&self, client: Option<&str>, content_type: &str, body: Vec<u8>) -> Answer {
        self.post_as(&format!("Bearer {API_TOKEN}"), client, content_type, body)
            .await
    }

    /// A placement with `authorization` as its `Authorization` header (empty: none).
    async fn post_as(
        &self,
        authorization: &str,
        client: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Answer {
        let mut request =
            Request::post("/api/v1/pixels").header(header::CONTENT_TYPE, content_type);
        if !authorization.is_empty() {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if let Some(client) = client {
            request = request.header(CLIENT_ID_HEADER, client);
        }
        self.send(request.body(Body::from(body)).expect("request"))
            .await
    }

    /// A moderation request with `token` as the bearer credential (empty: none).
    async fn moderate(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if !token.is_empty() {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).expect("request")).await
    }

    /// `POST /api/v1/pixels/undo` as the gateway, for `client`.
    async fn undo(&self, client: &str) -> Answer {
        self.send(
            Request::post("/api/v1/pixels/undo")
                .header(header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
                .header(CLIENT_ID_HEADER, client)
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    async fn place(&self, client: &str, x: i64, y: i64, color: i64) -> Answer {
        let body = json!({"x": x, "y": y, "color": color}).to_string();
        self.post_raw(Some(client), "application/json", body.into_bytes())
            .await
    }

    /// Places and expects 200; returns the new version.
    async fn placed(&self, client: &str, x: i64, y: i64, color: i64) -> u64 {
        let answer = self.place(client, x, y, color).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
        answer.json()["version"].as_u64().expect("version")
    }

    async fn snapshot(&self) -> Snapshot {
        let answer = self.get("/api/v1/canvas").await;
        assert_eq!(answer.status, StatusCode::OK);
        Snapshot::decode(&answer.body).expect("a valid snapshot")
    }

    /// Polls `/readyz` until it answers `want`, within a bound.
    async fn wait_ready(&self, want: StatusCode) {
        for _ in 0..200 {
            if self.get("/readyz").await.status == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("/readyz never answered {want}");
    }
}

#[tokio::test]
async fn info_reports_the_settings_and_the_version() {
    let (_redis, api) = started(&["--canvas-cooldown-seconds", "5"]).await;
    let info = api.get("/api/v1/info").await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(
        info.json(),
        json!({"width": 16, "height": 8, "palette": ["#FFFFFF", "#000000", "#FF0000", "#0000FF"],
               "cooldownSeconds": 5, "undoSeconds": 5, "readOnly": false,
               "opensAtMs": null, "closesAtMs": null, "version": 0})
    );
    api.placed("a", 1, 1, 1).await;
    assert_eq!(api.get("/api/v1/info").await.json()["version"], 1);
}

#[tokio::test]
async fn a_placement_shows_in_every_read() {
    let (_redis, api) = started(&[]).await;
    assert_eq!(api.placed("alice", 3, 2, 2).await, 1);
    assert_eq!(api.placed("bob", 15, 7, 3).await, 2);

    let pixel = api.get("/api/v1/pixels/3/2").await;
    assert_eq!(pixel.status, StatusCode::OK);
    let pixel = pixel.json();
    assert_eq!(
        (pixel["x"].clone(), pixel["y"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(pixel["color"], 2);
    assert_eq!(pixel["version"], 1);
    assert_eq!(pixel["placedBy"], "alice");
    assert!(
        pixel["placedAtMs"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{pixel}"
    );

    let untouched = api.get("/api/v1/pixels/0/0").await.json();
    assert_eq!(
        untouched,
        json!({"x": 0, "y": 0, "color": 0, "version": null, "placedAtMs": null, "placedBy": null})
    );

    let snapshot = api.snapshot().await;
    assert_eq!(snapshot.version(), 2);
    assert_eq!((snapshot.size().width(), snapshot.size().height()), (16, 8));
    assert_eq!(snapshot.palette_len(), 4);
    let painted: Vec<(usize, u8)> = snapshot
        .pixels()
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(i, c)| (i, *c))
        .collect();
    assert_eq!(painted, [(2 * 16 + 3, 2), (7 * 16 + 15, 3)]);

    let history = api.get("/api/v1/history?since=0").await;
    assert_eq!(history.status, StatusCode::OK);
    let history = history.json();
    assert_eq!(history["currentVersion"], 2);
    assert_eq!(history["more"], false);
    let updates = history["updates"].as_array().expect("updates");
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0]["version"], 1);
    assert_eq!(updates[0]["placedBy"], "alice");
    assert_eq!(
        (
            updates[1]["x"].clone(),
            updates[1]["y"].clone(),
            updates[1]["color"].clone()
        ),
        (json!(15), json!(7), json!(3))
    );
}

#[tokio::test]
async fn each_placement_is_published_in_the_shared_message_format() {
    let (redis, api) = started(&[]).await;
    let client = redis::Client::open(redis.url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(UPDATES_CHANNEL).await.expect("subscribe");
    api.placed("c", 5, 6, 3).await;
    let mut messages = pubsub.on_message();
    let message = tokio::time::timeout(HANG, messages.next())
        .await
        .expect("a message arrives")
        .expect("the subscription stays open");
    let payload: Vec<u8> = message.get_payload().expect("payload");
    assert_eq!(
        parse_update_message(&payload),
        Ok(PixelUpdate {
            version: 1,
            x: 5,
            y: 6,
            color: 3
        })
    );
}

#[tokio::test]
async fn the_snapshot_has_a_version_etag_and_answers_304() {
    let (_redis, api) = started(&[]).await;
    api.placed("a", 0, 0, 1).await;
    let first = api.get("/api/v1/canvas").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-canvas-version"], "1");
    assert_eq!(first.headers[header::ETAG], "W/\"1\"");
    assert_eq!(first.headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(
        first.headers[header::CONTENT_TYPE],
        "application/vnd.pixel-playground.snapshot"
    );
    assert_eq!(first.body.len(), 18 + 16 * 8);

    let same = api
        .get_with("/api/v1/canvas", "if-none-match", "W/\"1\"")
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(same.headers[header::ETAG], "W/\"1\"");

    api.placed("b", 1, 0, 1).await;
    let changed = api
        .get_with("/api/v1/canvas", "if-none-match", "W/\"1\"")
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.headers[header::ETAG], "W/\"2\"");
}

#[tokio::test]
async fn the_snapshot_is_compressed_when_accepted() {
    let (_redis, api) = started(&["--canvas-width", "256", "--canvas-height", "256"]).await;
    let plain = api.get("/api/v1/canvas").await;
    assert!(plain.headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(plain.body.len(), 18 + 256 * 256);
    let gzip = api
        .get_with("/api/v1/canvas", "accept-encoding", "gzip")
        .await;
    assert_eq!(gzip.status, StatusCode::OK);
    assert_eq!(gzip.headers[header::CONTENT_ENCODING], "gzip");
    assert!(
        gzip.body.len() < plain.body.len() / 10,
        "{} bytes",
        gzip.body.len()
    );
    assert_eq!(&gzip.body[..2], [0x1f, 0x8b], "gzip magic");
}

#[tokio::test]
async fn the_snapshot_is_served_from_the_cache_while_it_is_fresh() {
    let (mut redis, api) = started(&["--snapshot-max-age-ms", "600000"]).await;
    api.placed("a", 0, 0, 1).await;
    assert_eq!(api.snapshot().await.version(), 1);
    // Read your writes: a placement this replica acknowledged is in its next snapshot.
    api.placed("b", 1, 0, 2).await;
    let snapshot = api.snapshot().await;
    assert_eq!(snapshot.version(), 2);
    assert_eq!(snapshot.pixels()[1], 2);
    // Placements through another replica arrive through the update channel.
    let other = api_on(&redis, &[]);
    other.placed("c", 2, 0, 3).await;
    let snapshot = eventually_version(&api, 3).await;
    assert_eq!(&snapshot.pixels()[..3], [1, 2, 3]);
    // Within the max age the cached version is served even with Redis gone.
    redis.kill().await;
    assert_eq!(api.snapshot().await.version(), 3);
}

/// Polls the snapshot until it shows `version`, within a bound.
async fn eventually_version(api: &Api, version: u64) -> Snapshot {
    for _ in 0..200 {
        let snapshot = api.snapshot().await;
        if snapshot.version() >= version {
            assert_eq!(snapshot.version(), version);
            return snapshot;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the snapshot never reached version {version}");
}

/// How many times Redis ran `command` so far (`INFO commandstats`).
async fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

#[tokio::test]
async fn a_followed_snapshot_costs_redis_no_read_per_request() {
    let (redis, api) = started(&["--snapshot-max-age-ms", "5000"]).await;
    let other = api_on(&redis, &[]);
    api.placed("a", 0, 0, 1).await;
    assert_eq!(api.snapshot().await.version(), 1);
    let reads = redis_calls(&redis, "get").await;
    for version in 2..=21 {
        other.placed("b", 1, 1, 2).await;
        api.placed("a", 2, 2, 3).await;
        let snapshot = api.snapshot().await;
        assert!(
            snapshot.version() >= 2 * version - 1,
            "acknowledged {} but served {}",
            2 * version - 1,
            snapshot.version()
        );
        for _ in 0..5 {
            assert!(api.snapshot().await.version() >= 2 * version - 1);
        }
    }
    assert_eq!(eventually_version(&api, 41).await.pixels()[16 + 1], 2);
    // 120 snapshots, 40 placements: kept current from the update channel. A lost race
    // (an acknowledged version not yet delivered) may cost a read, not one per request.
    let extra = redis_calls(&redis, "get").await - reads;
    assert!(extra <= 10, "{extra} GETs for 120 snapshots");
}

#[tokio::test]
async fn each_encoding_of_a_version_is_the_same_snapshot() {
    let (_redis, api) = started(&["--canvas-width", "256", "--canvas-height", "256"]).await;
    api.placed("a", 7, 3, 2).await;
    let plain = api.get("/api/v1/canvas").await;
    for (accept, encoding) in [
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("br;q=0, gzip;q=0.5", "gzip"),
        ("*", "br"),
    ] {
        let answer = api
            .get_with("/api/v1/canvas", "accept-encoding", accept)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.headers[header::CONTENT_ENCODING],
            encoding,
            "{accept}"
        );
        assert_eq!(answer.headers[header::VARY], "accept-encoding");
        assert_eq!(answer.headers[header::ETAG], plain.headers[header::ETAG]);
        let mut decoded = Vec::new();
        if encoding == "gzip" {
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&answer.body[..]),
                &mut decoded,
            )
            .expect("gunzip");
        } else {
            brotli::BrotliDecompress(&mut &answer.body[..], &mut decoded).expect("unbrotli");
        }
        assert_eq!(decoded, plain.body, "{accept}");
    }
    let refused = api
        .get_with("/api/v1/canvas", "accept-encoding", "gzip;q=0, br;q=0")
        .await;
    assert!(refused.headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(refused.body, plain.body);
    let not_modified = api
        .send(
            Request::get("/api/v1/canvas")
                .header("accept-encoding", "br")
                .header("if-none-match", "W/\"1\"")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.headers.get(header::CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn a_lost_subscription_falls_back_to_reading_redis() {
    let (redis, api) = started(&["--snapshot-max-age-ms", "600000"]).await;
    api.placed("a", 0, 0, 1).await;
    assert_eq!(api.snapshot().await.version(), 1);
    // Drop every pub/sub connection: updates published meanwhile are lost to the cache.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    let other = api_on(&redis, &[]);
    other.placed("b", 1, 0, 2).await;
    // The cache resubscribes, learns it may have missed updates, and reads Redis again.
    eventually_version(&api, 2).await;
    other.placed("c", 2, 0, 3).await;
    assert_eq!(&eventually_version(&api, 3).await.pixels()[..3], [1, 2, 3]);
}

#[tokio::test]
async fn the_png_shows_the_canvas_in_palette_colours() {
    let (_redis, api) = started(&[]).await;
    api.placed("a", 4, 3, 2).await;
    let answer = api.get("/api/v1/canvas.png").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(answer.headers[header::ETAG], "W/\"1\"");
    let decoder = png::Decoder::new(std::io::Cursor::new(answer.body));
    let mut reader = decoder.read_info().expect("png header");
    let info = reader.info();
    assert_eq!((info.width, info.height), (16, 8));
    assert_eq!(info.color_type, png::ColorType::Indexed);
    let palette = info.palette.clone().expect("palette").to_vec();
    assert_eq!(palette, [255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 0, 255]);
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    reader.next_frame(&mut pixels).expect("frame");
    assert_eq!(pixels[3 * 16 + 4], 2);
    assert_eq!(pixels.iter().filter(|p| **p != 0).count(), 1);

    let same = api
        .get_with("/api/v1/canvas.png", "if-none-match", "W/\"1\"")
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn bad_placements_are_400_with_a_code() {
    let (_redis, api) = started(&["--max-body-bytes", "64"]).await;
    for (x, y) in [(16, 0), (0, 8), (-1, 0), (0, -1), (70_000, 0)] {
        api.place("a", x, y, 1)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "out_of_bounds");
    }
    for color in [4, -1, 256] {
        api.place("a", 0, 0, color)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "unknown_color");
    }
    for body in [
        &b"{"[..],
        b"[]",
        b"[1,2,3]",
        b"[1,2,3,4]",
        b"\"x\"",
        b"null",
        b"{\"x\":1,\"y\":1}",
        b"{\"x\":\"1\",\"y\":1,\"color\":1}",
        b"\xff",
    ] {
        api.post_raw(Some("a"), "application/json", body.to_vec())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    api.post_raw(
        Some("a"),
        "text/plain",
        b"{\"x\":1,\"y\":1,\"color\":1}".to_vec(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    let oversized = format!(
        "{{\"x\":1,\"y\":1,\"color\":1,\"pad\":\"{}\"}}",
        "x".repeat(100)
    );
    api.post_raw(Some("a"), "application/json", oversized.into_bytes())
        .await
        .assert_error(StatusCode::BAD_REQUEST, "body_too_large");
    let ok = json!({"x": 1, "y": 1, "color": 1}).to_string().into_bytes();
    api.post_raw(None, "application/json", ok.clone())
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_client_id");
    api.post_raw(Some("has space"), "application/json", ok)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_client_id");
    // Nothing above reached the canvas.
    assert_eq!(api.get("/api/v1/info").await.json()["version"], 0);
}

#[tokio::test]
async fn only_the_gateway_token_places_whatever_client_id_is_sent() {
    let (_redis, api) = started(&[]).await;
    let body = json!({"x": 1, "y": 1, "color": 1}).to_string().into_bytes();
    for authorization in [
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-token-0123456789",
        &format!("Bearer {}x", &API_TOKEN[..API_TOKEN.len() - 1]),
        &format!("Bearer {API_TOKEN}x"),
        &format!("bearer {API_TOKEN}"),
        &format!("Basic {API_TOKEN}"),
        API_TOKEN,
    ] {
        for client in [Some("anyone"), Some("gw-0123456789abcdef"), None] {
            let answer = api
                .post_as(authorization, client, "application/json", body.clone())
                .await;
            answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(
                answer
                    .headers
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{authorization:?}"
            );
        }
    }
    // Not even a malformed body is looked at without the token.
    api.post_as("", Some("a"), "application/json", b"[1,2,3]".to_vec())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(api.get("/api/v1/info").await.json()["version"], 0);
    let metrics = api.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"pixel_placements_total{result="unauthorized"} 28"#),
        "{text}"
    );
    api.placed("a", 1, 1, 1).await;
}

/// A long history is trimmed approximately, a stream node at a time (the cheap way), but
/// never below the length it promises; a short one (below) is trimmed exactly.
#[tokio::test]
async fn a_long_history_is_trimmed_but_keeps_at_least_its_length() {
    let redis = RedisServer::start().await;
    let api = api(&redis, &["--history-max-len", "1000"]);
    for i in 0..1_300i64 {
        api.placed(&format!("c{}", i % 50), i % 16, (i / 16) % 8, 1 + i % 2)
            .await;
    }
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let kept: u64 = redis::cmd("XLEN")
        .arg(pixel_common::redis_schema::HISTORY_KEY)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(
        (1_000..1_300).contains(&kept),
        "trimmed, to no fewer than 1,000: {kept}"
    );
    let since = 1_300 - 1_000;
    let page = api.get(&format!("/api/v1/history?since={since}")).await;
    assert_eq!(page.status, StatusCode::OK, "the promised 1,000 are there");
}

#[tokio::test]
async fn bad_reads_are_400_404_or_410_with_a_code() {
    let redis = RedisServer::start().await;
    let api = api(
        &redis,
        &["--history-max-len", "3", "--history-page-max", "2"],
    );
    api.get("/api/v1/pixels/16/0")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "out_of_bounds");
    api.get("/api/v1/pixels/a/0")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_path");
    for query in ["", "?since=-1", "?since=x", "?since=0&limit=x"] {
        api.get(&format!("/api/v1/history{query}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
    api.get("/api/v1/nothing")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    // Ahead of the canvas: refetch.
    api.get("/api/v1/history?since=1")
        .await
        .assert_error(StatusCode::GONE, "history_gone");
    for i in 0..6 {
        api.placed("a", i, 0, 1).await;
    }
    // Versions 1..=3 were trimmed (the stream keeps 3): since=0 and since=2 cannot resync.
    for since in [0, 2] {
        api.get(&format!("/api/v1/history?since={since}"))
            .await
            .assert_error(StatusCode::GONE, "history_gone");
    }
    // since=3 can, in pages of at most 2.
    let page = api.get("/api/v1/history?since=3&limit=50").await.json();
    let versions: Vec<_> = page["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| u["version"].clone())
        .collect();
    assert_eq!(versions, [json!(4), json!(5)]);
    assert_eq!(page["more"], true);
    let rest = api.get("/api/v1/history?since=5").await.json();
    assert_eq!(rest["updates"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["more"], false);
    let current = api.get("/api/v1/history?since=6").await.json();
    assert_eq!(current["updates"], json!([]));
    assert_eq!(current["more"], false);
}

/// Regressions found by schemathesis (`cargo xtask api-fuzz`).
#[tokio::test]
async fn requests_the_openapi_document_allows_or_refuses_are_answered_so() {
    let (_redis, api) = started(&[]).await;
    // JSON Schema integers include `1.0`.
    let answer = api
        .post_raw(
            Some("f"),
            "application/json",
            br#"{"x": 1.0, "y": 2, "color": 3.0}"#.to_vec(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
    assert_eq!(api.get("/api/v1/pixels/1/2").await.json()["color"], 3);
    for body in [
        r#"{"x": 1.5, "y": 2, "color": 3}"#,
        // additionalProperties: false
        r#"{"x": 1, "y": 2, "color": 3, "extra": true}"#,
    ] {
        api.post_raw(Some("f"), "application/json", body.as_bytes().to_vec())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    // An integer written as a float of 52 bits is that integer (not one unit in the last
    // place off, which would make it a fraction): out of the canvas, not a parse error.
    api.post_raw(
        Some("f"),
        "application/json",
        br#"{"x": 1, "y": 2251799813685247.0, "color": 0}"#.to_vec(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "out_of_bounds");
    // Integers past i64 are out of the canvas, not a parse error.
    api.post_raw(
        Some("f"),
        "application/json",
        br#"{"x": 18446744073709551615, "y": 1e30, "color": 0}"#.to_vec(),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "out_of_bounds");
    // Versions are Redis integers: a `since` past i64::MAX is malformed, not ahead.
    api.get("/api/v1/history?since=9223372036854775808")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    api.get("/api/v1/history?since=9223372036854775807")
        .await
        .assert_error(StatusCode::GONE, "history_gone");
    // Another method on a known path: a JSON 405 that says what is allowed.
    let answer = api
        .send(
            Request::delete("/api/v1/info")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    answer.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(answer.headers[header::ALLOW], "GET,HEAD");
}

impl Api {
    /// A placement as the gateway sends it, naming itself with `key`.
    async fn place_keyed(&self, client: &str, key: &str, x: i64, y: i64, color: i64) -> Answer {
        self.send(
            Request::post("/api/v1/pixels")
                .header(header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header(CLIENT_ID_HEADER, client)
                .header(IDEMPOTENCY_KEY_HEADER, key)
                .body(Body::from(
                    json!({"x": x, "y": y, "color": color}).to_string(),
                ))
                .expect("request"),
        )
        .await
    }
}

/// The gateway's retry after a connection reset sends the placement again with the same
/// key: whether or not the first one was placed, the pixel is placed once.
#[tokio::test]
async fn a_placement_sent_again_with_its_key_is_answered_as_before_and_placed_once() {
    let (_redis, api) = started(&[]).await;
    let first = api.place_keyed("a", "k-1", 3, 4, 2).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json());
    let again = api.place_keyed("a", "k-1", 3, 4, 2).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json());
    assert_eq!(first.json(), again.json(), "the same version and time");
    assert_eq!(
        api.snapshot().await.version(),
        1,
        "one placement, one version"
    );
    let history = api.get("/api/v1/history?since=0").await.json();
    assert_eq!(
        history["updates"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    // The key is the client's: another client's placement with it is its own.
    let other = api.place_keyed("b", "k-1", 3, 4, 1).await;
    assert_eq!(other.json()["version"], 2, "{}", other.json());
    // A new key is a new placement.
    assert_eq!(
        api.place_keyed("a", "k-2", 3, 4, 2).await.json()["version"],
        3
    );
    // A malformed key is refused, not ignored: a retry without it could place twice.
    for bad in ["", "has space", "dots.are.not.allowed", &"k".repeat(65)] {
        api.place_keyed("a", bad, 0, 0, 1)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    assert_eq!(
        api.snapshot().await.version(),
        3,
        "nothing placed by a refused key"
    );
}

/// A refused placement keeps nothing under its key: the retry is decided afresh, so a
/// cooldown that has ended lets it through and a ban in between holds.
#[tokio::test]
async fn a_refused_placement_keeps_no_answer_under_its_key() {
    let (_redis, api) = started(&["--canvas-cooldown-seconds", "60"]).await;
    api.place_keyed("a", "k-1", 0, 0, 1).await;
    api.place_keyed("a", "k-2", 1, 0, 1)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");
    api.place_keyed("a", "k-2", 1, 0, 1)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");
    assert_eq!(api.snapshot().await.version(), 1);
}

#[tokio::test]
async fn cooldown_is_429_with_retry_after_per_client() {
    let (_redis, api) = started(&["--canvas-cooldown-seconds", "60"]).await;
    api.placed("a", 0, 0, 1).await;
    let again = api.place("a", 1, 0, 1).await;
    again.assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");
    let retry: u64 = again.headers[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    // Another client is not affected, and a rejected placement does not change the canvas.
    assert_eq!(api.placed("b", 1, 0, 2).await, 2);
    assert_eq!(api.get("/api/v1/pixels/1/0").await.json()["color"], 2);
}

#[tokio::test]
async fn an_undo_restores_the_colour_and_record_as_a_new_version_and_refunds_the_cooldown() {
    let (redis, api) = started(&["--canvas-cooldown-seconds", "60"]).await;
    let client = redis::Client::open(redis.url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(UPDATES_CHANNEL).await.expect("subscribe");
    api.placed("bob", 2, 3, 1).await;
    api.placed("alice", 2, 3, 2).await;
    api.place("alice", 5, 5, 3)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");

    let undone = api.undo("alice").await;
    assert_eq!(undone.status, StatusCode::OK, "{}", undone.json());
    let undone = undone.json();
    assert_eq!(
        (
            &undone["version"],
            &undone["x"],
            &undone["y"],
            &undone["color"]
        ),
        (&json!(3), &json!(2), &json!(3), &json!(1)),
        "{undone}"
    );
    // Every reader sees an ordinary update: the pixel, its record, the history, the channel.
    let pixel = api.get("/api/v1/pixels/2/3").await.json();
    assert_eq!(
        (&pixel["color"], &pixel["version"], &pixel["placedBy"]),
        (&json!(1), &json!(1), &json!("bob")),
        "bob's placement is the pixel's last again: {pixel}"
    );
    let history = api.get("/api/v1/history?since=2").await.json();
    assert_eq!(
        history["updates"],
        json!([{"version": 3, "x": 2, "y": 3, "color": 1, "placedBy": "alice",
                "placedAtMs": undone["placedAtMs"], "kind": "undo"}])
    );
    let published: Vec<PixelUpdate> =
        tokio::time::timeout(HANG, pubsub.on_message().take(3).collect::<Vec<_>>())
            .await
            .expect("three messages arrive")
            .iter()
            .map(|message| parse_update_message(message.get_payload_bytes()).expect("an update"))
            .collect();
    assert_eq!(
        published.last(),
        Some(&PixelUpdate {
            version: 3,
            x: 2,
            y: 3,
            color: 1
        })
    );
    assert_eq!(api.snapshot().await.version(), 3);

    // Refunded: alice places at once; one undo per placement.
    api.placed("alice", 5, 5, 3).await;
    api.undo("alice").await;
    api.undo("alice")
        .await
        .assert_error(StatusCode::CONFLICT, "nothing_to_undo");
    api.undo("carol")
        .await
        .assert_error(StatusCode::CONFLICT, "nothing_to_undo");
    // A pixel never placed before goes back to colour 0 with no record.
    let pixel = api.get("/api/v1/pixels/5/5").await.json();
    assert_eq!(
        (&pixel["color"], &pixel["placedBy"]),
        (&json!(0), &json!(null))
    );
}

#[tokio::test]
async fn an_undo_after_the_pixel_was_placed_over_or_the_window_is_refused() {
    let (_redis, api) = started(&["--canvas-undo-seconds", "1"]).await;
    api.placed("alice", 1, 1, 2).await;
    api.placed("bob", 1, 1, 3).await;
    api.undo("alice")
        .await
        .assert_error(StatusCode::CONFLICT, "undo_superseded");
    assert_eq!(api.get("/api/v1/pixels/1/1").await.json()["color"], 3);

    api.placed("alice", 4, 4, 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.undo("alice")
        .await
        .assert_error(StatusCode::CONFLICT, "nothing_to_undo");
    assert_eq!(api.get("/api/v1/pixels/4/4").await.json()["color"], 2);

    let (_redis, off) = started(&["--canvas-undo-seconds", "0"]).await;
    off.placed("alice", 4, 4, 2).await;
    off.undo("alice")
        .await
        .assert_error(StatusCode::CONFLICT, "nothing_to_undo");
}

#[tokio::test]
async fn a_closed_canvas_refuses_placements_and_undos_and_says_until_when() {
    let (_redis, frozen) = started(&["--canvas-read-only", "true"]).await;
    let refused = frozen.place("a", 0, 0, 1).await;
    refused.assert_error(StatusCode::FORBIDDEN, "canvas_closed");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("frozen"))
    );
    frozen
        .undo("a")
        .await
        .assert_error(StatusCode::FORBIDDEN, "canvas_closed");
    assert_eq!(frozen.get("/api/v1/info").await.json()["readOnly"], true);

    let (_redis, early) = started(&["--canvas-opens-at", "2999-01-01T00:00:00Z"]).await;
    let refused = early.place("a", 0, 0, 1).await;
    refused.assert_error(StatusCode::FORBIDDEN, "canvas_closed");
    assert_eq!(
        refused.json()["error"]["message"],
        "the canvas opens at 2999-01-01T00:00:00Z"
    );
    assert_eq!(
        early.get("/api/v1/info").await.json()["opensAtMs"],
        32_472_144_000_000_u64
    );

    let (_redis, ended) = started(&["--canvas-closes-at", "2020-01-01T00:00:00Z"]).await;
    ended
        .place("a", 0, 0, 1)
        .await
        .assert_error(StatusCode::FORBIDDEN, "canvas_closed");
    for api in [&frozen, &early, &ended] {
        assert_eq!(api.snapshot().await.version(), 0, "nothing was placed");
    }

    let (_redis, open) = started(&[
        "--canvas-opens-at",
        "2020-01-01T00:00:00Z",
        "--canvas-closes-at",
        "2999-01-01T00:00:00Z",
    ])
    .await;
    assert_eq!(open.placed("a", 0, 0, 1).await, 1);
}

#[tokio::test]
async fn one_client_is_held_to_its_rate_across_replicas_and_others_are_not() {
    let redis = RedisServer::start().await;
    let rate = ["--placement-rate", "2", "--placement-burst", "3"];
    let (one, two) = (api_on(&redis, &rate), api_on(&redis, &rate));
    for (k, api) in [&one, &two, &one].into_iter().enumerate() {
        api.placed("a", k as i64, 0, 1).await;
    }
    let refused = two.place("a", 5, 0, 1).await;
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry = refused.json()["error"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!((1..=500).contains(&retry), "one interval at most: {retry}");
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    // A refused placement costs nothing; another client has its own allowance.
    assert_eq!(one.get("/api/v1/pixels/5/0").await.json()["color"], 0);
    for k in 0..3 {
        two.placed("b", k, 1, 2).await;
    }
    tokio::time::sleep(Duration::from_millis(retry + 10)).await;
    one.placed("a", 5, 0, 1).await;
    one.place("a", 6, 0, 1)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");

    let unlimited = api_on(&redis, &["--placement-rate", "0"]);
    for k in 0..30 {
        unlimited.placed("c", k % 16, 2, 1).await;
    }
}

const MODERATOR_TOKEN: &str = "moderators-token-0123456789";

/// canvas-api with moderation on.
async fn moderated() -> (RedisServer, Api) {
    started(&["--moderator-token", MODERATOR_TOKEN]).await
}

#[tokio::test]
async fn only_the_moderator_token_moderates() {
    let (_redis, api) = moderated().await;
    let (_plain_redis, off) = started(&[]).await;
    let ban = Some(json!({}));
    for (target, token) in [
        (&api, ""),
        (&api, API_TOKEN),
        (&api, "moderators-token-012345678"),
        (&off, MODERATOR_TOKEN),
    ] {
        for (method, path, body) in [
            ("GET", "/api/v1/moderation/bans", None),
            ("PUT", "/api/v1/moderation/bans/anon-0a1b2c3d", ban.clone()),
            ("DELETE", "/api/v1/moderation/bans/anon-0a1b2c3d", None),
            (
                "POST",
                "/api/v1/moderation/rollbacks",
                Some(json!({"player": "x", "sinceMs": 0})),
            ),
            ("GET", "/api/v1/moderation/audit", None),
        ] {
            let answer = target.moderate(method, path, token, body).await;
            answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    assert_eq!(
        api.moderate("GET", "/api/v1/moderation/bans", MODERATOR_TOKEN, None)
            .await
            .json(),
        json!({"bans": []})
    );
    // Nor may the moderator token place.
    let placement = json!({"x": 1, "y": 1, "color": 1}).to_string().into_bytes();
    api.post_as(
        &format!("Bearer {MODERATOR_TOKEN}"),
        Some("m"),
        "application/json",
        placement,
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let same = Args::try_parse_from([
        "canvas-api",
        "--api-token",
        API_TOKEN,
        "--moderator-token",
        API_TOKEN,
    ])
    .expect("parses");
    assert!(AppState::new(&same).is_err(), "the two tokens must differ");
}

#[tokio::test]
async fn a_shadow_banned_players_undo_is_answered_like_anyones_and_changes_nothing() {
    let (_redis, api) = started(&[
        "--moderator-token",
        MODERATOR_TOKEN,
        "--canvas-cooldown-seconds",
        "60",
    ])
    .await;
    let identity = "anon.0123456789abcdef0123456789abcdef";
    let handle = pixel_common::identity::handle_of(identity);
    api.placed("anon.ffffffffffffffffffffffffffffffff", 4, 1, 3)
        .await;
    let path = format!("/api/v1/moderation/bans/{handle}");
    api.moderate("PUT", &path, MODERATOR_TOKEN, Some(json!({"shadow": true})))
        .await;
    let before = api.snapshot().await;

    api.placed(identity, 4, 1, 2).await;
    let undone = api.undo(identity).await;
    assert_eq!(undone.status, StatusCode::OK, "{}", undone.json());
    let undone = undone.json();
    assert_eq!(
        (&undone["x"], &undone["y"], &undone["color"]),
        (&json!(4), &json!(1), &json!(3)),
        "the colour the player saw before, as for anyone: {undone}"
    );
    assert_eq!(undone["version"], before.version());
    api.undo(identity)
        .await
        .assert_error(StatusCode::CONFLICT, "nothing_to_undo");
    api.placed(identity, 5, 1, 2).await;
    api.place(identity, 6, 1, 2)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");

    let after = api.snapshot().await;
    assert_eq!(after.version(), before.version(), "nothing was written");
    assert_eq!(after.pixels(), before.pixels());
    let history = api.get("/api/v1/history?since=0").await.json();
    assert_eq!(
        history["updates"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    api.moderate("DELETE", &path, MODERATOR_TOKEN, None).await;
    api.undo(identity)
        .await
        .assert_error(StatusCode::CONFLICT, "nothing_to_undo");
    assert_eq!(api.get("/api/v1/pixels/5/1").await.json()["color"], 0);
}

#[tokio::test]
async fn a_banned_player_is_refused_a_shadow_banned_one_is_dropped_and_both_are_audited() {
    let (_redis, api) = moderated().await;
    let identity = "anon.0123456789abcdef0123456789abcdef";
    let handle = pixel_common::identity::handle_of(identity);
    api.placed(identity, 0, 0, 1).await;
    let path = format!("/api/v1/moderation/bans/{handle}");
    let banned = api
        .moderate(
            "PUT",
            &path,
            MODERATOR_TOKEN,
            Some(json!({"reason": "griefing"})),
        )
        .await;
    assert_eq!(banned.json(), json!({"player": handle, "shadow": false}));
    api.place(identity, 1, 0, 1)
        .await
        .assert_error(StatusCode::FORBIDDEN, "banned");
    api.undo(identity)
        .await
        .assert_error(StatusCode::FORBIDDEN, "banned");
    api.placed("anon.ffffffffffffffffffffffffffffffff", 2, 0, 1)
        .await;

    api.moderate("PUT", &path, MODERATOR_TOKEN, Some(json!({"shadow": true})))
        .await;
    let before = api.snapshot().await.version();
    let shadow = api.place(identity, 3, 0, 2).await;
    assert_eq!(shadow.status, StatusCode::OK, "answered as placed");
    assert_eq!(shadow.json()["version"], before, "but no new version");
    assert_eq!(api.get("/api/v1/pixels/3/0").await.json()["color"], 0);
    assert_eq!(
        api.moderate("GET", "/api/v1/moderation/bans", MODERATOR_TOKEN, None)
            .await
            .json(),
        json!({"bans": [{"player": handle, "shadow": true}]})
    );

    api.moderate("DELETE", &path, MODERATOR_TOKEN, None).await;
    api.moderate("DELETE", &path, MODERATOR_TOKEN, None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_banned");
    api.placed(identity, 3, 0, 2).await;

    let audit = api
        .moderate("GET", "/api/v1/moderation/audit", MODERATOR_TOKEN, None)
        .await
        .json();
    let actions: Vec<(&str, &Value)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["action"].as_str().expect("action"), &e["detail"]))
        .collect();
    assert_eq!(
        actions,
        [
            ("unban", &json!({"player": handle})),
            (
                "ban",
                &json!({"player": handle, "shadow": true, "reason": null})
            ),
            (
                "ban",
                &json!({"player": handle, "shadow": false, "reason": "griefing"})
            ),
        ],
        "newest first: {audit}"
    );
    assert!(
        audit["entries"][0]["atMs"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    assert_eq!(audit["entries"][0]["by"], "moderator");

    for (body, code) in [
        (json!([1]), "invalid_body"),
        (json!({"shadow": "yes"}), "invalid_body"),
        (json!({"reason": "x".repeat(501)}), "invalid_body"),
        (json!({"extra": 1}), "invalid_body"),
    ] {
        api.moderate("PUT", &path, MODERATOR_TOKEN, Some(body))
            .await
            .assert_error(StatusCode::BAD_REQUEST, code);
    }
    api.moderate(
        "PUT",
        "/api/v1/moderation/bans/a%20b",
        MODERATOR_TOKEN,
        Some(json!({})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_player");
}

#[tokio::test]
async fn a_rollback_restores_an_area_or_takes_back_a_player_as_new_placements() {
    let (_redis, api) = moderated().await;
    let good = "anon.11111111111111111111111111111111";
    let bad = "anon.22222222222222222222222222222222";
    api.placed(good, 1, 1, 1).await;
    api.placed(good, 2, 1, 2).await;
    let before = api.placed(good, 9, 5, 2).await;
    // Vandalism: over the area, and a pixel outside it.
    for (x, y) in [(1, 1), (2, 1), (3, 2), (9, 5)] {
        api.placed(bad, x, y, 3).await;
    }
    api.placed(bad, 1, 1, 1).await;
    let snapshot_of = |snapshot: &Snapshot, x: usize, y: usize| snapshot.pixels()[y * 16 + x];

    let rollback = |body: Value| {
        let api = &api;
        async move {
            let answer = api
                .moderate(
                    "POST",
                    "/api/v1/moderation/rollbacks",
                    MODERATOR_TOKEN,
                    Some(body),
                )
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
            answer.json()
        }
    };
    let done =
        rollback(json!({"area": {"x": 0, "y": 0, "width": 4, "height": 4}, "toVersion": before}))
            .await;
    assert_eq!(
        done["placed"], 2,
        "(1,1) is back to 1 already; (2,1) and (3,2) change: {done}"
    );
    assert_eq!(done["skipped"], 0);
    let snapshot = api.snapshot().await;
    assert_eq!(
        snapshot.version(),
        done["version"].as_u64().expect("version")
    );
    assert_eq!(
        [(1, 1), (2, 1), (3, 2), (9, 5)].map(|(x, y)| snapshot_of(&snapshot, x, y)),
        [1, 2, 0, 3],
        "the area as it was; outside it, the vandal's pixel stays"
    );
    let pixel = api.get("/api/v1/pixels/2/1").await.json();
    assert_eq!(pixel["placedBy"], "moderator");
    let history = api
        .get(&format!("/api/v1/history?since={}", before + 5))
        .await
        .json();
    let kinds: Vec<&str> = history["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| u["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["rollback", "rollback"]);

    // Every placement of the vandal since the start, wherever it still shows: (9,5) only now.
    let bad_handle = pixel_common::identity::handle_of(bad);
    let done = rollback(json!({"player": bad_handle, "sinceMs": 0})).await;
    assert_eq!(done["placed"], 1, "{done}");
    assert_eq!(
        snapshot_of(&api.snapshot().await, 9, 5),
        2,
        "back to the good colour"
    );

    let audit = api
        .moderate(
            "GET",
            "/api/v1/moderation/audit?limit=1",
            MODERATOR_TOKEN,
            None,
        )
        .await
        .json();
    assert_eq!(audit["entries"][0]["action"], "rollback");
    assert_eq!(audit["entries"][0]["detail"]["placed"], 1);

    for body in [
        json!({}),
        json!([]),
        json!({"area": {"x": 0, "y": 0, "width": 1, "height": 1}}),
        json!({"area": {"x": 0, "y": 0, "width": 1, "height": 1}, "toVersion": 1, "toMs": 1}),
        json!({"area": {"x": 0, "y": 0, "width": 0, "height": 1}, "toVersion": 1}),
        json!({"player": "x"}),
        json!({"player": "x", "sinceMs": 0, "toVersion": 1}),
        json!({"area": {"x": 0, "y": 0, "width": 1, "height": 1}, "toVersion": 10_000}),
    ] {
        api.moderate(
            "POST",
            "/api/v1/moderation/rollbacks",
            MODERATOR_TOKEN,
            Some(body.clone()),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    api.moderate(
        "POST",
        "/api/v1/moderation/rollbacks",
        MODERATOR_TOKEN,
        Some(json!({"area": {"x": 10, "y": 0, "width": 10, "height": 1}, "toVersion": 1})),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "out_of_bounds");
}

#[tokio::test]
async fn a_rollback_beyond_the_kept_history_is_410() {
    let (_redis, api) = started(&[
        "--moderator-token",
        MODERATOR_TOKEN,
        "--history-max-len",
        "2",
    ])
    .await;
    for x in 0..5 {
        api.placed("anon.33333333333333333333333333333333", x, 0, 1)
            .await;
    }
    for body in [
        json!({"area": {"x": 0, "y": 0, "width": 16, "height": 8}, "toVersion": 1}),
        json!({"area": {"x": 0, "y": 0, "width": 16, "height": 8}, "toMs": 0}),
        json!({"player": "anon-x", "sinceMs": 0}),
    ] {
        api.moderate(
            "POST",
            "/api/v1/moderation/rollbacks",
            MODERATOR_TOKEN,
            Some(body),
        )
        .await
        .assert_error(StatusCode::GONE, "history_gone");
    }
}

#[tokio::test]
async fn a_client_may_place_again_after_its_cooldown() {
    let (_redis, api) = started(&["--canvas-cooldown-seconds", "1"]).await;
    api.placed("a", 0, 0, 1).await;
    api.place("a", 0, 0, 2)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");
    for _ in 0..100 {
        let answer = api.place("a", 0, 0, 2).await;
        if answer.status == StatusCode::OK {
            return;
        }
        answer.assert_error(StatusCode::TOO_MANY_REQUESTS, "cooldown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cooldown of 1 s never ended");
}

#[tokio::test]
async fn one_client_racing_two_app_instances_is_admitted_once() {
    let redis = RedisServer::start().await;
    let flags = ["--canvas-cooldown-seconds", "60"];
    let (one, two) = (api(&redis, &flags), api(&redis, &flags));
    for round in 0..20 {
        let client = format!("racer-{round}");
        let (a, b) = tokio::join!(one.place(&client, 0, 0, 1), two.place(&client, 1, 1, 2));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS],
            "round {round}"
        );
    }
    assert_eq!(one.get("/api/v1/info").await.json()["version"], 20);
}

#[tokio::test]
async fn redis_down_is_503_promptly_and_readiness_follows_it() {
    let (mut redis, api) = started(&[]).await;
    api.wait_ready(StatusCode::OK).await;
    assert_eq!(api.get("/readyz").await.body, b"ready");
    api.placed("a", 0, 0, 1).await;

    redis.kill().await;
    api.place("a", 1, 0, 1)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    for path in [
        "/api/v1/info",
        "/api/v1/canvas",
        "/api/v1/canvas.png",
        "/api/v1/pixels/0/0",
        "/api/v1/history?since=0",
    ] {
        api.get(path)
            .await
            .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // The client is told nothing about the cause.
    let placed = api.place("a", 1, 0, 1).await;
    let message = placed.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!message.to_lowercase().contains("refused"), "{message}");
    assert_eq!(
        api.get("/healthz").await.status,
        StatusCode::OK,
        "liveness ignores Redis"
    );

    redis.restart().await;
    api.wait_ready(StatusCode::OK).await;
    assert_eq!(api.placed("a", 1, 0, 1).await, 2);
}

#[tokio::test]
async fn a_frozen_redis_is_503_not_a_hang() {
    let (redis, api) = started(&[]).await;
    api.placed("a", 0, 0, 1).await;
    redis.pause();
    api.place("a", 1, 0, 1)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    api.get("/api/v1/canvas")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(
        api.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    redis.resume();
    api.wait_ready(StatusCode::OK).await;
}

#[tokio::test]
async fn acknowledged_placements_survive_a_redis_crash() {
    let (mut redis, api) = started(&[]).await;
    let mut expected = vec![0u8; 16 * 8];
    for i in 0..40u8 {
        let (x, y) = (i64::from(i % 16), i64::from(i / 16));
        let color = 1 + i % 3;
        assert_eq!(
            api.placed(&format!("c{i}"), x, y, color.into()).await,
            u64::from(i) + 1
        );
        expected[usize::from(i)] = color;
    }
    // SIGKILL: no shutdown save. With appendfsync always, every acknowledged write is in the AOF.
    redis.kill().await;
    redis.restart().await;
    api.wait_ready(StatusCode::OK).await;
    let snapshot = api.snapshot().await;
    assert_eq!(snapshot.version(), 40);
    assert_eq!(snapshot.pixels(), expected);
    assert_eq!(
        api.get("/api/v1/pixels/7/1").await.json()["placedBy"],
        "c23"
    );
    let history = api.get("/api/v1/history?since=0").await.json();
    assert_eq!(history["updates"].as_array().map(Vec::len), Some(40));
    assert_eq!(api.placed("after", 0, 5, 1).await, 41);
}

#[tokio::test]
async fn metrics_count_requests_and_placements() {
    let (_redis, api) = started(&["--canvas-cooldown-seconds", "60"]).await;
    api.placed("a", 0, 0, 1).await;
    api.place("a", 0, 0, 1).await;
    api.place("a", 99, 0, 1).await;
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        r#"pixel_placements_total{result="accepted"} 1"#,
        r#"pixel_placements_total{result="cooldown"} 1"#,
        r#"pixel_placements_total{result="rejected"} 1"#,
        r#"http_requests_total{method="POST",route="/api/v1/pixels",status="200"} 1"#,
        r#"http_requests_total{method="POST",route="/api/v1/pixels",status="429"} 1"#,
        r#"http_request_duration_seconds_count{method="POST",route="/api/v1/pixels"} 3"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

// Group commit: placements that arrive together go to Redis in one script call, each
// answered as if it had come alone.

impl Api {
    /// `POST /api/v1/pixels/batch` as the gateway.
    async fn place_batch(&self, placements: &[Value]) -> Answer {
        self.send(
            Request::post(API_PIXELS_BATCH_PATH)
                .header(header::AUTHORIZATION, format!("Bearer {API_TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({ "placements": placements }).to_string()))
                .expect("request"),
        )
        .await
    }
}

/// The placement script's runs so far, by either command.
async fn script_runs(redis: &RedisServer) -> u64 {
    redis_calls(redis, "evalsha").await + redis_calls(redis, "eval").await
}

#[tokio::test]
async fn one_identity_racing_many_placements_on_two_replicas_is_admitted_once() {
    let redis = RedisServer::start().await;
    let flags = ["--canvas-cooldown-seconds", "60"];
    let (one, two) = (api(&redis, &flags), api(&redis, &flags));
    // Warm: the script is loaded, so each batch is one EVALSHA.
    one.placed("warm-1", 0, 0, 1).await;
    two.placed("warm-2", 0, 0, 1).await;
    let runs_before = script_runs(&redis).await;
    for round in 0..5 {
        let client = format!("racer-{round}");
        let singles = (0..40).map(|k| {
            let api = if k % 2 == 0 { &one } else { &two };
            api.place(&client, k % 16, k % 8, 1)
        });
        let batch: Vec<Value> = (0..10)
            .map(|k| json!({"clientId": client, "x": k, "y": 7, "color": 2}))
            .collect();
        let (singles, batched) = tokio::join!(
            futures_util::future::join_all(singles),
            two.place_batch(&batch)
        );
        assert_eq!(batched.status, StatusCode::OK);
        let mut statuses: Vec<u16> = singles.iter().map(|a| a.status.as_u16()).collect();
        statuses.extend(
            batched.json()["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| u16::try_from(r["status"].as_u64().expect("status")).expect("u16")),
        );
        assert_eq!(statuses.len(), 50);
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            49,
            "round {round}: {statuses:?}"
        );
    }
    assert_eq!(one.get("/api/v1/info").await.json()["version"], 2 + 5);
    // The placements went in batches. One run per request would be 41 a round (40 singles
    // and the batch); the singles reach each replica together, so a few runs carry them.
    let runs = script_runs(&redis).await - runs_before;
    assert!(
        runs <= 5 * 10,
        "{runs} script runs for 5 rounds of 41 requests"
    );
}

#[tokio::test]
async fn concurrent_placements_get_gap_free_versions_matching_history_and_snapshot() {
    let redis = RedisServer::start().await;
    let (one, two) = (api(&redis, &[]), api(&redis, &[]));
    let client = redis::Client::open(redis.url()).expect("client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(UPDATES_CHANNEL).await.expect("subscribe");
    let before = one.placed("first", 0, 0, 1).await;
    // 300 placements by 50 people, all over a 16x8 canvas (many on the same pixels), through
    // both replicas, alone and in batches.
    let placement = |k: i64| {
        (
            format!("person-{}", k % 50),
            (k * 7) % 16,
            (k * 3) % 8,
            k % 4,
        )
    };
    let singles = (0..200).map(|k| {
        let (who, x, y, color) = placement(k);
        let api = if k % 3 == 0 { &one } else { &two };
        async move { (k, api.place(&who, x, y, color).await) }
    });
    let batches = (0..4).map(|b| {
        let ks: Vec<i64> = (200 + b * 25..200 + (b + 1) * 25).collect();
        let items: Vec<Value> = ks
            .iter()
            .map(|k| {
                let (who, x, y, color) = placement(*k);
                json!({"clientId": who, "x": x, "y": y, "color": color})
            })
            .collect();
        let api = if b % 2 == 0 { &one } else { &two };
        async move { (ks, api.place_batch(&items).await) }
    });
    let (singles, batches) = tokio::join!(
        futures_util::future::join_all(singles),
        futures_util::future::join_all(batches)
    );
    let mut accepted: Vec<(u64, i64)> = Vec::new();
    for (k, answer) in singles {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json());
        accepted.push((answer.json()["version"].as_u64().expect("version"), k));
    }
    for (ks, answer) in batches {
        assert_eq!(answer.status, StatusCode::OK);
        let results = answer.json()["results"]
            .as_array()
            .expect("results")
            .clone();
        assert_eq!(results.len(), ks.len());
        for (k, result) in ks.into_iter().zip(results) {
            assert_eq!(result["status"], 200, "{result}");
            accepted.push((result["version"].as_u64().expect("version"), k));
        }
    }
    accepted.sort_unstable();
    let versions: Vec<u64> = accepted.iter().map(|(v, _)| *v).collect();
    let expected: Vec<u64> = (before + 1..=before + 300).collect();
    assert_eq!(versions, expected, "gap-free, each version once");

    // The history has exactly these placements under these versions.
    let mut history = Vec::new();
    let mut since = before;
    while since < before + 300 {
        let page = one
            .get(&format!("/api/v1/history?since={since}"))
            .await
            .json();
        let updates = page["updates"].as_array().expect("updates").clone();
        assert!(!updates.is_empty(), "{page}");
        since = updates.last().expect("one")["version"].as_u64().expect("v");
        history.extend(updates);
    }
    assert_eq!(history.len(), 300);
    let mut last_colour = std::collections::BTreeMap::new();
    for ((version, k), entry) in accepted.iter().zip(&history) {
        let (who, x, y, color) = placement(*k);
        assert_eq!(entry["version"], *version);
        assert_eq!(
            (entry["x"].as_i64(), entry["y"].as_i64()),
            (Some(x), Some(y))
        );
        assert_eq!(entry["color"], color, "{entry}");
        assert_eq!(entry["placedBy"], who);
        last_colour.insert((x, y), color);
    }

    // The snapshot shows each pixel's last colour.
    let snapshot = eventually_version(&one, before + 300).await;
    for ((x, y), color) in &last_colour {
        let at = usize::try_from(y * 16 + x).expect("index");
        assert_eq!(i64::from(snapshot.pixels()[at]), *color, "pixel ({x}, {y})");
    }

    // And every placement was published once, in the shared format, versions in order.
    let mut messages = pubsub.on_message();
    let mut published = Vec::new();
    while published.len() < 301 {
        let message = tokio::time::timeout(HANG, messages.next())
            .await
            .expect("a message arrives")
            .expect("the subscription stays open");
        let payload: Vec<u8> = message.get_payload().expect("payload");
        published.push(parse_update_message(&payload).expect("the shared format"));
    }
    let published_versions: Vec<u64> = published.iter().map(|u| u.version).collect();
    let all: Vec<u64> = (before..=before + 300).collect();
    assert_eq!(published_versions, all);
}

#[tokio::test]
async fn each_placement_of_a_batch_is_answered_alone() {
    let (redis, api) = started(&[
        "--moderator-token",
        MODERATOR_TOKEN,
        "--canvas-cooldown-seconds",
        "60",
        "--placement-rate",
        "1000",
        "--placement-burst",
        "1000",
    ])
    .await;
    let banned = "anon.0123456789abcdef0123456789abcdef";
    let handle = pixel_common::identity::handle_of(banned);
    api.moderate(
        "PUT",
        &format!("/api/v1/moderation/bans/{handle}"),
        MODERATOR_TOKEN,
        Some(json!({})),
    )
    .await;
    let before = api.placed("cooled", 0, 0, 1).await;
    // A rate record Redis cannot read: the script fails for this client's placement alone.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("SET")
        .arg(format!("{RATE_KEY_PREFIX}corrupt"))
        .arg("not a number")
        .query_async::<()>(&mut conn)
        .await
        .expect("SET");

    let item = |who: &str, x: i64, y: i64, color: i64| json!({"clientId": who, "x": x, "y": y, "color": color});
    let answer = api
        .place_batch(&[
            item("a", 1, 1, 1),
            item("b", 99, 0, 1),
            item(banned, 2, 2, 1),
            item("cooled", 3, 3, 1),
            item("c", 4, 4, 9),
            item("not valid", 5, 5, 1),
            item("corrupt", 6, 6, 1),
            json!({"clientId": "d", "x": 7, "y": 7, "color": 2, "idempotencyKey": "bad key"}),
            item("e", 7, 7, 2),
            // The same identity again: it sees the cooldown its first placement just began.
            item("a", 8, 1, 1),
        ])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let results = answer.json()["results"]
        .as_array()
        .expect("results")
        .clone();
    let summary: Vec<(u64, &str)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().expect("status"),
                r["error"]["code"].as_str().unwrap_or("placed"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (200, "placed"),
            (400, "out_of_bounds"),
            (403, "banned"),
            (429, "cooldown"),
            (400, "unknown_color"),
            (400, "invalid_client_id"),
            (503, "unavailable"),
            (400, "invalid_idempotency_key"),
            (200, "placed"),
            (429, "cooldown"),
        ]
    );
    assert_eq!(results[0]["version"], before + 1);
    assert_eq!(
        results[8]["version"],
        before + 2,
        "versions stay contiguous"
    );
    assert!(
        results[3]["error"]["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    assert!(
        results[9]["error"]["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    // Only the accepted ones changed the canvas.
    for (x, y, color) in [
        (1, 1, 1),
        (2, 2, 0),
        (3, 3, 0),
        (6, 6, 0),
        (7, 7, 2),
        (8, 1, 0),
    ] {
        assert_eq!(
            api.get(&format!("/api/v1/pixels/{x}/{y}")).await.json()["color"],
            color,
            "({x}, {y})"
        );
    }
    assert_eq!(api.get("/api/v1/info").await.json()["version"], before + 2);
}

#[tokio::test]
async fn a_placement_failed_after_its_first_write_fails_the_rest_of_its_batch() {
    let (redis, api) = started(&["--canvas-cooldown-seconds", "60"]).await;
    let before = api.placed("early", 0, 0, 1).await;
    // A history entry far ahead of the version: the first placement writes its pixel and
    // takes a version, then its history entry fails. The rest would each do the same.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("XADD")
        .arg(pixel_common::redis_schema::HISTORY_KEY)
        .arg("1000000-0")
        .arg("x")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .expect("XADD");

    let item = |who: &str, x: i64| json!({"clientId": who, "x": x, "y": 1, "color": 2});
    let answer = api
        .place_batch(&[item("a", 1), item("b", 2), item("c", 3)])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let codes: Vec<(u64, String)> = answer.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().expect("status"),
                r["error"]["code"].as_str().unwrap_or("placed").to_owned(),
            )
        })
        .collect();
    assert_eq!(codes, vec![(503, "unavailable".to_owned()); 3]);
    assert_eq!(
        api.get("/api/v1/info").await.json()["version"],
        before + 1,
        "one gap, not one per placement"
    );
    for x in [2, 3] {
        assert_eq!(
            api.get(&format!("/api/v1/pixels/{x}/1")).await.json()["color"],
            0,
            "({x}, 1) was not attempted"
        );
    }
    // Unattempted means no cooldown either: once the history is sound, b places at once.
    redis::cmd("DEL")
        .arg(pixel_common::redis_schema::HISTORY_KEY)
        .query_async::<()>(&mut conn)
        .await
        .expect("DEL");
    assert_eq!(api.placed("b", 2, 1, 2).await, before + 2);
}

#[tokio::test]
async fn a_batch_is_refused_whole_only_for_its_caller_or_shape_and_fails_whole_without_redis() {
    let (mut redis, api) = started(&[]).await;
    let items = [json!({"clientId": "a", "x": 1, "y": 1, "color": 1})];
    let unauthorized = api
        .send(
            Request::post(API_PIXELS_BATCH_PATH)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({ "placements": items }).to_string()))
                .expect("request"),
        )
        .await;
    unauthorized.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let too_many: Vec<Value> = (0..=PLACEMENT_BATCH_MAX)
        .map(|_| json!({"clientId": "a", "x": 1, "y": 1, "color": 1}))
        .collect();
    api.place_batch(&too_many)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    api.place_batch(&[json!([1, 1, 1])])
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    // Beyond the schema's int64, or not an integer: the body is not the documented shape.
    let below: Value = serde_json::from_str("-9223372036854775809").expect("a JSON number");
    for beyond in [json!(9_223_372_036_854_775_808_u64), below, json!(1.5)] {
        api.place_batch(&[
            items[0].clone(),
            json!({"clientId": "a", "x": 1, "y": beyond, "color": 1}),
        ])
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    assert_eq!(api.place_batch(&[]).await.json(), json!({"results": []}));

    redis.kill().await;
    let answer = api.place_batch(&[items[0].clone(), items[0].clone()]).await;
    assert_eq!(answer.status, StatusCode::OK);
    for result in answer.json()["results"].as_array().expect("results") {
        assert_eq!(result["status"], 503, "{result}");
        assert_eq!(result["error"]["code"], "unavailable");
    }
}
