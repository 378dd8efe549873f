//! The HTTP plumbing every Murmur daemon shares: a bounded hyper server with
//! graceful shutdown, bounded body reading, a small HTTP/1 client with
//! timeouts and response limits, and Prometheus text rendering.
//!
//! The directory authority, the mix node's `/metrics`, the mailbox fetch API
//! and the client all go through here, so limits and timeouts are set once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A response with a fully buffered body.
pub type HttpResponse = Response<Full<Bytes>>;

/// Content type of postcard-encoded bodies.
pub const POSTCARD: &str = "application/x-postcard";

/// Builds a response with a body.
pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

/// A plain-text response (errors, health checks).
pub fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    response(status, "text/plain; charset=utf-8", body)
}

/// Renders a Prometheus registry in the text exposition format.
pub fn metrics(registry: &Registry) -> HttpResponse {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        ),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode metrics",
        ),
    }
}

/// Reads a request body of at most `limit` bytes. A body over the limit
/// (announced or actual) is refused with 413, a broken one with 400.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(http::request::Parts, Bytes), HttpResponse> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {len} bytes exceeds the limit of {limit}"),
        ));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds the limit of {limit} bytes"),
        )),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
    }
}

/// Limits for [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a whole connection may live.
    pub connection_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves HTTP/1 on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish. `handler` is called once per request.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    serve_with(
        listener,
        |stream: TcpStream| async move { Some(stream) },
        handler,
        limits,
        shutdown,
    )
    .await;
}

/// [`serve`] on connections that `accept` turns into streams first (the
/// link handshake of an encrypted listener); a connection for which it
/// gives `None` is closed. `accept` runs in the connection's own task,
/// under the connection cap and within the connection's lifetime.
pub async fn serve_with<A, AF, IO, H, F>(
    listener: TcpListener,
    accept: A,
    handler: H,
    limits: ServerLimits,
    shutdown: CancellationToken,
) where
    A: Fn(TcpStream) -> AF + Clone + Send + Sync + 'static,
    AF: Future<Output = Option<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let accept = accept.clone();
        let watcher = graceful.watcher();
        let lifetime = limits.connection_timeout;
        let header_timeout = limits.header_timeout;
        let conn_shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let serve_one = async move {
                let io = tokio::select! {
                    _ = conn_shutdown.cancelled() => return,
                    io = accept(stream) => match io {
                        Some(io) => io,
                        None => return,
                    },
                };
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(io), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            };
            if tokio::time::timeout(lifetime, serve_one).await.is_err() {
                tracing::debug!("HTTP connection closed after its lifetime");
            }
        });
    }
    tracker.close();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::debug!("HTTP connections still open after 5 s; closing");
        }
    }
}

/// Binds `addr` and serves on it in a background task; returns the bound
/// address (useful with port 0).
pub async fn spawn_server<H, F>(
    addr: SocketAddr,
    handler: H,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, handler, limits, shutdown));
    Ok((local, task))
}

/// What went wrong with an HTTP request made by [`HttpClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL could not be built.
    #[error("invalid URL {url}")]
    InvalidUrl {
        /// The URL.
        url: String,
    },
    /// The server could not be reached or the exchange failed.
    #[error("request to {url} failed")]
    Request {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The server did not answer in time.
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The response body was larger than allowed or broken.
    #[error("response from {url} was over {limit} bytes or unreadable")]
    Body {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
}

/// A small HTTP/1 client with a timeout per request and a limit on the
/// response body. Cheap to clone (connections are pooled).
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self { inner, timeout }
    }

    /// `GET http://{addr}{path}`; returns the status and at most `limit` body bytes.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        self.send(Method::GET, addr, path, &[], Bytes::new(), limit)
            .await
    }

    /// `POST http://{addr}{path}` with a body.
    pub async fn post(
        &self,
        addr: SocketAddr,
        path: &str,
        content_type: &str,
        body: Bytes,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        self.send(
            Method::POST,
            addr,
            path,
            &[(CONTENT_TYPE.as_str(), content_type)],
            body,
            limit,
        )
        .await
    }

    /// Any request, with extra headers.
    pub async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let url = format!("http://{addr}{path}");
        let uri: Uri = url
            .parse()
            .map_err(|_| HttpError::InvalidUrl { url: url.clone() })?;
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|_| HttpError::InvalidUrl { url: url.clone() })?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| HttpError::Request {
                    url: url.clone(),
                    source,
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|_| HttpError::Body {
                    url: url.clone(),
                    limit,
                })?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                url,
                timeout: self.timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_bounded_both_ways() {
        let shutdown = CancellationToken::new();
        let handler = |req: Request<Incoming>| async move {
            match read_body(req, 16).await {
                Ok((_, body)) => response(StatusCode::OK, "application/octet-stream", body),
                Err(resp) => resp,
            }
        };
        let (addr, task) = spawn_server(
            "127.0.0.1:0".parse().unwrap(),
            handler,
            ServerLimits::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let client = HttpClient::new(Duration::from_secs(5));
        let (status, body) = client
            .post(
                addr,
                "/",
                "application/octet-stream",
                Bytes::from_static(b"hello"),
                1024,
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"hello");
        let (status, _) = client
            .post(
                addr,
                "/",
                "application/octet-stream",
                Bytes::from(vec![0u8; 17]),
                1024,
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // The response limit holds on the client side too.
        let err = client
            .post(
                addr,
                "/",
                "application/octet-stream",
                Bytes::from(vec![1u8; 16]),
                4,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Body { .. }), "{err}");
        shutdown.cancel();
        task.await.unwrap();
    }
}
