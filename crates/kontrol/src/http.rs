//! Kontrol's HTTP endpoints (PROTOCOL.md 8.2), as an axum [`Router`] to merge into the
//! Kontrol kite's HTTP application:
//!
//! * `POST /register` — registration with a JSON body `{"url", "kite", "auth"}`; answers
//!   `{"url", "heartbeatInterval", "publicKey"?, "kiteKey"?}` or `{"err": "..."}` with Go's
//!   statuses (400, 401, 500), always `text/plain; charset=utf-8` and a trailing newline.
//!   A body without `auth` or `kite` gets 400 (Go's handler crashed, Q17); a body above
//!   [`KontrolConfig::max_http_body`](crate::config::KontrolConfig::max_http_body) gets 413.
//! * `GET /heartbeat?id=<kite id>` — `pong` (registration extended) or `registeragain`,
//!   without newline; 400 `query id is empty` without an id.
//! * `GET /healthz` — readiness: 200 `ok` when the storage answers, else 503.
//!
//! Like Go, `/register` and `/heartbeat` accept any HTTP method.
//!
//! ## Which kites `/heartbeat` answers `pong` for
//!
//! As Go's Kontrol (its per-process `heartbeats` map), `/heartbeat` only keeps alive kites
//! that registered **over HTTP with this Kontrol process** (through this router) and have
//! not gone silent for longer than the registration lifetime (heartbeat interval + grace);
//! for every other id it answers `registeragain`, even when the storage holds a live
//! registration:
//!
//! * a kite registered over a kite (dnode) connection is kept alive by `kite.heartbeat` on
//!   that connection, not by HTTP: an HTTP heartbeat for it gets `registeragain` (so nobody
//!   can keep a dead dnode kite listed by polling `/heartbeat` with its public id);
//! * with several Kontrols over one storage, a kite that registered over HTTP with
//!   Kontrol A and sends its heartbeat to Kontrol B (a load balancer, or A died) gets
//!   `registeragain` from B and registers again there, after which B answers `pong`. Its
//!   stored registration stays live meanwhile, so it does not disappear from `getKites`.
//!
//! At most [`MAX_HTTP_KITES`] HTTP registrations are tracked per process; beyond that a
//! registration still succeeds but its heartbeats get `registeragain` until room frees up.
//!
//! The router also carries the web page and its API ([`crate::web::routes`]: `/`,
//! `/web/*`, `/api/kites`, `/api/watch`) unless
//! [`KontrolConfig::web`](crate::config::KontrolConfig::web)`.enabled` is false.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;

use kite::auth::AuthError;
use kite_protocol::{Authentication, Kite};

use crate::error::KontrolError;
use crate::service::Kontrol;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Most HTTP registrations one router tracks for `/heartbeat` (see the module docs).
pub const MAX_HTTP_KITES: usize = 100_000;

/// The kites registered over HTTP through one router: id → when the registration lapses
/// unless a heartbeat comes (Go's `heartbeats` map with its timers).
struct HttpKites {
    deadlines: Mutex<HashMap<String, Instant>>,
    ttl: Duration,
}

impl HttpKites {
    fn deadlines(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts (or extends) tracking `id`; `false` when the table is full.
    fn track(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut deadlines = self.deadlines();
        if deadlines.len() >= MAX_HTTP_KITES && !deadlines.contains_key(id) {
            deadlines.retain(|_, deadline| *deadline > now);
            if deadlines.len() >= MAX_HTTP_KITES {
                return false;
            }
        }
        deadlines.insert(id.to_owned(), now + self.ttl);
        true
    }

    /// Whether `id` registered here over HTTP and has not lapsed (a lapsed entry is
    /// dropped).
    fn is_live(&self, id: &str) -> bool {
        let mut deadlines = self.deadlines();
        match deadlines.get(id) {
            Some(deadline) if *deadline > Instant::now() => true,
            Some(_) => {
                deadlines.remove(id);
                false
            }
            None => false,
        }
    }

    fn forget(&self, id: &str) {
        self.deadlines().remove(id);
    }
}

#[derive(Clone)]
struct HttpState {
    kontrol: Kontrol,
    kites: Arc<HttpKites>,
}

/// The routes `/register`, `/heartbeat` and `/healthz`, plus the web page's
/// ([`crate::web::routes`], when enabled), serving `kontrol`.
pub fn routes(kontrol: Kontrol) -> Router {
    let web = crate::web::routes(kontrol.clone());
    let kites = Arc::new(HttpKites {
        deadlines: Mutex::new(HashMap::new()),
        ttl: kontrol.config().record_ttl(),
    });
    Router::new()
        .route("/register", any(register))
        .route("/heartbeat", any(heartbeat))
        .route("/healthz", get(healthz))
        .with_state(HttpState { kontrol, kites })
        .merge(web)
}

/// A plain-text response.
fn text(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    res
}

/// Go's `http.Error`: the text plus a newline, `nosniff`.
fn error_text(status: StatusCode, message: &str) -> Response {
    let mut res = text(status, format!("{message}\n"));
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A `/register` error: `{"err":"..."}` + newline.
fn register_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "err": message }).to_string();
    error_text(status, &body)
}

