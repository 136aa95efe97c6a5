//! The `pgway.v1.Database` handlers: each takes a connection, runs [`crate::grpc::execute`] under the
//! call's deadline, and turns the outcome into a reply or a `Status`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{counter, histogram};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug};

use crate::core::auth::Caller;
use crate::core::auth::jwt::Verified;
use crate::core::auth::limits::{Kind, Permit, QuotaLedger};
use crate::core::error::GatewayError;
use crate::core::pool::{PgConn, Pool, PooledConn};
use crate::core::retry::{Backoff, RetryBudget};
use crate::core::telemetry as metrics;
use crate::grpc::auth;
use crate::grpc::deadline;
use crate::grpc::execute::{self, ResultBounds, StreamSink};
use crate::grpc::{CallBounds, CallSettings, TxConfig};
use crate::proto::database_server::Database;
use crate::proto::{
    self, InteractiveTransactionRequest, InteractiveTransactionResponse, QueryRequest,
    QueryResponse, QueryStreamResponse, TransactionRequest, TransactionResponse,
    interactive_transaction_request::Action, interactive_transaction_response::Event,
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Messages a stream may hold ahead of a slow caller: with batches of at most 256 KiB this
/// bounds a stream's memory to about a megabyte.
const STREAM_BUFFER: usize = 2;

/// The `pgway.v1.Database` service.
#[derive(Debug, Clone)]
pub struct DatabaseService {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: Pool,
    limits: CallBounds,
    request_timeout: Duration,
    /// The longest one statement may run: the request timeout, or the server's
    /// `statement_timeout` when that is shorter. The deadline of a Query or a QueryStream (one
    /// statement each), so reaching either limit answers DEADLINE_EXCEEDED (see
    /// [`deadline::run`]).
    statement_cap: Duration,
    tx: TxConfig,
    /// Owns the tasks that feed streams, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled when the gateway starts shutting down: new calls are refused.
    shutdown: CancellationToken,
    /// Cancelled when the shutdown grace period is over: open streams and transactions end.
    grace_over: CancellationToken,
    retries: RetryBudget,
    quotas: QuotaLedger,
}

/// What a handler knows about its caller once admitted: who it is (for row-level security)
/// and its place under the per-caller limit, held until the call ends.
#[derive(Debug)]
struct Admitted {
    caller: Caller,
    _permit: Permit,
}

impl Admitted {
    /// The identity a JWT caller's statements run as; `None` for everyone else.
    fn identity(&self) -> Option<&Verified> {
        match &self.caller {
            Caller::Jwt(verified) => Some(verified),
            _ => None,
        }
    }
}

impl Shared {
    /// Runs `attempt` (which checks out its own connection) again after failures that
    /// [`RetryBudget::next_retry`] calls safe, with backoff, within the retry budget.
    async fn retrying<T, F, Fut>(&self, safe: bool, mut attempt: F) -> Result<T, GatewayError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        self.retries.deposit();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            match self.retries.next_retry(&error, safe, attempts) {
                Some((reason, wait)) => {
                    debug!(attempts, reason, %error, "retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(error),
            }
        }
    }

    /// Runs a Transaction request to completion: the whole transaction again after a
    /// serialization failure or deadlock (up to PGWAY_TX_MAX_ATTEMPTS, never past the
    /// deadline), and after a connection failure that rolled it back (within the retry budget).
    async fn transaction(
        &self,
        request: &TransactionRequest,
        deadline: Instant,
        identity: Option<&Verified>,
    ) -> Result<TransactionResponse, GatewayError> {
        let caps = ResultBounds::for_request(0, &self.limits);
        self.retries.deposit();
        let (mut attempts, mut connection_retries) = (0, 0);
        loop {
            attempts += 1;
            let outcome = async {
                let mut conn = self.pool.get().await?;
                let outcome = execute::transaction_once(&mut conn, request, caps, identity).await;
                drop(conn);
                outcome
            }
            .await;
            let error = match outcome {
                Ok(results) => return Ok(TransactionResponse { results, attempts }),
                Err(error) => error,
            };
            let backoff = if error.is_transaction_conflict() || execute::is_stale_plan(&error) {
                let backoff = Backoff::CONFLICT.delay(attempts);
                // Never retry past the deadline: answer with what we know instead.
                if attempts >= self.tx.max_attempts || Instant::now() + backoff >= deadline {
                    return Err(GatewayError::RetriesExhausted {
                        attempts,
                        last: Box::new(error),
                    });
                }
                counter!(metrics::RETRIES, "reason" => "transaction_conflict").increment(1);
                backoff
            } else {
                // Before COMMIT a lost connection means rolled back; after it, only a
                // READ ONLY transaction is safe to run again.
                match self
                    .retries
                    .next_retry(&error, request.read_only, connection_retries + 1)
                {
                    Some((_, wait)) => {
                        connection_retries += 1;
                        wait
                    }
                    None => return Err(error),
                }
            };
            debug!(attempts, ?backoff, %error, "transaction retried");
            tokio::time::sleep(backoff).await;
        }
    }

    /// Feeds a QueryStream. A failure that [`RetryBudget::next_retry`] allows is retried on a new
    /// connection as long as nothing was sent yet (after the first message the caller would
    /// see rows twice).
    async fn stream(
        &self,
        mut conn: PooledConn,
        request: &QueryRequest,
        sender: &mpsc::Sender<Result<QueryStreamResponse, Status>>,
        identity: Option<&Verified>,
    ) -> Result<(), GatewayError> {
        self.retries.deposit();
        let safe = request.read_only || request.idempotent;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut sink = StreamSink::new(sender);
            let result =
                execute::query_stream(&mut conn, request, self.limits, &mut sink, identity).await;
            let sent = sink.has_sent();
            drop(conn);
            let error = match result {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            // After the first message the caller would see rows twice.
            let retry = if sent {
                None
            } else {
                self.retries.next_retry(&error, safe, attempts)
            };
            match retry {
                Some((_, wait)) => {
                    tokio::time::sleep(wait).await;
                    conn = self.pool.get().await?;
                }
                None => return Err(error),
            }
        }
    }
}

impl DatabaseService {
    pub fn new(
        pool: Pool,
        config: &CallSettings,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        grace_over: CancellationToken,
    ) -> Self {
        DatabaseService {
            inner: Arc::new(Shared {
                pool,
                limits: config.limits,
                request_timeout: config.request_timeout,
                statement_cap: config.request_timeout.min(config.statement_timeout),
                tx: config.tx,
                tasks,
                shutdown,
                grace_over,
                retries: RetryBudget::default(),
                quotas: QuotaLedger::new(
                    config.caller_quota.max_calls,
                    config.caller_quota.max_transactions,
                ),
            }),
        }
    }

    /// Lets a call in: not while shutting down, and only within its caller's limit. The
    /// caller (found by [`auth::AuthInterceptor`]) is named in the call's log line.
    fn admit<T>(&self, request: &Request<T>, kind: Kind) -> Result<Admitted, Status> {
        if self.inner.shutdown.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let caller = auth::caller_of(request)?;
        tracing::Span::current().record("caller", tracing::field::display(caller.log_name()));
        let permit = self.inner.quotas.enter(&caller, kind)?;
        Ok(Admitted {
            caller,
            _permit: permit,
        })
    }
}

#[tonic::async_trait]
impl Database for DatabaseService {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let admitted = self.admit(&request, Kind::Call)?;
        let started = deadline::arrival(&request);
        let deadline = deadline::effective(request.metadata(), started, self.inner.statement_cap);
        let request = request.into_inner();
        execute::check_size(&request.sql, request.params.len(), &self.inner.limits)?;
        let caps = ResultBounds::for_request(request.max_rows, &self.inner.limits);
        let shared = &self.inner;
        let safe = request.read_only || request.idempotent;
        let identity = admitted.identity();
        let attempt = || async {
            let mut conn = shared.pool.get().await?;
            let result = execute::query(&mut conn, &request, caps, identity).await;
            drop(conn);
            result
        };
        deadline::run(deadline, started, shared.retrying(safe, attempt))
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type QueryStreamStream = ResponseStream<QueryStreamResponse>;

    async fn query_stream(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStreamStream>, Status> {
        let admitted = self.admit(&request, Kind::Call)?;
        let started = deadline::arrival(&request);
        let deadline = deadline::effective(request.metadata(), started, self.inner.statement_cap);
        let request = request.into_inner();
        execute::check_size(&request.sql, request.params.len(), &self.inner.limits)?;
        // Fail before the first message when we can (a status after it can't be retried by
        // clients): checking out the connection happens here.
        let conn = deadline::run(deadline, started, self.inner.pool.get())
            .await
            .map_err(Status::from)?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let shared = Arc::clone(&self.inner);
        self.inner.tasks.spawn(
            async move {
                let work = deadline::run(
                    deadline,
                    started,
                    shared.stream(conn, &request, &sender, admitted.identity()),
                );
                let result = tokio::select! {
                    result = work => result,
                    () = shared.grace_over.cancelled() => Err(GatewayError::ShuttingDown),
                };
                if let Err(error) = result {
                    let _ = sender.send(Err(error.into())).await;
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn transaction(
        &self,
        request: Request<TransactionRequest>,
    ) -> Result<Response<TransactionResponse>, Status> {
        let admitted = self.admit(&request, Kind::Call)?;
        let started = deadline::arrival(&request);
        let deadline = deadline::effective(request.metadata(), started, self.inner.request_timeout);
        let request = request.into_inner();
        if request.statements.is_empty() {
            return Err(GatewayError::InvalidArgument("statements is empty".into()).into());
        }
        let limits = &self.inner.limits;
        if request.statements.len() > limits.max_statements {
            return Err(GatewayError::RequestTooLarge(format!(
                "{} statements, more than PGWAY_MAX_STATEMENTS ({})",
                request.statements.len(),
                limits.max_statements
            ))
            .into());
        }
        for (index, statement) in request.statements.iter().enumerate() {
            execute::check_size(&statement.sql, statement.params.len(), limits).map_err(
                |error| GatewayError::InStatement {
                    index,
                    error: Box::new(error),
                },
            )?;
        }
        execute::isolation_level(request.isolation_level)?;
        let shared = &self.inner;
        let result = deadline::run(
            deadline,
            started,
            shared.transaction(&request, deadline, admitted.identity()),
        )
        .await;
        let outcome = match &result {
            Ok(_) => "committed",
            Err(error) => failed_outcome(error),
        };
        counter!(metrics::TRANSACTIONS, "outcome" => outcome).increment(1);
        if let Ok(response) = &result {
            histogram!(metrics::TRANSACTION_ATTEMPTS).record(f64::from(response.attempts));
        }
        result.map(Response::new).map_err(Status::from)
    }

    type InteractiveTransactionStream = ResponseStream<InteractiveTransactionResponse>;

    async fn interactive_transaction(
        &self,
        request: Request<Streaming<InteractiveTransactionRequest>>,
    ) -> Result<Response<Self::InteractiveTransactionStream>, Status> {
        let admitted = self.admit(&request, Kind::Call)?;
        let open = self
            .inner
            .quotas
            .enter(&admitted.caller, Kind::InteractiveTransaction)?;
        let started = deadline::arrival(&request);
        // The caller's deadline, capped by the longest a transaction may stay open.
        let deadline = deadline::effective(request.metadata(), started, self.inner.tx.max_duration);
        let inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let shared = Arc::clone(&self.inner);
        let errors = sender.clone();
        self.inner.tasks.spawn(
            async move {
                // Both places are held until the transaction is over.
                let _open = open;
                let work = interactive(&shared, inbound, sender, admitted.identity());
                let result = match tokio::time::timeout_at(deadline, work).await {
                    Ok(result) => result,
                    Err(_) => Err(GatewayError::TransactionTimeout(format!(
                        "the transaction was open for {:?}, past its deadline \
                         (PGWAY_TX_MAX_DURATION or grpc-timeout), and was rolled back",
                        started.elapsed()
                    ))),
                };
                if let Err(error) = result {
                    let _ = errors.send(Err(error.into())).await;
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// The `outcome` label (`pgway_transactions_total`) of a transaction that failed with `error`.
fn failed_outcome(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::OutcomeUnknown(_) => "outcome_unknown",
        GatewayError::RetriesExhausted { .. } => "aborted",
        _ => "rolled_back",
    }
}

type EventSender = mpsc::Sender<Result<InteractiveTransactionResponse, Status>>;

async fn send_event(sender: &EventSender, event: Event) -> Result<(), GatewayError> {
    sender
        .send(Ok(InteractiveTransactionResponse { event: Some(event) }))
        .await
        .map_err(|_| GatewayError::ConnectionLost("the caller went away".into()))
}

/// Waits for the caller's next message, at most the idle timeout.
async fn next_action(
    inbound: &mut Streaming<InteractiveTransactionRequest>,
    idle_timeout: Duration,
) -> Result<Option<Action>, GatewayError> {
    match tokio::time::timeout(idle_timeout, inbound.message()).await {
        Err(_) => Err(GatewayError::TransactionTimeout(format!(
            "no message for {idle_timeout:?} (PGWAY_TX_IDLE_TIMEOUT): the transaction was rolled back"
        ))),
        Ok(Err(status)) => Err(GatewayError::ConnectionLost(format!(
            "the caller's stream broke: {}",
            status.message()
        ))),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(message))) => match message.action {
            Some(action) => Ok(Some(action)),
            None => Err(GatewayError::InvalidArgument(
                "a message with no action: set begin, statement, commit or rollback".into(),
            )),
        },
    }
}

/// Drives one interactive transaction. Any way out other than a commit rolls it back: an error
/// here leaves the connection busy (so it's discarded, which rolls back on the server) unless
/// it was rolled back cleanly first.
async fn interactive(
    shared: &Shared,
    inbound: Streaming<InteractiveTransactionRequest>,
    sender: EventSender,
    identity: Option<&Verified>,
) -> Result<(), GatewayError> {
    let mut conn = None;
    let result = drive_interactive(shared, inbound, sender, &mut conn, identity).await;
    if let Some(conn) = conn {
        drop(conn);
    }
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(error) => failed_outcome(error),
    };
    counter!(metrics::TRANSACTIONS, "outcome" => outcome).increment(1);
    result.map(drop)
}

async fn drive_interactive(
    shared: &Shared,
    mut inbound: Streaming<InteractiveTransactionRequest>,
    sender: EventSender,
    slot: &mut Option<PooledConn>,
    identity: Option<&Verified>,
) -> Result<&'static str, GatewayError> {
    let options = match next_action(&mut inbound, shared.tx.idle_timeout).await? {
        None => return Ok("rolled_back"),
        Some(Action::Begin(options)) => options,
        Some(_) => {
            return Err(GatewayError::FailedPrecondition(
                "the first message must be begin".into(),
            ));
        }
    };
    let isolation = execute::isolation_level(options.isolation_level)?;
    if shared.shutdown.is_cancelled() {
        return Err(GatewayError::ShuttingDown);
    }
    let conn = slot.insert(shared.pool.get().await?);
    execute::begin(
        conn,
        isolation,
        options.read_only,
        options.deferrable,
        identity,
    )
    .await?;
    send_event(&sender, Event::Begun(proto::Begun {})).await?;
    let caps = ResultBounds::for_request(0, &shared.limits);
    loop {
        let action = tokio::select! {
            action = next_action(&mut inbound, shared.tx.idle_timeout) => action,
            () = shared.grace_over.cancelled() => Err(GatewayError::ShuttingDown),
        };
        let action = match action {
            Ok(action) => action,
            Err(error) => {
                rollback_quietly(conn).await;
                return Err(error);
            }
        };
        match action {
            // The caller closed its side without committing: roll back and say so.
            None | Some(Action::Rollback(_)) => {
                rollback_quietly(conn).await;
                send_event(&sender, Event::RolledBack(proto::RolledBack {})).await?;
                return Ok("rolled_back");
            }
            Some(Action::Begin(_)) => {
                rollback_quietly(conn).await;
                return Err(GatewayError::FailedPrecondition(
                    "begin was sent twice; the transaction was rolled back".into(),
                ));
            }
            Some(Action::Statement(statement)) => {
                if let Err(error) =
                    execute::check_size(&statement.sql, statement.params.len(), &shared.limits)
                {
                    rollback_quietly(conn).await;
                    return Err(error);
                }
                let request = QueryRequest {
                    sql: statement.sql,
                    params: statement.params,
                    ..Default::default()
                };
                match execute::statement_in_transaction(conn, &request, caps, identity).await {
                    Ok(result) => send_event(&sender, Event::Result(result)).await?,
                    Err(error) => {
                        rollback_quietly(conn).await;
                        return Err(error);
                    }
                }
            }
            Some(Action::Commit(_)) => {
                execute::commit(conn).await?;
                // Committed even if the caller is gone by now: count it as such.
                let _ = send_event(&sender, Event::Committed(proto::Committed {})).await;
                return Ok("committed");
            }
        }
    }
}

async fn rollback_quietly(conn: &mut PgConn) {
    // A failed ROLLBACK leaves the connection busy: it is discarded.
    let _ = conn.roll_back().await;
}
