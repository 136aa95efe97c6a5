//! The PostgreSQL door when things go wrong, with real clients (psql, tokio-postgres, raw
//! sockets) against a PostgreSQL of this binary's own that asks for SCRAM-SHA-256 over TCP:
//! a database restart, a server connection killed or a client gone mid-transaction, idle
//! transactions past their timeout, shutdown, the client limit, malformed input, COPY errors,
//! and a pipeline cut off before its Sync.
//!
//! The gauges of /metrics are process-wide, and every door in this binary writes them: the
//! tests that read a gauge take [`EXCLUSIVE`] for writing, all others for reading. So does the
//! test that restarts the shared PostgreSQL.

mod support;

use std::time::Duration;

use support::clients::{psql, refused, sqlstate};
use support::door::{Door, POSTGRES_PASSWORD, cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;

static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

// --- Failures ---------------------------------------------------------------------------------

#[tokio::test]
async fn idle_clients_survive_a_database_restart() {
    let _exclusive = EXCLUSIVE.write().await;
    let door = Door::start(&["--pool-max", "2", "--acquire-timeout", "30s"]).await;
    let clients = [door.client().await, door.client().await];
    for client in &clients {
        client
            .batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .expect("before");
    }
    let pg = cluster().await;
    tokio::task::spawn_blocking(|| pg.restart("fast"))
        .await
        .expect("restart task")
        .expect("restart");
    for client in &clients {
        let row = client
            .query_one("SELECT 41 + 1", &[])
            .await
            .expect("the next transaction after a restart works");
        assert_eq!(row.get::<_, i32>(0), 42);
    }
}

#[tokio::test]
async fn a_server_connection_killed_mid_transaction_ends_only_its_client() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "2"]).await;
    let direct = door.direct().await;
    direct
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .expect("table");
    let (victim, connection) = door.connect().await;
    let bystander = door.client().await;
    victim
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("begin");
    // By simple query: a prepared statement's Close, sent when it is dropped, would still
    // await its answer and take the error for itself.
    let pid = victim
        .simple_query("SELECT pg_backend_pid()")
        .await
        .expect("pid")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row");
    direct
        .execute("SELECT pg_terminate_backend($1::text::int)", &[&pid])
        .await
        .expect("terminate");
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the client's connection closes")
        .expect("task");
    let error = ended.expect_err("ended by an error");
    let code = sqlstate(&error);
    assert!(
        matches!(code.as_deref(), Some("57P01" | "08006")),
        "{error:?}"
    );
    assert!(victim.simple_query("SELECT 1").await.is_err());
    let n: i64 = bystander
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("others unharmed")
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_client_gone_mid_transaction_leaves_nothing_behind() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "1"]).await;
    door.direct()
        .await
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .expect("table");
    for goodbye in ["socket dropped", "Terminate sent"] {
        let (client, connection) = door.connect().await;
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .expect("begin");
        if goodbye == "socket dropped" {
            connection.abort();
            let _ = connection.await;
        } else {
            drop(client);
            let _ = connection.await;
        }
        // The one server connection is handed on rolled back and out of any transaction.
        let next = door.client().await;
        let n: i64 = next
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap_or_else(|e| panic!("{goodbye}: the next client: {e:?}"))
            .get(0);
        assert_eq!(n, 0, "{goodbye}: the uncommitted row appeared");
        let error = next
            .batch_execute("SAVEPOINT s")
            .await
            .err()
            .unwrap_or_else(|| panic!("{goodbye}: the next client started inside a transaction"));
        assert_eq!(sqlstate(&error).as_deref(), Some("25P01"), "{error:?}");
    }
}

#[tokio::test]
async fn idle_in_transaction_past_the_timeout_is_ended() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "1", "--pg-idle-in-transaction-timeout", "1s"]).await;
    let (idle, connection) = door.connect().await;
    idle.batch_execute("BEGIN").await.expect("BEGIN");
    // Another client waits for the one server connection meanwhile, and gets it.
    let other = door.client().await;
    let waited = tokio::spawn(async move { other.query_one("SELECT 1", &[]).await.map(|_| ()) });
    let ended = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("ended")
        .expect("task");
    let error = ended.expect_err("ended by an error");
    assert_eq!(sqlstate(&error).as_deref(), Some("25P03"), "{error:?}");
    waited
        .await
        .expect("task")
        .expect("the freed connection serves the waiting client");
}

