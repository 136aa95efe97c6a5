//! The callers and what they call: the gateway over gRPC, PostgreSQL directly, PgBouncer or
//! PgDog.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use pgway::proto::database_client::DatabaseClient;
use pgway::proto::{self, QueryRequest, Statement, TransactionRequest};
use rand::Rng;
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::h2::Transport;
use crate::histogram::Histogram;
use crate::shards::Shards;
use crate::{BoxError, RunArgs, StatementMode, Target, Workload};

pub const SELECT_SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
pub const UPDATE_SQL: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
pub const RANGE_SQL: &str =
    "SELECT aid, bid, abalance, filler FROM pgbench_accounts WHERE aid BETWEEN $1 AND $2";

/// What the callers of one run share: the measurement and the signals to start and stop it.
pub struct Shared {
    pub histogram: Histogram,
    /// Errors by label during the measurement.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Errors before or after it.
    pub other_errors: AtomicU64,
    pub recording: AtomicBool,
    pub stop: AtomicBool,
    pub rows: AtomicU64,
}

impl Shared {
    fn error(&self, label: String) {
        if self.recording.load(Ordering::Relaxed) {
            let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            *errors.entry(label).or_default() += 1;
        } else {
            self.other_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn int(value: i64) -> proto::Value {
    proto::Value {
        kind: Some(proto::value::Kind::IntValue(value)),
    }
}

/// `CODE` or `CODE/REASON` (the ErrorInfo reason pgway attaches) of a gRPC status.
fn status_label(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let code = pgway::grpc::observe::code_label(status.code());
    match status.get_error_details().error_info() {
        Some(info) if !info.reason.is_empty() => format!("{code}/{}", info.reason),
        _ => code.to_owned(),
    }
}

fn pg_label(error: &tokio_postgres::Error) -> String {
    match error.code() {
        Some(code) => format!("SQLSTATE_{}", code.code()),
        None if error.is_closed() => "CONNECTION_CLOSED".into(),
        None => "CLIENT_ERROR".into(),
    }
}

/// What a run asks for, as the callers need it.
pub struct Params {
    pub workload: Workload,
    pub accounts: i32,
    pub rows: i32,
    /// The point select's `QueryRequest.read_only`.
    pub read_only: bool,
    /// `Bearer <token>` for the gateway's authorization header.
    pub authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Params {
    /// A gateway request with the bearer token, when there is one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    fn aid(&self, rng: &mut impl Rng) -> i32 {
        rng.random_range(1..=self.accounts)
    }

    fn range(&self, rng: &mut impl Rng) -> (i32, i32) {
        let start = rng.random_range(1..=(self.accounts - self.rows + 1).max(1));
        (start, start + self.rows - 1)
    }

    /// One call's random values: an account, a delta, a range of accounts. Drawn in one go,
    /// before a call's first await: ThreadRng is not Send.
    fn draw(&self) -> (i32, i32, (i32, i32)) {
        let mut rng = rand::rng();
        (
            self.aid(&mut rng),
            Params::delta(&mut rng),
            self.range(&mut rng),
        )
    }

    fn delta(rng: &mut impl Rng) -> i32 {
        rng.random_range(-5000..=5000)
    }
}

/// One gateway call. `Ok(rows)` on success.
async fn gateway_call(
    client: &mut DatabaseClient<Transport>,
    params: &Params,
) -> Result<u64, String> {
    let (aid, delta, (start, end)) = params.draw();
    match params.workload {
        Workload::Select => {
            let reply = client
                .query(params.request(QueryRequest {
                    sql: SELECT_SQL.into(),
                    params: vec![int(aid.into())],
                    read_only: params.read_only,
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            if reply.rows.len() != 1 {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(1)
        }
        Workload::Write => {
            let reply = client
                .transaction(params.request(TransactionRequest {
                    statements: vec![Statement {
                        sql: UPDATE_SQL.into(),
                        params: vec![int(delta.into()), int(aid.into())],
                    }],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            if reply.results.first().map(|r| r.rows_affected) != Some(1) {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(1)
        }
        Workload::Read1000 => {
            let reply = client
                .query(params.request(QueryRequest {
                    sql: RANGE_SQL.into(),
                    params: vec![int(start.into()), int(end.into())],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            if reply.rows.len() != params.rows as usize {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(reply.rows.len() as u64)
        }
        Workload::Ping => unreachable!("ping is served by the health client"),
        Workload::Stream => {
            let mut stream = client
                .query_stream(params.request(QueryRequest {
                    sql: RANGE_SQL.into(),
                    params: vec![int(start.into()), int(end.into())],
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_label(&s))?
                .into_inner();
            let mut rows = 0u64;
            while let Some(message) = stream.message().await.map_err(|s| status_label(&s))? {
                rows += message.rows.len() as u64;
            }
            if rows != u64::from(params.rows as u32) {
                return Err("WRONG_ROW_COUNT".into());
            }
            Ok(rows)
        }
    }
}

/// A PostgreSQL connection (direct or through PgBouncer) and its statements.
pub struct PgCaller {
    client: tokio_postgres::Client,
    prepared: Option<[tokio_postgres::Statement; 3]>,
}

async fn pg_connect(url: &str, mode: StatementMode) -> Result<PgCaller, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let prepared = match mode {
        StatementMode::Unnamed => None,
        StatementMode::Prepared => Some([
            client.prepare(SELECT_SQL).await?,
            client.prepare(UPDATE_SQL).await?,
            client.prepare(RANGE_SQL).await?,
        ]),
    };
    Ok(PgCaller { client, prepared })
}

/// Reads every column of a range row, as a client using the data would.
fn touch_range_row(row: &tokio_postgres::Row) -> Result<i64, tokio_postgres::Error> {
    let aid: i32 = row.try_get(0)?;
    let bid: i32 = row.try_get(1)?;
    let abalance: i32 = row.try_get(2)?;
    let filler: Option<&str> = row.try_get(3)?;
    Ok(
        i64::from(aid)
            + i64::from(bid)
            + i64::from(abalance)
            + filler.map_or(0, |f| f.len() as i64),
    )
}

async fn pg_call(caller: &PgCaller, params: &Params) -> Result<u64, tokio_postgres::Error> {
    let client = &caller.client;
    let (aid, delta, (start, end)) = params.draw();
    match params.workload {
        Workload::Select => {
            let rows = match &caller.prepared {
                Some(s) => client.query(&s[0], &[&aid]).await?,
                None => {
                    client
                        .query_typed(SELECT_SQL, &[(&aid, Type::INT4)])
                        .await?
                }
            };
            let mut n = 0;
            for row in &rows {
                let _: i32 = row.try_get(0)?;
                n += 1;
            }
            Ok(n)
        }
        Workload::Write => {
            client.batch_execute("BEGIN").await?;
            let result = match &caller.prepared {
                Some(s) => client.execute(&s[1], &[&delta, &aid]).await.map(drop),
                None => client
                    .query_typed(UPDATE_SQL, &[(&delta, Type::INT4), (&aid, Type::INT4)])
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => {
                    client.batch_execute("COMMIT").await?;
                    Ok(1)
                }
                Err(error) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        }
        Workload::Ping => {
            client.simple_query("").await?;
            Ok(0)
        }
        Workload::Read1000 | Workload::Stream => {
            let stream = match &caller.prepared {
                Some(s) => {
                    client
                        .query_raw(
                            &s[2],
                            [&start as &(dyn tokio_postgres::types::ToSql + Sync), &end],
                        )
                        .await?
                }
                None => {
                    client
                        .query_typed_raw(
                            RANGE_SQL,
                            [
                                (
                                    &start as &(dyn tokio_postgres::types::ToSql + Sync),
                                    Type::INT4,
                                ),
                                (
                                    &end as &(dyn tokio_postgres::types::ToSql + Sync),
                                    Type::INT4,
                                ),
                            ],
                        )
                        .await?
                }
            };
            futures::pin_mut!(stream);
            let mut n = 0u64;
            let mut checksum = 0i64;
            while let Some(row) = stream.try_next().await? {
                checksum = checksum.wrapping_add(touch_range_row(&row)?);
                n += 1;
            }
            std::hint::black_box(checksum);
            Ok(n)
        }
    }
}

pub enum Caller {
    Gateway(DatabaseClient<Transport>),
    Health(HealthClient<Transport>),
    Pg(PgCaller),
}

async fn health_call(client: &mut HealthClient<Transport>) -> Result<u64, String> {
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| status_label(&s))?
        .into_inner();
    if reply.status != ServingStatus::Serving as i32 {
        return Err("NOT_SERVING".into());
    }
    Ok(0)
}

/// How many periods a paced caller may fall behind and still catch up.
const CATCH_UP_PERIODS: u32 = 20;

/// A paced caller's share of `--rate`: one call per `period`, the first after `offset`, so that
/// the callers' calls spread over the period instead of arriving together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    period: Duration,
    offset: Duration,
}

impl Pace {
    /// Caller `index` of `callers` at `rate` calls per second in all; `None` unpaced (rate 0).
    pub fn of(rate: f64, callers: usize, index: usize) -> Option<Pace> {
        if !(rate > 0.0 && rate.is_finite()) || callers == 0 {
            return None;
        }
        let period = Duration::try_from_secs_f64(callers as f64 / rate).ok()?;
        Some(Pace {
            period,
            offset: period.mul_f64(index as f64 / callers as f64),
        })
    }
}

pub async fn caller_loop(
    mut caller: Caller,
    pace: Option<Pace>,
    shared: Arc<Shared>,
    params: Arc<Params>,
    args: Arc<RunArgs>,
    mode: StatementMode,
) {
    // A paced caller's pace and when its next call is due.
    let mut paced = pace.map(|pace| (pace, tokio::time::Instant::now() + pace.offset));
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some((pace, at)) = paced.as_mut() {
            tokio::time::sleep_until(*at).await;
            // tokio's timers fire on whole milliseconds, often later under load: a caller a few
            // periods behind catches up, which keeps the rate when the period is near a
            // millisecond. One far behind (a slow answer) carries on from now instead of
            // making up for it in a burst.
            *at += pace.period;
            let now = tokio::time::Instant::now();
            if now.saturating_duration_since(*at) > pace.period * CATCH_UP_PERIODS {
                *at = now;
            }
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let started = Instant::now();
        let result = match &mut caller {
            Caller::Gateway(client) => gateway_call(client, &params).await,
            Caller::Health(client) => health_call(client).await,
            Caller::Pg(pg) => pg_call(pg, &params).await.map_err(|e| pg_label(&e)),
        };
        let elapsed = started.elapsed();
        match result {
            Ok(rows) => {
                if shared.recording.load(Ordering::Relaxed) {
                    shared.histogram.record(elapsed);
                    shared.rows.fetch_add(rows, Ordering::Relaxed);
                }
            }
            Err(label) => {
                shared.error(label);
                tokio::time::sleep(args.error_pause).await;
                if let Caller::Pg(pg) = &mut caller {
                    if pg.client.is_closed() && !shared.stop.load(Ordering::Relaxed) {
                        if let Ok(fresh) = pg_connect(&args.url, mode).await {
                            *pg = fresh;
                        }
                    }
                }
            }
        }
    }
}

/// Connects the callers, each on the load thread that owns its connection; returns them with
/// that thread's index, and the number of connections.
pub async fn connect_callers(
    args: &RunArgs,
    mode: StatementMode,
    shards: &Shards,
) -> Result<(Vec<(usize, Caller)>, usize), BoxError> {
    let n = args.concurrency.max(1);
    match args.target {
        Target::Gateway => {
            // Caller i sends on connection `channel_of(i)`, which the load thread of that number
            // (modulo the thread count) owns, as it owns the caller.
            // With a fixed number of connections the sweep varies only the concurrency: more
            // callers per connection, not more connections carrying fewer calls each (which
            // costs both ends more per call: fewer requests share a read or a write).
            let per = args.callers_per_channel;
            let channels = match per {
                0 => n.min(shards.len()),
                per => n.div_ceil(per),
            };
            // Consecutive callers share a connection, or (per = 0) they take turns.
            let channel_of = |i: usize| i.checked_div(per).unwrap_or(i % channels);
            let origin: http::Uri = args.url.parse()?;
            let mut made = Vec::with_capacity(channels);
            for channel in 0..channels {
                let (kind, origin) = (args.grpc_client, origin.clone());
                let connect = async move { Transport::connect(kind, &origin).await };
                made.push(shards.on(channel, connect).await??);
            }
            let callers = (0..n)
                .map(|i| {
                    let transport = made[channel_of(i)].clone();
                    let caller = if args.workload == Workload::Ping {
                        Caller::Health(HealthClient::with_origin(transport, origin.clone()))
                    } else {
                        Caller::Gateway(
                            DatabaseClient::with_origin(transport, origin.clone())
                                .max_decoding_message_size(64 * 1024 * 1024),
                        )
                    };
                    (channel_of(i), caller)
                })
                .collect();
            Ok((callers, channels))
        }
        Target::Direct | Target::Pgbouncer | Target::Pgdog => {
            // Open the connections a few at a time: a burst of forks is not what is measured.
            let mut callers = Vec::with_capacity(n);
            let mut pending = futures::stream::iter((0..n).map(|i| {
                let url = args.url.clone();
                let connect = async move { pg_connect(&url, mode).await };
                async move { (i, shards.on(i, connect).await) }
            }))
            .buffer_unordered(8);
            while let Some((i, caller)) = pending.next().await {
                callers.push((i, Caller::Pg(caller??)));
            }
            Ok((callers, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt as _};

    #[test]
    fn a_status_is_labelled_by_its_code_and_reason() {
        assert_eq!(
            status_label(&tonic::Status::unavailable("no")),
            "UNAVAILABLE"
        );
        let details = ErrorDetails::with_error_info(
            "POOL_TIMEOUT",
            "pgway",
            std::collections::HashMap::new(),
        );
        let status = tonic::Status::with_error_details(tonic::Code::Unavailable, "no", details);
        assert_eq!(status_label(&status), "UNAVAILABLE/POOL_TIMEOUT");
        assert_eq!(
            pgway::grpc::observe::code_label(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
    }

    #[test]
    fn paced_callers_share_the_rate_and_spread_over_its_period() {
        assert_eq!(Pace::of(0.0, 10, 0), None);
        assert_eq!(Pace::of(f64::NAN, 10, 0), None);
        // 100 callers at 8,000 calls per second: each calls every 12.5 ms, caller 50 of them
        // first after half of that.
        let first = Pace::of(8000.0, 100, 0).expect("paced");
        let middle = Pace::of(8000.0, 100, 50).expect("paced");
        assert_eq!(first.period, Duration::from_micros(12_500));
        assert_eq!(first.offset, Duration::ZERO);
        assert_eq!(middle.period, first.period);
        assert_eq!(middle.offset, Duration::from_micros(6_250));
    }
}
