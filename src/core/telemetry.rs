//! Metric names and the process-wide recorder: a leaf every part of pgway records through.
//!
//! Label values come only from closed sets (method names from the proto, status code names,
//! fixed reasons), never from SQL or anything a caller sends, so cardinality stays bounded.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const POOL_CONNECTIONS: &str = "pgway_pool_connections";
pub const POOL_MAX: &str = "pgway_pool_max_connections";
pub const POOL_MIN: &str = "pgway_pool_min_connections";
pub const POOL_WAITING: &str = "pgway_pool_waiting";
pub const POOL_WAIT_SECONDS: &str = "pgway_pool_wait_seconds";
pub const POOL_ACQUIRE_TIMEOUTS: &str = "pgway_pool_acquire_timeouts_total";
pub const CONNECTIONS_OPENED: &str = "pgway_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "pgway_connections_closed_total";
pub const CONNECTION_ERRORS: &str = "pgway_connection_errors_total";
pub const REQUESTS: &str = "pgway_requests_total";
pub const REQUEST_DURATION: &str = "pgway_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "pgway_requests_in_flight";
pub const RETRIES: &str = "pgway_retries_total";
pub const SHED: &str = "pgway_shed_total";
pub const TRANSACTIONS: &str = "pgway_transactions_total";
pub const TRANSACTION_ATTEMPTS: &str = "pgway_transaction_attempts";
pub const DATABASE_UP: &str = "pgway_database_up";
pub const BUILD_INFO: &str = "pgway_build_info";
pub const AUTH_FAILURES: &str = "pgway_auth_failures_total";
pub const AUTH_RELOADS: &str = "pgway_auth_reloads_total";
pub const CALLER_LIMITED: &str = "pgway_caller_limited_total";
pub const TLS_RELOADS: &str = "pgway_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "pgway_tls_handshake_failures_total";
pub const PG_CLIENTS: &str = "pgway_pg_clients";
pub const PG_PREPARED: &str = "pgway_pg_prepared_statements_total";
pub const PG_CANCELS: &str = "pgway_pg_cancels_total";
pub const PG_AUTH_FAILURES: &str = "pgway_pg_auth_failures_total";
pub const PG_TIMEOUTS: &str = "pgway_pg_timeouts_total";
pub const PG_STATEMENTS_DROPPED: &str = "pgway_pg_statements_dropped_total";
pub const PG_REFUSALS: &str = "pgway_pg_refusals_total";
pub const PG_CONSOLE_COMMANDS: &str = "pgway_pg_console_commands_total";
pub const PAUSED: &str = "pgway_paused";

/// Installs the process-wide recorder once and returns its handle. Several gateways in one
/// process (the tests) share it.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TRANSACTION_ATTEMPTS.into()),
                        &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0],
                    )
                });
            let handle = match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => handle,
                // Another recorder is installed (an embedding application's): keep ours
                // unregistered so /metrics still renders, empty rather than failing.
                _ => PrometheusBuilder::new().build_recorder().handle(),
            };
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_known_series();
            handle
        })
        .clone()
}

/// `pgway_connections_closed_total{reason}`'s values.
pub const CLOSE_REASONS: [&str; 8] = [
    "broken",
    "lifetime",
    "idle",
    "abandoned",
    "reset_failed",
    "shutdown",
    "reclaimed",
    "reconnect",
];
/// `pgway_connection_errors_total{kind}`'s values (`ConnectError::kind`).
const CONNECT_ERROR_KINDS: [&str; 8] = [
    "auth",
    "database_missing",
    "too_many_connections",
    "starting_up",
    "refused",
    "tls",
    "timeout",
    "network",
];
/// `pgway_retries_total{reason}`'s values.
const RETRY_REASONS: [&str; 3] = ["connection_lost", "server_restart", "transaction_conflict"];
/// `pgway_transactions_total{outcome}`'s values.
const TRANSACTION_OUTCOMES: [&str; 4] = ["committed", "rolled_back", "aborted", "outcome_unknown"];
/// `pgway_auth_failures_total{reason}`'s values.
/// `pgway_pg_auth_failures_total`'s causes (see `pgwire::startup`).
pub const PG_LOGIN_REFUSALS: [&str; 14] = [
    "unknown_user",
    "wrong_password",
    "bad_exchange",
    "unknown_database",
    "tls_required",
    "protocol",
    "replication",
    "too_many_logins",
    "too_many_clients",
    "timeout",
    "evicted",
    "server",
    "acquire_timeout",
    "bad_setting",
];

