//! One cooldown per person: identities in signed cookies, against a real redis-server and
//! canvas-api, with real WebSocket clients that keep (or drop, or forge) the cookie a
//! handshake set, as browsers and adversaries do.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use pixel_common::{
    testing::{IDENTITY_KEY, RedisServer},
    wire::UpdateFrame,
};
use serde_json::{Value, json};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        Message,
        client::IntoClientRequest,
        http::{
            HeaderValue,
            header::{COOKIE, SET_COOKIE},
        },
    },
};

mod support;

use support::{HANG, ServedGateway};

/// A 16x8 canvas with a one-minute cooldown.
const CANVAS: [&str; 8] = [
    "--canvas-width",
    "16",
    "--canvas-height",
    "8",
    "--canvas-palette",
    "#FFFFFF,#000000,#FF0000,#0000FF",
    "--canvas-cooldown-seconds",
    "60",
];

async fn start(redis: &RedisServer, gateway_flags: &[&str]) -> (SocketAddr, ServedGateway) {
    let mut api_flags = vec!["--snapshot-max-age-ms", "0"];
    api_flags.extend_from_slice(&CANVAS);
    let api = support::serve_api(redis, &api_flags).await;
    let gateway = gateway_on(redis, api, gateway_flags).await;
    (api, gateway)
}

async fn gateway_on(redis: &RedisServer, api: SocketAddr, extra: &[&str]) -> ServedGateway {
    let mut flags = vec!["--batch-ms", "5", "--online-interval-ms", "100"];
    flags.extend_from_slice(&CANVAS);
    flags.extend_from_slice(extra);
    support::serve_gateway(redis, api, &flags).await
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: its hello and the cookie its handshake set (`name=value`), if any.
struct Visit {
    ws: Socket,
    hello: Value,
    set_cookie: Option<String>,
}

/// Opens `/ws` sending `cookie` (a `name=value` pair, as a browser sends it back).
async fn visit(gateway: &ServedGateway, cookie: Option<&str>) -> Visit {
    let mut request = format!("ws://{}/ws", gateway.addr)
        .into_client_request()
        .expect("request");
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert(COOKIE, HeaderValue::from_str(cookie).expect("header"));
    }
    let (mut ws, response) = tokio::time::timeout(HANG, connect_async(request))
        .await
        .expect("the upgrade answers")
        .expect("upgrade");
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().expect("text").to_owned());
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    Visit {
        ws,
        hello,
        set_cookie: set_cookie.map(|full| {
            assert!(
                full.contains("HttpOnly") && full.contains("SameSite=Lax"),
                "{full}"
            );
            full.split(';').next().expect("a pair").to_owned()
        }),
    }
}

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("the gateway sends instead of hanging");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).expect("JSON"),
            Some(Ok(_)) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

impl Visit {
    fn handle(&self) -> Option<&str> {
        self.hello["identity"]["handle"].as_str()
    }

    /// Places a pixel and returns the answer (`placed` or `error`).
    async fn place(&mut self, x: u16, y: u16) -> Value {
        self.ask(json!({"type": "place", "x": x, "y": y, "color": 1, "id": 1}))
            .await
    }

    /// Undoes this person's last placement and returns the answer (`undone` or `error`).
    async fn undo(&mut self) -> Value {
        self.ask(json!({"type": "undo", "id": 2})).await
    }

    async fn ask(&mut self, message: Value) -> Value {
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
        loop {
            let answer = next_json(&mut self.ws).await;
            if matches!(answer["type"].as_str(), Some("placed" | "undone" | "error")) {
                assert_eq!(answer["id"], message["id"], "{answer}");
                return answer;
            }
        }
    }

    /// The next update frame's pixels as `(x, y, colour)`.
    async fn frame(&mut self) -> Vec<(u16, u16, u8)> {
        loop {
            let message = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("the gateway sends instead of hanging");
            if let Some(Ok(Message::Binary(bytes))) = message {
                let frame = UpdateFrame::decode(&bytes).expect("a frame");
                return frame
                    .updates()
                    .iter()
                    .map(|u| (u.x, u.y, u.color))
                    .collect();
            }
        }
    }
}

#[tokio::test]
async fn an_undo_is_the_persons_own_reaches_every_client_and_refunds_the_cooldown() {
    let redis = RedisServer::start().await;
    let (_api, gateway) = start(&redis, &[]).await;
    let mut placer = visit(&gateway, None).await;
    let cookie = placer.set_cookie.clone().expect("a cookie");
    let mut other = visit(&gateway, None).await;
    assert_eq!(other.undo().await["code"], "nothing_to_undo");
    assert_eq!(placer.place(4, 4).await["type"], "placed");
    assert_eq!(other.frame().await, [(4, 4, 1)]);
    // The undo belongs to the person: another connection with the cookie may do it.
    drop(placer);
    let mut reload = visit(&gateway, Some(&cookie)).await;
    assert!(reload.hello["cooldownMs"].as_u64().is_some_and(|ms| ms > 0));
    assert_eq!(reload.hello["undoSeconds"], 5);
    let undo_left = reload.hello["undoMs"].as_u64().expect("undoMs");
    assert!(
        (1..=5000).contains(&undo_left),
        "the undo still runs: {undo_left}"
    );
    let undone = reload.undo().await;
    assert_eq!(
        undone,
        json!({"type": "undone", "id": 2, "version": 2, "x": 4, "y": 4, "color": 0})
    );
    assert_eq!(other.frame().await, [(4, 4, 0)], "every client sees it");
    assert_eq!(
        reload.place(5, 5).await["type"],
        "placed",
        "the cooldown was refunded"
    );
    assert_eq!(reload.place(6, 6).await["code"], "cooldown");
}

