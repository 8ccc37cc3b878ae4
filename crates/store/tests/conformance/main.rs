//! The master store's conformance suite, written once and run against every backend.
//!
//! One module per concern of the store (records, feed, subscriptions, access, erasure,
//! coordination (claims, the batch queue, the instance registry), rejected entries, sources
//! (definitions, shard claims, rejections), push (targets, claims, progress, attempts), schemas
//! (versions, ids, contract settings, the generation); `model` holds the randomised and
//! model-based cases of records). Each case is a plain async fn over `&dyn MasterStore` (or `Arc<dyn MasterStore>`
//! when it shares the store between concurrent tasks); the `conformance!` macro instantiates
//! every case for every backend, each on a fresh store (its own temp dir or PostgreSQL schema),
//! so they run in parallel, named `BACKEND::CONCERN::CASE`. PostgreSQL cases read
//! `TENANTSYNC_TEST_POSTGRES` and print a skip notice when it is unset. A backend is done when
//! this suite passes on it.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod coordination;
mod erasure;
mod feed;
mod model;
mod push;
mod records;
mod rejected;
mod schemas;
mod sources;
mod subscriptions;

use tenantsync_core::{Change, Record};
use tenantsync_store::{LoggedChange, MasterStore, TenantFeed};

use common::*;

/// Instantiates every case for every backend. A case is listed as `KIND NAME` under its
/// concern's module, where KIND says how it gets its store: `store` a `&dyn MasterStore`,
/// `shared` an `Arc<dyn MasterStore>`, `legacy` a store migrated from schema version 1 holding
/// the module's `LEGACY` records, and `runtime` a `&dyn MasterStore` with the runtime it was
/// opened on (for cases that drive a property-test runner themselves).
macro_rules! conformance {
    (backends: [$($backend:ident),*]; $suite:tt) => {
        $( conformance!(@backend $backend $suite); )*
    };
    (@backend $backend:ident { $($concern:ident: [$($kind:ident $case:ident),* $(,)?]),* $(,)? }) => {
        mod $backend {
            $(
                mod $concern {
                    $( conformance!(@case $backend $concern $kind $case); )*
                }
            )*
        }
    };
    (@case $backend:ident $concern:ident store $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(h) = crate::common::$backend().await else { return };
            crate::$concern::$case(&*h.store).await;
        }
    };
    (@case $backend:ident $concern:ident shared $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(h) = crate::common::$backend().await else { return };
            crate::$concern::$case(std::sync::Arc::clone(&h.store)).await;
        }
    };
    (@case $backend:ident $concern:ident legacy $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(h) = crate::common::v1::$backend(crate::$concern::LEGACY).await else {
                return;
            };
            crate::$concern::$case(&*h.store).await;
        }
    };
    (@case $backend:ident $concern:ident runtime $case:ident) => {
        #[test]
        fn $case() {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let Some(h) = rt.block_on(crate::common::$backend()) else { return };
            crate::$concern::$case(&rt, &*h.store);
        }
    };
}

