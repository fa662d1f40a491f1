//! A small in-memory cookie jar (RFC 6265 subset), shared by every HTTP request a client
//! makes, so that sticky load balancers keep routing one SockJS session to one backend.
//!
//! What it implements: `Set-Cookie` parsing (`Domain`, `Path`, `Max-Age`, `Expires`,
//! `Secure`), host-only and domain cookies, path matching, expiry, replacement of a cookie
//! with the same name, domain and path. What it leaves out: the public-suffix list (a server
//! may set a cookie for a parent domain such as `Domain=example.com`; a bare top-level
//! domain without a dot is refused), `SameSite` (meaningless outside browsers) and
//! `HttpOnly` (every request here is "HTTP").
//!
//! Limits: at most [`CookieJar::DEFAULT_MAX_COOKIES`] cookies (the oldest is evicted) and
//! [`CookieJar::MAX_COOKIE_BYTES`] bytes per cookie (larger ones are ignored).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// One stored cookie.
#[derive(Debug, Clone)]
struct StoredCookie {
    name: String,
    value: String,
    /// Lowercase, without a leading dot.
    domain: String,
    host_only: bool,
    path: String,
    secure: bool,
    expires: Option<SystemTime>,
}

/// A thread-safe cookie jar. Share one `Arc<CookieJar>` between clients (it is what
/// [`ClientConfig::cookies`](super::ClientConfig::cookies) holds).
#[derive(Debug)]
pub struct CookieJar {
    cookies: Mutex<Vec<StoredCookie>>,
    max_cookies: usize,
}

impl Default for CookieJar {
    fn default() -> Self {
        Self::new()
    }
}

impl CookieJar {
    /// Default maximum number of cookies in a jar.
    pub const DEFAULT_MAX_COOKIES: usize = 256;
    /// Largest accepted cookie (name plus value), in bytes.
    pub const MAX_COOKIE_BYTES: usize = 4096;

    /// An empty jar holding at most [`Self::DEFAULT_MAX_COOKIES`] cookies.
    pub fn new() -> Self {
        Self::with_capacity_limit(Self::DEFAULT_MAX_COOKIES)
    }

