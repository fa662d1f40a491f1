//! Decoding the arguments of Kontrol's methods, tolerant of the shapes Go and kite.js send
//! (PROTOCOL.md 8.1, 11.5, Q15, Q16, Q22).
//!
//! Each decoder takes the method's first argument (`withArgs[0]`, `None` when there is none)
//! as JSON. Functions the peer sent appear in the JSON as the runtime's marker values; the
//! decoders only note whether a watch function was given, the adapter binds it.

use kite_protocol::dnode::json_type_name;
use serde::Deserialize;
use serde_json::Value;

use kite_protocol::KontrolQuery;

use crate::error::KontrolError;

/// How a watcher's events are shaped, chosen by the key the watch function came under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchStyle {
    /// `watchCallback` (Go's disabled watcher): events `{"error": ..., "result": ...}`.
    Callback,
    /// `watchHandler` (kite.js): events `{"err": ..., "result": ...}`.
    Handler,
}

impl WatchStyle {
    /// The argument key the function is passed under.
    pub fn key(self) -> &'static str {
        match self {
            WatchStyle::Callback => "watchCallback",
            WatchStyle::Handler => "watchHandler",
        }
    }

    /// The key of the error member of events.
    pub fn error_key(self) -> &'static str {
        match self {
            WatchStyle::Callback => "error",
            WatchStyle::Handler => "err",
        }
    }
}

/// Extracts the URL of a `register` call: `{"url": "..."}` (Go) or a bare string (kite.js,
/// Q16); it must be non-empty (`empty url`) and an absolute http, https, ws or wss URL
/// (`invalid register URL: <err>`).
pub fn register_url(arg: Option<&Value>) -> Result<String, KontrolError> {
    let url = match arg {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(map)) => match map.get("url") {
            Some(Value::String(s)) => s.as_str(),
            None | Some(Value::Null) => "",
            Some(other) => {
                return Err(KontrolError::InvalidArgument(format!(
                    "register: url must be a string, not {}",
                    json_type_name(other)
                )))
            }
        },
        Some(other) => {
            return Err(KontrolError::InvalidArgument(format!(
                "register: expected {{\"url\": string}} or a URL string, not {}",
                json_type_name(other)
            )))
        }
        None => "",
    };
    check_url(url)?;
    Ok(url.to_owned())
}

/// Checks a kite URL: non-empty, absolute, scheme http, https, ws or wss, with a host.
pub fn check_url(url: &str) -> Result<(), KontrolError> {
    if url.is_empty() {
        return Err(KontrolError::EmptyUrl);
    }
    let parsed = url::Url::parse(url).map_err(|e| KontrolError::InvalidUrl(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" | "ws" | "wss" => {}
        other => {
            return Err(KontrolError::InvalidUrl(format!(
                "unsupported scheme {other:?}"
            )))
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(KontrolError::InvalidUrl("missing host".into()));
    }
    Ok(())
}

/// The argument of `getKites`: `{"query": {...}, "watchCallback": fn, "who": ...}` (Go) or
/// `{"query": {...}, "watchHandler": fn}` (kite.js).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetKitesArgs {
    /// The query (all fields empty when absent, which the storage refuses).
    pub query: KontrolQuery,
    /// Whether (and how) the caller asked to watch: a non-null `watchHandler` or
    /// `watchCallback` (the former wins when both are present).
    pub watch: Option<WatchStyle>,
}

impl GetKitesArgs {
    /// Decodes the argument. Errors: not an object, or a query field that is not a string.
    pub fn decode(arg: Option<&Value>) -> Result<GetKitesArgs, KontrolError> {
        let map = match arg {
            Some(Value::Object(map)) => map,
            None | Some(Value::Null) => {
                return Err(KontrolError::InvalidArgument(
                    "getKites: missing argument {\"query\": {...}}".into(),
                ))
            }
            Some(other) => {
                return Err(KontrolError::InvalidArgument(format!(
                    "getKites: expected {{\"query\": {{...}}}}, not {}",
                    json_type_name(other)
                )))
            }
        };
        let query = match map.get("query") {
            None | Some(Value::Null) => KontrolQuery::default(),
            Some(q) => decode_query(q).map_err(|e| KontrolError::Query(format!("query: {e}")))?,
        };
        let given = |style: WatchStyle| map.get(style.key()).is_some_and(|v| !v.is_null());
        let watch = [WatchStyle::Handler, WatchStyle::Callback]
            .into_iter()
            .find(|s| given(*s));
        Ok(GetKitesArgs { query, watch })
    }
}

/// The argument of `getToken`: a query (or a whole kite descriptor, which has the same keys)
/// plus an optional `"force": true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetTokenArgs {
    /// The query; exactly one kite must match.
    pub query: KontrolQuery,
    /// Mint a new token instead of reusing the cached one.
    pub force: bool,
}

