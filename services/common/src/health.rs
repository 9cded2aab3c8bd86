//! Liveness: the process is up and its runtime answers.

use axum::{Router, routing::get};

use crate::ports::HEALTHZ_PATH;

/// A router serving the liveness probe. Liveness never looks at dependencies: a failing
/// dependency must make a pod unready, not restart it.
pub fn router() -> Router {
    Router::new().route(HEALTHZ_PATH, get(|| async { "ok" }))
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, http::StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn healthz_answers_ok() {
        let response = super::router()
            .oneshot(
                Request::get("/healthz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 64)
            .await
            .expect("body");
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn unknown_path_is_not_found() {
        let response = super::router()
            .oneshot(Request::get("/nope").body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
