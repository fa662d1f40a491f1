//! Parsing the base URL, and opening TCP (+ TLS) connections to it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::ConnectError;

/// Where a SockJS base URL points.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `http` or `https`, as written (`ws`/`wss` are mapped to these).
    pub(crate) scheme: &'static str,
    /// Whether to speak TLS.
    pub(crate) secure: bool,
    /// The host for DNS and TLS SNI (IPv6 without brackets).
    pub(crate) host: String,
    /// The TCP port (the scheme's default when none is written).
    pub(crate) port: u16,
    /// `host[:port]` exactly as written in the URL, for `Host` and `Origin`.
    pub(crate) authority: String,
    /// The URL path without a trailing `/` (may be empty).
    pub(crate) base_path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, ConnectError> {
        let invalid = |reason: &'static str| ConnectError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a valid URL"))?;
        let (scheme, secure, default_port) = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("ws") => {
                ("http", false, 80)
            }
            Some(s) if s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("wss") => {
                ("https", true, 443)
            }
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None => return Err(invalid("the URL must be absolute (http:// or https://)")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(invalid("the URL has no host"));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        Ok(Target {
            scheme,
            secure,
            host,
            port,
            authority: authority.as_str().to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// `<scheme>://<host[:port]>` as written: the `Origin` header Go sends.
    pub(crate) fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// A TCP connection, possibly wrapped in TLS.
#[derive(Debug)]
pub(crate) enum MaybeTlsStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MaybeTlsStream {
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            MaybeTlsStream::Plain(s) => s.peer_addr().ok(),
            MaybeTlsStream::Tls(s) => s.get_ref().0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS configuration used when [`ClientConfig::tls`](super::ClientConfig::tls) is
/// `None`: the webpki root certificates, rustls' ring provider, safe default versions.
pub(crate) fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = DEFAULT.get() {
        return Ok(config.clone());
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConnectError::TlsConfig(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(DEFAULT.get_or_init(|| Arc::new(config)).clone())
}

/// Opens a TCP connection to the target (trying every resolved address), then TLS when
/// the target is `https`.
pub(crate) async fn connect_stream(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<MaybeTlsStream, ConnectError> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: target.host.clone(),
            source,
        })?;
    let mut last_err = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let tcp = match tcp {
        Some(tcp) => tcp,
        None => {
            return Err(ConnectError::Connect {
                addr: format!("{}:{}", target.host, target.port),
                source: last_err.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "no address found for host")
                }),
            })
        }
    };
    // Small request/response exchanges: don't let Nagle delay them.
    let _ = tcp.set_nodelay(true);
    if !target.secure {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    let config = match tls {
        // SockJS needs HTTP/1.1 (WebSocket upgrade, hyper's HTTP/1 client): never let a
        // custom configuration negotiate h2 through ALPN.
        Some(config) if config.alpn_protocols.iter().any(|p| p != b"http/1.1") => {
            let mut config = (**config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }
        Some(config) => config.clone(),
        None => default_tls_config()?,
    };
    let name = ServerName::try_from(target.host.clone()).map_err(|_| ConnectError::InvalidUrl {
        url: target.host.clone(),
        reason: "the host is not a valid TLS server name",
    })?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            host: target.host.clone(),
            source,
        })?;
    Ok(MaybeTlsStream::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let t = Target::parse("http://127.0.0.1:7001/kite").unwrap();
        assert_eq!(
            (t.scheme, t.secure, t.host.as_str(), t.port),
            ("http", false, "127.0.0.1", 7001)
        );
        assert_eq!(t.base_path, "/kite");
        assert_eq!(t.origin(), "http://127.0.0.1:7001");
        let t = Target::parse("https://Example.com/a/kite/").unwrap();
        assert_eq!((t.port, t.base_path.as_str()), (443, "/a/kite"));
        assert_eq!(t.origin(), "https://Example.com");
        let t = Target::parse("http://[::1]/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base_path.as_str()),
            ("::1", 80, "")
        );
        assert_eq!(t.authority, "[::1]");
        for bad in [
            "ftp://x/kite",
            "/kite",
            "http://",
            "not a url",
            "http://u:p@h/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