impl GetTokenArgs {
    /// Decodes the argument; any failure is `invalid query: <err>`.
    pub fn decode(arg: Option<&Value>) -> Result<GetTokenArgs, KontrolError> {
        let value = arg.ok_or_else(|| KontrolError::InvalidQuery("missing argument".into()))?;
        if !value.is_object() {
            return Err(KontrolError::InvalidQuery(format!(
                "expected an object, not {}",
                json_type_name(value)
            )));
        }
        let query = decode_query(value).map_err(KontrolError::InvalidQuery)?;
        let force = match value.get("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(KontrolError::InvalidQuery(format!(
                    "force must be a boolean, not {}",
                    json_type_name(other)
                )))
            }
        };
        Ok(GetTokenArgs { query, force })
    }
}

/// The argument of `registerMachine`: `{"authType": "..."}` (Go; key matched
/// case-insensitively), optionally with `"secret"` and `"username"`, or a bare username
/// string (kitectl, Q15).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterMachineArgs {
    /// `authType`, if given.
    pub auth_type: Option<String>,
    /// The one-time secret, if given.
    pub secret: Option<String>,
    /// The username asked for (the bare string form, or `username`), if given.
    pub username: Option<String>,
}

impl RegisterMachineArgs {
    /// Decodes the argument (`None` or `null` → nothing given).
    pub fn decode(arg: Option<&Value>) -> Result<RegisterMachineArgs, KontrolError> {
        match arg {
            None | Some(Value::Null) => Ok(RegisterMachineArgs::default()),
            Some(Value::String(s)) => Ok(RegisterMachineArgs {
                username: Some(s.clone()),
                ..RegisterMachineArgs::default()
            }),
            Some(Value::Object(map)) => {
                let mut out = RegisterMachineArgs::default();
                for (key, value) in map {
                    let slot = match key.to_ascii_lowercase().as_str() {
                        "authtype" => &mut out.auth_type,
                        "secret" => &mut out.secret,
                        "username" => &mut out.username,
                        _ => continue,
                    };
                    match value {
                        Value::String(s) => *slot = Some(s.clone()),
                        Value::Null => {}
                        other => {
                            return Err(KontrolError::InvalidArgument(format!(
                                "registerMachine: {key} must be a string, not {}",
                                json_type_name(other)
                            )))
                        }
                    }
                }
                Ok(out)
            }
            Some(other) => Err(KontrolError::InvalidArgument(format!(
                "registerMachine: expected {{\"authType\": string}} or a username, not {}",
                json_type_name(other)
            ))),
        }
    }
}

/// The argument of `cancelWatcher`: the watcher id, a string or a number.
pub fn watcher_id(arg: Option<&Value>) -> Result<String, KontrolError> {
    match arg {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(KontrolError::InvalidArgument(
            "cancelWatcher: expected a watcher id".into(),
        )),
    }
}

