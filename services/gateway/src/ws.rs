//! `GET /ws`: the checks before the upgrade (origin, query, readiness, capacity) and the
//! adapter from axum's WebSocket to the generic [`socket::serve`].

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Extension,
    extract::{
        ConnectInfo, Query, State,
        rejection::QueryRejection,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::{
        HeaderMap, StatusCode,
        header::{HOST, ORIGIN, SET_COOKIE},
    },
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use pixel_common::error::ErrorChain;
use serde::Deserialize;
use tokio_tungstenite::tungstenite;

use crate::{
    Gateway,
    address::{AddressSlot, client_address},
    identity::{Seat, WatchReason},
    protocol::close,
    redis_link::Timers,
    socket::{self, Arrival, ReadError, Shared},
};

/// Each connection's read buffer: a few client messages (a placement is about 60 bytes;
/// a larger message grows it as far as it needs). tungstenite zero-fills the whole buffer
/// on every read, so all of it is resident: 4 KiB was a third of an idle connection's RSS.
const READ_BUFFER_BYTES: usize = 512;

/// Which browser origins may open a socket. Requests without `Origin` (not from a
/// browser) are always allowed; so is the gateway's own host (same-origin behind the
/// Ingress).
#[derive(Debug, Clone, Default)]
pub struct Origins {
    any: bool,
    allowed: Vec<String>,
}

impl Origins {
    /// From the configured list: exact origins (`https://canvas.example.com`), or `*`.
    pub fn new(configured: &[String]) -> Self {
        let normalized = |o: &String| o.trim().trim_end_matches('/').to_ascii_lowercase();
        Self {
            any: configured.iter().any(|o| o.trim() == "*"),
            allowed: configured
                .iter()
                .map(normalized)
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// Whether a request with these `Origin` and `Host` headers may open a socket.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim().to_ascii_lowercase();
        self.any || same_host(&origin, host) || self.allowed.contains(&origin)
    }

    /// Whether `origin` is one of the listed origins (`*` does not count): where a sign-in
    /// may send the browser back to.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed.contains(&origin.trim().to_ascii_lowercase())
    }
}

/// Whether `origin` (`<scheme>://<authority>`) names the request's own `host`.
pub fn same_host(origin: &str, host: Option<&str>) -> bool {
    origin
        .split_once("://")
        .zip(host)
        .is_some_and(|((_, authority), host)| authority.eq_ignore_ascii_case(host.trim()))
}

/// A connection counted against the maximum; released when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot, unless `max` connections hold one already.
    pub fn acquire(active: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Query of `GET /ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// The last version the client applied, when it reconnects.
    pub since: Option<u64>,
}

fn refuse(
    gateway: &Gateway,
    reason: &'static str,
    status: StatusCode,
    text: &'static str,
) -> Response {
    gateway.shared.metrics.refused(reason);
    tracing::debug!(reason, "refused a WebSocket upgrade");
    (status, text).into_response()
}

/// The `X-Forwarded-For` request header.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// `GET /ws`. The peer address is absent only when the router is embedded in a server
/// without connect info (the frontend's browser test); such connections are not counted
/// per address.
pub async fn upgrade(
    State(gateway): State<Gateway>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !gateway.origins.allows(header(ORIGIN), header(HOST)) {
        return refuse(
            &gateway,
            "origin",
            StatusCode::FORBIDDEN,
            "origin not allowed",
        );
    }
    let Ok(Query(query)) = query else {
        return refuse(
            &gateway,
            "invalid_query",
            StatusCode::BAD_REQUEST,
            "since must be a non-negative integer",
        );
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if gateway.shared.stop.is_cancelled() {
        return refuse(
            &gateway,
            "shutting_down",
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        );
    }
    if gateway.shared.fanout.version().is_none() {
        return refuse(
            &gateway,
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            "not subscribed to updates yet",
        );
    }
    let max = gateway.shared.limits.max_message_bytes;
    let ws = ws
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite allocates its whole read buffer per connection (128 KiB by default,
        // 1.3 GB at 10,000 clients); clients send only small messages.
        .read_buffer_size(READ_BUFFER_BYTES);
    let address = peer.map(|Extension(ConnectInfo(peer))| {
        let forwarded: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
        // A dual-stack listener shows IPv4 peers as `::ffff:a.b.c.d`.
        client_address(
            peer.ip().to_canonical(),
            forwarded.as_deref(),
            &gateway.trusted_proxies,
        )
    });
    // Before the global slot, so one address cannot fill the gateway: it is refused
    // cheaply, without an upgrade.
    let address_slot = match address {
        Some(address) => match gateway.addresses.acquire(address) {
            Some(slot) => Some(slot),
            None => {
                // Debug only: every connection of a flood would log it (the refusals are
                // counted in gateway_connections_refused_total).
                tracing::debug!(%address, "too many connections from one address");
                return refuse(
                    &gateway,
                    "address",
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                );
            }
        },
        None => None,
    };
    let tracker = gateway.tracker.clone();
    let Some(slot) = Slot::acquire(&gateway.connections, gateway.max_connections) else {
        gateway.shared.metrics.refused("capacity");
        return ws.on_upgrade(move |socket| tracker.track_future(at_capacity(socket, gateway)));
    };
    // Only now, so that a refused connection costs no identity.
    let (seat, cookie) = gateway
        .issuer
        .seat(&gateway.redis, &gateway.shared.metrics, &headers, address)
        .await;
    let watchers_allowed = gateway
        .issuer
        .sign_in
        .as_ref()
        .is_none_or(|sign_in| sign_in.watchers_allowed);
    if seat == Seat::Watcher(WatchReason::SignInRequired) && !watchers_allowed {
        return refuse(
            &gateway,
            "sign_in_required",
            StatusCode::UNAUTHORIZED,
            "this canvas is for signed-in people: sign in first",
        );
    }
    // Read here, in the short-lived handshake, so the connection's task never holds a Redis
    // call's state: that task is most of an idle connection's memory.
    let timers = timers(&gateway, &seat).await;
    let arrival = Arrival {
        seat,
        timers,
        since: query.since,
    };
    let shared = gateway.shared.clone();
    let mut response = ws.on_upgrade(move |socket| {
        tracker.track_future(connection(socket, shared, (slot, address_slot), arrival))
    });
    if let Some(cookie) = cookie {
        // Browsers keep cookies set on a WebSocket handshake's answer.
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

/// Closes a socket opened over the connection limit with 1013, within the send timeout.
async fn at_capacity(mut socket: WebSocket, gateway: Gateway) {
    let frame = CloseFrame {
        code: close::TRY_AGAIN_LATER,
        reason: "too many connections; try again later".into(),
    };
    let limit = gateway.shared.limits.send_timeout;
    let _ = tokio::time::timeout(limit, async {
        socket.send(Message::Close(Some(frame))).await?;
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    })
    .await;
}

/// How long a player's cooldown and undo still run, for the hello (after a reload, say).
async fn timers(gateway: &Gateway, seat: &Seat) -> Timers {
    let canvas = &gateway.shared.canvas;
    match seat {
        Seat::Player(player) if canvas.cooldown_seconds > 0 || canvas.undo_seconds > 0 => gateway
            .redis
            .timers(&player.id)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(error = %ErrorChain(&error), "cannot read a player's timers");
                Timers::default()
            }),
        _ => Timers::default(),
    }
}

/// A connection's task. Built before it runs, so the task carries no copy of what it was
/// built from: the task is most of an idle connection's memory.
fn connection(
    socket: WebSocket,
    shared: Shared,
    slot: (Slot, Option<AddressSlot>),
    arrival: Arrival,
) -> impl Future<Output = ()> + Send {
    let metrics = shared.metrics.clone();
    metrics.connected();
    let (sink, stream) = socket.split();
    let stream = stream.map(read_error);
    // Boxed: awaiting a captured future would copy it into the task a second time.
    let served = Box::pin(socket::serve(sink, stream, shared, arrival));
    async move {
        let (ended, sink, stream) = served.await;
        // The slots are free before the socket is dropped: a client that sees the end may
        // reconnect at once.
        drop(slot);
        drop((sink, stream));
        metrics.disconnected(ended.label());
    }
}

fn read_error(read: Result<Message, axum::Error>) -> Result<Message, ReadError> {
    read.map_err(
        |error| match error.into_inner().downcast::<tungstenite::Error>() {
            Ok(error) if matches!(*error, tungstenite::Error::Capacity(_)) => ReadError::TooLarge,
            _ => ReadError::Broken,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let none = Origins::new(&[]);
        assert!(
            none.allows(None, Some(&format!("gw:{}", pixel_common::ports::GATEWAY))),
            "no Origin: not a browser"
        );
        assert!(none.allows(
            Some("http://canvas.example.com"),
            Some("canvas.example.com")
        ));
        assert!(none.allows(
            Some("https://Canvas.Example.com:8443"),
            Some("canvas.example.com:8443")
        ));
        assert!(!none.allows(Some("http://evil.example"), Some("canvas.example.com")));
        assert!(!none.allows(Some("null"), Some("canvas.example.com")));
        assert!(!none.allows(Some("http://canvas.example.com"), None));

        let listed = Origins::new(&["https://app.example.com/".to_owned(), " ".to_owned()]);
        assert!(listed.allows(Some("https://APP.example.com"), Some("gw")));
        assert!(!listed.allows(Some("http://app.example.com"), Some("gw")));

        let any = Origins::new(&["*".to_owned()]);
        assert!(any.allows(Some("http://anything"), None));
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let active = Arc::new(AtomicUsize::new(0));
        let one = Slot::acquire(&active, 2).expect("first");
        let two = Slot::acquire(&active, 2).expect("second");
        assert!(Slot::acquire(&active, 2).is_none(), "full");
        drop(one);
        let three = Slot::acquire(&active, 2).expect("a released slot");
        drop((two, three));
        assert_eq!(active.load(Ordering::Acquire), 0);
    }
}
