//! Kontrol's key pairs (PROTOCOL.md 8.4): loaded from storage (so every replica shares
//! them), generated on first start, parsed once, looked up by id and by public key, rotated.
//!
//! The *current* pair is the most recently added pair that is not deleted. It signs
//! Kontrol's own kite key, re-signed kite keys, machine kite keys and tokens for kites whose
//! own pair was deleted. Other replicas learn a rotation at their next reload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use kite::auth::{issue_kite_key, KeyPair as SigningKey, PublicKey, VerifyError};

use crate::error::KontrolError;
use crate::storage::{KeyPair as StoredPair, NewKeyPair, Storage, StorageError};

/// What Kontrol knows about a public key named in a kite key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicStatus {
    /// A stored, active pair with this id.
    Active(String),
    /// A stored pair that was deleted.
    Deleted,
    /// Not a stored pair.
    Unknown,
}

/// One stored pair as Kontrol sees it.
#[derive(Clone)]
struct Known {
    /// The parsed pair; `None` if the stored PEM texts are unusable (logged once).
    signer: Option<Arc<SigningKey>>,
    deleted: bool,
}

/// A consistent view of the key pairs.
pub(crate) struct KeyState {
    /// The current pair.
    pub current: Arc<SigningKey>,
    /// Kontrol's own kite key, signed by the current pair.
    pub kite_key: String,
    pairs: HashMap<String, Known>,
    /// Public PEM (as stored, and canonical) → id.
    by_public: HashMap<String, String>,
}

impl KeyState {
    fn lookup_public(&self, pem: &str) -> Option<&str> {
        let pem = pem.trim();
        if let Some(id) = self.by_public.get(pem) {
            return Some(id);
        }
        let canonical = canonical_pem(pem)?;
        self.by_public.get(&canonical).map(String::as_str)
    }
}

/// The canonical PEM form of a public key (SPKI, 64-column lines, trimmed), if it parses.
fn canonical_pem(pem: &str) -> Option<String> {
    PublicKey::from_pem(pem).ok().map(|k| k.to_pem())
}

/// Kontrol's key pairs.
pub(crate) struct KeyRing {
    storage: Arc<Storage>,
    bits: usize,
    issuer: String,
    kontrol_url: String,
    state: RwLock<Arc<KeyState>>,
}

fn storage_err(operation: &'static str) -> impl FnOnce(StorageError) -> KontrolError {
    move |source| KontrolError::Storage { operation, source }
}

impl KeyRing {
    /// Loads the key pairs, generating and storing one when none is active.
    pub async fn load(
        storage: Arc<Storage>,
        bits: usize,
        issuer: &str,
        kontrol_url: &str,
    ) -> Result<KeyRing, KontrolError> {
        let mut stored = storage
            .key_pairs()
            .await
            .map_err(storage_err("load key pairs"))?;
        if !stored.iter().any(|p| !p.is_deleted()) {
            let pair = generate(bits).await?;
            tracing::info!(
                key_id = pair.id(),
                "kontrol: no key pair found, generated one"
            );
            storage
                .add_key_pair(&NewKeyPair {
                    id: Some(pair.id().to_owned()),
                    public: pair.public_pem().to_owned(),
                    private: pair.private_pem().to_owned(),
                })
                .await
                .map_err(storage_err("add key pair"))?;
            stored = storage
                .key_pairs()
                .await
                .map_err(storage_err("load key pairs"))?;
        }
        let state = build_state(&stored, None, issuer, kontrol_url)?;
        Ok(KeyRing {
            storage,
            bits,
            issuer: issuer.to_owned(),
            kontrol_url: kontrol_url.to_owned(),
            state: RwLock::new(Arc::new(state)),
        })
    }