/// Decodes a query object: the seven keys, each a string (or null/absent = empty); other
/// keys are ignored.
fn decode_query(value: &Value) -> Result<KontrolQuery, String> {
    #[derive(Deserialize)]
    struct Q {
        username: Option<String>,
        environment: Option<String>,
        name: Option<String>,
        version: Option<String>,
        region: Option<String>,
        hostname: Option<String>,
        id: Option<String>,
    }
    if !value.is_object() {
        return Err(format!("expected an object, not {}", json_type_name(value)));
    }
    let q = Q::deserialize(value).map_err(|e| e.to_string())?;
    Ok(KontrolQuery {
        username: q.username.unwrap_or_default(),
        environment: q.environment.unwrap_or_default(),
        name: q.name.unwrap_or_default(),
        version: q.version.unwrap_or_default(),
        region: q.region.unwrap_or_default(),
        hostname: q.hostname.unwrap_or_default(),
        id: q.id.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn register_url_shapes() {
        let ok = "http://127.0.0.1:3636/kite";
        assert_eq!(register_url(Some(&json!({ "url": ok }))).unwrap(), ok);
        assert_eq!(register_url(Some(&json!(ok))).unwrap(), ok);
        assert_eq!(
            register_url(Some(&json!({ "url": "" })))
                .unwrap_err()
                .to_string(),
            "empty url"
        );
        assert_eq!(register_url(None).unwrap_err().to_string(), "empty url");
        assert_eq!(
            register_url(Some(&json!("kite"))).unwrap_err().to_string(),
            "invalid register URL: relative URL without a base"
        );
        assert!(register_url(Some(&json!("ftp://x/kite")))
            .unwrap_err()
            .to_string()
            .starts_with("invalid register URL: unsupported scheme"));
        assert!(register_url(Some(&json!(5))).is_err());
        assert!(register_url(Some(&json!({ "url": 5 }))).is_err());
    }

    #[test]
    fn get_kites_shapes() {
        let a = GetKitesArgs::decode(Some(&json!({
            "query": {"username": "alice", "environment": "", "name": "math", "version": "",
                      "region": "", "hostname": "", "id": ""},
            "watchCallback": null, "who": null
        })))
        .unwrap();
        assert_eq!(a.query.username, "alice");
        assert_eq!(a.watch, None);
        let a = GetKitesArgs::decode(Some(&json!({
            "query": {"username": "alice"}, "watchHandler": "[Function]"
        })))
        .unwrap();
        assert_eq!(a.watch, Some(WatchStyle::Handler));
        let a = GetKitesArgs::decode(Some(&json!({"query": {"id": "x"}, "watchCallback": "f"})))
            .unwrap();
        assert_eq!(a.watch, Some(WatchStyle::Callback));
        assert!(GetKitesArgs::decode(Some(&json!({"query": {"username": 5}}))).is_err());
        assert!(GetKitesArgs::decode(Some(&json!("alice"))).is_err());
        assert!(GetKitesArgs::decode(None).is_err());
        assert!(GetKitesArgs::decode(Some(&json!({})))
            .unwrap()
            .query
            .is_empty());
    }

    #[test]
    fn get_token_shapes() {
        let a = GetTokenArgs::decode(Some(&json!({
            "name": "math", "username": "alice", "id": "", "environment": "unknown",
            "region": "", "version": "", "hostname": ""
        })))
        .unwrap();
        assert!(!a.force);
        assert_eq!(a.query.name, "math");
        let a = GetTokenArgs::decode(Some(&json!({"id": "x", "force": true}))).unwrap();
        assert!(a.force);
        assert!(GetTokenArgs::decode(Some(&json!("x")))
            .unwrap_err()
            .to_string()
            .starts_with("invalid query: "));
        assert!(GetTokenArgs::decode(None).is_err());
        assert!(GetTokenArgs::decode(Some(&json!({"id": 1}))).is_err());
        assert!(GetTokenArgs::decode(Some(&json!({"id": "x", "force": "yes"}))).is_err());
    }

    #[test]
    fn register_machine_shapes() {
        let a = RegisterMachineArgs::decode(Some(&json!("bob"))).unwrap();
        assert_eq!(a.username.as_deref(), Some("bob"));
        let a = RegisterMachineArgs::decode(Some(&json!({"AUTHTYPE": "kiteKey", "secret": "s"})))
            .unwrap();
        assert_eq!(a.auth_type.as_deref(), Some("kiteKey"));
        assert_eq!(a.secret.as_deref(), Some("s"));
        assert!(RegisterMachineArgs::decode(Some(&json!([1]))).is_err());
        assert!(RegisterMachineArgs::decode(Some(&json!({"secret": 1}))).is_err());
    }

    #[test]
    fn watcher_ids() {
        assert_eq!(watcher_id(Some(&json!("w1"))).unwrap(), "w1");
        assert_eq!(watcher_id(Some(&json!(7))).unwrap(), "7");
        assert!(watcher_id(Some(&json!(""))).is_err());
        assert!(watcher_id(None).is_err());
    }
}
