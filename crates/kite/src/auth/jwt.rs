//! Compact JWS (JWT) encoding and decoding with Go-identical bytes (PROTOCOL.md 6.2).
//!
//! Kite JWTs are `base64url(header) "." base64url(claims) "." base64url(signature)` without
//! padding, header exactly `{"alg":"RS256","typ":"JWT"}`, claims serialized in Go's field
//! order with Go's JSON string escaping. RS256 signatures are deterministic, so the same
//! claims and key always give the same token.

use std::io;

use base64ct::{Base64UrlUnpadded, Encoding};
use serde::{Deserialize, Serialize};

use super::keys::{KeyError, KeyPair, RsaAlgorithm};
use super::VerifyError;

/// The only header Kite emits, already base64url-encoded:
/// `{"alg":"RS256","typ":"JWT"}`.
pub const RS256_HEADER_B64: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";

/// JWT claims of kite keys and tokens, with Go's JSON types: `aud` a single string, times as
/// integer seconds since the Unix epoch, everything else strings. Absent (`None`) claims are
/// omitted; fields serialize in Go's order `aud, exp, jti, iat, iss, nbf, sub, kontrolKey,
/// kontrolURL`. Unknown claims are ignored when decoding.
///
/// ```
/// use kite::auth::Claims;
/// let claims = Claims {
///     aud: Some("/alice/unknown/math".into()),
///     sub: Some("bob".into()),
///     ..Claims::default()
/// };
/// assert_eq!(claims.to_json(), r#"{"aud":"/alice/unknown/math","sub":"bob"}"#);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Audience: a kite path such as `/alice/production/math`, or `/` for every kite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Unique token id (a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issued-at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Issuer: Kontrol's username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Not-before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Subject: the holder's username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Kontrol's public key PEM (kite keys only).
    #[serde(
        default,
        rename = "kontrolKey",
        skip_serializing_if = "Option::is_none"
    )]
    pub kontrol_key: Option<String>,
    /// Kontrol's SockJS URL (kite keys only).
    #[serde(
        default,
        rename = "kontrolURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub kontrol_url: Option<String>,
}

impl Claims {
    /// The claims as JSON, byte-identical to Go's `encoding/json` output (HTML-safe string
    /// escaping of `<`, `>`, `&`, U+2028 and U+2029 included).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
        // Serializing plain strings and integers into a Vec cannot fail.
        if self.serialize(&mut ser).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Reads the claims of a JWT **without verifying anything** (for a client that wants to
    /// know when its token expires). Never use the result for an access decision.
    ///
    /// ```
    /// use kite::auth::Claims;
    /// let token = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE1MzAxNzMxMDB9.c2ln";
    /// assert_eq!(Claims::decode_unverified(token).unwrap().exp, Some(1530173100));
    /// ```
    pub fn decode_unverified(token: &str) -> Result<Self, VerifyError> {
        decode(token).map(|d| d.claims)
    }

    /// `sub`, treating an empty string like an absent claim (as Go does).
    pub fn subject(&self) -> Option<&str> {
        self.sub.as_deref().filter(|s| !s.is_empty())
    }

    /// `aud`, treating an empty string like an absent claim.
    pub fn audience(&self) -> Option<&str> {
        self.aud.as_deref().filter(|s| !s.is_empty())
    }
}

/// Signs `claims` with RS256 and returns the compact JWT.
///
/// ```
/// use kite::auth::{sign_claims, Claims, KeyPair};
/// let pair = KeyPair::generate(1024).unwrap();
/// let claims = Claims { sub: Some("alice".into()), ..Claims::default() };
/// let jwt = sign_claims(&pair, &claims).unwrap();
/// assert!(jwt.starts_with("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."));
/// assert_eq!(jwt, sign_claims(&pair, &claims).unwrap()); // deterministic
/// ```
pub fn sign_claims(signer: &KeyPair, claims: &Claims) -> Result<String, KeyError> {
    let json = claims.to_json();
    let mut token = String::with_capacity(
        RS256_HEADER_B64.len() + 2 + json.len() * 4 / 3 + signer.public_key().bits() / 6 + 8,
    );
    token.push_str(RS256_HEADER_B64);
    token.push('.');
    token.push_str(&Base64UrlUnpadded::encode_string(json.as_bytes()));
    let signature = signer.sign_rs256(token.as_bytes())?;
    token.push('.');
    token.push_str(&Base64UrlUnpadded::encode_string(&signature));
    Ok(token)
}

/// A structurally valid JWT whose signature has not been checked yet.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    /// The signature algorithm named by the header.
    pub alg: RsaAlgorithm,
    /// The decoded claims.
    pub claims: Claims,
    /// `header "." claims`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The raw signature.
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
struct RawHeader {
    #[serde(default)]
    alg: Option<serde_json::Value>,
}

/// Splits and decodes a JWT, rejecting anything but RS256/RS384/RS512 before any key is
/// looked at (so `none`, HMAC — including HS256 keyed with a public key PEM — ECDSA, PSS
/// and unknown algorithms never reach a verifier).
///
/// Error texts follow Go's jwt-go where Kite peers could see them.
pub(crate) fn decode(token: &str) -> Result<Decoded<'_>, VerifyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "token contains an invalid number of segments".to_owned(),
        ));
    };
    let header_json = decode_segment(header)?;
    let parsed_header: RawHeader = serde_json::from_slice(&header_json)
        .map_err(|e| VerifyError::Malformed(format!("invalid header: {e}")))?;
    let claims_json = decode_segment(payload)?;
    let claims: Claims = serde_json::from_slice(&claims_json)
        .map_err(|e| VerifyError::Malformed(format!("invalid claims: {e}")))?;
    let alg = match parsed_header.alg {
        Some(serde_json::Value::String(name)) => {
            RsaAlgorithm::from_name(&name).ok_or(VerifyError::InvalidSigningMethod)?
        }
        _ => {
            return Err(VerifyError::Malformed(
                "signing method (alg) is unspecified.".to_owned(),
            ))
        }
    };
    let signature = decode_segment(signature)?;
    Ok(Decoded {
        alg,
        claims,
        signing_input: &token[..header.len() + 1 + payload.len()],
        signature,
    })
}

