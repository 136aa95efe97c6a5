//! The door's real clients run as programs (psql, pgbench, the Python drivers of tests/python)
//! and what the tests read from them.

use std::path::Path;
use std::process::Output;

use tokio_postgres::NoTls;

/// Runs a program to completion, failing the test if it is missing or hangs.
pub async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    super::run_program(
        program,
        args,
        env,
        "psql and pgbench come with postgresql-client; the Python drivers with \
         `pip install -r tests/python/requirements.txt`",
    )
    .await
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// psql with `args` against `dsn`: (success, stdout, stderr). Unaligned, tuples only.
pub async fn psql(dsn: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut all = vec!["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn];
    all.extend_from_slice(args);
    let out = run("psql", &all, env).await;
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Runs tests/python/`script` with the door's DSN and `args`; asserts it exits 0.
pub async fn python(script: &str, dsn: &str, args: &[&str]) -> String {
    let mut all = vec![dsn];
    all.extend_from_slice(args);
    let out = python_output(script, &all).await;
    super::assert_passed(&out, &format!("{script} failed"));
    text(&out.stdout)
}

/// Runs tests/python/`script` with `args`: its output, for the caller to judge.
pub async fn python_output(script: &str, args: &[&str]) -> Output {
    let path = Path::new("tests/python").join(script);
    let mut all = vec![path.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run("python3", &all, &[]).await
}

/// The error a login through the door is refused with.
pub async fn refused(dsn: &str, what: &str) -> tokio_postgres::Error {
    match tokio_postgres::connect(dsn, NoTls).await {
        Ok(_) => panic!("let in: {what}"),
        Err(error) => error,
    }
}

pub fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    // (Display of a tokio-postgres error is only "db error": tests print it with {:?}.)
    error.as_db_error().map(|e| e.code().code().to_owned())
}