    /// The current view.
    pub fn state(&self) -> Arc<KeyState> {
        Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_state(&self, state: KeyState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }

    /// The current pair.
    pub fn current(&self) -> Arc<SigningKey> {
        Arc::clone(&self.state().current)
    }

    /// Re-reads the pairs from storage. Returns whether the current pair changed.
    pub async fn reload(&self) -> Result<bool, KontrolError> {
        let stored = self
            .storage
            .key_pairs()
            .await
            .map_err(storage_err("load key pairs"))?;
        let old = self.state();
        let state = build_state(&stored, Some(&old), &self.issuer, &self.kontrol_url)?;
        let changed = state.current.id() != old.current.id();
        self.set_state(state);
        Ok(changed)
    }

    /// The pair to sign with for a kite registered with pair `key_id`: that pair while it is
    /// active, the current pair once it was deleted, `no valid authentication key found` when
    /// Kontrol has no such pair.
    pub async fn signer_for(&self, key_id: &str) -> Result<Arc<SigningKey>, KontrolError> {
        let state = self.state();
        match state.pairs.get(key_id) {
            Some(Known { deleted: true, .. }) => return Ok(Arc::clone(&state.current)),
            Some(Known {
                signer: Some(signer),
                ..
            }) => return Ok(Arc::clone(signer)),
            Some(Known { signer: None, .. }) => return Err(KontrolError::NoValidKey),
            None => {}
        }
        // Possibly added by another replica since the last reload.
        match self.storage.key_pair(key_id).await {
            Ok(_) => {
                self.reload().await?;
                let state = self.state();
                match state.pairs.get(key_id) {
                    Some(Known {
                        signer: Some(signer),
                        deleted: false,
                    }) => Ok(Arc::clone(signer)),
                    Some(Known { deleted: true, .. }) => Ok(Arc::clone(&state.current)),
                    _ => Err(KontrolError::NoValidKey),
                }
            }
            Err(StorageError::KeyPairRemoved) => Ok(Arc::clone(&state.current)),
            Err(StorageError::KeyPairNotFound) => Err(KontrolError::NoValidKey),
            Err(e) => Err(KontrolError::Storage {
                operation: "get key pair",
                source: e,
            }),
        }
    }

    /// Whether `pem` is a stored pair's public key, and its state.
    pub async fn public_status(&self, pem: &str) -> Result<PublicStatus, KontrolError> {
        let state = self.state();
        if let Some(id) = state.lookup_public(pem) {
            return Ok(match state.pairs.get(id) {
                Some(Known { deleted: false, .. }) => PublicStatus::Active(id.to_owned()),
                _ => PublicStatus::Deleted,
            });
        }
        let trimmed = pem.trim();
        let mut candidates = vec![trimmed.to_owned()];
        if let Some(canonical) = canonical_pem(trimmed).filter(|c| c != trimmed) {
            candidates.push(canonical);
        }
        for candidate in candidates {
            match self.storage.key_pair_by_public(&candidate).await {
                Ok(pair) => {
                    // Added by another replica: learn it.
                    self.reload().await?;
                    return Ok(PublicStatus::Active(pair.id));
                }
                Err(StorageError::KeyPairRemoved) => return Ok(PublicStatus::Deleted),
                Err(StorageError::KeyPairNotFound) => {}
                Err(e) => {
                    return Err(KontrolError::Storage {
                        operation: "get key pair",
                        source: e,
                    })
                }
            }
        }
        Ok(PublicStatus::Unknown)
    }

    /// Kontrol's trust rule for kite keys: any stored pair, deleted ones included.
    pub async fn trust(&self, pem: &str) -> Result<(), VerifyError> {
        match self.public_status(pem).await {
            Ok(PublicStatus::Active(_) | PublicStatus::Deleted) => Ok(()),
            Ok(PublicStatus::Unknown) => Err(VerifyError::KontrolKeyNotTrusted),
            Err(e) => {
                tracing::warn!(error = %e, "kontrol: key pair lookup failed");
                Err(VerifyError::Other("kontrol key lookup failed".into()))
            }
        }
    }

    /// Generates a new pair, stores it (it becomes current) and deletes the previous current
    /// pair. Returns the new pair.
    pub async fn rotate(&self) -> Result<Arc<SigningKey>, KontrolError> {
        let old = self.current();
        let pair = generate(self.bits).await?;
        self.add(pair.id(), pair.public_pem(), pair.private_pem())
            .await?;
        self.delete(old.id()).await?;
        Ok(self.current())
    }

    /// Stores a pair (idempotent) and reloads; the newest active pair becomes current.
    pub async fn add(&self, id: &str, public: &str, private: &str) -> Result<(), KontrolError> {
        SigningKey::from_pem(if id.is_empty() { "-" } else { id }, public, private)
            .map_err(|e| KontrolError::InvalidArgument(format!("invalid key pair: {e}")))?;
        self.storage
            .add_key_pair(&NewKeyPair {
                id: (!id.is_empty()).then(|| id.to_owned()),
                public: public.to_owned(),
                private: private.to_owned(),
            })
            .await
            .map_err(|e| KontrolError::storage("add key pair", e))?;
        self.reload().await?;
        Ok(())
    }

    /// Soft-deletes a pair and reloads. Deleting the last active pair is refused.
    pub async fn delete(&self, id: &str) -> Result<(), KontrolError> {
        let state = self.state();
        let others_active = state
            .pairs
            .iter()
            .any(|(other, k)| other != id && !k.deleted && k.signer.is_some());
        if !others_active {
            return Err(KontrolError::InvalidArgument(
                "cannot delete the last active key pair".into(),
            ));
        }
        self.storage
            .delete_key_pair(id)
            .await
            .map_err(|e| KontrolError::storage("delete key pair", e))?;
        self.reload().await?;
        Ok(())
    }
}

async fn generate(bits: usize) -> Result<SigningKey, KontrolError> {
    tokio::task::spawn_blocking(move || SigningKey::generate(bits))
        .await
        .map_err(|e| KontrolError::Signing(kite::auth::KeyError::Generate(e.to_string())))?
        .map_err(KontrolError::Signing)
}

/// Builds the view of `stored` (oldest first), reusing parsed pairs of `old`.
fn build_state(
    stored: &[StoredPair],
    old: Option<&KeyState>,
    issuer: &str,
    kontrol_url: &str,
) -> Result<KeyState, KontrolError> {
    let mut pairs = HashMap::with_capacity(stored.len());
    let mut by_public = HashMap::with_capacity(stored.len() * 2);
    let mut current: Option<Arc<SigningKey>> = None;
    for p in stored {
        let reused = old
            .and_then(|o| o.pairs.get(&p.id))
            .and_then(|k| k.signer.clone())
            .filter(|s| s.public_pem() == p.public.trim());
        let signer = match reused {
            Some(s) => Some(s),
            None => match SigningKey::from_pem(&p.id, &p.public, &p.private) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(key_id = %p.id, error = %e, "kontrol: unusable stored key pair");
                    None
                }
            },
        };
        if !p.is_deleted() {
            if let Some(s) = &signer {
                current = Some(Arc::clone(s));
            }
        }
        by_public.insert(p.public.trim().to_owned(), p.id.clone());
        if let Some(canonical) = canonical_pem(&p.public) {
            by_public.entry(canonical).or_insert_with(|| p.id.clone());
        }
        pairs.insert(
            p.id.clone(),
            Known {
                signer,
                deleted: p.is_deleted(),
            },
        );
    }
    let current = current.ok_or(KontrolError::NoValidKey)?;
    let kite_key = match old {
        Some(o) if o.current.id() == current.id() => o.kite_key.clone(),
        _ => issue_kite_key(&current, issuer, issuer, kontrol_url, SystemTime::now())
            .map_err(KontrolError::Signing)?,
    };
    Ok(KeyState {
        current,
        kite_key,
        pairs,
        by_public,
    })
}
