//! The kinds of task failure (`TaskError.kind`), part of the contract:
//! clients match on them, retry policies and dead letters report them.

// Reported by the executor.
pub const TIMEOUT: &str = "timeout";
pub const MEMORY_LIMIT: &str = "memory_limit";
pub const PROCESS_LIMIT: &str = "process_limit";
pub const CPU_LIMIT: &str = "cpu_limit";
pub const OUTPUT_LIMIT: &str = "output_limit";
pub const EXIT_CODE: &str = "exit_code";
pub const SIGNAL: &str = "signal";
pub const SPAWN: &str = "spawn_failed";
pub const SANDBOX: &str = "sandbox";
pub const ISOLATION_UNAVAILABLE: &str = "isolation_unavailable";
pub const INVALID_INPUT: &str = "invalid_input";
pub const HTTP_STATUS: &str = "http_status";
pub const HTTP: &str = "http";
pub const UNSUPPORTED: &str = "unsupported_runtime";
/// The agent asked for something the operator did not grant.
pub const NOT_GRANTED: &str = "not_granted";
/// A drain stopped the task: retryable, and it counts as an attempt (the
/// task had started).
pub const WORKER_DRAINED: &str = "worker_drained";

// Reported by either: the output does not match the agent's schema; the
// task was cancelled.
pub const INVALID_OUTPUT: &str = "invalid_output";
pub const CANCELLED: &str = "cancelled";

// Assigned by the scheduler.
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";
pub const START_TO_CLOSE_TIMEOUT: &str = "start_to_close_timeout";
pub const SCHEDULE_TO_START_TIMEOUT: &str = "schedule_to_start_timeout";
pub const INPUT_TEMPLATE: &str = "input_template";
pub const UPSTREAM_FAILED: &str = "upstream_failed";
pub const RUN_FAILED: &str = "run_failed";
pub const WORKER_LOST: &str = "worker_lost";
/// An approval task rejected by an approver, or not decided in time.
pub const APPROVAL_REJECTED: &str = "approval_rejected";
pub const APPROVAL_TIMEOUT: &str = "approval_timeout";
