//! RSA keys in PEM form: parsing (PROTOCOL.md 6.2), generation and Kontrol key pairs (8.4).

use std::fmt;
use std::sync::Arc;

use base64ct::{Base64, Encoding};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::der::asn1::AnyRef;
use rsa::pkcs8::der::{Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};

/// Default RSA modulus size for generated key pairs.
pub const DEFAULT_KEY_BITS: usize = 2048;

/// Smallest modulus [`KeyPair::generate`] accepts (only sensible for tests).
pub const MIN_KEY_BITS: usize = 1024;

/// Why a key could not be parsed, generated or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text holds no PEM block (Go: `jwt.ErrKeyMustBePEMEncoded`).
    #[error("Invalid Key: Key must be PEM encoded PKCS1 or PKCS8 private key")]
    NotPem,
    /// The PEM block is not an RSA public key (SPKI or X.509 certificate).
    #[error("Key is not a valid RSA public key")]
    NotRsaPublicKey,
    /// The PEM block is not an RSA private key (PKCS#1 or PKCS#8).
    #[error("Key is not a valid RSA private key")]
    NotRsaPrivateKey,
    /// A key-pair field is empty (PROTOCOL.md 8.4: all three must be non-empty).
    #[error("key pair {0} is empty")]
    Empty(&'static str),
    /// The public key is not the public half of the private key.
    #[error("public key does not match private key")]
    Mismatch,
    /// Key generation failed or was asked for an unsupported size.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// JWS signature algorithms this crate verifies: RSASSA-PKCS1-v1_5 with SHA-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RsaAlgorithm {
    /// `RS256` (the only one Kite issues).
    Rs256,
    /// `RS384`.
    Rs384,
    /// `RS512`.
    Rs512,
}

impl RsaAlgorithm {
    /// Parses a JWS `alg` value; only the three RSA PKCS#1 v1.5 names are recognised.
    pub fn from_name(alg: &str) -> Option<Self> {
        match alg {
            "RS256" => Some(Self::Rs256),
            "RS384" => Some(Self::Rs384),
            "RS512" => Some(Self::Rs512),
            _ => None,
        }
    }

    /// The JWS `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
        }
    }
}

/// A parsed RSA public key, compared by value (modulus and exponent).
///
/// ```
/// use kite::auth::{KeyPair, PublicKey};
/// let pair = KeyPair::generate(1024).unwrap();
/// let key = PublicKey::from_pem(pair.public_pem()).unwrap();
/// assert_eq!(key.to_pem(), pair.public_pem());
/// assert!(key.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: RsaPublicKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("bits", &(self.key.size() * 8))
            .finish()
    }
}

impl PublicKey {
    /// Parses the first PEM block of `pem` as an RSA public key, like Go's
    /// `jwt.ParseRSAPublicKeyFromPEM`: a SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`)
    /// or an X.509 certificate. PKCS#1 `RSA PUBLIC KEY` blocks are rejected, as in Go.
    /// Surrounding text, CRLF line breaks and any line length are tolerated.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_block(pem).ok_or(KeyError::NotPem)?;
        if let Ok(key) = RsaPublicKey::from_public_key_der(&der) {
            return Ok(Self { key });
        }
        let spki = certificate_spki(&der).ok_or(KeyError::NotRsaPublicKey)?;
        RsaPublicKey::from_public_key_der(&spki)
            .map(|key| Self { key })
            .map_err(|_| KeyError::NotRsaPublicKey)
    }

    /// The key as trimmed SubjectPublicKeyInfo PEM: `-----BEGIN PUBLIC KEY-----`, 64-character
    /// lines, LF line breaks, no trailing newline (the form Kite puts in claims).
    pub fn to_pem(&self) -> String {
        // Encoding a valid in-memory key cannot fail; fall back to an empty string rather
        // than panicking.
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map(|pem| pem.trim().to_owned())
            .unwrap_or_default()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    /// The underlying `rsa` key.
    pub fn as_rsa(&self) -> &RsaPublicKey {
        &self.key
    }

    /// Checks an RSASSA-PKCS1-v1_5 signature over `message`.
    pub fn verify(&self, alg: RsaAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        let result = match alg {
            RsaAlgorithm::Rs256 => self.key.verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(message),
                signature,
            ),
            RsaAlgorithm::Rs384 => self.key.verify(
                Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(message),
                signature,
            ),
            RsaAlgorithm::Rs512 => self.key.verify(
                Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(message),
                signature,
            ),
        };
        result.is_ok()
    }
}

