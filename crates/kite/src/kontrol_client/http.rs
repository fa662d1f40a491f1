//! The small HTTP/1.1 client of HTTP registration: `POST /register` and `GET /heartbeat`
//! (PROTOCOL.md 8.2). One connection per request, bounded bodies, a timeout on the whole
//! exchange; `https://` through rustls with the webpki roots.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::KiteError;

/// Largest `/register` answer read.
const MAX_REGISTER_BODY: usize = 64 * 1024;
/// `/heartbeat` answers: Go reads at most 16 bytes.
const MAX_HEARTBEAT_BODY: usize = 16;

pub(crate) struct HttpResponse {
    pub status: u16,
    pub body: Bytes,
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, KiteError> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KiteError::generic(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn exchange(
    method: http::Method,
    url: &str,
    body: Option<Vec<u8>>,
    max_body: usize,
) -> Result<HttpResponse, KiteError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| KiteError::generic(format!("invalid URL {url:?}: {e}")))?;
    let secure = match parsed.scheme() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        other => {
            return Err(KiteError::generic(format!(
                "unsupported URL scheme {other:?} in {url}"
            )))
        }
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| KiteError::generic(format!("no host in URL {url}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| KiteError::send(format!("cannot connect to {url}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if secure {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| KiteError::generic(format!("invalid TLS server name {host:?}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| KiteError::send(format!("TLS handshake with {url} failed: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| KiteError::send(format!("HTTP handshake with {url} failed: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut path = parsed.path().to_string();
    if let Some(q) = parsed.query() {
        path.push('?');
        path.push_str(q);
    }
    let authority = match parsed.port() {
        Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or_default()),
        None => parsed.host_str().unwrap_or_default().to_string(),
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("kite-rs/", env!("CARGO_PKG_VERSION")),
        );
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| KiteError::generic(format!("cannot build the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| KiteError::send(format!("HTTP request to {url} failed: {e}")))?;
    let status = response.status().as_u16();
    let body = match Limited::new(response.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            driver.abort();
            return Err(KiteError::invalid_response(format!(
                "answer of {url} unreadable or larger than {max_body} bytes: {e}"
            )));
        }
    };
    driver.abort();
    Ok(HttpResponse { status, body })
}

async fn with_timeout(
    timeout: Duration,
    url: &str,
    f: impl std::future::Future<Output = Result<HttpResponse, KiteError>>,
) -> Result<HttpResponse, KiteError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(KiteError::new(
            crate::error::types::TIMEOUT,
            format!("no answer from {url} within {timeout:?}"),
        )),
    }
}

/// `POST url` with a JSON body.
pub(crate) async fn post_json(
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<HttpResponse, KiteError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| KiteError::generic(format!("cannot encode the request: {e}")))?;
    with_timeout(
        timeout,
        url,
        exchange(http::Method::POST, url, Some(bytes), MAX_REGISTER_BODY),
    )
    .await
}

/// `GET <base>/heartbeat?id=<id>`: the trimmed answer (`pong`, `registeragain`).
pub(crate) async fn heartbeat(
    base: &str,
    id: &str,
    timeout: Duration,
) -> Result<String, KiteError> {
    let id: String = form_urlencoded_byte(id);
    let url = format!("{base}/heartbeat?id={id}");
    // A longer answer than 16 bytes is cut like Go does (read at most 16 bytes).
    let resp = with_timeout(timeout, &url, exchange(http::Method::GET, &url, None, 4096)).await?;
    let cut = &resp.body[..resp.body.len().min(MAX_HEARTBEAT_BODY)];
    Ok(String::from_utf8_lossy(cut).trim().to_string())
}

/// Percent-encodes a query value (kite ids are UUIDs; this only guards odd ids).
fn form_urlencoded_byte(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
