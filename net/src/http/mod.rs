//! The HTTP plumbing every Murmur daemon shares: a bounded hyper server with
//! graceful shutdown, bounded body reading, a small HTTP/1 client with
//! timeouts and response limits, and Prometheus text rendering.
//!
//! The directory authority, the mix node's `/metrics`, the mailbox fetch API
//! and the client all go through here, so limits and timeouts are set once.
//! HTTP over links (the mailbox fetch API's client) is [`LinkHttpClient`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
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
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod link;

pub use link::LinkHttpClient;

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
/// (announced or actual) is refused with 413, a broken one with 400, and one
/// that does not arrive within the server's body timeout
/// ([`ServerLimits::body_timeout`]) with 408 (counted in
/// `http_timeouts_total{phase="body"}`).
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
    // Requests served by `serve` carry their connection's body deadline;
    // others (tests driving a handler directly) get the default.
    let (timeout, metrics) = match parts.extensions.get::<BodyDeadline>() {
        Some(d) => (d.timeout, Some(d.metrics.clone())),
        None => (ServerLimits::default().body_timeout, None),
    };
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok((parts, collected.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds the limit of {limit} bytes"),
        )),
        Ok(Err(_)) => Err(text(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
        Err(_) => {
            if let Some(m) = metrics {
                m.timeout(Phase::Body);
            }
            Err(text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {timeout:?}"),
            ))
        }
    }
}

/// The peer address of the connection a request came on; `serve` puts it
/// into every request's extensions (read it with [`remote_addr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// The peer address of the connection `req` came on, if it was served by
/// [`serve`].
pub fn remote_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions().get::<RemoteAddr>().map(|r| r.0)
}

/// What a connection's requests carry so that [`read_body`] can bound the
/// time a body takes.
#[derive(Clone, Debug)]
struct BodyDeadline {
    timeout: Duration,
    metrics: HttpServerMetrics,
}

/// Limits for [`serve`].
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Connections served at once from one address (an IPv4 address, or
    /// the /64 of an IPv6 address); more are closed as soon as they are
    /// accepted, so that one host cannot take every slot.
    pub max_connections_per_address: usize,
    /// Time a client has to send the headers of each request (from the
    /// first byte, or from the end of the previous response on a kept-alive
    /// connection): a client that trickles its headers is closed then.
    pub header_timeout: Duration,
    /// Time a client has to send a request body, once its headers are in
    /// ([`read_body`]; 408 after it).
    pub body_timeout: Duration,
    /// Time a whole connection may live.
    pub connection_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_address: 16,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(60),
        }
    }
}

impl ServerLimits {
    /// Checks that every limit is usable; names the offending one.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return Err("connection limits must be at least 1".into());
        }
        for (name, d) in [
            ("header timeout", self.header_timeout),
            ("body timeout", self.body_timeout),
            ("connection timeout", self.connection_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return Err(format!("the {name} must be between 1 s and a day"));
            }
        }
        Ok(())
    }
}

/// Which phase of a request timed out (label of `http_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Headers,
    Body,
    Connection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    reason: &'static str,
}

/// The counters of one HTTP listener: connections open, connections closed
/// at once because their address had too many, and timeouts by phase.
/// Cheap to clone (shared handles); register them in the daemon's registry
/// with [`HttpServerMetrics::register`].
#[derive(Clone, Debug, Default)]
pub struct HttpServerMetrics {
    open: Gauge,
    refused: Family<RefusalLabel, Counter>,
    timeouts: Family<PhaseLabel, Counter>,
}

impl HttpServerMetrics {
    /// Registers the metrics as `http_connections`,
    /// `http_connections_refused_total{reason}` and
    /// `http_timeouts_total{phase}` (under the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_connections",
            "HTTP connections open",
            self.open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections closed as soon as accepted (per_address: the address had max_connections_per_address open)",
            self.refused.clone(),
        );
        registry.register(
            "http_timeouts",
            "HTTP requests and connections ended by a timeout (headers, body, connection lifetime)",
            self.timeouts.clone(),
        );
        // Every label present from the start, so that a scrape shows zeros.
        let _ = self.refused_per_address();
        let _ = self.timeouts();
    }

    fn timeout(&self, phase: Phase) {
        self.timeouts
            .get_or_create(&PhaseLabel {
                phase: phase.as_str(),
            })
            .inc();
    }

    /// Connections refused because their address had too many open.
    pub fn refused_per_address(&self) -> u64 {
        self.refused
            .get_or_create(&RefusalLabel {
                reason: "per_address",
            })
            .get()
    }

    /// Header, body and connection-lifetime timeouts, in that order.
    pub fn timeouts(&self) -> [u64; 3] {
        [Phase::Headers, Phase::Body, Phase::Connection].map(|p| {
            self.timeouts
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .get()
        })
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Headers => "headers",
            Phase::Body => "body",
            Phase::Connection => "connection",
        }
    }
}

