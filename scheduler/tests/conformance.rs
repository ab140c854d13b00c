//! The scheduler store's conformance suite: every test runs on PostgreSQL
//! and on SQLite, each on a fresh database.

mod common;

/// The cases, by area; each is `async fn(Store)`.
mod conformance {
    pub mod leases;
    pub mod runs;
    pub mod schedules;
    pub mod timers;
}

use conformance::{leases::*, runs::*, schedules::*, timers::*};

devcycle::conformance! {
    tests: [
    sync_match_and_events,
    idempotent_submit_under_concurrent_callers,
    priority_then_age,
    agent_lists_claim_their_own_queues,
    stale_results_are_fenced,
    expiry_retries_then_dead_letters,
    dag_renders_upstream_outputs,
    fail_fast_and_continue,
    cancel_tells_the_worker,
    concurrency_keys_cap_running_tasks,
    rate_limits_pace_starts,
    heartbeats_and_release,
    schedule_to_start_deadline,
    outbox_in_order,
    logs_workflows_and_listing,
    schedule_to_start_is_per_attempt,
    retry_revives_only_what_can_finish,
    unheld_leases_return_or_fail,
    a_lease_is_trusted_only_from_its_worker,
    queue_gauges_count_the_whole_database,
    a_failed_batch_changes_nothing,
    schedules_are_claimed_once_per_tick,
    approvals_wait_for_a_decision_or_time_out
    ],
    postgres(run) => {
        let (store, _pool) = common::postgres().await;
        run(store).await
    },
    sqlite(run) => {
        let (store, _dir) = common::sqlite().await;
        run(store).await
    },
}

/// When the tests' clocks start (Unix milliseconds).
const T0: i64 = 1_700_000_000_000;
