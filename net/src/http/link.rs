//! HTTP/1 over links: the client side ([`LinkHttpClient`]). A server runs
//! hyper on the [`crate::LinkStream`] that [`crate::accept`] gives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use murmur_wire::link::{LinkPublicKey, Purpose};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::handshake::{LinkSettings, connect};

type Conn = Arc<Mutex<Option<SendRequest<Full<Bytes>>>>>;
/// One connection slot per (address, link key) of a server.
type Conns = Arc<std::sync::Mutex<HashMap<(SocketAddr, [u8; 32]), Conn>>>;

/// An HTTP/1 client whose every connection is a link to a server whose
/// link key it knows (from the consensus), as an unidentified client. One
/// connection per server is kept open and reused, one request at a time;
/// a broken connection is replaced at the next request.
#[derive(Clone)]
pub struct LinkHttpClient {
    purpose: Purpose,
    settings: LinkSettings,
    timeout: Duration,
    conns: Conns,
}

impl std::fmt::Debug for LinkHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHttpClient")
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

fn http_error(what: &'static str) -> impl FnOnce(hyper::Error) -> Error {
    move |e| Error::Http {
        what,
        source: Some(Box::new(e)),
    }
}

impl LinkHttpClient {
    /// A client for servers of `purpose` whose requests (connection and
    /// handshake included) time out after `timeout`.
    pub fn new(purpose: Purpose, settings: LinkSettings, timeout: Duration) -> Self {
        Self {
            purpose,
            settings,
            timeout,
            conns: Arc::default(),
        }
    }

    fn slot(&self, addr: SocketAddr, key: &LinkPublicKey) -> Conn {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry((addr, key.dh)).or_default().clone()
    }

    /// `POST {path}` to the server at `addr` holding `key`; returns the
    /// status and at most `limit` bytes of body.
    pub async fn post(
        &self,
        addr: SocketAddr,
        key: &LinkPublicKey,
        path: &str,
        content_type: &str,
        body: Bytes,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), Error> {
        let slot = self.slot(addr, key);
        let exchange = async {
            let mut conn = slot.lock().await;
            if conn.as_ref().is_none_or(|s| s.is_closed()) {
                *conn = None;
                let stream = connect(addr, self.purpose, None, key, &self.settings).await?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_error("HTTP handshake"))?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "link HTTP connection ended");
                    }
                });
                *conn = Some(sender);
            }
            let Some(sender) = conn.as_mut() else {
                return Err(Error::Http {
                    what: "no connection",
                    source: None,
                });
            };
            sender.ready().await.map_err(http_error("connection"))?;
            let req = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(HOST, "murmur")
                .header(CONTENT_TYPE, content_type)
                .body(Full::new(body))
                .map_err(|_| Error::Http {
                    what: "building the request",
                    source: None,
                })?;
            let result = async {
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(http_error("request"))?;
                let status = resp.status();
                let body = Limited::new(resp.into_body(), limit)
                    .collect()
                    .await
                    .map_err(|e| Error::Http {
                        what: "response body over its limit or broken",
                        source: Some(e),
                    })?
                    .to_bytes();
                Ok((status, body))
            }
            .await;
            if result.is_err() {
                // The connection is in an unknown state: start afresh.
                *conn = None;
            }
            result
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // A request cut off mid-way leaves the connection unusable.
                if let Ok(mut conn) = slot.try_lock() {
                    *conn = None;
                }
                Err(Error::Timeout)
            }
        }
    }
}