/// The doors, as the `door` label names them.
pub const DOORS: [&str; 2] = ["grpc", "postgres"];

/// `pgway_pg_refusals_total`'s reasons: statements the door refused after login rather than
/// pin another client (`PGWAY_PG_MAX_PINNED`) or because `PGWAY_PG_SESSION_STATE=error`.
pub const PG_REFUSAL_REASONS: [&str; 2] = ["pin_cap", "session_state"];

/// `pgway_pg_timeouts_total`'s kinds: the bounds on what a client may hold (see
/// `pgwire::session`).
pub const PG_TIMEOUT_KINDS: [&str; 4] = [
    "idle_transaction",
    "client_idle",
    "transaction",
    "client_not_reading",
];
/// `pgway_pg_statements_dropped_total`'s places: the door-wide registry of statement texts,
/// or one client's map of names.
const PG_STATEMENT_DROP_PLACES: [&str; 2] = ["registry", "client"];

const AUTH_FAILURE_REASONS: [&str; 12] = [
    "missing",
    "malformed",
    "unknown_token",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "algorithm",
    "unknown_key",
    "missing_claim",
    "role",
];
/// `pgway_caller_limited_total{kind}`'s values.
const CALLER_LIMIT_KINDS: [&str; 2] = ["call", "interactive_transaction"];
/// `pgway_tls_reloads_total{outcome}`'s values.
const TLS_RELOAD_OUTCOMES: [&str; 2] = ["success", "failure"];
/// `pgway_tls_handshake_failures_total{reason}`'s values.
const TLS_HANDSHAKE_REASONS: [&str; 2] = ["error", "timeout"];

/// Describes every metric (its `# HELP`) and registers each series whose labels come from a
/// closed set at zero, before anything happens: an alert on `rate(pgway_shed_total[5m]) > 0`
/// or `pgway_database_up == 0` can only fire on a series that exists.
fn register_known_series() {
    describe_shared();
    describe_grpc();
    describe_pg_door();
    register_at_zero();
}

/// The `# HELP` of the pool's, the database's and the process's metrics, both doors'.
fn describe_shared() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    describe_gauge!(
        POOL_CONNECTIONS,
        "Open database connections, by state (idle, in_use)."
    );
    describe_gauge!(
        POOL_MAX,
        "Most connections the pool opens (PGWAY_POOL_MAX)."
    );
    describe_gauge!(
        POOL_MIN,
        "Connections kept open even when idle (PGWAY_POOL_MIN)."
    );
    describe_gauge!(POOL_WAITING, "Calls waiting for a free connection now.");
    describe_histogram!(
        POOL_WAIT_SECONDS,
        "Time a call (gRPC) or a transaction (PostgreSQL door) waited for a connection, by door."
    );
    describe_counter!(
        POOL_ACQUIRE_TIMEOUTS,
        "Calls or transactions that got no connection within PGWAY_ACQUIRE_TIMEOUT (53300 at the PostgreSQL door), by door."
    );
    describe_gauge!(
        PAUSED,
        "1 while anything is paused (the console's PAUSE), else 0."
    );
    describe_counter!(CONNECTIONS_OPENED, "Database connections opened.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Database connections closed, by reason."
    );
    describe_counter!(
        CONNECTION_ERRORS,
        "Failed attempts to open a database connection, by kind."
    );
    describe_counter!(
        SHED,
        "Calls (OVERLOADED) or transactions (53300) refused at once because PGWAY_MAX_WAITING already waited, by door."
    );
    describe_gauge!(
        DATABASE_UP,
        "1 when the health monitor's last check of the database passed, else 0."
    );
    describe_gauge!(BUILD_INFO, "The running version (always 1).");
}

