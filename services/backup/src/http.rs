//! The object store's HTTP client: hyper over rustls with ring and the system's roots, the
//! provider passed explicitly. (reqwest's rustls would need a process-wide provider, and
//! its features, unified across the workspace, would make every other reqwest client in
//! the workspace need one too.)

use std::{sync::Arc, time::Duration};

use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector as TcpConnector},
    rt::TokioExecutor,
};
use object_store::{
    ClientOptions,
    client::{
        HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
        HttpResponse, HttpResponseBody, HttpService,
    },
};

/// How long a TCP connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, its body included (a part is 8 MiB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

type Https = Client<hyper_rustls::HttpsConnector<TcpConnector>, HttpRequestBody>;

/// Makes [`Hyper`] clients for `object_store`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperConnector;

impl HttpConnector for HyperConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|source| object_store::Error::Generic {
                store: "S3",
                source: Box::new(source),
            })?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Ok(HttpClient::new(Hyper(
            Client::builder(TokioExecutor::new()).build(connector),
        )))
    }
}

/// One client, its connections kept alive between requests.
#[derive(Debug, Clone)]
struct Hyper(Https);

#[async_trait::async_trait]
impl HttpService for Hyper {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.0.request(request))
            .await
            .map_err(|elapsed| HttpError::new(HttpErrorKind::Timeout, elapsed))?
            .map_err(|error| {
                let kind = if error.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                HttpError::new(kind, error)
            })?;
        let (parts, body) = response.into_parts();
        let body = body.map_err(|error| HttpError::new(HttpErrorKind::Interrupted, error));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}