/// Without a cooldown the placement rate is what binds: per person, so more connections
/// with the same cookie (tabs, or a script) share one allowance, on every gateway.
#[tokio::test]
async fn the_placement_rate_is_per_person_not_per_connection() {
    let redis = RedisServer::start().await;
    let geometry = &CANVAS[..6];
    let mut api_flags = vec!["--placement-rate", "0.1", "--placement-burst", "3"];
    api_flags.extend_from_slice(geometry);
    let api = support::serve_api(&redis, &api_flags).await;
    let mut gateway_flags = vec!["--batch-ms", "5"];
    gateway_flags.extend_from_slice(geometry);
    let (one, two) = (
        support::serve_gateway(&redis, api, &gateway_flags).await,
        support::serve_gateway(&redis, api, &gateway_flags).await,
    );
    let first = visit(&one, None).await;
    let cookie = first.set_cookie.clone().expect("a cookie");
    let mut tabs = vec![first];
    for gateway in [&one, &two, &two] {
        tabs.push(visit(gateway, Some(&cookie)).await);
    }
    let mut answers = Vec::new();
    for (k, tab) in tabs.iter_mut().enumerate() {
        for n in 0..2 {
            answers.push(tab.place(k as u16, n).await);
        }
    }
    let placed = answers.iter().filter(|a| a["type"] == "placed").count();
    assert_eq!(placed, 3, "one burst for the person: {answers:?}");
    let refused = answers
        .iter()
        .find(|a| a["type"] == "error")
        .expect("a refusal");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["retryAfterMs"].as_u64().is_some_and(|ms| ms > 1000),
        "exact, from canvas-api: {refused}"
    );
    // Another person has an allowance of their own.
    assert_eq!(visit(&two, None).await.place(9, 5).await["type"], "placed");
}

#[tokio::test]
async fn a_frozen_canvas_says_so_in_the_hello_and_refuses_placements() {
    let redis = RedisServer::start().await;
    let frozen = ["--canvas-read-only", "true"];
    let mut api_flags = vec!["--snapshot-max-age-ms", "0"];
    api_flags.extend_from_slice(&CANVAS);
    api_flags.extend_from_slice(&frozen);
    let api = support::serve_api(&redis, &api_flags).await;
    let gateway = gateway_on(&redis, api, &frozen).await;
    let mut player = visit(&gateway, None).await;
    assert_eq!(player.hello["readOnly"], true, "{}", player.hello);
    let refused = player.place(1, 1).await;
    assert_eq!(refused["code"], "canvas_closed", "{refused}");
    assert_eq!(player.undo().await["code"], "canvas_closed");
}

