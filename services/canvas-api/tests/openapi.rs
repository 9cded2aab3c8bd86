//! The OpenAPI document is true to the router, and docs/protocol.md names every route.

use axum::{
    body::Body,
    http::{Method, Request, StatusCode},
};
use canvas_api::{AppState, Args, api_router, app, openapi_document};
use clap::Parser;
use pixel_common::{
    ports,
    testing::{API_TOKEN, RedisServer},
};
use tower::ServiceExt;

const MODERATOR_TOKEN: &str = "openapi-test-moderator-token";

/// Every (method, path) the document lists.
fn documented() -> Vec<(Method, String)> {
    let (_, doc) = api_router();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let operations = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
        ];
        for (method, operation) in operations {
            if operation.is_some() {
                routes.push((method, path.clone()));
            }
        }
    }
    routes
}

#[test]
fn the_issue_s_endpoints_and_the_shared_paths_are_documented() {
    let routes = documented();
    for (method, path) in [
        (Method::GET, ports::API_INFO_PATH),
        (Method::GET, ports::API_CANVAS_PATH),
        (Method::GET, "/api/v1/canvas.png"),
        (Method::POST, ports::API_PIXELS_PATH),
        (Method::GET, "/api/v1/pixels/{x}/{y}"),
        (Method::GET, ports::API_HISTORY_PATH),
        (Method::POST, ports::API_UNDO_PATH),
        (Method::GET, "/api/v1/moderation/bans"),
        (Method::PUT, "/api/v1/moderation/bans/{player}"),
        (Method::DELETE, "/api/v1/moderation/bans/{player}"),
        (Method::POST, "/api/v1/moderation/rollbacks"),
        (Method::GET, "/api/v1/moderation/audit"),
        (Method::GET, "/api/v1/openapi.json"),
        (Method::GET, ports::READYZ_PATH),
    ] {
        assert!(
            routes.iter().any(|(m, p)| *m == method && p == path),
            "{method} {path} is not in the OpenAPI document: {routes:?}"
        );
    }
}

#[tokio::test]
async fn every_documented_route_is_served_and_the_served_document_is_this_one() {
    let redis = RedisServer::start().await;
    let args = Args::try_parse_from([
        "canvas-api",
        "--redis-url",
        &redis.url(),
        "--api-token",
        API_TOKEN,
        "--moderator-token",
        MODERATOR_TOKEN,
    ])
    .expect("flags");
    let state = AppState::new(&args).expect("state");
    let expected = openapi_document(&state.settings);
    let router = app(state, args.max_body_bytes);
    // In document order, which bans before it unbans and places before it undoes.
    for (method, path) in documented() {
        let uri = path
            .replace("{x}", "0")
            .replace("{y}", "0")
            .replace("{player}", "anon-0a1b2c3d")
            + "?since=0";
        let (token, body) = if path.starts_with("/api/v1/moderation") {
            let body = if path.ends_with("rollbacks") {
                r#"{"area":{"x":0,"y":0,"width":2,"height":2},"toVersion":0}"#
            } else {
                "{}"
            };
            (MODERATOR_TOKEN, body)
        } else if path == ports::API_PIXELS_BATCH_PATH {
            (
                API_TOKEN,
                r#"{"placements":[{"clientId":"openapi-test","x":0,"y":0,"color":0}]}"#,
            )
        } else {
            (API_TOKEN, r#"{"x":0,"y":0,"color":0}"#)
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("content-type", "application/json")
            .header(ports::CLIENT_ID_HEADER, "openapi-test")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body))
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        assert!(
            response.status().is_success(),
            "{method} {uri} is documented but answered {}",
            response.status()
        );
    }

    let response = router
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let served: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(served, expected);
    assert_eq!(
        served["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
}

#[test]
fn the_protocol_doc_names_every_documented_route() {
    let protocol = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .expect("docs/protocol.md");
    for (method, path) in documented() {
        let line = format!("`{method} {path}");
        assert!(
            protocol.contains(&line),
            "docs/protocol.md does not describe {line}`"
        );
    }
}

/// Regression (schemathesis): the document allowed coordinates and colours the canvas
/// refuses, and client ids the API refuses; a request the document allows must be accepted.
#[tokio::test]
async fn the_served_document_carries_this_canvas_s_bounds() {
    let redis = RedisServer::start().await;
    let args = Args::try_parse_from([
        "canvas-api",
        "--redis-url",
        &redis.url(),
        "--canvas-width",
        "64",
        "--canvas-height",
        "32",
        "--canvas-palette",
        "#000000,#FFFFFF,#FF0000",
        "--api-token",
        API_TOKEN,
    ])
    .expect("flags");
    let state = AppState::new(&args).expect("state");
    let doc = openapi_document(&state.settings);
    let body = &doc["components"]["schemas"]["PlaceRequest"];
    assert_eq!(body["additionalProperties"], false);
    for (name, max) in [("x", 63), ("y", 31), ("color", 2)] {
        assert_eq!(body["properties"][name]["minimum"], 0, "{name}");
        assert_eq!(body["properties"][name]["maximum"], max, "{name}");
    }
    let path = &doc["paths"]["/api/v1/pixels/{x}/{y}"]["get"]["parameters"];
    assert_eq!(path[0]["schema"]["maximum"], 63);
    assert_eq!(path[1]["schema"]["maximum"], 31);
    let client_id = &doc["paths"]["/api/v1/pixels"]["post"]["parameters"][0];
    assert_eq!(client_id["name"], "X-Client-Id");
    assert_eq!(client_id["schema"]["pattern"], "^[A-Za-z0-9._-]{1,64}$");
    let since = &doc["paths"]["/api/v1/history"]["get"]["parameters"][0];
    assert_eq!(since["schema"]["maximum"], i64::MAX);
    // The generic document has no canvas, so no bounds.
    let (_, generic) = api_router();
    let generic = serde_json::to_value(&generic).expect("serializes");
    assert!(
        generic["components"]["schemas"]["PlaceRequest"]["properties"]["x"]
            .get("maximum")
            .is_none()
    );
}

/// What a history entry keeps for rollbacks (the colour it replaced) is not served.
#[test]
fn internal_fields_stay_out_of_the_document() {
    let (_, doc) = api_router();
    let doc = serde_json::to_value(&doc).expect("JSON");
    let entry = &doc["components"]["schemas"]["HistoryEntry"]["properties"];
    assert!(entry.get("placedBy").is_some(), "{entry}");
    assert!(entry.get("kind").is_some(), "{entry}");
    assert!(entry.get("previous").is_none(), "{entry}");
}
