//! The real binary, pointed at an API server that is not there: it still starts, is alive,
//! reports itself unready, and exits cleanly on SIGTERM.

use pixel_common::testing::{RunningBinary, assert_serves_health_and_stops_on_sigterm};

const EXE: &str = env!("CARGO_BIN_EXE_pixel-operator");

/// A kubeconfig whose server refuses connections (port 1 on loopback).
fn unreachable_kubeconfig() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n\
         clusters: [{name: nowhere, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]\n\
         users: [{name: nobody, user: {token: x}}]\n",
    )
    .expect("write kubeconfig");
    file
}

#[tokio::test]
async fn serves_health_and_stops_on_sigterm() {
    let kubeconfig = unreachable_kubeconfig();
    let path = kubeconfig.path().to_str().expect("utf-8 path");
    assert_serves_health_and_stops_on_sigterm(EXE, &[("KUBECONFIG", path)]).await;
}

#[tokio::test]
async fn unready_while_the_api_server_is_unreachable() {
    let kubeconfig = unreachable_kubeconfig();
    let path = kubeconfig.path().to_str().expect("utf-8 path");
    let operator = RunningBinary::start(EXE, &[], &[("KUBECONFIG", path)]).await;
    let (status, body) = operator.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "joining the leader election")
    );
    operator.terminate().await;

    // Without an election it leads at once, and waits for its caches.
    let operator =
        RunningBinary::start(EXE, &["--leader-elect=false"], &[("KUBECONFIG", path)]).await;
    let (status, body) = operator.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "waiting for the PixelCanvas cache to sync")
    );
    let (status, metrics) = operator.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pixel_operator_reconcile_duration_seconds"),
        "{metrics}"
    );
    operator.terminate().await;
}

#[tokio::test]
async fn without_any_kubeconfig_it_exits_with_a_clear_error() {
    let output = tokio::process::Command::new(EXE)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("no Kubernetes client configuration"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_unusable_image_default_from_the_environment_is_refused_at_startup() {
    for (name, flag, value) in [
        (
            pixel_common::ports::ENV_IMAGE_REPOSITORY,
            "--image-repository",
            "Not A Repository",
        ),
        (
            pixel_common::ports::ENV_DEFAULT_REDIS_IMAGE,
            "--default-redis-image",
            "",
        ),
    ] {
        let output = tokio::process::Command::new(EXE)
            .env(name, value)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .await
            .expect("run");
        assert_eq!(output.status.code(), Some(2), "{name}={value:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{stderr}");
    }
}
