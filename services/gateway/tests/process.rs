//! The real binary: serves /healthz and exits cleanly on SIGTERM.

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    pixel_common::testing::assert_serves_health_and_stops_on_sigterm(
        env!("CARGO_BIN_EXE_gateway"),
        &[
            (
                pixel_common::ports::ENV_API_TOKEN,
                pixel_common::testing::API_TOKEN,
            ),
            (
                pixel_common::ports::ENV_IDENTITY_KEY,
                pixel_common::testing::IDENTITY_KEY,
            ),
        ],
    )
    .await;
}

/// The real binary on a real Redis: SIGTERM closes its WebSocket clients with 1001 and it
/// exits 0 within the grace period.
#[tokio::test]
async fn sigterm_closes_clients_with_1001() {
    use futures_util::StreamExt;
    use pixel_common::{
        ports::{ENV_API_TOKEN, ENV_IDENTITY_KEY, ENV_REDIS_URL},
        testing::{API_TOKEN, IDENTITY_KEY, RedisServer, RunningBinary},
    };
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message;

    const HANG: Duration = Duration::from_secs(30);
    let redis = RedisServer::start().await;
    let url = redis.url();
    let running = RunningBinary::start(
        env!("CARGO_BIN_EXE_gateway"),
        &["--shutdown-grace-ms", "5000"],
        &[
            (ENV_REDIS_URL, url.as_str()),
            (ENV_API_TOKEN, API_TOKEN),
            (ENV_IDENTITY_KEY, IDENTITY_KEY),
        ],
    )
    .await;
    let started = tokio::time::Instant::now();
    while running.get("/readyz").await.0 != 200 {
        assert!(started.elapsed() < HANG, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", running.addr))
        .await
        .expect("upgrade");
    let hello = tokio::time::timeout(HANG, client.next())
        .await
        .expect("hello in time");
    assert!(
        matches!(&hello, Some(Ok(Message::Text(text))) if text.contains(r#""type":"hello""#)),
        "{hello:?}"
    );
    let read_close = async {
        loop {
            match tokio::time::timeout(HANG, client.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    let ((code, log), close) = tokio::join!(running.terminate(), read_close);
    assert_eq!(close, Some(1001));
    assert_eq!(code, Some(0), "clean exit; log after the signal: {log:?}");
}
