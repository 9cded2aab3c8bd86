//! The gateway's Prometheus metrics, beside the HTTP ones every service has.

use std::{sync::Arc, time::Duration};

use pixel_common::metrics::HttpMetrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// Every gateway metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub(crate) registry: Arc<Registry>,
    pub(crate) http: HttpMetrics,
    connections: Gauge,
    refused: Family<Reason, Counter>,
    disconnects: Family<Reason, Counter>,
    received: Counter,
    sent: Family<Kind, Counter>,
    /// `sent{kind="frame"}`, resolved once: it is counted for every client on every batch.
    frames_sent: Counter,
    placements: Family<Outcome, Counter>,
    seats: Family<Outcome, Counter>,
    updates: Counter,
    lag: Histogram,
    subscribed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let connections = Gauge::default();
        let refused = Family::default();
        let disconnects = Family::default();
        let received = Counter::default();
        let sent: Family<Kind, Counter> = Family::default();
        let frames_sent = sent.get_or_create(&Kind { kind: "frame" }).clone();
        let placements = Family::default();
        let seats = Family::default();
        let updates = Counter::default();
        // 0.1 ms .. ~3.3 s.
        let lag = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let subscribed = Gauge::default();
        let r = &mut registry;
        r.register(
            pixel_common::ports::GATEWAY_CONNECTIONS_METRIC,
            "WebSocket clients connected to this gateway",
            connections.clone(),
        );
        r.register(
            "gateway_connections_refused",
            "WebSocket upgrades refused, by reason (origin, invalid_query, address, capacity, unavailable, shutting_down)",
            refused.clone(),
        );
        r.register(
            "gateway_disconnects",
            "WebSocket connections ended, by reason",
            disconnects.clone(),
        );
        r.register(
            "gateway_messages_received",
            "Messages received from clients",
            received.clone(),
        );
        r.register(
            "gateway_messages_sent",
            "Messages sent to clients, by kind (frame, json)",
            sent.clone(),
        );
        r.register(
            "gateway_placements",
            "Placements by result (accepted, refused, unavailable, rate_limited)",
            placements.clone(),
        );
        r.register(
            "gateway_identities",
            "Connections by how they got their seat (verified, renewed, issued, limited, unavailable)",
            seats.clone(),
        );
        r.register(
            "gateway_updates_received",
            "Pixel updates received from the Redis subscription",
            updates.clone(),
        );
        r.register(
            "gateway_fanout_lag_seconds",
            "Time from an update's arrival from Redis to its frame being written to a client",
            lag.clone(),
        );
        r.register(
            "gateway_subscription_live",
            "1 while the Redis subscription is live",
            subscribed.clone(),
        );
        Self {
            registry: Arc::new(registry),
            http,
            connections,
            refused,
            disconnects,
            received,
            frames_sent,
            sent,
            placements,
            seats,
            updates,
            lag,
            subscribed,
        }
    }

    pub fn connected(&self) {
        self.connections.inc();
    }

    pub fn disconnected(&self, reason: &'static str) {
        self.connections.dec();
        self.disconnects.get_or_create(&Reason { reason }).inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    pub fn received(&self) {
        self.received.inc();
    }

    pub fn sent(&self, kind: &'static str) {
        self.sent.get_or_create(&Kind { kind }).inc();
    }

    /// Counts `count` update frames sent to one client.
    pub fn frames_sent(&self, count: u64) {
        self.frames_sent.inc_by(count);
    }

    pub fn placement(&self, result: &'static str) {
        self.placements.get_or_create(&Outcome { result }).inc();
    }

    /// Counts how a connection got its seat: `verified` (its cookie), `renewed` (a cookie of
    /// the previous key), `issued` (a new identity), `limited` or `unavailable` (a watcher).
    pub fn seat(&self, result: &'static str) {
        self.seats.get_or_create(&Outcome { result }).inc();
    }

    pub fn update_received(&self) {
        self.updates.inc();
    }

    pub fn fanout_lag(&self, lag: Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    pub fn subscription(&self, live: bool) {
        self.subscribed.set(i64::from(live));
    }
}