/// What the per-address cap counts by: an IPv4 address, or the /64 prefix
/// of an IPv6 address (one host usually has a whole /64). IPv4-mapped IPv6
/// addresses count as their IPv4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                for s in &mut seg[4..] {
                    *s = 0;
                }
                IpAddr::V6(Ipv6Addr::from(seg))
            }
        },
    }
}

/// Connections open per address; an entry exists only while its address
/// has one open, so the map is bounded by the connection cap.
#[derive(Debug, Default)]
struct PerAddress(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerAddress`], given back on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Every mutation is one insert or remove: a poisoned map is consistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut map = self.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.table.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Serves HTTP/1 on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish. `handler` is called once per request. The
/// listener's counters are not exported; see [`serve_with_metrics`].
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    serve_with_metrics(
        listener,
        handler,
        limits,
        HttpServerMetrics::default(),
        shutdown,
    )
    .await;
}

/// [`serve`], counting in `metrics`.
///
/// At most `limits.max_connections` connections are served at once (more
/// wait in the kernel's accept queue), at most
/// `limits.max_connections_per_address` from one address (more are closed
/// at once and counted). Each request's headers must arrive within
/// `header_timeout`, its body within `body_timeout` (when the handler reads
/// it with [`read_body`]), and a connection lives at most
/// `connection_timeout`: a client that trickles bytes (slowloris) holds a
/// slot no longer than that.
pub async fn serve_with_metrics<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    metrics: HttpServerMetrics,
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
        metrics,
        shutdown,
    )
    .await;
}

/// [`serve_with_metrics`] on connections that `accept` turns into streams
/// first (the link handshake of an encrypted listener); a connection for
/// which it gives `None` is closed. `accept` runs in the connection's own
/// task, under the connection and per-address caps, and must finish within
/// the header timeout (a peer that trickles its handshake holds a slot no
/// longer than a slow request's headers would).
pub async fn serve_with<A, AF, IO, H, F>(
    listener: TcpListener,
    accept: A,
    handler: H,
    limits: ServerLimits,
    metrics: HttpServerMetrics,
    shutdown: CancellationToken,
) where
    A: Fn(TcpStream) -> AF + Clone + Send + Sync + 'static,
    AF: Future<Output = Option<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = Arc::new(PerAddress::default());
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
        let (stream, peer) = tokio::select! {
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
        let Some(slot) = per_address.take(peer.ip(), limits.max_connections_per_address) else {
            // Closed at once: the permit goes back with `permit`.
            metrics
                .refused
                .get_or_create(&RefusalLabel {
                    reason: "per_address",
                })
                .inc();
            tracing::debug!("HTTP connection refused: too many from its address");
            drop(stream);
            continue;
        };
        let deadline = BodyDeadline {
            timeout: limits.body_timeout,
            metrics: metrics.clone(),
        };
        let handler = handler.clone();
        let accept = accept.clone();
        let watcher = graceful.watcher();
        let conn_shutdown = shutdown.clone();
        let m = metrics.clone();
        m.open.inc();
        tracker.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let serve_one = async {
                let io = tokio::select! {
                    _ = conn_shutdown.cancelled() => return Ok(()),
                    io = tokio::time::timeout(limits.header_timeout, accept(stream)) => match io {
                        Ok(Some(io)) => io,
                        Ok(None) => return Ok(()),
                        Err(_) => {
                            m.timeout(Phase::Headers);
                            return Ok(());
                        }
                    },
                };
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let handler = handler.clone();
                    req.extensions_mut().insert(RemoteAddr(peer));
                    req.extensions_mut().insert(deadline.clone());
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(io), service);
                watcher.watch(conn).await
            };
            match tokio::time::timeout(limits.connection_timeout, serve_one).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_timeout() => {
                    m.timeout(Phase::Headers);
                    tracing::debug!("HTTP connection closed: headers not sent in time");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
                Err(_) => {
                    m.timeout(Phase::Connection);
                    tracing::debug!("HTTP connection closed after its lifetime");
                }
            }
            m.open.dec();
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
    spawn_server_with_metrics(
        addr,
        handler,
        limits,
        HttpServerMetrics::default(),
        shutdown,
    )
    .await
}

/// [`spawn_server`], counting in `metrics`.
pub async fn spawn_server_with_metrics<H, F>(
    addr: SocketAddr,
    handler: H,
    limits: ServerLimits,
    metrics: HttpServerMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(serve_with_metrics(
        listener, handler, limits, metrics, shutdown,
    ));
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

    #[test]
    fn connections_count_per_ipv4_address_and_per_ipv6_64() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));

        let table = Arc::new(PerAddress::default());
        let slots: Vec<_> = (0..3).map(|_| table.take(a, 3).unwrap()).collect();
        assert!(table.take(b, 3).is_none(), "same /64");
        let other = table.take(c, 3).unwrap();
        drop(slots);
        assert_eq!(table.lock().len(), 1, "freed addresses leave the table");
        drop(other);
        assert!(table.lock().is_empty());
        assert!(table.take(a, 3).is_some());
    }

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
