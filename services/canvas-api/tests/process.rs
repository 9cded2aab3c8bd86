//! The real binary: serves /healthz and exits cleanly on SIGTERM.

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    pixel_common::testing::assert_serves_health_and_stops_on_sigterm(
        env!("CARGO_BIN_EXE_canvas-api"),
        &[(
            pixel_common::ports::ENV_API_TOKEN,
            pixel_common::testing::API_TOKEN,
        )],
    )
    .await;
}

/// Two real canvas-api processes on one Redis: one client id racing both inside its
/// cooldown is admitted exactly once per round.
#[tokio::test]
async fn two_api_processes_admit_a_racing_client_once() {
    use pixel_common::{
        ports::{CLIENT_ID_HEADER, ENV_API_TOKEN, ENV_CANVAS_COOLDOWN_SECONDS, ENV_REDIS_URL},
        testing::{API_TOKEN, RedisServer, RunningBinary},
    };
    let redis = RedisServer::start().await;
    let url = redis.url();
    let env = [
        (ENV_REDIS_URL, url.as_str()),
        (ENV_CANVAS_COOLDOWN_SECONDS, "60"),
        (ENV_API_TOKEN, API_TOKEN),
    ];
    let exe = env!("CARGO_BIN_EXE_canvas-api");
    let (one, two) = (
        RunningBinary::start(exe, &[], &env).await,
        RunningBinary::start(exe, &[], &env).await,
    );
    let http = reqwest::Client::new();
    let place = |api: &RunningBinary, client: String| {
        http.post(format!("http://{}/api/v1/pixels", api.addr))
            .header(CLIENT_ID_HEADER, client)
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({"x": 1, "y": 2, "color": 3}))
            .send()
    };
    for round in 0..20 {
        let client = format!("racer-{round}");
        let (a, b) = tokio::join!(place(&one, client.clone()), place(&two, client));
        let mut statuses = [
            a.expect("first answers").status().as_u16(),
            b.expect("second answers").status().as_u16(),
        ];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 429], "round {round}");
    }
    let (status, info) = one.get("/api/v1/info").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
    assert_eq!(info["version"], 20);
    for api in [one, two] {
        let (code, _) = api.terminate().await;
        assert_eq!(code, Some(0));
    }
}