#[tokio::test]
async fn shutdown_ends_idle_clients_and_lets_transactions_commit() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "2", "--shutdown-grace", "30s"]).await;
    let direct = door.direct().await;
    direct
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .expect("table");
    let (_idle, idle_connection) = door.connect().await;
    // Pinned, and idle between its transactions: told like an unlinked idle client.
    let (pinned, pinned_connection) = door.connect().await;
    pinned.batch_execute("LISTEN chan").await.expect("listen");
    let (busy, _busy_connection) = door.connect().await;
    busy.batch_execute("BEGIN; INSERT INTO t VALUES (7)")
        .await
        .expect("begin");
    let Door { gw, .. } = door;
    let stopping = tokio::spawn(gw.shutdown());
    for (what, connection) in [("idle", idle_connection), ("pinned", pinned_connection)] {
        let ended = tokio::time::timeout(Duration::from_secs(15), connection)
            .await
            .unwrap_or_else(|_| panic!("the {what} client is told"))
            .expect("task");
        let error = ended.expect_err("ended by an error");
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("57P01"),
            "{what}: {error:?}"
        );
    }
    busy.batch_execute("COMMIT")
        .await
        .expect("a transaction may finish within the grace");
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("shutdown finishes")
        .expect("task")
        .expect("clean shutdown");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE a = 7", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "the committed row is there");
}

#[tokio::test]
async fn clients_past_the_limit_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pg-max-clients", "2"]).await;
    let _one = door.client().await;
    let _two = door.client().await;
    let error = refused(&door.dsn(), "a third client").await;
    assert_eq!(sqlstate(&error).as_deref(), Some("53300"), "{error:?}");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("sorry, too many clients already")
    );
}

/// Reads everything until the door closes the connection (bounded).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the door closes the connection")
        .ok();
    all
}

fn has_error(bytes: &[u8], code: &str) -> bool {
    let field = format!("C{code}\0");
    bytes.first() == Some(&b'E') && bytes.windows(field.len()).any(|w| w == field.as_bytes())
}

/// A raw connection through the door, logged in with SCRAM as the URL's user.
async fn raw_login(door: &Door) -> TcpStream {
    use bytes::{Buf, BytesMut};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    let mut stream = TcpStream::connect(door.addr).await.expect("connect");
    let mut out = BytesMut::new();
    frontend::startup_message(
        [("user", "postgres"), ("database", door.database.as_str())],
        &mut out,
    )
    .expect("startup");
    stream.write_all(&out).await.expect("write");
    let mut scram = None;
    loop {
        let tag = stream.read_u8().await.expect("tag");
        let len = stream.read_i32().await.expect("len") as usize;
        let mut body = vec![0; len - 4];
        stream.read_exact(&mut body).await.expect("body");
        out.clear();
        match tag {
            b'R' => {
                let mut b = &body[..];
                match b.get_i32() {
                    10 => {
                        let client = ScramSha256::new(
                            POSTGRES_PASSWORD.as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            "SCRAM-SHA-256",
                            client.message(),
                            &mut out,
                        )
                        .expect("sasl");
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().expect("scram");
                        client.update(b).expect("server-first");
                        frontend::sasl_response(client.message(), &mut out).expect("sasl");
                    }
                    12 => scram
                        .as_mut()
                        .expect("scram")
                        .finish(b)
                        .expect("server-final"),
                    _ => {}
                }
                if !out.is_empty() {
                    stream.write_all(&out).await.expect("write");
                }
            }
            b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
            b'Z' => return stream,
            _ => {}
        }
    }
}

