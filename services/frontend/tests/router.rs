//! The frontend's router, request by request (`oneshot`, no socket): the page, every
//! embedded asset, `/config.json` with its defaults and overrides, headers, probes, 404.

use std::collections::BTreeSet;

use axum::{
    Router,
    body::Body,
    http::{
        HeaderMap, HeaderName, Request, StatusCode,
        header::{
            ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY,
            CONTENT_TYPE, ETAG, IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS,
        },
    },
};
use clap::Parser;
use frontend::{Args, assets::ASSETS};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app_with(flags: &[&str]) -> Router {
    let argv = std::iter::once("frontend").chain(flags.iter().copied());
    frontend::app(&Args::try_parse_from(argv).expect("valid flags"))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: impl axum::http::header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, path: &str) -> Answer {
    send(
        app,
        Request::get(path).body(Body::empty()).expect("request"),
    )
    .await
}

async fn get_with(app: &Router, path: &str, (name, value): (HeaderName, &str)) -> Answer {
    let request = Request::get(path).header(name, value);
    send(app, request.body(Body::empty()).expect("request")).await
}

fn assets_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

#[tokio::test]
async fn serves_the_page_with_security_and_cache_headers() {
    let app = app_with(&[]);
    let page = get(&app, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header(CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(page.header(CACHE_CONTROL), "no-cache");
    assert!(page.header(ETAG).starts_with("W/\""), "{:?}", page.headers);
    assert_eq!(page.header(X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    let csp = page.header(CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self';",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    let html = String::from_utf8(page.body).expect("utf-8");
    assert!(html.contains(r#"<meta name="viewport""#), "{html}");
    assert!(
        html.contains(r#"<script type="module" src="/assets/app.js">"#),
        "{html}"
    );
}

#[tokio::test]
async fn every_asset_is_embedded_byte_for_byte_with_its_content_type() {
    let app = app_with(&[]);
    for asset in ASSETS {
        let answer = get(&app, asset.path).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", asset.path);
        assert_eq!(
            answer.header(CONTENT_TYPE),
            asset.content_type,
            "{}",
            asset.path
        );
        assert_eq!(answer.header(X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(answer.body, asset.body, "{}", asset.path);
    }
    let expected = [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ];
    for (path, content_type) in expected {
        assert_eq!(get(&app, path).await.header(CONTENT_TYPE), content_type);
    }
}

#[tokio::test]
async fn every_file_in_assets_is_served_and_every_import_resolves() {
    let served: BTreeSet<&str> = ASSETS.iter().map(|a| a.path).collect();
    for entry in std::fs::read_dir(assets_dir()).expect("assets dir") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        let path = if name == "index.html" {
            "/".to_owned()
        } else {
            format!("/assets/{name}")
        };
        assert!(served.contains(path.as_str()), "{name} is not served");
    }
    // A module the page imports but the binary does not embed would only fail in a browser.
    for asset in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
        let source = std::str::from_utf8(asset.body).expect("utf-8");
        for line in source.lines().filter(|l| l.starts_with("import ")) {
            let module = line
                .split(['"', '\''])
                .nth(1)
                .and_then(|m| m.strip_prefix("./"))
                .unwrap_or_else(|| panic!("unexpected import in {}: {line}", asset.path));
            let path = format!("/assets/{module}");
            assert!(
                served.contains(path.as_str()),
                "{} imports {path}, which is not served",
                asset.path
            );
        }
    }
}

#[tokio::test]
async fn a_matching_etag_gives_304_and_compression_is_offered() {
    let app = app_with(&[]);
    let first = get(&app, "/assets/app.js").await;
    let etag = first.header(ETAG).to_owned();
    let revalidated = get_with(&app, "/assets/app.js", (IF_NONE_MATCH, &etag)).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.header(ETAG), etag);
    assert!(revalidated.body.is_empty());
    let stale = get_with(
        &app,
        "/assets/app.js",
        (IF_NONE_MATCH, "W/\"0000000000000000\""),
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_ne!(
        get(&app, "/assets/view.js").await.header(ETAG),
        etag,
        "ETags follow content"
    );

    let gzipped = get_with(&app, "/assets/app.js", (ACCEPT_ENCODING, "gzip")).await;
    assert_eq!(gzipped.status, StatusCode::OK);
    assert_eq!(gzipped.header(CONTENT_ENCODING), "gzip");
    assert!(gzipped.body.len() < first.body.len());
}

#[tokio::test]
async fn config_json_defaults_to_paths_on_the_same_origin() {
    let answer = get(&app_with(&[]), "/config.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(CONTENT_TYPE), "application/json");
    assert_eq!(answer.header(CACHE_CONTROL), "no-cache");
    assert_eq!(answer.json(), json!({"apiBase": "/api/v1", "wsUrl": "/ws"}));
}

#[tokio::test]
async fn config_json_and_csp_follow_the_flags() {
    let app = app_with(&[
        "--public-api-url",
        "https://api.example.com/api/v1/",
        "--public-ws-url",
        "wss://live.example.com/ws",
    ]);
    let answer = get(&app, "/config.json").await;
    assert_eq!(
        answer.json(),
        json!({"apiBase": "https://api.example.com/api/v1", "wsUrl": "wss://live.example.com/ws"})
    );
    let csp = answer.header(CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("connect-src 'self' https://api.example.com wss://live.example.com;"),
        "{csp}"
    );
}

#[test]
fn unusable_locations_are_refused_at_startup() {
    for flags in [
        ["--public-api-url", "ftp://x/api"],
        ["--public-api-url", "//x/api"],
        ["--public-ws-url", "http://x/ws"],
        ["--public-ws-url", "/ws; script-src *"],
    ] {
        let argv = std::iter::once("frontend").chain(flags);
        let error = Args::try_parse_from(argv).expect_err("refused");
        assert!(error.to_string().contains("invalid value"), "{error}");
    }
}

#[tokio::test]
async fn probes_and_metrics() {
    let app = app_with(&[]);
    let health = get(&app, "/healthz").await;
    assert_eq!(
        (health.status, health.body.as_slice()),
        (StatusCode::OK, &b"ok"[..])
    );
    let ready = get(&app, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_slice()),
        (StatusCode::OK, &b"ready"[..])
    );
    get(&app, "/").await;
    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body).expect("utf-8");
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/",status="200"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_with_the_same_headers() {
    let app = app_with(&[]);
    for path in ["/nope", "/assets/nope.js", "/assets/", "/index.html"] {
        let answer = get(&app, path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.header(X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(answer.body, b"not found");
    }
    let post = send(
        &app,
        Request::post("/").body(Body::empty()).expect("request"),
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}
