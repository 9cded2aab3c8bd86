//! The real binary: serves /healthz and exits cleanly on SIGTERM.

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    pixel_common::testing::assert_serves_health_and_stops_on_sigterm(
        env!("CARGO_BIN_EXE_gateway"),
        &[],
    )
    .await;
}
