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
    let running = RunningBinary::start(
        env!("CARGO_BIN_EXE_frontend"),
        &[],
        &[
            (ports::ENV_PUBLIC_API_URL, "http://127.0.0.1:3001/api/v1"),
            (ports::ENV_PUBLIC_WS_URL, "ws://127.0.0.1:3002/ws"),
        ],
    )
    .await;
    let (status, body) = running.get("/config.json").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        config,
        serde_json::json!({"apiBase": "http://127.0.0.1:3001/api/v1", "wsUrl": "ws://127.0.0.1:3002/ws"})
    );
    let (code, log) = running.terminate().await;
    assert_eq!(code, Some(0), "{log:?}");
}
