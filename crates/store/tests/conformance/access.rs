//! Access: tokens by hash, the audit log, shared secrets.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use tenantsync_core::TokenName;
use tenantsync_store::{AuditEntry, MasterStore, StoredToken};

pub(crate) async fn tokens_are_stored_by_hash_and_revoked(store: &dyn MasterStore) {
    let token = |name: &str, hash: &str, scopes: &[&str]| StoredToken {
        name: TokenName::new(name).unwrap(),
        hash: hash.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        created_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
    };
    let ci = token("ci", &"a".repeat(64), &["write:inventory:*", "read:*:acme"]);
    let admin = token("admin", &"b".repeat(64), &["admin"]);
    assert!(store.tokens().await.unwrap().is_empty());
    assert!(store.create_token(&ci).await.unwrap());
    assert!(store.create_token(&admin).await.unwrap());
    assert!(
        !store
            .create_token(&token("ci", &"c".repeat(64), &["admin"]))
            .await
            .unwrap(),
        "a name is taken once"
    );
    assert_eq!(
        store.tokens().await.unwrap(),
        vec![admin.clone(), ci.clone()]
    );
    assert_eq!(
        store.token_by_hash(&ci.hash).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(store.token_by_hash(&"c".repeat(64)).await.unwrap(), None);
    assert_eq!(
        store.token_by_hash(&ci.hash.to_uppercase()).await.unwrap(),
        None,
        "hashes compare exactly"
    );

    assert!(store.revoke_token(&ci.name).await.unwrap());
    assert!(!store.revoke_token(&ci.name).await.unwrap());
    assert_eq!(store.token_by_hash(&ci.hash).await.unwrap(), None);
    assert_eq!(store.tokens().await.unwrap(), vec![admin]);
    // The name is free again.
    assert!(store.create_token(&ci).await.unwrap());
}

pub(crate) async fn missing_tokens_are_the_revoked_and_unknown(store: &dyn MasterStore) {
    let token = |name: &str, hash: &str| StoredToken {
        name: TokenName::new(name).unwrap(),
        hash: hash.to_owned(),
        scopes: vec!["admin".to_owned()],
        created_at: DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap(),
    };
    let (a, b, unknown) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    assert!(store.missing_tokens(&[]).await.unwrap().is_empty());
    assert_eq!(
        store.missing_tokens(&[a.clone(), b.clone()]).await.unwrap(),
        vec![a.clone(), b.clone()],
        "nothing is stored yet"
    );
    assert!(store.create_token(&token("one", &a)).await.unwrap());
    assert!(store.create_token(&token("two", &b)).await.unwrap());
    let asked = [unknown.clone(), a.clone(), b.clone(), a.to_uppercase()];
    assert_eq!(
        store.missing_tokens(&asked).await.unwrap(),
        vec![unknown.clone(), a.to_uppercase()],
        "stored hashes are not missing; hashes compare exactly; in the order given"
    );

    assert!(
        store
            .revoke_token(&TokenName::new("one").unwrap())
            .await
            .unwrap()
    );
    assert_eq!(
        store.missing_tokens(&asked).await.unwrap(),
        vec![unknown, a.clone(), a.to_uppercase()],
        "a revoked token is missing"
    );

    // Many hashes in one call: an instance asks about every token its streams hold.
    let many: Vec<String> = (0..5_000).map(|i| format!("{i:064x}")).collect();
    let mut asked = many.clone();
    asked.push(b.clone());
    assert_eq!(store.missing_tokens(&asked).await.unwrap(), many);

    // A new token under the freed name has another hash: the old one stays missing.
    assert!(
        store
            .create_token(&token("one", &"d".repeat(64)))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .missing_tokens(std::slice::from_ref(&a))
            .await
            .unwrap(),
        vec![a]
    );
}

fn audit(
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        // Ignored by append_audit.
        seq: 999,
        at,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    }
}

pub(crate) async fn audit_log_appends_and_pages(store: &dyn MasterStore) {
    assert!(store.audit_log(0, 10).await.unwrap().is_empty());
    let t0 = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
    let entries = [
        audit(
            t0 + chrono::Duration::nanoseconds(789),
            "ci",
            "token.created",
            "deploy",
            json!({"scopes": ["write:*:acme"], "nested": {"n": 1.5, "none": null}}),
        ),
        audit(
            t0,
            "jwt:alice",
            "subscription.deleted",
            "billing",
            json!({}),
        ),
        audit(
            t0,
            "cli",
            "erasure.started",
            "acme",
            json!({"why": "gdpr ✓ \"quoted\""}),
        ),
        audit(
            t0,
            "tenantsync",
            "erasure.finished",
            "acme",
            json!({"erased": 12}),
        ),
        audit(t0, "cli", "token.revoked", "deploy", json!({"n": u64::MAX})),
    ];
    let mut seqs = Vec::new();
    for e in &entries {
        seqs.push(store.append_audit(e).await.unwrap());
    }
    assert_eq!(seqs[0], 1, "seqs start at 1");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");

    let expected: Vec<AuditEntry> = entries
        .iter()
        .zip(&seqs)
        .map(|(e, &seq)| AuditEntry {
            seq,
            at: DateTime::from_timestamp_micros(e.at.timestamp_micros()).unwrap(),
            ..e.clone()
        })
        .collect();
    assert_eq!(expected[0].at, t0, "to the microsecond");
    assert_eq!(store.audit_log(0, 10).await.unwrap(), expected);
    assert_eq!(store.audit_log(0, 2).await.unwrap(), expected[..2]);
    assert_eq!(store.audit_log(seqs[1], 2).await.unwrap(), expected[2..4]);
    assert_eq!(store.audit_log(seqs[3], 2).await.unwrap(), expected[4..]);
    assert!(store.audit_log(seqs[4], 2).await.unwrap().is_empty());
    assert!(store.audit_log(0, 0).await.unwrap().is_empty(), "limit 0");
    assert!(store.audit_log(u64::MAX, 10).await.unwrap().is_empty());
}

pub(crate) async fn secrets_are_created_once(store: &dyn MasterStore) {
    let first: Vec<u8> = (0..=255).collect();
    assert_eq!(store.secret("cursor-hmac", &first).await.unwrap(), first);
    assert_eq!(
        store
            .secret("cursor-hmac", b"another candidate")
            .await
            .unwrap(),
        first,
        "a stored secret is never replaced"
    );
    assert_eq!(store.secret("other", &[0, 0, 7]).await.unwrap(), [0, 0, 7]);
    assert_eq!(store.secret("cursor-hmac", &[]).await.unwrap(), first);
}

/// Several instances starting at once each offer their own secret; all end up with one.
pub(crate) async fn secret_racers_agree(store: Arc<dyn MasterStore>) {
    const RACERS: u8 = 8;
    for round in 0..5 {
        let name = format!("race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(usize::from(RACERS)));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, barrier, name) =
                    (Arc::clone(&store), Arc::clone(&barrier), name.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.secret(&name, &[i; 32]).await.expect("secret")
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.expect("racer"));
        }
        assert!(
            got.iter().all(|g| *g == got[0]),
            "round {round}: racers got different secrets"
        );
        assert!(got[0].len() == 32 && got[0].iter().all(|&b| b == got[0][0] && b < RACERS));
        assert_eq!(store.secret(&name, b"late").await.unwrap(), got[0]);
    }
}
