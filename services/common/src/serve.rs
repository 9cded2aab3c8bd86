//! Serving a router until shutdown, the same way in every binary.

use std::{future::Future, io, net::SocketAddr};

use axum::Router;
use tokio::net::TcpListener;

/// Errors that stop a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the server failed")]
    Serve(#[source] io::Error),
}

/// Binds `addr`, logs the bound address (tests bind port 0 and read it from the log), and
/// serves `router` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_listener(listener, router, shutdown).await
}

/// Serves on an already bound listener. Handlers may extract the peer's address
/// (`ConnectInfo<SocketAddr>`), as the gateway's per-address limit does.
pub async fn serve_listener(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(addr = %local, "listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(ServeError::Serve)?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_until_shutdown_then_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, crate::health::router(), async {
            let _ = stopped.await;
        }));

        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        stop.send(()).expect("server alive");
        server.await.expect("join").expect("clean stop");
    }

    #[tokio::test]
    async fn taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = serve(addr, Router::new(), async {})
            .await
            .expect_err("port is taken");
        assert!(matches!(error, ServeError::Bind { .. }));
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
        assert!(
            std::error::Error::source(&error).is_some(),
            "the cause is kept in source(): {error}"
        );
    }
}
