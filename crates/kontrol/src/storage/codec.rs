//! JSON forms of records and key pairs stored by the embedded and etcd backends, and the
//! event payload of the PostgreSQL backend. Timestamps are microseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kite_protocol::Kite;
use serde::{Deserialize, Serialize};

use super::error::StorageError;
use super::{KeyPair, KiteRecord};

pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// `now + ttl`, in microseconds (saturating).
pub(crate) fn deadline(now: SystemTime, ttl: Duration) -> SystemTime {
    let ttl = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX);
    from_micros(micros(now).saturating_add(ttl))
}

/// Truncates to microseconds, the precision every backend stores.
pub(crate) fn now() -> SystemTime {
    from_micros(micros(SystemTime::now()))
}

/// A kite record as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    pub kite: Kite,
    pub url: String,
    pub key_id: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub expires_at: u64,
}

impl StoredRecord {
    pub(crate) fn from_record(r: &KiteRecord) -> StoredRecord {
        StoredRecord {
            kite: r.kite.clone(),
            url: r.url.clone(),
            key_id: r.key_id.clone(),
            created_at: micros(r.created_at),
            updated_at: micros(r.updated_at),
            expires_at: micros(r.expires_at),
        }
    }

    pub(crate) fn into_record(self) -> KiteRecord {
        KiteRecord {
            kite: self.kite,
            url: self.url,
            key_id: self.key_id,
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
            expires_at: from_micros(self.expires_at),
        }
    }
}

pub(crate) fn encode_record(r: &KiteRecord) -> Vec<u8> {
    // Serialising plain strings and integers cannot fail.
    serde_json::to_vec(&StoredRecord::from_record(r)).unwrap_or_default()
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<KiteRecord, StorageError> {
    serde_json::from_slice::<StoredRecord>(bytes)
        .map(StoredRecord::into_record)
        .map_err(|e| StorageError::Corrupt(format!("kite record: {e}")))
}

/// A key pair as stored; `seq` orders pairs by addition (embedded backend).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredKeyPair {
    pub id: String,
    pub public: String,
    pub private: String,
    pub created_at: u64,
    #[serde(default)]
    pub deleted_at: Option<u64>,
    #[serde(default)]
    pub seq: u64,
}

impl StoredKeyPair {
    pub(crate) fn from_pair(p: &KeyPair, seq: u64) -> StoredKeyPair {
        StoredKeyPair {
            id: p.id.clone(),
            public: p.public.clone(),
            private: p.private.clone(),
            created_at: micros(p.created_at),
            deleted_at: p.deleted_at.map(micros),
            seq,
        }
    }

    pub(crate) fn into_pair(self) -> KeyPair {
        KeyPair {
            id: self.id,
            public: self.public,
            private: self.private,
            created_at: from_micros(self.created_at),
            deleted_at: self.deleted_at.map(from_micros),
        }
    }
}

pub(crate) fn encode_key_pair(p: &KeyPair, seq: u64) -> Vec<u8> {
    serde_json::to_vec(&StoredKeyPair::from_pair(p, seq)).unwrap_or_default()
}

pub(crate) fn decode_key_pair(bytes: &[u8]) -> Result<StoredKeyPair, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("key pair: {e}")))
}