/// The `# HELP` of the gRPC door's metrics.
fn describe_grpc() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};

    describe_counter!(REQUESTS, "Finished calls, by gRPC method and status code.");
    describe_histogram!(REQUEST_DURATION, "Call duration, by gRPC method.");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Calls being served now.");
    describe_counter!(
        RETRIES,
        "Statements and transactions run again by the gateway, by reason."
    );
    describe_counter!(TRANSACTIONS, "Transactions ended, by outcome.");
    describe_histogram!(
        TRANSACTION_ATTEMPTS,
        "Attempts a committed Transaction took."
    );
    describe_counter!(AUTH_FAILURES, "Calls refused by authentication, by reason.");
    describe_counter!(
        AUTH_RELOADS,
        "Reloads of the credential files, by setting and outcome."
    );
    describe_counter!(
        CALLER_LIMITED,
        "Calls refused by a per-caller limit, by kind."
    );
    describe_counter!(TLS_RELOADS, "Reloads of the gRPC TLS files, by outcome.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "Refused or timed-out TLS handshakes, by reason."
    );
}

/// The `# HELP` of the PostgreSQL door's metrics.
fn describe_pg_door() {
    use metrics::{describe_counter, describe_gauge};

    describe_counter!(
        PG_CONSOLE_COMMANDS,
        "Commands run on the PostgreSQL door's admin console, by command."
    );
    describe_counter!(
        PG_REFUSALS,
        "Statements the PostgreSQL door refused with 0A000 instead of pinning the client, by reason."
    );
    describe_gauge!(
        PG_CLIENTS,
        "Clients of the PostgreSQL door, by state (active: linked to a server connection; idle; waiting for one; pinned to one)."
    );
    describe_counter!(
        PG_PREPARED,
        "Named prepared statements of the PostgreSQL door, by outcome (hit: already on the server connection; prepared there; evicted from it)."
    );
    describe_counter!(
        PG_CANCELS,
        "Cancel requests forwarded to a server connection."
    );
    describe_counter!(
        PG_AUTH_FAILURES,
        "Refused logins at the PostgreSQL door, by cause."
    );
    describe_counter!(
        PG_TIMEOUTS,
        "PostgreSQL-door clients ended for holding a server connection too long, by bound."
    );
    describe_counter!(
        PG_STATEMENTS_DROPPED,
        "Prepared statements the PostgreSQL door forgot, least recently used first, to stay within its bounds."
    );
}

/// Every series whose labels come from a closed set, at zero.
fn register_at_zero() {
    // Not ready until the monitor has seen the database.
    gauge!(DATABASE_UP).set(0.0);
    gauge!(PAUSED).set(0.0);
    gauge!(REQUESTS_IN_FLIGHT).increment(0.0);
    for state in ["active", "idle", "waiting", "pinned"] {
        gauge!(PG_CLIENTS, "state" => state).set(0.0);
    }
    for outcome in ["hit", "prepared", "evicted"] {
        counter!(PG_PREPARED, "outcome" => outcome).increment(0);
    }
    for name in [CONNECTIONS_OPENED, PG_CANCELS] {
        counter!(name).increment(0);
    }
    for door in DOORS {
        counter!(POOL_ACQUIRE_TIMEOUTS, "door" => door).increment(0);
        counter!(SHED, "door" => door).increment(0);
        let _ = histogram!(POOL_WAIT_SECONDS, "door" => door);
    }
    let labelled: [(&'static str, &'static str, &[&'static str]); 12] = [
        (PG_REFUSALS, "reason", &PG_REFUSAL_REASONS),
        (PG_AUTH_FAILURES, "reason", &PG_LOGIN_REFUSALS),
        (PG_TIMEOUTS, "kind", &PG_TIMEOUT_KINDS),
        (PG_STATEMENTS_DROPPED, "place", &PG_STATEMENT_DROP_PLACES),
        (CONNECTIONS_CLOSED, "reason", &CLOSE_REASONS),
        (CONNECTION_ERRORS, "kind", &CONNECT_ERROR_KINDS),
        (RETRIES, "reason", &RETRY_REASONS),
        (TRANSACTIONS, "outcome", &TRANSACTION_OUTCOMES),
        (AUTH_FAILURES, "reason", &AUTH_FAILURE_REASONS),
        (CALLER_LIMITED, "kind", &CALLER_LIMIT_KINDS),
        (TLS_RELOADS, "outcome", &TLS_RELOAD_OUTCOMES),
        (TLS_HANDSHAKE_FAILURES, "reason", &TLS_HANDSHAKE_REASONS),
    ];
    for (name, label, values) in labelled {
        for &value in values {
            counter!(name, label => value).increment(0);
        }
    }
    let _ = histogram!(TRANSACTION_ATTEMPTS);
}