conformance! {
    backends: [sqlite, postgres];
    {
        records: [
            store declare_and_list_datasets,
            store upsert_get_and_unchanged_data,
            store patch_is_json_merge_patch,
            store delete_and_recreate_continue_the_version,
            store expected_versions,
            store rejections_are_stored_outcomes,
            store patches_refused_by_the_check_are_stored_rejections,
            store idempotent_reapply_of_the_same_batch,
            store reapply_below_the_position,
            store position_never_moves_backwards,
            store duplicate_change_ids,
            store change_id_reused_for_another_record,
            store states_content_and_order,
            store outcome_lookups,
            store outcomes_are_pruned_oldest_first_in_bounded_batches,
            legacy legacy_outcomes_are_kept_a_window_from_the_upgrade,
            store scan_pages_in_byte_order_with_tombstones,
            store tenants_and_datasets_never_mixed,
            store failed_apply_leaves_nothing_behind,
            store empty_and_huge_values,
            store check_succeeds,
        ],
        model: [
            shared concurrent_overlapping_applies,
            runtime model_based,
        ],
        feed: [
            store feed_orders_by_seq_and_pages,
            store feed_skips_tombstones_below_live_from,
            store purge_tombstones_raises_horizon_and_floor,
            store tenant_ends_lists_every_tenant,
            store feeds_never_mix_tenants_and_datasets,
            legacy legacy_records_get_ranked_seqs,
            shared feed_pages_miss_no_write_under_concurrent_applies,
            shared versions_never_go_down_under_concurrent_purges,
        ],
        subscriptions: [
            store subscriptions_crud_and_acks,
        ],
        access: [
            store tokens_are_stored_by_hash_and_revoked,
            store missing_tokens_are_the_revoked_and_unknown,
            store audit_log_appends_and_pages,
            store secrets_are_created_once,
            shared secret_racers_agree,
        ],
        erasure: [
            store erasure_lifecycle,
            shared erasure_finish_racing_applies_leaves_no_rejection,
        ],
        coordination: [
            store batcher_claim_lifecycle,
            store batch_dispatch_moves_by_compare_and_set,
            store expired_batches_are_retaken_earliest_first,
            store batch_acks,
            store batch_datasets_are_independent,
            shared batcher_claim_racers_one_wins,
            shared batch_claim_racers_one_wins,
            shared batch_retake_racers_take_each_lease_once,
            store instance_registry_lifecycle,
            shared instance_heartbeats_racing_register_all,
        ],
        rejected: [
            store rejected_entries_are_recorded_once_and_paged_in_order,
            store rejected_entries_are_bounded_per_dataset,
            shared rejected_recorders_racing_keep_ids_in_order,
        ],
        sources: [
            store source_definitions_are_revised_only_when_changed,
            store source_claim_lifecycle,
            store deleting_a_source_removes_everything_kept_for_it,
            store source_rejections_are_recorded_once_per_position_and_paged,
            store source_rejections_are_bounded_per_source,
            shared source_claim_racers_one_wins,
            shared source_renew_racing_takeover_one_wins,
            shared source_delete_racing_claims_and_recorders_leaves_nothing,
            shared source_rejection_recorders_racing_keep_ids_in_order,
        ],
        push: [
            store push_definitions_are_revised_only_when_changed,
            store push_puts_compare_and_set,
            store push_kinds_are_separate_namespaces,
            store push_claim_lifecycle,
            store push_progress_is_written_under_the_current_epoch,
            store replacing_progress_fences_the_holder,
            store deleting_a_push_target_removes_everything_kept_for_it,
            store push_attempts_are_bounded_newest_first,
            shared push_claim_racers_one_wins,
            shared push_progress_racing_a_replay_never_lands_after_it,
            shared push_claims_racing_a_replay_read_it_or_are_fenced,
            shared push_delete_racing_writes_leaves_nothing,
        ],
        schemas: [
            store schema_versions_and_ids,
            store schema_puts_compare_and_set,
            store contract_settings_defaults_and_updates,
            store generation_changes_with_every_write,
            shared schema_registrations_racing_agree_with_the_history,
        ],
    }
}

// Helpers shared by the cases of several concerns.

async fn apply_ok(
    store: &dyn MasterStore,
    dataset: &str,
    batch: &[LoggedChange],
    next_offset: u64,
) -> tenantsync_store::Applied {
    store
        .apply(&ds(dataset), 0, batch, next_offset)
        .await
        .expect("apply")
}

/// Applies one change at `offset` and returns its outcome.
async fn one(store: &dyn MasterStore, offset: u64, c: Change) -> tenantsync_core::Outcome {
    let applied = apply_ok(store, "items", &at(offset, vec![c]), offset + 1).await;
    assert_eq!(applied.outcomes.len(), 1);
    applied.outcomes[0].clone()
}

async fn get(store: &dyn MasterStore, t: &str, id: &str) -> Option<Record> {
    store
        .get(&ds("items"), &tenant(t), &eid(id))
        .await
        .expect("get")
}

async fn feed(
    store: &dyn MasterStore,
    t: &str,
    from: u64,
    live_from: Option<u64>,
    limit: usize,
) -> TenantFeed {
    store
        .tenant_feed(&ds("items"), &tenant(t), from, live_from, limit)
        .await
        .expect("tenant feed")
}

/// A feed page as (id, seq, version, deleted), for short assertions.
fn page(f: &TenantFeed) -> Vec<(&str, u64, u64, bool)> {
    f.records
        .iter()
        .map(|r| {
            (
                r.record.id.as_str(),
                r.seq,
                r.record.version,
                r.record.is_deleted(),
            )
        })
        .collect()
}

async fn ends(store: &dyn MasterStore, dataset: &str) -> Vec<(String, u64)> {
    store
        .tenant_ends(&ds(dataset))
        .await
        .expect("tenant ends")
        .into_iter()
        .map(|(t, end)| (t.to_string(), end))
        .collect()
}