impl From<RsaPublicKey> for PublicKey {
    fn from(key: RsaPublicKey) -> Self {
        Self { key }
    }
}

/// Parses the first PEM block of `pem` as an RSA private key: PKCS#1
/// (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`), like Go's
/// `jwt.ParseRSAPrivateKeyFromPEM`.
pub fn parse_private_key_pem(pem: &str) -> Result<RsaPrivateKey, KeyError> {
    let der = pem_block(pem).ok_or(KeyError::NotPem)?;
    RsaPrivateKey::from_pkcs1_der(&der)
        .or_else(|_| RsaPrivateKey::from_pkcs8_der(&der))
        .map_err(|_| KeyError::NotRsaPrivateKey)
}

/// A Kontrol key pair (PROTOCOL.md 8.4): an id, the public key PEM and the private key PEM,
/// plus the parsed private key used for signing.
///
/// The `Debug` output never shows the private key.
///
/// ```
/// use kite::auth::KeyPair;
/// let pair = KeyPair::generate(1024).unwrap();
/// assert_eq!(pair.id().len(), 36); // a UUID
/// let again = KeyPair::from_pem("my-id", pair.public_pem(), pair.private_pem()).unwrap();
/// assert_eq!(again.public_key(), pair.public_key());
/// ```
#[derive(Clone)]
pub struct KeyPair {
    id: String,
    public_pem: String,
    private_pem: String,
    public: PublicKey,
    private: Arc<RsaPrivateKey>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("id", &self.id)
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generates a new RSA key pair of `bits` bits (use [`DEFAULT_KEY_BITS`], 2048, unless
    /// you have a reason; at least [`MIN_KEY_BITS`]) with a random UUID as id. The public
    /// PEM is SubjectPublicKeyInfo, the private PEM PKCS#1, both trimmed with LF line breaks.
    ///
    /// This takes a noticeable fraction of a second for 2048 bits.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        if !(MIN_KEY_BITS..=4096).contains(&bits) {
            return Err(KeyError::Generate(format!(
                "unsupported key size {bits} (want {MIN_KEY_BITS}..=4096 bits)"
            )));
        }
        let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private_key(uuid::Uuid::new_v4().to_string(), private)
    }

    /// [`KeyPair::generate`] with [`DEFAULT_KEY_BITS`] (2048).
    pub fn generate_default() -> Result<Self, KeyError> {
        Self::generate(DEFAULT_KEY_BITS)
    }

    /// Wraps an existing private key, deriving the PEM texts.
    pub fn from_private_key(
        id: impl Into<String>,
        private: RsaPrivateKey,
    ) -> Result<Self, KeyError> {
        let public = PublicKey::from(private.to_public_key());
        let private_pem = private
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .trim()
            .to_owned();
        let public_pem = public.to_pem();
        Ok(Self {
            id: id.into(),
            public_pem,
            private_pem,
            public,
            private: Arc::new(private),
        })
    }

    /// Builds a key pair from stored PEM texts (PROTOCOL.md 8.4): PEMs are whitespace
    /// trimmed; id, public and private key must be non-empty; the public key must be the
    /// public half of the private key. An empty `id` is an error — use a random UUID when the
    /// operator gave none.
    pub fn from_pem(id: &str, public_pem: &str, private_pem: &str) -> Result<Self, KeyError> {
        let (id, public_pem, private_pem) = (id.trim(), public_pem.trim(), private_pem.trim());
        if id.is_empty() {
            return Err(KeyError::Empty("id"));
        }
        if public_pem.is_empty() {
            return Err(KeyError::Empty("public key"));
        }
        if private_pem.is_empty() {
            return Err(KeyError::Empty("private key"));
        }
        let public = PublicKey::from_pem(public_pem)?;
        let private = parse_private_key_pem(private_pem)?;
        if private.to_public_key() != *public.as_rsa() {
            return Err(KeyError::Mismatch);
        }
        Ok(Self {
            id: id.to_owned(),
            public_pem: public_pem.to_owned(),
            private_pem: private_pem.to_owned(),
            public,
            private: Arc::new(private),
        })
    }

    /// The key pair id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key PEM (trimmed); this is the `kontrolKey` claim value.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// The private key PEM (trimmed).
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// The parsed public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// RS256-signs `message` (RSASSA-PKCS1-v1_5 with SHA-256; deterministic output).
    pub fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let digest = Sha256::digest(message);
        // Blinded with OS randomness; PKCS#1 v1.5 signatures stay deterministic.
        self.private
            .sign_with_rng(
                &mut rsa::rand_core::OsRng,
                Pkcs1v15Sign::new::<Sha256>(),
                &digest,
            )
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Decodes the first PEM block in `text` (any label), like Go's `pem.Decode`: the body
/// between `-----BEGIN <label>-----` and `-----END <label>-----`, header lines (`Key: value`)
/// skipped, whitespace ignored, standard base64.
fn pem_block(text: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let start = text.find(BEGIN)?;
    let after_begin = &text[start + BEGIN.len()..];
    let label_end = after_begin.find(DASHES)?;
    let label = &after_begin[..label_end];
    if label.contains('\n') {
        return None;
    }
    let body_and_rest = &after_begin[label_end + DASHES.len()..];
    let end_marker = format!("-----END {label}-----");
    let end = body_and_rest.find(&end_marker)?;
    let body = &body_and_rest[..end];
    let mut b64 = String::with_capacity(body.len());
    for line in body.lines() {
        if line.contains(':') {
            // RFC 1421 header (e.g. Proc-Type); encrypted PEM is not supported.
            continue;
        }
        b64.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
    }
    Base64::decode_vec(&b64).ok()
}