#[tokio::test]
async fn malformed_input_is_refused_and_others_are_served() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--max-request-bytes", "64KiB"]).await;
    // Garbage before the startup packet.
    let mut garbage = TcpStream::connect(door.addr).await.expect("connect");
    garbage
        .write_all(b"GARBAGE GARBAGE GARBAGE\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut garbage).await;
    assert!(
        has_error(&answer, "08P01"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A message with a length shorter than its own header, after login.
    let mut bad = raw_login(&door).await;
    bad.write_all(b"Q\0\0\0\x02").await.expect("write");
    let answer = read_to_close(&mut bad).await;
    assert!(
        has_error(&answer, "08P01"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A message over --max-request-bytes.
    let mut big = raw_login(&door).await;
    let mut message = vec![b'Q'];
    message.extend_from_slice(&(200_000i32).to_be_bytes());
    message.extend_from_slice(&vec![b' '; 1000]);
    big.write_all(&message).await.expect("write");
    let answer = read_to_close(&mut big).await;
    assert!(
        has_error(&answer, "08P01"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The door serves others all along.
    let client = door.client().await;
    let row = client
        .query_one("SELECT 3", &[])
        .await
        .expect("still serving");
    assert_eq!(row.get::<_, i32>(0), 3);
}

// --- COPY -------------------------------------------------------------------------------------

#[tokio::test]
async fn copy_goes_both_ways_and_a_bad_row_leaves_the_connection_usable() {
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "2"]).await;
    door.direct()
        .await
        .batch_execute("CREATE TABLE t (a int, b text)")
        .await
        .expect("table");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.tsv");
    let rows: String = (1..=500).map(|i| format!("{i}\trow {i}\n")).collect();
    std::fs::write(&input, &rows).expect("write");
    let output = dir.path().join("out.tsv");
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "1\tfine\nnot-a-number\tbad\n").expect("write");
    let copy_in = format!("\\copy t FROM '{}'", input.display());
    let copy_out = format!(
        "\\copy (SELECT * FROM t ORDER BY a) TO '{}'",
        output.display()
    );
    let (ok, out, err) = psql(&door.dsn(), &["-c", &copy_in, "-c", &copy_out], &[]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&output).expect("read"), rows);
    // The bad row fails the COPY; the same session goes on.
    let copy_bad = format!("\\copy t FROM '{}'", bad.display());
    let (ok, out, err) = psql(
        &door.dsn(),
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            &copy_bad,
            "-c",
            "SELECT count(*) FROM t",
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("invalid input syntax for type integer"),
        "{err}"
    );
    assert_eq!(out.trim(), "500");
}

/// Reads messages from a raw connection until one with `tag`; all of them, in order.
async fn read_until(stream: &mut TcpStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let read = async {
            let t = stream.read_u8().await?;
            let len = stream.read_i32().await? as usize;
            let mut body = vec![0; len - 4];
            stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>((t, body))
        };
        let (t, body) = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("no message {:?} within 20 s: {seen:?}", tag as char))
            .expect("read");
        seen.push((t, body));
        if t == tag {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_pipeline_keeps_its_server_connection_until_its_sync() {
    use postgres_protocol::message::frontend;
    let _shared = EXCLUSIVE.read().await;
    let door = Door::start(&["--pool-max", "1", "--acquire-timeout", "30s"]).await;
    let mut raw = raw_login(&door).await;
    let other = std::sync::Arc::new(door.client().await);
    for failing in [true, false] {
        // Statements answered up to a Flush, no Sync yet: the server is mid-pipeline (and,
        // after an error, skipping everything up to the Sync).
        let mut out = bytes::BytesMut::new();
        let sql = if failing { "SELEC 1" } else { "SELECT 1" };
        frontend::parse("", sql, None, &mut out).expect("parse");
        frontend::bind(
            "",
            "",
            None,
            std::iter::empty::<Option<i32>>(),
            |_: Option<i32>, _| Ok(postgres_protocol::IsNull::Yes),
            Some(1),
            &mut out,
        )
        .map_err(|_| ())
        .expect("bind");
        frontend::execute("", 0, &mut out).expect("execute");
        frontend::flush(&mut out);
        raw.write_all(&out).await.expect("write");
        read_until(&mut raw, if failing { b'E' } else { b'C' }).await;
        // Another client needs the one server connection: it gets it once the Sync is in.
        let waiting = tokio::spawn({
            let other = std::sync::Arc::clone(&other);
            async move { other.simple_query("SELECT 2").await.map(|_| ()) }
        });
        let mut out = bytes::BytesMut::new();
        frontend::sync(&mut out);
        raw.write_all(&out).await.expect("write");
        let answers = read_until(&mut raw, b'Z').await;
        assert_eq!(
            answers.last().map(|(_, body)| body.as_slice()),
            Some(&b"I"[..])
        );
        tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .expect("the other client was served (the server connection was left mid-pipeline)")
            .expect("task")
            .expect("the other client's query");
    }
}
