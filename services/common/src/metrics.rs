//! Prometheus metrics: HTTP request counts and latencies per route, and the `/metrics`
//! endpoint in the OpenMetrics text format. Services register their own metrics (placements,
//! connections) in the same registry.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, header::CONTENT_TYPE},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::ports::METRICS_PATH;

/// The media type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Request counters and latency histograms, labelled by method and route template.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl HttpMetrics {
    /// Registers `http_requests_total` and `http_request_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: LatencyFamily::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route",
            metrics.latency.clone(),
        );
        metrics
    }

    /// Counts and times every request `router` routes (unmatched paths are not counted, so
    /// scanners cannot grow the label set).
    pub fn instrument(&self, router: Router) -> Router {
        router.route_layer(middleware::from_fn_with_state(self.clone(), track))
    }
}

async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let labels = RouteLabels { method, route };
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: labels.method,
            route: labels.route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The method as a label: one of the standard methods, else `other`. Clients choose the
/// method freely, and every distinct label value would be a new series kept forever.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A router serving `GET /metrics` from `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        METRICS_PATH,
        get(move || async move {
            let mut body = String::new();
            match encode(&mut body, &registry) {
                Ok(()) => (
                    [(
                        CONTENT_TYPE,
                        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                    )],
                    body,
                )
                    .into_response(),
                Err(error) => {
                    tracing::warn!(error = %crate::error::ErrorChain(&error), "cannot encode metrics");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn counts_and_times_routed_requests() {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let app = http
            .instrument(Router::new().route("/items/{id}", get(|| async { "item" })))
            .merge(router(Arc::new(registry)));
        for path in ["/items/1", "/items/2", "/nope"] {
            let request = Request::get(path).body(Body::empty()).expect("request");
            app.clone().oneshot(request).await.expect("infallible");
        }
        let response = app
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"http_request_duration_seconds_count{method="GET",route="/items/{id}"} 2"#
            ),
            "{text}"
        );
        assert!(!text.contains("/nope"), "{text}");
    }

    #[tokio::test]
    async fn made_up_methods_share_one_label_so_metrics_stay_bounded() {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let registry = Arc::new(registry);
        let app = http.instrument(Router::new().route("/items", get(|| async { "items" })));
        let metrics = router(registry);
        let size = |metrics: Router| async move {
            let request = Request::get("/metrics")
                .body(Body::empty())
                .expect("request");
            let response = metrics.oneshot(request).await.expect("infallible");
            let body = axum::body::to_bytes(response.into_body(), 1 << 22)
                .await
                .expect("body");
            String::from_utf8_lossy(&body).into_owned()
        };
        let send = |method: &str| {
            Request::builder()
                .method(method)
                .uri("/items")
                .body(Body::empty())
                .expect("request")
        };
        app.clone()
            .oneshot(send("BREW0"))
            .await
            .expect("infallible");
        let after_one = size(metrics.clone()).await.lines().count();
        for n in 1..100 {
            let answer = app
                .clone()
                .oneshot(send(&format!("BREW{n}")))
                .await
                .expect("infallible");
            assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        }
        let text = size(metrics).await;
        assert_eq!(text.lines().count(), after_one, "no new series: {text}");
        assert!(
            text.contains(r#"http_requests_total{method="other",route="/items",status="405"} 100"#),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }
}