/// base64url, with or without padding (Go's jwt-go accepts both).
fn decode_segment(segment: &str) -> Result<Vec<u8>, VerifyError> {
    let unpadded = segment
        .strip_suffix("==")
        .or_else(|| segment.strip_suffix('='))
        .unwrap_or(segment);
    Base64UrlUnpadded::decode_vec(unpadded)
        .map_err(|_| VerifyError::Malformed("illegal base64 data in token".to_owned()))
}

/// `serde_json` formatter that escapes strings like Go's `encoding/json` (HTML-safe).
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constant_matches() {
        assert_eq!(
            Base64UrlUnpadded::encode_string(br#"{"alg":"RS256","typ":"JWT"}"#),
            RS256_HEADER_B64
        );
    }

    #[test]
    fn go_order_and_escaping() {
        let claims = Claims {
            aud: Some("/a".into()),
            exp: Some(2),
            jti: Some("j".into()),
            iat: Some(1),
            iss: Some("k".into()),
            nbf: Some(1),
            sub: Some("<b>&\u{2028}\"\n".into()),
            kontrol_key: Some("K".into()),
            kontrol_url: Some("U".into()),
        };
        assert_eq!(
            claims.to_json(),
            r#"{"aud":"/a","exp":2,"jti":"j","iat":1,"iss":"k","nbf":1,"sub":"\u003cb\u003e\u0026\u2028\"\n","kontrolKey":"K","kontrolURL":"U"}"#
        );
        let back: Claims = serde_json::from_str(&claims.to_json()).unwrap();
        assert_eq!(back, claims);
        assert_eq!(Claims::default().to_json(), "{}");
    }

    #[test]
    fn claim_types_are_strict() {
        let seg = |json: &str| {
            format!(
                "{RS256_HEADER_B64}.{}.c2ln",
                Base64UrlUnpadded::encode_string(json.as_bytes())
            )
        };
        assert!(decode(&seg(r#"{"aud":"/x"}"#)).is_ok());
        assert!(decode(&seg(r#"{"aud":["/x"]}"#)).is_err());
        assert!(decode(&seg(r#"{"exp":1.5}"#)).is_err());
        assert!(decode(&seg(r#"{"exp":"1"}"#)).is_err());
        assert!(decode(&seg(r#"{"sub":5}"#)).is_err());
        assert!(decode(&seg(r#"[1]"#)).is_err());
        // Unknown claims are ignored, null is like absent.
        let token = seg(r#"{"foo":[1,{}],"aud":null,"sub":"x"}"#);
        let d = decode(&token).unwrap();
        assert_eq!(d.claims.aud, None);
        assert_eq!(d.claims.subject(), Some("x"));
    }

    #[test]
    fn malformed_tokens() {
        for token in ["", "a", "a.b", "a.b.c.d", "!!.e30.c2ln"] {
            assert!(
                matches!(decode(token), Err(VerifyError::Malformed(_))),
                "{token}"
            );
        }
        assert_eq!(
            decode("a.b").unwrap_err().to_string(),
            "token contains an invalid number of segments"
        );
        // Padded segments are accepted like Go does.
        let padded = format!("{RS256_HEADER_B64}.e30=.c2ln");
        assert!(decode(&padded).is_ok());
    }

    #[test]
    fn algorithms_rejected_before_keys() {
        let token = |header: &str| {
            format!(
                "{}.e30.c2ln",
                Base64UrlUnpadded::encode_string(header.as_bytes())
            )
        };
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"PS256"}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"alg":"EdDSA"}"#,
            r#"{"alg":"rs256"}"#,
        ] {
            assert_eq!(
                decode(&token(header)).unwrap_err(),
                VerifyError::InvalidSigningMethod,
                "{header}"
            );
        }
        assert!(matches!(
            decode(&token(r#"{"typ":"JWT"}"#)),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            decode(&token(r#"{"alg":5}"#)),
            Err(VerifyError::Malformed(_))
        ));
        for header in [
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"RS384"}"#,
            r#"{"alg":"RS512","x":1}"#,
        ] {
            assert!(decode(&token(header)).is_ok(), "{header}");
        }
    }
}