#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    url: String,
    #[serde(default)]
    kite: Option<Kite>,
    #[serde(default)]
    auth: Option<Authentication>,
}

async fn register(State(state): State<HttpState>, body: Body) -> Response {
    let kontrol = &state.kontrol;
    let limit = kontrol.config().max_http_body;
    let bytes = match to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let message = e.to_string();
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                register_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body too large (limit {limit} bytes)"),
                )
            } else {
                register_error(
                    StatusCode::BAD_REQUEST,
                    &format!("wrong register input: '{message}'"),
                )
            };
        }
    };
    // Like Go's json.Decoder: the first JSON value counts, an empty body is EOF.
    let decoded = serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<RegisterBody>()
        .next();
    let input = match decoded {
        None => return register_error(StatusCode::BAD_REQUEST, "wrong register input: 'EOF'"),
        Some(Err(e)) => {
            return register_error(
                StatusCode::BAD_REQUEST,
                &format!("wrong register input: '{e}'"),
            )
        }
        Some(Ok(input)) => input,
    };
    let Some(auth) = input.auth else {
        return register_error(
            StatusCode::BAD_REQUEST,
            "wrong register input: 'auth is missing'",
        );
    };
    let Some(kite) = input.kite else {
        return register_error(
            StatusCode::BAD_REQUEST,
            "wrong register input: 'kite is missing'",
        );
    };
    match kontrol.register_http(&kite, &auth, &input.url).await {
        Ok(registered) => match serde_json::to_string(&registered.result) {
            Ok(json) => {
                if !state.kites.track(&registered.registration.kite.id) {
                    tracing::warn!(kite = %kite, "kontrol: too many HTTP registrations tracked; its heartbeats will get registeragain");
                }
                text(StatusCode::OK, json + "\n")
            }
            Err(e) => register_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e) => {
            let (status, message) = register_failure(&e);
            tracing::debug!(kite = %kite, error = %e, "kontrol: HTTP registration refused");
            register_error(status, &message)
        }
    }
}

/// Status and `err` text of a failed HTTP registration (PROTOCOL.md 8.2).
fn register_failure(e: &KontrolError) -> (StatusCode, String) {
    match e {
        KontrolError::UnexpectedAuthType(t) => (
            StatusCode::BAD_REQUEST,
            format!("unexpected authentication type: {t}"),
        ),
        KontrolError::EmptyUrl => (StatusCode::BAD_REQUEST, "empty URL".into()),
        KontrolError::Auth(AuthError::Rejected { reason, .. }) => {
            (StatusCode::UNAUTHORIZED, reason.to_string())
        }
        KontrolError::Auth(other) => (StatusCode::UNAUTHORIZED, other.to_string()),
        KontrolError::NoAuthentication => (StatusCode::UNAUTHORIZED, e.to_string()),
        KontrolError::InternalRegister
        | KontrolError::Storage { .. }
        | KontrolError::Signing(_) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        KontrolError::Closed => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => (StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn heartbeat(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let id = query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    if id.is_empty() {
        return error_text(StatusCode::BAD_REQUEST, "query id is empty");
    }
    if !state.kites.is_live(&id) {
        // Not registered over HTTP here (a dnode registration, another Kontrol's, a
        // restart, an unknown id) or silent for too long: as Go.
        return text(StatusCode::OK, "registeragain".into());
    }
    match state.kontrol.http_heartbeat(&id).await {
        Ok(true) => {
            state.kites.track(&id);
            text(StatusCode::OK, "pong".into())
        }
        // Not live in the storage, or an id no registration can have (too long, ...).
        Ok(false) | Err(KontrolError::Query(_)) => {
            state.kites.forget(&id);
            text(StatusCode::OK, "registeragain".into())
        }
        Err(e) => {
            tracing::warn!(error = %e, "kontrol: HTTP heartbeat failed");
            error_text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

async fn healthz(State(state): State<HttpState>) -> Response {
    if state.kontrol.is_ready().await {
        text(StatusCode::OK, "ok\n".into())
    } else {
        error_text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