/// Extracts the DER SubjectPublicKeyInfo from a DER X.509 certificate.
fn certificate_spki(der: &[u8]) -> Option<Vec<u8>> {
    let cert = AnyRef::from_der(der).ok()?;
    if cert.tag() != Tag::Sequence {
        return None;
    }
    let mut cert_reader = SliceReader::new(cert.value()).ok()?;
    let tbs: AnyRef<'_> = cert_reader.decode().ok()?;
    if tbs.tag() != Tag::Sequence {
        return None;
    }
    let mut r = SliceReader::new(tbs.value()).ok()?;
    let mut next: AnyRef<'_> = r.decode().ok()?;
    // Optional explicit [0] version.
    if next.tag()
        == (Tag::ContextSpecific {
            constructed: true,
            number: TagNumber::N0,
        })
    {
        next = r.decode().ok()?;
    }
    // `next` is the serial number; then signature algorithm, issuer, validity, subject.
    if next.tag() != Tag::Integer {
        return None;
    }
    for _ in 0..4 {
        let _: AnyRef<'_> = r.decode().ok()?;
    }
    let spki: AnyRef<'_> = r.decode().ok()?;
    if spki.tag() != Tag::Sequence {
        return None;
    }
    spki.to_der().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_block_tolerates_crlf_and_surroundings() {
        let pem = "junk\r\n-----BEGIN X-----\r\nAAEC\r\nAw==\r\n-----END X-----\r\ntrailer";
        assert_eq!(pem_block(pem), Some(vec![0, 1, 2, 3]));
        assert_eq!(pem_block("-----BEGIN X-----\nAAEC\n-----END Y-----"), None);
        assert_eq!(pem_block("no pem here"), None);
        assert_eq!(pem_block("-----BEGIN X-----\n!!!!\n-----END X-----"), None);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(PublicKey::from_pem(""), Err(KeyError::NotPem));
        assert_eq!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----"),
            Err(KeyError::NotRsaPublicKey)
        );
        assert_eq!(
            parse_private_key_pem(
                "-----BEGIN RSA PRIVATE KEY-----\nAAEC\n-----END RSA PRIVATE KEY-----"
            )
            .unwrap_err(),
            KeyError::NotRsaPrivateKey
        );
        assert!(matches!(KeyPair::generate(512), Err(KeyError::Generate(_))));
    }

    #[test]
    fn algorithms() {
        for name in ["RS256", "RS384", "RS512"] {
            assert_eq!(RsaAlgorithm::from_name(name).unwrap().name(), name);
        }
        for name in ["none", "HS256", "PS256", "ES256", "rs256", ""] {
            assert_eq!(RsaAlgorithm::from_name(name), None);
        }
    }
}