#[tokio::test]
async fn a_reload_keeps_the_identity_and_its_cooldown_and_shows_what_is_left() {
    let redis = RedisServer::start().await;
    let (api, gateway) = start(&redis, &[]).await;
    let mut first = visit(&gateway, None).await;
    let cookie = first
        .set_cookie
        .clone()
        .expect("a first visit gets a cookie");
    let handle = first.handle().expect("and an identity").to_owned();
    assert!(handle.starts_with("anon-"), "{handle}");
    assert_eq!(first.hello["cooldownMs"], 0);
    assert_eq!(first.hello["undoMs"], 0, "nothing placed yet");
    assert_eq!(first.place(1, 1).await["type"], "placed");

    // A reload: a new connection with the cookie is the same person.
    let mut reload = visit(&gateway, Some(&cookie)).await;
    assert_eq!(reload.handle(), Some(handle.as_str()));
    assert!(
        reload.set_cookie.is_none(),
        "a valid cookie is kept as it is"
    );
    let left = reload.hello["cooldownMs"].as_u64().expect("cooldownMs");
    assert!(
        (50_000..=60_000).contains(&left),
        "the hello tells the cooldown left: {left}"
    );
    let refused = reload.place(2, 2).await;
    assert_eq!(refused["code"], "cooldown", "{refused}");
    assert!(
        refused["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms > 50_000)
    );

    // Another person (another browser) may place meanwhile.
    let mut other = visit(&gateway, None).await;
    assert_ne!(other.handle(), Some(handle.as_str()));
    assert_eq!(other.place(3, 3).await["type"], "placed");

    // The pixel info names the handle, never the identity in the cookie.
    let info: Value = reqwest::get(format!("http://{api}/api/v1/pixels/1/1"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(info["placedBy"], handle.as_str(), "{info}");
}

#[tokio::test]
async fn clearing_cookies_in_a_loop_is_held_to_the_issuance_limit() {
    let redis = RedisServer::start().await;
    let (api, gateway) = start(&redis, &["--identity-issue-limit", "3"]).await;
    let mut placed = 0;
    for _ in 0..3 {
        let mut fresh = visit(&gateway, None).await;
        assert!(fresh.handle().is_some());
        if fresh.place(placed, 0).await["type"] == "placed" {
            placed += 1;
        }
    }
    assert_eq!(placed, 3, "three people, three placements");
    // The fourth cookieless visit from this address may watch, not place.
    let mut over = visit(&gateway, None).await;
    assert!(over.set_cookie.is_none(), "no identity was issued");
    assert_eq!(over.hello["identity"], Value::Null, "{}", over.hello);
    let refused = over.place(5, 5).await;
    assert_eq!(refused["code"], "identity_required", "{refused}");
    let retry = refused["retryAfterMs"].as_u64().expect("when to retry");
    assert!(
        retry > 3_500_000,
        "the window's end, about an hour away: {retry}"
    );
    // Another gateway of the canvas counts the same address in Redis.
    let second = gateway_on(&redis, api, &["--identity-issue-limit", "3"]).await;
    let elsewhere = visit(&second, None).await;
    assert_eq!(elsewhere.hello["identity"], Value::Null);
}

#[tokio::test]
async fn forged_and_foreign_cookies_choose_no_identity() {
    let redis = RedisServer::start().await;
    let (_api, gateway) = start(&redis, &[]).await;
    let victim = visit(&gateway, None).await;
    let handle = victim.handle().expect("an identity").to_owned();
    let genuine = victim.set_cookie.clone().expect("a cookie");
    let (name, value) = genuine.split_once('=').expect("name=value");
    // The cookie crate puts the signature (base64) before the identity.
    let flipped = {
        let mut bytes = value.as_bytes().to_vec();
        bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).expect("text")
    };
    let mut forgeries = vec![
        format!("{name}=anon.0123456789abcdef0123456789abcdef"),
        format!("{name}={flipped}"),
        format!("{name}={}", &value[..value.len() - 2]),
        format!("{name}=x{value}"),
    ];
    // Signed by another canvas's key.
    let foreign_redis = RedisServer::start().await;
    let (_foreign_api, foreign) = start(
        &foreign_redis,
        &["--identity-key", "another canvas's identity key, 32+ bytes"],
    )
    .await;
    forgeries.push(visit(&foreign, None).await.set_cookie.expect("a cookie"));
    for forged in &forgeries {
        let visit = visit(&gateway, Some(forged)).await;
        assert_ne!(visit.handle(), Some(handle.as_str()), "{forged}");
        assert!(
            visit.set_cookie.is_some(),
            "a forgery counts as no cookie: a new identity is issued ({forged})"
        );
    }
}

/// The two steps of a rotation (docs/protocol.md, Identity): whichever gateways a browser
/// meets while they roll, its identity verifies.
#[tokio::test]
async fn after_a_key_rotation_old_cookies_still_verify_and_are_signed_anew() {
    let redis = RedisServer::start().await;
    let (api, before) = start(&redis, &[]).await;
    let first = visit(&before, None).await;
    let handle = first.handle().expect("an identity").to_owned();
    let old_cookie = first.set_cookie.clone().expect("a cookie");
    let new_key = "the identity key after the rotation, 32+ bytes";
    let rotated = gateway_on(
        &redis,
        api,
        &[
            "--identity-key",
            new_key,
            "--identity-key-previous",
            IDENTITY_KEY,
        ],
    )
    .await;
    let during = visit(&rotated, Some(&old_cookie)).await;
    assert_eq!(during.handle(), Some(handle.as_str()), "the same person");
    let renewed = during
        .set_cookie
        .clone()
        .expect("signed anew with the new key");
    assert_ne!(renewed, old_cookie);
    // A gateway the rotation's first step reached (the new key to verify only) reads the
    // renewed cookie as it is, and signs new ones with the old key still.
    let first_step = gateway_on(&redis, api, &["--identity-key-next", new_key]).await;
    let back = visit(&first_step, Some(&renewed)).await;
    assert_eq!(
        back.handle(),
        Some(handle.as_str()),
        "no identity lost mid-rotation"
    );
    assert!(
        back.set_cookie.is_none(),
        "kept, not signed back with the old key"
    );
    // After the next rotation only the renewed cookie still verifies.
    let next = gateway_on(
        &redis,
        api,
        &[
            "--identity-key",
            "a third identity key, for the rotation after",
            "--identity-key-previous",
            new_key,
        ],
    )
    .await;
    assert_eq!(
        visit(&next, Some(&renewed)).await.handle(),
        Some(handle.as_str())
    );
    assert_ne!(
        visit(&next, Some(&old_cookie)).await.handle(),
        Some(handle.as_str())
    );
}
