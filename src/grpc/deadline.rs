//! The effective deadline of a call: the caller's `grpc-timeout`, capped by the server's
//! `PGWAY_REQUEST_TIMEOUT`.
//!
//! tonic's own timeout answers CANCELLED when it fires; pgway enforces the deadline itself so
//! the caller gets DEADLINE_EXCEEDED and the statement on the server is cancelled.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::core::error::GatewayError;

/// When a call's headers arrived, put in its extensions by the outermost layer
/// (the observer layer).
///
/// tonic starts a timer of its own for a caller's `grpc-timeout` when the headers arrive,
/// and answers CANCELLED when it fires. A unary handler only runs once the whole message is
/// in, which can be a delayed ACK later (40 ms) from a client that leaves Nagle's algorithm
/// on: a deadline counted from the handler would fire after tonic's.
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub Instant);

/// When `request` arrived (now, if no layer recorded it).
pub fn arrival<T>(request: &tonic::Request<T>) -> Instant {
    request
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |arrival| arrival.0)
}

/// The deadline of a call that arrived at `arrived`.
pub fn effective(metadata: &MetadataMap, arrived: Instant, server_cap: Duration) -> Instant {
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        // Answer a little before the caller's own timer fires, so the caller hears
        // DEADLINE_EXCEEDED from us rather than only its local timeout.
        .map_or(server_cap, |caller| {
            (caller - margin(caller)).min(server_cap)
        });
    arrived + timeout
}

/// 5% of the caller's timeout, at most 20 ms.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(Duration::from_millis(20))
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Runs `work` until `deadline`; past it the work is dropped (which cancels its statement and
/// discards its connection) and the call fails with DEADLINE_EXCEEDED.
///
/// A combinator rather than an `async fn`: an `async fn` would keep `work` twice in its state
/// (once as the argument, once inside the timeout it awaits), doubling the size of every
/// handler's future, which is copied when it is boxed.
pub fn run<T>(
    deadline: Instant,
    started: Instant,
    work: impl Future<Output = Result<T, GatewayError>>,
) -> impl Future<Output = Result<T, GatewayError>> {
    use futures::FutureExt as _;
    tokio::time::timeout_at(deadline, work).map(move |outcome| match outcome {
        Err(_) => Err(GatewayError::DeadlineExceeded(started.elapsed())),
        Ok(Err(error)) if is_cancel(&error) && Instant::now() >= deadline => {
            Err(GatewayError::DeadlineExceeded(started.elapsed()))
        }
        Ok(result) => result,
    })
}

/// Whether `error` is PostgreSQL's "canceling statement" (57014), alone or in a Transaction's
/// statement.
///
/// `PGWAY_STATEMENT_TIMEOUT` defaults to `PGWAY_REQUEST_TIMEOUT`, so for a call that runs to
/// the server's cap the server's `statement_timeout` and the gateway's own timer fire at about
/// the same instant, and whichever is seen first would pick the code: both are pgway's limits.
/// The server counts from when it received the statement, which is after the call arrived, so
/// its 57014 never comes before the deadline: one seen at or past the deadline is the
/// deadline's, and the caller hears DEADLINE_EXCEEDED whichever fired first. A 57014 before the
/// deadline (the caller's own `SET LOCAL statement_timeout`, an administrator's
/// `pg_cancel_backend`) stays CANCELLED.
fn is_cancel(error: &GatewayError) -> bool {
    match error {
        GatewayError::Postgres(db) => *db.code() == tokio_postgres::error::SqlState::QUERY_CANCELED,
        GatewayError::InStatement { error, .. } => is_cancel(error),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn the_server_cap_wins_over_a_longer_caller_timeout() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "100S".parse().unwrap());
        let arrived = Instant::now();
        let deadline = effective(&metadata, arrived, Duration::from_secs(1));
        assert_eq!(deadline, arrived + Duration::from_secs(1));
    }

    #[test]
    fn the_deadline_counts_from_the_arrival_with_a_margin() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "300m".parse().unwrap());
        let arrived = Instant::now() - Duration::from_millis(40);
        let deadline = effective(&metadata, arrived, Duration::from_secs(60));
        assert_eq!(deadline, arrived + Duration::from_millis(285));

        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(Arrival(arrived));
        assert_eq!(arrival(&request), arrived);
    }
}
