//! Serving a router until shutdown, the same way in every binary.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

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
    serve_listener(bind(addr)?, router, shutdown).await
}

/// A listener on `addr`. The IPv6 wildcard `[::]` (every binary's default) listens on IPv6
/// and IPv4 alike, whatever the host's `bindv6only`, and falls back to `0.0.0.0` on a host
/// without IPv6. Peers reached over IPv4 then show as IPv4-mapped addresses
/// (`::ffff:a.b.c.d`): compare them with [`std::net::IpAddr::to_canonical`].
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let bound = if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        match bind_socket(addr, false) {
            Err(error) if ipv6_unavailable(&error) => {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
                tracing::info!(%addr, fallback = %v4, "no IPv6 on this host");
                bind_socket(v4, true)
            }
            other => other,
        }
    } else {
        bind_socket(addr, addr.is_ipv6())
    };
    bound.map_err(|source| ServeError::Bind { addr, source })
}

fn bind_socket(addr: SocketAddr, only_v6: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(only_v6)?;
    }
    // As std and tokio do: a restarted server rebinds while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Whether binding the IPv6 wildcard failed for want of IPv6 (no address family, no
/// address) rather than for a reason IPv4 would share (the port in use, no permission).
fn ipv6_unavailable(error: &io::Error) -> bool {
    !matches!(
        error.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
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
    async fn the_wildcard_listens_on_ipv4_and_ipv6() {
        let listener = bind("[::]:0".parse().expect("addr")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(serve_listener(
            listener,
            crate::health::router(),
            std::future::pending(),
        ));
        let hosts: &[&str] = if std::net::TcpListener::bind("[::1]:0").is_ok() {
            &["127.0.0.1", "[::1]"]
        } else {
            // A host without IPv6: the fallback still serves IPv4.
            &["127.0.0.1"]
        };
        for host in hosts {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(format!("{host}:{port}"))
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            assert!(response.starts_with("HTTP/1.1 200"), "{host}: {response}");
        }
        server.abort();
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