    /// An empty jar holding at most `max_cookies` cookies.
    pub fn with_capacity_limit(max_cookies: usize) -> Self {
        CookieJar {
            cookies: Mutex::new(Vec::new()),
            max_cookies: max_cookies.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StoredCookie>> {
        // A panic while holding the lock cannot leave the Vec in a broken state.
        self.cookies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of live (unexpired) cookies.
    pub fn len(&self) -> usize {
        let now = SystemTime::now();
        self.lock().iter().filter(|c| !c.expired(now)).count()
    }

    /// Whether the jar holds no live cookie.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every cookie.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Stores the cookie of one `Set-Cookie` header value received from `host` in answer
    /// to a request for `request_path`. Malformed or refused cookies are ignored.
    pub fn store(&self, host: &str, request_path: &str, set_cookie: &str) {
        let now = SystemTime::now();
        let Some(cookie) = parse_set_cookie(host, request_path, set_cookie, now) else {
            return;
        };
        let mut cookies = self.lock();
        cookies.retain(|c| {
            let same = c.name == cookie.name && c.domain == cookie.domain && c.path == cookie.path;
            !same && !c.expired(now)
        });
        if cookie.expired(now) {
            // Max-Age=0 or a past Expires: a deletion.
            return;
        }
        if cookies.len() >= self.max_cookies {
            cookies.remove(0);
        }
        cookies.push(cookie);
    }

    /// Stores every `Set-Cookie` header of a response.
    pub fn store_response_headers(
        &self,
        host: &str,
        request_path: &str,
        headers: &http::HeaderMap,
    ) {
        for value in headers.get_all(http::header::SET_COOKIE) {
            if let Ok(value) = value.to_str() {
                self.store(host, request_path, value);
            }
        }
    }

    /// The `Cookie` header value to send to `host` for `path` (`secure`: over TLS), or
    /// `None` when no cookie applies.
    pub fn header_value(&self, host: &str, path: &str, secure: bool) -> Option<String> {
        let host = normalize_host(host);
        let now = SystemTime::now();
        let cookies = self.lock();
        let mut matching: Vec<&StoredCookie> = cookies
            .iter()
            .filter(|c| {
                !c.expired(now)
                    && (secure || !c.secure)
                    && domain_matches(&host, &c.domain, c.host_only)
                    && path_matches(path, &c.path)
            })
            .collect();
        if matching.is_empty() {
            return None;
        }
        // RFC 6265 5.4: longer paths first (the sort is stable: older first otherwise).
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        let mut out = String::new();
        for c in matching {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&c.name);
            out.push('=');
            out.push_str(&c.value);
        }
        Some(out)
    }
}

impl StoredCookie {
    fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// Lowercase host without IPv6 brackets or a trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

fn domain_matches(host: &str, domain: &str, host_only: bool) -> bool {
    if host == domain {
        return true;
    }
    !host_only
        && !is_ip(host)
        && host.len() > domain.len()
        && host.ends_with(domain)
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
}

fn path_matches(request_path: &str, cookie_path: &str) -> bool {
    if request_path == cookie_path {
        return true;
    }
    request_path.starts_with(cookie_path)
        && (cookie_path.ends_with('/')
            || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/'))
}

/// RFC 6265 5.1.4 default path: the request path up to (not including) its last `/`.
fn default_path(request_path: &str) -> String {
    if !request_path.starts_with('/') {
        return "/".to_string();
    }
    match request_path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => request_path[..i].to_string(),
    }
}

fn parse_set_cookie(
    host: &str,
    request_path: &str,
    header: &str,
    now: SystemTime,
) -> Option<StoredCookie> {
    let host = normalize_host(host);
    let mut parts = header.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let (name, value) = (name.trim(), value.trim());
    if name.is_empty() || name.len() + value.len() > CookieJar::MAX_COOKIE_BYTES {
        return None;
    }
    let mut cookie = StoredCookie {
        name: name.to_string(),
        value: value.to_string(),
        domain: host.clone(),
        host_only: true,
        path: default_path(request_path),
        secure: false,
        expires: None,
    };
    let mut max_age_seen = false;
    for attr in parts {
        let (key, val) = match attr.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (attr.trim(), ""),
        };
        if key.eq_ignore_ascii_case("domain") {
            let domain = normalize_host(val.trim_start_matches('.'));
            if domain.is_empty() {
                continue;
            }
            if !domain_matches(&host, &domain, false) || (!domain.contains('.') && domain != host) {
                // A cookie for a domain the host does not belong to: refuse it.
                return None;
            }
            cookie.domain = domain;
            cookie.host_only = false;
        } else if key.eq_ignore_ascii_case("path") {
            if val.starts_with('/') {
                cookie.path = val.to_string();
            }
        } else if key.eq_ignore_ascii_case("max-age") {
            if let Ok(secs) = val.parse::<i64>() {
                max_age_seen = true;
                cookie.expires = Some(if secs <= 0 {
                    SystemTime::UNIX_EPOCH
                } else {
                    now.checked_add(Duration::from_secs(secs.unsigned_abs()))
                        .unwrap_or(now)
                });
            }
        } else if key.eq_ignore_ascii_case("expires") {
            if !max_age_seen {
                if let Ok(at) = httpdate::parse_http_date(val) {
                    cookie.expires = Some(at);
                }
            }
        } else if key.eq_ignore_ascii_case("secure") {
            cookie.secure = true;
        }
    }
    Some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_only_cookie_round_trip() {
        let jar = CookieJar::new();
        jar.store(
            "LB.example.com",
            "/kite/1/2/xhr",
            "SERVERID=b1; Path=/; HttpOnly",
        );
        assert_eq!(
            jar.header_value("lb.example.com", "/kite/1/2/xhr_send", false)
                .as_deref(),
            Some("SERVERID=b1")
        );
        assert_eq!(jar.header_value("other.example.com", "/", false), None);
        assert_eq!(jar.header_value("x.lb.example.com", "/", false), None);
    }

    #[test]
    fn domain_path_secure_and_expiry() {
        let jar = CookieJar::new();
        jar.store(
            "a.example.com",
            "/kite/x",
            "d=1; Domain=.example.com; Path=/",
        );
        jar.store("a.example.com", "/kite/x", "p=2");
        jar.store("a.example.com", "/", "s=3; Secure");
        jar.store("a.example.com", "/", "evil=4; Domain=other.com");
        jar.store("a.example.com", "/", "tld=5; Domain=com");
        assert_eq!(
            jar.header_value("b.example.com", "/", false).as_deref(),
            Some("d=1")
        );
        assert_eq!(
            jar.header_value("a.example.com", "/kite/y", true)
                .as_deref(),
            Some("p=2; d=1; s=3")
        );
        assert_eq!(
            jar.header_value("a.example.com", "/kitex", false)
                .as_deref(),
            Some("d=1")
        );
        jar.store("a.example.com", "/kite/x", "p=2; Max-Age=0");
        jar.store(
            "a.example.com",
            "/",
            "s=3; Secure; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        );
        assert_eq!(
            jar.header_value("a.example.com", "/kite/y", true)
                .as_deref(),
            Some("d=1")
        );
        assert_eq!(jar.len(), 1);
    }

    #[test]
    fn replaces_and_bounds() {
        let jar = CookieJar::with_capacity_limit(2);
        jar.store("h", "/", "a=1");
        jar.store("h", "/", "a=2");
        assert_eq!(jar.header_value("h", "/", false).as_deref(), Some("a=2"));
        jar.store("h", "/", "b=1");
        jar.store("h", "/", "c=1");
        assert_eq!(jar.len(), 2);
        assert_eq!(
            jar.header_value("h", "/", false).as_deref(),
            Some("b=1; c=1")
        );
        jar.store("h", "/", "garbage");
        jar.store("h", "/", &format!("big={}", "x".repeat(5000)));
        assert_eq!(jar.len(), 2);
    }
}
