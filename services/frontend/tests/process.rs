//! The real binary: serves /healthz, takes its public locations from the environment the
//! operator sets, and exits cleanly on SIGTERM.

use pixel_common::{ports, testing::RunningBinary};

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    pixel_common::testing::assert_serves_health_and_stops_on_sigterm(
        env!("CARGO_BIN_EXE_frontend"),
        &[],
    )
    .await;
}

#[tokio::test]
async fn public_locations_come_from_the_environment() {
    let api_base = format!("http://127.0.0.1:{}/api/v1", ports::CANVAS_API);
    let ws_url = format!("ws://127.0.0.1:{}/ws", ports::GATEWAY);
    let running = RunningBinary::start(
        env!("CARGO_BIN_EXE_frontend"),
        &[],
        &[
            (ports::ENV_PUBLIC_API_URL, api_base.as_str()),
            (ports::ENV_PUBLIC_WS_URL, ws_url.as_str()),
        ],
    )
    .await;
    let (status, body) = running.get("/config.json").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        config,
        serde_json::json!({"apiBase": api_base, "wsUrl": ws_url})
    );
    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0), "{log:?}");
}
