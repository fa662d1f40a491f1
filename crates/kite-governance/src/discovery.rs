//! Discovery-backed clients: [`dial_kites`] keeps a balancer's instance set in sync with
//! Kontrol's watch of a query (REGISTER inserts, DEREGISTER removes) and re-watches, with
//! back-off, when the Kontrol connection is lost, reconciling the set with the kites that
//! match then.

use std::collections::HashMap;
use std::time::Duration;

use kite::protocol::KontrolQuery;
use kite::{Kite, KiteError, KiteWithToken, KontrolClient, WatchAction, Watcher};
use tokio::sync::mpsc;

use crate::balance::{changes_channel, Change, Instance};
use crate::client::{ClientConfig, GovernedClient};
use crate::tuple::cluster_of;

/// Capacity of the change queue between the watch and the balancer.
pub const CHANGE_QUEUE: usize = 1024;

/// First pause before re-watching after the Kontrol connection was lost (doubles up to
/// [`MAX_REWATCH_BACKOFF`]).
pub const REWATCH_BACKOFF: Duration = Duration::from_millis(500);
/// Largest pause between re-watch attempts.
pub const MAX_REWATCH_BACKOFF: Duration = Duration::from_secs(30);

/// The cluster a query addresses: `environment[/region]`, `*` when the environment is
/// left open.
pub fn query_cluster(query: &KontrolQuery) -> String {
    if query.environment.is_empty() {
        "*".to_string()
    } else {
        cluster_of(&query.environment, &query.region)
    }
}

/// A governed client for the kites matching `query`: watches them through `kite`'s
/// Kontrol client (`getKites` with a watch callback), dials each one (with the token
/// Kontrol issued, renewed automatically) and balances calls across the live set. Fails
/// if the first watch fails (Kontrol unreachable, bad query).
///
/// The five-tuple's `to` is the query's name, `to_cluster` its environment[/region].
pub async fn dial_kites(
    kite: &Kite,
    query: KontrolQuery,
    config: &ClientConfig,
) -> Result<GovernedClient, KiteError> {
    let kontrol = kite.kontrol();
    let watcher = kontrol.watch_kites(&query).await?;
    let (tx, changes) = changes_channel(CHANGE_QUEUE);
    let client =
        GovernedClient::balanced(kite, &query.name, &query_cluster(&query), changes, config);
    tokio::spawn(follow(kontrol, query, watcher, tx));
    Ok(client)
}

fn instance(kontrol: &KontrolClient, k: &KiteWithToken) -> Instance {
    Instance::new(k.kite.clone(), kontrol.client_for(k))
}

/// Applies the watch to the balancer until the balancer is gone.
async fn follow(
    kontrol: KontrolClient,
    query: KontrolQuery,
    mut watcher: Watcher,
    tx: mpsc::Sender<Change>,
) {
    // id -> url of the instances the balancer has.
    let mut known: HashMap<String, String> = HashMap::new();
    if reconcile(&kontrol, watcher.kites(), &mut known, &tx)
        .await
        .is_err()
    {
        return;
    }
    loop {
        loop {
            let event = tokio::select! {
                e = watcher.next_event() => e,
                // The balancer is gone: stop (dropping the watcher cancels it on Kontrol).
                _ = tx.closed() => return,
            };
            let Some(event) = event else { break };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(query = %query, "watch error: {e}");
                    continue;
                }
            };
            let id = event.kite.id.clone();
            let change = match event.action {
                WatchAction::Register => {
                    if known.get(&id) == Some(&event.url) {
                        continue;
                    }
                    known.insert(id, event.url.clone());
                    Change::Insert(instance(&kontrol, &event.to_kite_with_token()))
                }
                WatchAction::Deregister => {
                    if known.remove(&id).is_none() {
                        continue;
                    }
                    Change::Remove(id)
                }
                WatchAction::Other(a) => {
                    tracing::debug!(action = a, "ignoring watch event");
                    continue;
                }
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
        // The Kontrol connection was lost: watch again, with back-off.
        tracing::info!(query = %query, "Kontrol watch ended, watching again");
        let mut pause = REWATCH_BACKOFF;
        watcher = loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(pause).await;
            match kontrol.watch_kites(&query).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::debug!(query = %query, "re-watch failed: {e}");
                    pause = (pause * 2).min(MAX_REWATCH_BACKOFF);
                }
            }
        };
        if reconcile(&kontrol, watcher.kites(), &mut known, &tx)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Makes the balancer's set equal to `kites`.
async fn reconcile(
    kontrol: &KontrolClient,
    kites: &[KiteWithToken],
    known: &mut HashMap<String, String>,
    tx: &mpsc::Sender<Change>,
) -> Result<(), mpsc::error::SendError<Change>> {
    let gone: Vec<String> = known
        .keys()
        .filter(|id| !kites.iter().any(|k| &k.kite.id == *id))
        .cloned()
        .collect();
    for id in gone {
        known.remove(&id);
        tx.send(Change::Remove(id)).await?;
    }
    for k in kites {
        if known.get(&k.kite.id) == Some(&k.url) {
            continue;
        }
        known.insert(k.kite.id.clone(), k.url.clone());
        tx.send(Change::Insert(instance(kontrol, k))).await?;
    }
    Ok(())
}
