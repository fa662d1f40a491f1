//! Balancing strategies over real instances: consistent hashing keeps a key on its
//! instance and moves only the keys of an instance that leaves; weighted random follows
//! the weights; round robin takes turns.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kite::Request;
use kite_governance::{
    changes_channel, BalancerConfig, Change, ClientConfig, GovernedClient, Instance, Strategy,
};
use serde_json::json;

async fn worker() -> Node {
    start("worker", |k| {
        let id = k.id().to_string();
        k.handle_func("who", move |_r: Request| {
            let id = id.clone();
            async move { Ok(json!(id)) }
        });
    })
    .await
}

async fn cluster(
    caller: &Node,
    workers: &[&Node],
    weights: &[u32],
    strategy: Strategy,
) -> (GovernedClient, tokio::sync::mpsc::Sender<Change>) {
    let config = ClientConfig {
        balancer: BalancerConfig {
            strategy,
            ..Default::default()
        },
        ..Default::default()
    };
    let (tx, changes) = changes_channel(16);
    let client = GovernedClient::balanced(&caller.kite, "worker", "test/local", changes, &config);
    for (w, weight) in workers.iter().zip(weights) {
        let i =
            Instance::new(w.identity.clone(), caller.kite.new_client(&w.url)).with_weight(*weight);
        tx.send(Change::Insert(i)).await.unwrap();
    }
    assert!(
        client
            .balancer()
            .unwrap()
            .wait_connected(workers.len(), Duration::from_secs(10))
            .await
    );
    (client, tx)
}

async fn who(c: &GovernedClient, key: Option<&str>) -> String {
    let v = match key {
        Some(k) => c.call_keyed("who", &(), k).await.unwrap(),
        None => c.call("who", &()).await.unwrap(),
    };
    v.as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_moves_only_the_keys_of_a_leaving_instance() {
    let (a, b, c) = (worker().await, worker().await, worker().await);
    let caller = start("caller", |_| {}).await;
    let (client, tx) = cluster(&caller, &[&a, &b, &c], &[1, 1, 1], Strategy::ConsistentHash).await;
    let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut owner = HashMap::new();
    for k in &keys {
        let first = who(&client, Some(k)).await;
        for _ in 0..3 {
            assert_eq!(who(&client, Some(k)).await, first, "{k} is sticky");
        }
        owner.insert(k.clone(), first);
    }
    let used: std::collections::HashSet<_> = owner.values().cloned().collect();
    assert_eq!(used.len(), 3, "60 keys spread over the three instances");
    tx.send(Change::Remove(b.identity.id.clone()))
        .await
        .unwrap();
    let balancer = client.balancer().unwrap().clone();
    assert!(eventually(Duration::from_secs(5), || balancer.instances().len() == 2).await);
    for k in &keys {
        let now = who(&client, Some(k)).await;
        if owner[k] == b.identity.id {
            assert_ne!(now, b.identity.id);
        } else {
            assert_eq!(now, owner[k], "{k} stays where it was");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_random_and_round_robin() {
    let (a, b) = (worker().await, worker().await);
    let caller = start("caller", |_| {}).await;
    // Weight 0 never gets a call while another instance is usable.
    let (client, _tx) = cluster(&caller, &[&a, &b], &[0, 1], Strategy::WeightedRandom).await;
    for _ in 0..20 {
        assert_eq!(who(&client, None).await, b.identity.id);
    }
    // 1 : 3 over 400 calls: a gets about 100 (standard deviation about 9).
    let (client, _tx2) = cluster(&caller, &[&a, &b], &[1, 3], Strategy::WeightedRandom).await;
    let mut to_a = 0;
    for _ in 0..400 {
        if who(&client, None).await == a.identity.id {
            to_a += 1;
        }
    }
    assert!((50..=160).contains(&to_a), "{to_a}");
    // Round robin alternates.
    let (client, _tx3) = cluster(&caller, &[&a, &b], &[1, 1], Strategy::RoundRobin).await;
    let seq: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(who(&client, None).await);
        }
        v
    };
    for pair in seq.windows(2) {
        assert_ne!(pair[0], pair[1], "{seq:?}");
    }
}
