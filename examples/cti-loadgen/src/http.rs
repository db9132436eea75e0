//! A lean HTTP/1.1 client over hyper's connection API: one keep-alive TCP connection per
//! [`Conn`], `TCP_NODELAY`, no URL parsing or header maps built per request beyond what the
//! request itself carries. [`Pool`] hands idle connections to the open-loop scheduler.

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Error, Result};

/// The request type of the load path.
pub type Req = Request<Full<Bytes>>;

/// A server address parsed from a base URL (`http://host:port[/prefix]`, plain HTTP only).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: HeaderValue,
    /// Path prefix (no trailing slash; empty for the root).
    pub prefix: String,
    /// The base URL as given (trailing slash removed).
    pub base_url: String,
}

impl Endpoint {
    /// Parses and resolves `base_url`.
    pub async fn parse(base_url: &str) -> Result<Self> {
        let base = base_url.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| Error::new(format!("{base_url}: only http:// URLs are supported")))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| Error::new(format!("{authority}: {e}")))?
            .next()
            .ok_or_else(|| Error::new(format!("{authority}: no address")))?;
        let host = HeaderValue::from_str(authority)
            .map_err(|e| Error::new(format!("{authority}: {e}")))?;
        Ok(Self {
            addr,
            host,
            prefix: prefix.to_string(),
            base_url: base.to_string(),
        })
    }

    /// A request to `path` (prefixed) with the `Host` header set.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.prefix, path))
            .header(HOST, self.host.clone())
    }

    /// A POST with a body and content type.
    pub fn post(&self, path: &str, content_type: &'static str, body: Bytes) -> Result<Req> {
        self.request(Method::POST, path)
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
            .body(Full::new(body))
            .map_err(|e| Error::new(e.to_string()))
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
}

/// A response: status and the whole body.
#[derive(Clone, Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Conn {
    /// Opens a connection to `ep`.
    pub async fn connect(ep: &Endpoint) -> Result<Self> {
        let stream = TcpStream::connect(ep.addr)
            .await
            .map_err(|e| Error::new(format!("connect {}: {e}", ep.addr)))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::new(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    /// Whether the connection can no longer be used.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole response.
    pub async fn send(&mut self, req: Req) -> Result<Resp> {
        self.sender
            .ready()
            .await
            .map_err(|e| Error::new(format!("connection: {e}")))?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| Error::new(format!("request: {e}")))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::new(format!("body: {e}")))?
            .to_bytes();
        Ok(Resp { status, body })
    }
}

/// Idle connections to one endpoint, for the open-loop scheduler (a request takes one, or
/// opens a new one when none is idle, and gives it back after the response).
pub struct Pool {
    endpoint: Endpoint,
    idle: Mutex<Vec<Conn>>,
    opened: std::sync::atomic::AtomicU64,
}

impl Pool {
    /// An empty pool.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            idle: Mutex::new(Vec::new()),
            opened: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An idle connection, or a new one.
    pub async fn get(&self) -> Result<Conn> {
        loop {
            let c = self.idle.lock().ok().and_then(|mut v| v.pop());
            match c {
                Some(c) if c.is_closed() => continue,
                Some(c) => return Ok(c),
                None => break,
            }
        }
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Conn::connect(&self.endpoint).await
    }

    /// Returns a connection after a successful exchange.
    pub fn put(&self, c: Conn) {
        if !c.is_closed()
            && let Ok(mut v) = self.idle.lock()
        {
            v.push(c);
        }
    }
}
