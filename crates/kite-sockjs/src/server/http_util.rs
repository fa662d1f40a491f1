//! Small HTTP helpers: fixed responses, CORS and caching headers, cookies, query parsing.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use super::ServerConfig;

pub(crate) const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const ONE_YEAR: u64 = 31_536_000;
pub(crate) const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";
pub(crate) const JAVASCRIPT: &str = "application/javascript; charset=UTF-8";

fn response(status: StatusCode, content_type: Option<&'static str>, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response {
    response(status, Some(TEXT_PLAIN), Body::from(body))
}

pub(crate) fn not_found() -> Response {
    response(
        StatusCode::NOT_FOUND,
        Some("text/plain; charset=utf-8"),
        Body::from("404 page not found\n"),
    )
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp = response(StatusCode::METHOD_NOT_ALLOWED, None, Body::empty());
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

pub(crate) fn greeting() -> Response {
    response(
        StatusCode::OK,
        Some("text/plain;charset=UTF-8"),
        Body::from("Welcome to SockJS!\n"),
    )
}

/// CORS headers: the request `Origin` echoed (with credentials allowed), or `*`.
pub(crate) fn cors(req: &HeaderMap, out: &mut HeaderMap) {
    match req.get(header::ORIGIN) {
        Some(origin) if !origin.is_empty() => {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        _ => {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    if let Some(h) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        if !h.is_empty() {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
    }
}

pub(crate) fn no_cache(out: &mut HeaderMap) {
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
}

fn cache_for_a_year(out: &mut HeaderMap) {
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(ONE_YEAR));
    if let Ok(v) = HeaderValue::from_str(&expires) {
        out.insert(header::EXPIRES, v);
    }
}

/// `Set-Cookie: JSESSIONID=...; path=/` when the server needs cookies: the request's own
/// `JSESSIONID` echoed, or `dummy`.
pub(crate) fn cookie(config: &ServerConfig, req: &HeaderMap, out: &mut HeaderMap) {
    if !config.cookie_needed {
        return;
    }
    let mut value = "dummy";
    for h in req.get_all(header::COOKIE) {
        let Ok(h) = h.to_str() else { continue };
        for pair in h.split(';') {
            if let Some(v) = pair.trim().strip_prefix("JSESSIONID=") {
                value = v;
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={value}; path=/")) {
        out.insert(header::SET_COOKIE, v);
    }
}

/// The CORS preflight answer: 204, cacheable for a year.
pub(crate) fn options(req: &HeaderMap, methods: &'static str) -> Response {
    let mut resp = response(StatusCode::NO_CONTENT, None, Body::empty());
    let h = resp.headers_mut();
    cache_for_a_year(h);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("31536000"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    cors(req, h);
    resp
}

pub(crate) fn info(config: &ServerConfig, req: &HeaderMap) -> Response {
    let entropy: u32 = rand::random();
    let body = format!(
        "{{\"websocket\":{},\"cookie_needed\":{},\"origins\":[\"*:*\"],\"entropy\":{}}}",
        config.websocket, config.cookie_needed, entropy
    );
    let mut resp = response(
        StatusCode::OK,
        Some("application/json; charset=UTF-8"),
        Body::from(body),
    );
    let h = resp.headers_mut();
    no_cache(h);
    cors(req, h);
    resp
}

/// The JSONP / htmlfile callback name from the `c` query parameter, validated
/// (`[a-zA-Z0-9-_.]+`), or the error text of the 500 response to send.
pub(crate) fn callback_param(query: Option<&str>) -> Result<String, &'static str> {
    let value = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "c")
            .map(|(_, v)| v.into_owned())
    });
    match value {
        None => Err("\"callback\" parameter required"),
        Some(c) if c.is_empty() => Err("\"callback\" parameter required"),
        Some(c)
            if !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            Err("invalid \"callback\" parameter")
        }
        Some(c) => Ok(c),
    }
}

/// The iframe bootstrap page, rendered once with its ETag.
pub(crate) struct IframePage {
    body: bytes::Bytes,
    etag: HeaderValue,
}

impl IframePage {
    pub(crate) fn new(sockjs_url: &str) -> Self {
        let url: String = sockjs_url
            .chars()
            .filter(|c| !matches!(c, '"' | '<' | '>'))
            .collect();
        let body = format!(
            "<!DOCTYPE html>\n<html>\n<head>\n  \
             <meta http-equiv=\"X-UA-Compatible\" content=\"IE=edge\" />\n  \
             <meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\" />\n  \
             <script src=\"{url}\"></script>\n  <script>\n    \
             document.domain = document.domain;\n    SockJS.bootstrap_iframe();\n  \
             </script>\n</head>\n<body>\n  <h2>Don't panic!</h2>\n  \
             <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>\n\
             </body>\n</html>"
        );
        // FNV-1a: stable across runs and processes, so caches stay valid.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in body.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let etag = HeaderValue::from_str(&format!("\"{hash:016x}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        IframePage {
            body: bytes::Bytes::from(body),
            etag,
        }
    }

    pub(crate) fn respond(&self, req: &HeaderMap) -> Response {
        if req.get(header::IF_NONE_MATCH) == Some(&self.etag) {
            let mut resp = response(StatusCode::NOT_MODIFIED, None, Body::empty());
            resp.headers_mut().insert(header::ETAG, self.etag.clone());
            return resp;
        }
        let mut resp = response(
            StatusCode::OK,
            Some("text/html; charset=UTF-8"),
            Body::from(self.body.clone()),
        );
        let h = resp.headers_mut();
        cache_for_a_year(h);
        h.insert(header::ETAG, self.etag.clone());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_validation() {
        assert_eq!(
            callback_param(Some("c=%63allback")).ok().as_deref(),
            Some("callback")
        );
        assert_eq!(
            callback_param(Some("x=1&c=a.b_c-9")).ok().as_deref(),
            Some("a.b_c-9")
        );
        for bad in [
            None,
            Some(""),
            Some("c="),
            Some("c=%20"),
            Some("c=*"),
            Some("c=abc("),
        ] {
            assert!(callback_param(bad).is_err(), "{bad:?}");
        }
    }
}
