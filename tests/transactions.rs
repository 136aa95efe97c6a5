//! Transaction and InteractiveTransaction: atomicity, isolation levels exactly as asked,
//! automatic retry of serialization failures.

mod support;

use std::time::Duration;

use futures::StreamExt;
use pgway::proto::{
    self, InteractiveTransactionRequest, IsolationLevel, Statement, TransactionOptions,
    TransactionRequest, interactive_transaction_request::Action,
    interactive_transaction_response::Event, value::Kind,
};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn statement(sql: &str, params: Vec<proto::Value>) -> Statement {
    Statement {
        sql: sql.into(),
        params,
    }
}

/// The isolation level a plain Query runs at.
async fn isolation_now(
    client: &mut pgway::proto::database_client::DatabaseClient<tonic::transport::Channel>,
) -> String {
    let response = run(
        client,
        "SELECT current_setting('transaction_isolation')",
        vec![],
    )
    .await;
    match scalar(&response) {
        Some(Kind::StringValue(level)) => level,
        other => panic!("transaction_isolation: {other:?}"),
    }
}

fn tx(statements: Vec<Statement>, level: IsolationLevel) -> TransactionRequest {
    TransactionRequest {
        statements,
        isolation_level: level as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_batch_commits_all_or_nothing() {
    let gw = Gateway::start().await;
    let direct = gw.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut client = gw.client().await;

    let response = client
        .transaction(tx(
            vec![
                statement("INSERT INTO t VALUES ($1, $2)", vec![int(1), text("a")]),
                statement("INSERT INTO t VALUES ($1, $2)", vec![int(2), text("b")]),
                statement("SELECT count(*) FROM t", vec![]),
            ],
            IsolationLevel::Unspecified,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.attempts, 1);
    assert_eq!(response.results.len(), 3);
    assert_eq!(response.results[0].rows_affected, 1);
    assert_eq!(scalar(&response.results[2]), Some(Kind::IntValue(2)));

    // The third statement fails: the first two are rolled back, and the error names it.
    let status = client
        .transaction(tx(
            vec![
                statement("INSERT INTO t VALUES (3, 'c')", vec![]),
                statement("UPDATE t SET v = 'changed'", vec![]),
                statement("INSERT INTO t VALUES (1, 'duplicate')", vec![]),
            ],
            IsolationLevel::ReadCommitted,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let info = error_info(&status);
    assert_eq!(
        info.metadata.get("statement_index").map(String::as_str),
        Some("2")
    );
    assert_eq!(info.reason, "UNIQUE_VIOLATION");
    let rows = direct
        .query("SELECT id, v FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![(1, "a".into()), (2, "b".into())]);

    // Bad requests.
    let status = client
        .transaction(tx(vec![], IsolationLevel::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut bad = tx(
        vec![statement("SELECT 1", vec![])],
        IsolationLevel::Unspecified,
    );
    bad.isolation_level = 42;
    assert_eq!(
        client.transaction(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let status = client
        .transaction(tx(
            vec![statement("COMMIT", vec![])],
            IsolationLevel::Unspecified,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn isolation_levels_are_exactly_what_was_asked() {
    // One connection, so every call reuses it: a level must never carry over.
    let gw = Gateway::with_settings(&["--pool-max", "1", "--pool-min", "1"]).await;
    let mut client = gw.client().await;
    for (level, expected) in [
        (IsolationLevel::Serializable, "serializable"),
        (IsolationLevel::Unspecified, "read committed"),
        (IsolationLevel::RepeatableRead, "repeatable read"),
        (IsolationLevel::ReadCommitted, "read committed"),
        (IsolationLevel::Serializable, "serializable"),
    ] {
        let response = client
            .transaction(tx(
                vec![statement("SHOW transaction_isolation", vec![])],
                level,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            scalar(&response.results[0]),
            Some(Kind::StringValue(expected.into())),
            "{level:?}"
        );
        // And a plain query afterwards runs at the server's default.
        assert_eq!(
            isolation_now(&mut client).await,
            "read committed",
            "after {level:?}"
        );
    }

    // READ ONLY refuses writes; DEFERRABLE is accepted with SERIALIZABLE READ ONLY.
    let mut request = tx(
        vec![statement("CREATE TABLE nope (a int)", vec![])],
        IsolationLevel::Serializable,
    );
    request.read_only = true;
    let status = client.transaction(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status).reason, "READ_ONLY_SQL_TRANSACTION");
    let mut request = tx(
        vec![
            statement("SHOW transaction_read_only", vec![]),
            statement("SHOW transaction_deferrable", vec![]),
        ],
        IsolationLevel::Serializable,
    );
    request.read_only = true;
    request.deferrable = true;
    let response = client.transaction(request).await.unwrap().into_inner();
    assert_eq!(
        scalar(&response.results[0]),
        Some(Kind::StringValue("on".into()))
    );
    assert_eq!(
        scalar(&response.results[1]),
        Some(Kind::StringValue("on".into()))
    );
    let response = run(&mut client, "SHOW transaction_read_only", vec![]).await;
    assert_eq!(scalar(&response), Some(Kind::StringValue("off".into())));
}

/// A read-only Query runs in a READ ONLY transaction of its own, sent together with its
/// COMMIT. Whether the statement succeeds, fails as it runs or is refused at Bind, that
/// transaction is over when the answer comes: the next call on the same (only) connection is
/// in autocommit, and may write.
#[tokio::test]
async fn a_read_only_query_leaves_no_transaction_behind() {
    let gw = Gateway::with_settings(&["--pool-max", "1"]).await;
    let mut client = gw.client().await;
    run(&mut client, "CREATE TABLE after_read_only (a int)", vec![]).await;
    let state = "SELECT current_setting('transaction_read_only'), pg_backend_pid()";
    let first = run(&mut client, state, vec![]).await.rows[0].values[1].clone();
    // (statement, parameters, the answer's first value or the reason it failed)
    let calls = [
        (
            "SELECT current_setting('transaction_read_only')",
            vec![],
            Ok("on"),
        ),
        ("SELECT 1 / $1::int", vec![int(0)], Err("DIVISION_BY_ZERO")),
        (
            "SELECT $1::int",
            vec![text("abc")],
            Err("INVALID_TEXT_REPRESENTATION"),
        ),
    ];
    for (done, (sql, params, expected)) in calls.into_iter().enumerate() {
        let mut request = query(sql, params);
        request.read_only = true;
        match (client.query(request).await, expected) {
            (Ok(response), Ok(value)) => {
                assert_eq!(scalar(&response.into_inner()), text(value).kind, "{sql}")
            }
            (Err(status), Err(reason)) => {
                assert_eq!(error_info(&status).reason, reason, "{sql}: {status:?}")
            }
            (outcome, expected) => panic!("{sql}: {outcome:?}, expected {expected:?}"),
        }
        let response = run(&mut client, state, vec![]).await;
        assert_eq!(response.rows[0].values[0], text("off"), "after {sql}");
        assert_eq!(
            response.rows[0].values[1], first,
            "the connection was replaced after {sql}"
        );
        let response = run(
            &mut client,
            "INSERT INTO after_read_only VALUES (1)",
            vec![],
        )
        .await;
        assert_eq!(response.rows_affected, 1);
        let count = run(&mut client, "SELECT count(*) FROM after_read_only", vec![]).await;
        assert_eq!(
            scalar(&count),
            Some(Kind::IntValue(done as i64 + 1)),
            "after {sql}"
        );
    }
}

/// A Transaction's BEGIN goes out together with its first statement. Whichever way that
/// statement fails (refused as it is prepared, failing as it runs, or a result over the caps,
/// which ends the call before the statement is over), nothing of it is applied, the error
/// names statement 0, and the next call is in no transaction.
#[tokio::test]
async fn a_transactions_first_statement_fails_with_nothing_applied() {
    let gw = Gateway::with_settings(&["--pool-max", "1", "--max-rows", "10"]).await;
    let mut client = gw.client().await;
    run(
        &mut client,
        "CREATE TABLE first_fails (a int UNIQUE)",
        vec![],
    )
    .await;
    run(&mut client, "INSERT INTO first_fails VALUES (0)", vec![]).await;
    let failures = [
        ("INSERT INTO first_fails VALUES (1) x", "SYNTAX_ERROR"),
        (
            "INSERT INTO first_fails VALUES (1), (0)",
            "UNIQUE_VIOLATION",
        ),
        (
            "INSERT INTO first_fails SELECT g FROM generate_series(1, 20) g RETURNING a",
            "RESULT_TOO_LARGE",
        ),
    ];
    for (sql, reason) in failures {
        let status = client
            .transaction(tx(
                vec![
                    statement(sql, vec![]),
                    statement("INSERT INTO first_fails VALUES (100)", vec![]),
                ],
                IsolationLevel::RepeatableRead,
            ))
            .await
            .expect_err(sql);
        let info = error_info(&status);
        assert_eq!(info.reason, reason, "{sql}: {status:?}");
        assert_eq!(
            info.metadata.get("statement_index").map(String::as_str),
            Some("0"),
            "{sql}"
        );
        let response = run(&mut client, "SELECT count(*) FROM first_fails", vec![]).await;
        assert_eq!(scalar(&response), Some(Kind::IntValue(1)), "after {sql}");
        // Outside the failed REPEATABLE READ transaction, the default level again.
        assert_eq!(
            isolation_now(&mut client).await,
            "read committed",
            "a transaction was left open after {sql}"
        );
    }
    // And the first statement runs inside the transaction BEGIN opened.
    let response = client
        .transaction(tx(
            vec![statement(
                "SELECT current_setting('transaction_isolation')",
                vec![],
            )],
            IsolationLevel::RepeatableRead,
        ))
        .await
        .expect("a one-statement transaction")
        .into_inner();
    assert_eq!(
        scalar(&response.results[0]),
        Some(Kind::StringValue("repeatable read".into()))
    );
}

/// Many concurrent SERIALIZABLE read-modify-write transactions on the same rows conflict; each
/// one is re-run until it commits, and the totals come out exactly right.
#[tokio::test]
async fn serialization_failures_are_retried_until_every_transaction_commits() {
    // Workers update the two rows in opposite orders, so some of them deadlock, and PostgreSQL
    // takes deadlock_timeout (1 s) to break each deadlock while both connections stay busy: a
    // worker may queue for a connection longer than the default 5 s acquire timeout. That wait
    // is not what this test is about.
    let gw = Gateway::with_settings(&[
        "--pool-max",
        "8",
        "--tx-max-attempts",
        "100",
        "--request-timeout",
        "60s",
        "--acquire-timeout",
        "60s",
    ])
    .await;
    let direct = gw.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts VALUES (1, 1000), (2, 1000);
             CREATE TABLE transfers_log (worker int);",
        )
        .await
        .unwrap();
    let workers = 16;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let mut client = gw.client().await;
        tasks.push(tokio::spawn(async move {
            let (from, to) = if worker % 2 == 0 { (1, 2) } else { (2, 1) };
            // Read, then write based on what was read: the classic write-skew shape.
            let request = tx(
                vec![
                    statement(
                        "SELECT balance FROM accounts WHERE id = $1",
                        vec![int(from)],
                    ),
                    statement("SELECT sum(balance) FROM accounts", vec![]),
                    statement(
                        "UPDATE accounts SET balance = balance - 10 WHERE id = $1",
                        vec![int(from)],
                    ),
                    statement(
                        "UPDATE accounts SET balance = balance + 10 WHERE id = $1",
                        vec![int(to)],
                    ),
                    statement(
                        "INSERT INTO transfers_log SELECT $1::int",
                        vec![int(worker)],
                    ),
                ],
                IsolationLevel::Serializable,
            );
            client
                .transaction(request)
                .await
                .map(|r| r.into_inner().attempts)
        }));
    }
    let mut attempts = Vec::new();
    for task in tasks {
        attempts.push(
            task.await
                .unwrap()
                .expect("every transaction finally commits"),
        );
    }
    let total: i64 = direct
        .query_one("SELECT sum(balance)::int8 FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2000);
    let logged: i64 = direct
        .query_one("SELECT count(*) FROM transfers_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, workers, "each transaction applied exactly once");
    assert!(
        attempts.iter().any(|&a| a > 1),
        "no conflict happened: {attempts:?}"
    );
}

#[tokio::test]
async fn retries_give_up_with_aborted() {
    let gw = Gateway::with_settings(&["--tx-max-attempts", "3"]).await;
    let mut client = gw.client().await;
    let status = client
        .transaction(tx(
            vec![statement(
                "DO $$ BEGIN RAISE EXCEPTION 'always' USING ERRCODE = '40001'; END $$",
                vec![],
            )],
            IsolationLevel::Serializable,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    let info = error_info(&status);
    assert_eq!(info.reason, "SERIALIZATION_FAILURE");
    assert_eq!(info.metadata.get("attempts").map(String::as_str), Some("3"));
}

#[tokio::test]
async fn repeatable_read_sees_one_snapshot() {
    let gw = Gateway::start().await;
    let direct = gw.direct().await;
    direct
        .batch_execute("CREATE TABLE counter (n int); INSERT INTO counter VALUES (1);")
        .await
        .unwrap();
    let mut client = gw.client().await;
    let (sender, receiver) = mpsc::channel(4);
    let mut events = client
        .interactive_transaction(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let send = |action| InteractiveTransactionRequest {
        action: Some(action),
    };
    sender
        .send(send(Action::Begin(TransactionOptions {
            isolation_level: IsolationLevel::RepeatableRead as i32,
            ..Default::default()
        })))
        .await
        .unwrap();
    assert!(matches!(
        events.next().await.unwrap().unwrap().event,
        Some(Event::Begun(_))
    ));
    sender
        .send(send(Action::Statement(statement(
            "SELECT n FROM counter",
            vec![],
        ))))
        .await
        .unwrap();
    let Some(Event::Result(first)) = events.next().await.unwrap().unwrap().event else {
        panic!()
    };
    // Someone else commits a change in between.
    direct
        .batch_execute("UPDATE counter SET n = 2")
        .await
        .unwrap();
    sender
        .send(send(Action::Statement(statement(
            "SELECT n FROM counter",
            vec![],
        ))))
        .await
        .unwrap();
    let Some(Event::Result(second)) = events.next().await.unwrap().unwrap().event else {
        panic!()
    };
    assert_eq!(scalar(&first), Some(Kind::IntValue(1)));
    assert_eq!(
        scalar(&second),
        Some(Kind::IntValue(1)),
        "the snapshot moved"
    );
    sender
        .send(send(Action::Commit(proto::Commit {})))
        .await
        .unwrap();
    assert!(matches!(
        events.next().await.unwrap().unwrap().event,
        Some(Event::Committed(_))
    ));
    assert!(
        events.next().await.is_none(),
        "the stream ends after commit"
    );
}

async fn open_interactive(
    gw: &Gateway,
) -> (
    mpsc::Sender<InteractiveTransactionRequest>,
    tonic::Streaming<proto::InteractiveTransactionResponse>,
) {
    let mut client = gw.client().await;
    let (sender, receiver) = mpsc::channel(4);
    let events = client
        .interactive_transaction(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    (sender, events)
}

fn act(action: Action) -> InteractiveTransactionRequest {
    InteractiveTransactionRequest {
        action: Some(action),
    }
}

#[tokio::test]
async fn interactive_transactions_commit_roll_back_and_fail_cleanly() {
    let gw = Gateway::with_settings(&["--pool-max", "2"]).await;
    let direct = gw.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    commit_applies(&gw).await;
    rollback_undoes(&gw).await;
    a_statement_error_ends_the_stream_and_rolls_back(&gw).await;
    the_first_message_must_be_begin(&gw).await;
    a_caller_vanishes_mid_transaction(&gw).await;

    let ids: Vec<i32> = direct
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    eventually(
        Duration::from_secs(5),
        "no transaction left open",
        || async {
            let open: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            open == 0
        },
    )
    .await;
    assert_eq!(ids, vec![1]);
}

/// An interactive transaction's Begin, an insert of 1 and Commit answer Begun, Result and
/// Committed, and the stream ends.
async fn commit_applies(gw: &Gateway) {
    // Commit applies.
    let (sender, mut events) = open_interactive(gw).await;
    sender
        .send(act(Action::Begin(TransactionOptions::default())))
        .await
        .unwrap();
    sender
        .send(act(Action::Statement(statement(
            "INSERT INTO t VALUES ($1)",
            vec![int(1)],
        ))))
        .await
        .unwrap();
    sender
        .send(act(Action::Commit(proto::Commit {})))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while let Some(event) = events.next().await {
        kinds.push(
            format!("{:?}", event.unwrap().event.unwrap())
                .split('(')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(kinds, ["Begun", "Result", "Committed"]);
}

/// An interactive transaction ended by Rollback answers RolledBack last.
async fn rollback_undoes(gw: &Gateway) {
    // Rollback undoes.
    let (sender, mut events) = open_interactive(gw).await;
    sender
        .send(act(Action::Begin(TransactionOptions::default())))
        .await
        .unwrap();
    sender
        .send(act(Action::Statement(statement(
            "INSERT INTO t VALUES (2)",
            vec![],
        ))))
        .await
        .unwrap();
    sender
        .send(act(Action::Rollback(proto::Rollback {})))
        .await
        .unwrap();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = event.unwrap().event;
    }
    assert!(matches!(last, Some(Event::RolledBack(_))));
}

/// An insert of a duplicate key ends the stream with ALREADY_EXISTS (and rolls back the
/// insert of 3 before it).
async fn a_statement_error_ends_the_stream_and_rolls_back(gw: &Gateway) {
    // A statement error ends the stream with its status and rolls back.
    let (sender, mut events) = open_interactive(gw).await;
    sender
        .send(act(Action::Begin(TransactionOptions::default())))
        .await
        .unwrap();
    sender
        .send(act(Action::Statement(statement(
            "INSERT INTO t VALUES (3)",
            vec![],
        ))))
        .await
        .unwrap();
    sender
        .send(act(Action::Statement(statement(
            "INSERT INTO t VALUES (1)",
            vec![],
        ))))
        .await
        .unwrap();
    let mut status = None;
    while let Some(event) = events.next().await {
        if let Err(error) = event {
            status = Some(error);
        }
    }
    assert_eq!(status.unwrap().code(), Code::AlreadyExists);
}

/// A statement before Begin is FAILED_PRECONDITION.
async fn the_first_message_must_be_begin(gw: &Gateway) {
    // The first message must be begin.
    let (sender, mut events) = open_interactive(gw).await;
    sender
        .send(act(Action::Statement(statement("SELECT 1", vec![]))))
        .await
        .unwrap();
    let status = events.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

/// A caller that drops its stream after inserting 4 in an open transaction (checked by the
/// test: rolled back, connection freed).
async fn a_caller_vanishes_mid_transaction(gw: &Gateway) {
    // A caller that vanishes mid-transaction: rolled back, connection freed.
    let (sender, mut events) = open_interactive(gw).await;
    sender
        .send(act(Action::Begin(TransactionOptions::default())))
        .await
        .unwrap();
    sender
        .send(act(Action::Statement(statement(
            "INSERT INTO t VALUES (4)",
            vec![],
        ))))
        .await
        .unwrap();
    events.next().await.unwrap().unwrap();
    events.next().await.unwrap().unwrap();
    drop(sender);
    drop(events);
}

#[tokio::test]
async fn idle_and_overlong_interactive_transactions_are_rolled_back() {
    let gw =
        Gateway::with_settings(&["--tx-idle-timeout", "300ms", "--tx-max-duration", "2s"]).await;
    let direct = gw.direct().await;
    direct
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();

    let (sender, mut events) = open_interactive(&gw).await;
    sender
        .send(act(Action::Begin(TransactionOptions::default())))
        .await
        .unwrap();
    sender
        .send(act(Action::Statement(statement(
            "INSERT INTO t VALUES (1)",
            vec![],
        ))))
        .await
        .unwrap();
    events.next().await.unwrap().unwrap();
    events.next().await.unwrap().unwrap();
    // Say nothing more: the idle timeout rolls it back.
    let status = events.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(error_info(&status).reason, "TRANSACTION_TIMEOUT");
    drop(sender);

    // Busy but too long: the max duration rolls it back.
    let (sender, mut events) = open_interactive(&gw).await;
    sender
        .send(act(Action::Begin(TransactionOptions::default())))
        .await
        .unwrap();
    events.next().await.unwrap().unwrap();
    let status = loop {
        sender
            .send(act(Action::Statement(statement(
                "INSERT INTO t VALUES (2)",
                vec![],
            ))))
            .await
            .ok();
        match events.next().await {
            Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(Err(status)) => break status,
            None => panic!("stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::Aborted);
    let count: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "nothing of either transaction was applied");
}
