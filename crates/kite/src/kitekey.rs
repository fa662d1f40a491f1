//! The `kite.key` file (PROTOCOL.md 6.3): where it lives, reading, writing and parsing.
//!
//! ```
//! use std::time::SystemTime;
//! use kite::auth::{issue_kite_key, KeyPair};
//! use kite::kitekey::{self, KiteKey};
//!
//! let home = tempfile::tempdir().unwrap();
//! let kontrol = KeyPair::generate(1024).unwrap();
//! let raw = issue_kite_key(&kontrol, "kontrol", "devrim", "http://127.0.0.1:4000/kite",
//!                          SystemTime::now()).unwrap();
//! kitekey::write(home.path(), &raw).unwrap();
//!
//! let key = KiteKey::load(home.path(), SystemTime::now()).unwrap();
//! assert_eq!(key.raw, raw);
//! assert_eq!(key.username(), "devrim");
//! assert_eq!(key.kontrol_url(), "http://127.0.0.1:4000/kite");
//! ```

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::auth::{unix_seconds, Claims, PublicKey, VerifyError, DEFAULT_CLOCK_SKEW};

/// Directory under the home directory holding `kite.key` when `KITE_HOME` is unset.
pub const KITE_DIR_NAME: &str = ".kite";
/// File name of the kite key.
pub const KITE_KEY_FILE_NAME: &str = "kite.key";
/// Mode of a written kite key file.
pub const KITE_KEY_FILE_MODE: u32 = 0o400;
/// Mode of a created kite home directory.
pub const KITE_HOME_DIR_MODE: u32 = 0o700;

/// Errors reading, writing or parsing a kite key.
#[derive(Debug, thiserror::Error)]
pub enum KiteKeyError {
    /// Neither `KITE_HOME` nor `HOME` is set.
    #[error("cannot locate the kite home: neither KITE_HOME nor HOME is set")]
    NoHome,
    /// The file could not be read.
    #[error("cannot read kite key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file could not be written.
    #[error("cannot write kite key {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The key is not a valid kite key.
    #[error("invalid kite key: {0}")]
    Invalid(#[from] VerifyError),
}

/// The kite home directory: `KITE_HOME` if set and non-empty, else `$HOME/.kite`, looked up
/// in the given environment.
pub fn kite_home_from(env: &HashMap<String, String>) -> Result<PathBuf, KiteKeyError> {
    if let Some(home) = env.get("KITE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    env.get("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| Path::new(home).join(KITE_DIR_NAME))
        .ok_or(KiteKeyError::NoHome)
}

/// The kite home directory of this process (see [`kite_home_from`]).
pub fn kite_home() -> Result<PathBuf, KiteKeyError> {
    kite_home_from(&std::env::vars().collect())
}

/// `<kite_home>/kite.key`.
pub fn kite_key_path(kite_home: &Path) -> PathBuf {
    kite_home.join(KITE_KEY_FILE_NAME)
}

/// Reads `<kite_home>/kite.key`, trimmed of surrounding whitespace (not verified).
pub fn read(kite_home: &Path) -> Result<String, KiteKeyError> {
    read_file(&kite_key_path(kite_home))
}

/// Reads a kite key file, trimmed of surrounding whitespace (not verified).
pub fn read_file(path: &Path) -> Result<String, KiteKeyError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| KiteKeyError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Writes `<kite_home>/kite.key` (see [`write_file`]).
pub fn write(kite_home: &Path, kite_key: &str) -> Result<(), KiteKeyError> {
    write_file(&kite_key_path(kite_home), kite_key)
}

/// Writes a kite key file the Go way: create the parent directory (mode 0700) if missing,
/// delete any old file (it is read-only), write the key with mode 0400.
pub fn write_file(path: &Path, kite_key: &str) -> Result<(), KiteKeyError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| KiteKeyError::Write { path, source }
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(KITE_HOME_DIR_MODE)
            .create(dir)
            .map_err(err(dir))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(path)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KITE_KEY_FILE_MODE)
        .open(path)
        .map_err(err(path))?;
    io::Write::write_all(&mut file, kite_key.as_bytes()).map_err(err(path))?;
    file.sync_all().map_err(err(path))
}

/// A parsed, self-consistent kite key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KiteKey {
    /// The JWT as stored (trimmed).
    pub raw: String,
    /// Its claims.
    pub claims: Claims,
}

impl KiteKey {
    /// Parses a kite key and checks it the way Go's `kitekey.Parse` does: RSA signature
    /// against the key in its own `kontrolKey` claim (a consistency check, not a trust
    /// decision) and time claims (with [`DEFAULT_CLOCK_SKEW`]).
    pub fn parse(raw: &str, now: SystemTime) -> Result<Self, KiteKeyError> {
        let raw = raw.trim();
        let decoded = crate::auth::jwt_decode(raw)?;
        let pem = decoded
            .claims
            .kontrol_key
            .as_deref()
            .filter(|pem| !pem.is_empty())
            .ok_or(VerifyError::NoKontrolKey)?;
        let key = PublicKey::from_pem(pem).map_err(VerifyError::from)?;
        let skew = i64::try_from(DEFAULT_CLOCK_SKEW.as_secs()).unwrap_or(0);
        let time = crate::auth::check_time(&decoded.claims, unix_seconds(now), skew);
        if !key.verify(
            decoded.alg,
            decoded.signing_input.as_bytes(),
            &decoded.signature,
        ) {
            return Err(VerifyError::SignatureInvalid.into());
        }
        time?;
        Ok(Self {
            raw: raw.to_owned(),
            claims: decoded.claims,
        })
    }

    /// Reads and parses `<kite_home>/kite.key`.
    pub fn load(kite_home: &Path, now: SystemTime) -> Result<Self, KiteKeyError> {
        Self::load_file(&kite_key_path(kite_home), now)
    }

    /// Reads and parses a kite key file.
    pub fn load_file(path: &Path, now: SystemTime) -> Result<Self, KiteKeyError> {
        Self::parse(&read_file(path)?, now)
    }

    /// `sub`: the owner's username.
    pub fn username(&self) -> &str {
        self.claims.sub.as_deref().unwrap_or("")
    }

    /// `iss`: Kontrol's username.
    pub fn kontrol_user(&self) -> &str {
        self.claims.iss.as_deref().unwrap_or("")
    }

    /// `jti`: the key's id.
    pub fn id(&self) -> &str {
        self.claims.jti.as_deref().unwrap_or("")
    }

    /// `kontrolURL`.
    pub fn kontrol_url(&self) -> &str {
        self.claims.kontrol_url.as_deref().unwrap_or("")
    }

    /// `kontrolKey`: Kontrol's public key PEM.
    pub fn kontrol_key(&self) -> &str {
        self.claims.kontrol_key.as_deref().unwrap_or("")
    }
}
