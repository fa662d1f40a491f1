//! Etcd backend (not implemented yet).

use std::time::Duration;

use tokio::sync::broadcast;

use super::error::{Result, StorageError};
use super::query::{CheckedKeyPair, Matcher};
use super::watch::HubMsg;
use super::{EtcdConfig, KeyLookup, KeyPair, KiteRecord, Registration};

/// The Etcd backend.
pub(crate) struct Etcd {}

fn todo() -> StorageError {
    StorageError::Config("backend not implemented yet".into())
}

impl Etcd {
    pub(crate) async fn connect(_c: &EtcdConfig) -> Result<Etcd> {
        Err(todo())
    }
    pub(crate) async fn upsert(&self, _r: &Registration, _t: Duration) -> Result<KiteRecord> {
        Err(todo())
    }
    pub(crate) async fn refresh(&self, _id: &str, _t: Duration) -> Result<bool> {
        Err(todo())
    }
    pub(crate) async fn delete(&self, _id: &str) -> Result<bool> {
        Err(todo())
    }
    pub(crate) async fn get(&self, _m: &Matcher) -> Result<Vec<KiteRecord>> {
        Err(todo())
    }
    pub(crate) async fn count(&self) -> Result<u64> {
        Err(todo())
    }
    pub(crate) async fn subscribe(&self) -> Result<broadcast::Receiver<HubMsg>> {
        Err(todo())
    }
    pub(crate) async fn sweep(&self) -> Result<u64> {
        Err(todo())
    }
    pub(crate) async fn add_key_pair(&self, _p: CheckedKeyPair) -> Result<KeyPair> {
        Err(todo())
    }
    pub(crate) async fn delete_key_pair(&self, _id: &str) -> Result<()> {
        Err(todo())
    }
    pub(crate) async fn find_key_pair(&self, _by: KeyLookup<'_>) -> Result<Option<KeyPair>> {
        Err(todo())
    }
    pub(crate) async fn key_pairs(&self) -> Result<Vec<KeyPair>> {
        Err(todo())
    }
}
