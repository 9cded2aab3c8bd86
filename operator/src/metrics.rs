//! The operator's Prometheus metrics: reconciles, errors by reason, durations, and every
//! API write (so "steady state makes zero writes" can be checked from outside).

use pixel_common::operator_contract::metrics as names;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    pub verb: &'static str,
}

/// Cheap to clone: every metric is a shared handle.
#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    writes: Family<WriteLabels, Counter>,
    requests: Family<VerbLabels, Counter>,
    leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            writes: Family::default(),
            requests: Family::default(),
            leader: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix(names::PREFIX);
        registry.register(
            names::RECONCILES,
            "Reconciles, by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            names::RECONCILE_ERRORS,
            "Failed reconciles, by reason",
            metrics.errors.clone(),
        );
        registry.register(
            names::RECONCILE_DURATION_SECONDS,
            "Time one reconcile takes",
            metrics.duration.clone(),
        );
        registry.register(
            names::API_WRITES,
            "Mutating requests to the Kubernetes API, by kind and verb",
            metrics.writes.clone(),
        );
        registry.register(
            names::API_REQUESTS,
            "Every request to the Kubernetes API (watches, reads, lease renewals, events, \
             writes), by verb",
            metrics.requests.clone(),
        );
        registry.register(
            names::LEADER,
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        metrics
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn reconciled(&self, seconds: f64, error_reason: Option<&'static str>) {
        self.duration.observe(seconds);
        let result = if error_reason.is_some() {
            "error"
        } else {
            "ok"
        };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(reason) = error_reason {
            self.errors.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

    pub fn wrote(&self, kind: &'static str, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { kind, verb }).inc();
    }

    /// Counts one request the client sends, by its Kubernetes verb.
    pub fn requested<B>(&self, request: &http::Request<B>) {
        let verb = api_verb(request.method(), request.uri().query().unwrap_or_default());
        self.requests.get_or_create(&VerbLabels { verb }).inc();
    }
}

/// The Kubernetes verb of a request, from its method and query (`get` covers `list`: the
/// path alone does not tell them apart without discovery).
fn api_verb(method: &http::Method, query: &str) -> &'static str {
    match *method {
        http::Method::GET if query.split('&').any(|pair| pair == "watch=true") => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_method_and_watch_flag() {
        assert_eq!(
            api_verb(&http::Method::GET, "&watch=true&timeoutSeconds=290"),
            "watch"
        );
        assert_eq!(
            api_verb(&http::Method::GET, "labelSelector=a%3Db&limit=500"),
            "get"
        );
        assert_eq!(api_verb(&http::Method::GET, "watchful=true"), "get");
        assert_eq!(
            api_verb(&http::Method::PATCH, "fieldManager=x&force=true"),
            "patch"
        );
        assert_eq!(api_verb(&http::Method::POST, ""), "create");
        assert_eq!(api_verb(&http::Method::DELETE, ""), "delete");
    }

    #[test]
    fn requests_are_exposed_by_verb() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let request = http::Request::patch("/apis/apps/v1/x?force=true")
            .body(())
            .expect("request");
        metrics.requested(&request);
        metrics.requested(&request);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("pixel_operator_api_requests_total{verb=\"patch\"} 2"),
            "{text}"
        );
    }
}
