//! TLS on the PostgreSQL door, as psql sees it: the gRPC port's certificate, verified by a
//! client that asks for `verify-full`; plain text for `prefer` when TLS is off; and bytes sent
//! after SSLRequest but before the handshake refused (CVE-2021-3935).

mod support;

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "door-password";

/// A CA, and a server certificate it signed for `localhost` and the loopback address, in a
/// directory of their own.
struct Certificates {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A client certificate the CA signed, and its key.
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn certificates(ca_name: &str) -> Certificates {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, ca_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "pgway");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "postgres");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = params.signed_by(&client_key, &ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = Certificates {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        client_cert: dir.path().join("client.crt"),
        client_key: dir.path().join("client.key"),
        dir,
    };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.client_cert, client_cert.pem()).unwrap();
    std::fs::write(&files.client_key, client_key.serialize_pem()).unwrap();
    // libpq refuses a private key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files.client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    files
}

/// A gateway with the PostgreSQL door on (and `settings`), whose URL's password the door
/// checks clients against (the harness server itself trusts loopback).
async fn door(settings: &[&str]) -> Gateway {
    let pg = postgres().await;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let database = format!(
        "pg_tls_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    connect(&pg.url("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let url = pg
        .url(&database)
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    let mut all = vec!["--pg-addr", "127.0.0.1:0"];
    all.extend_from_slice(settings);
    Gateway::serving(&url, database, &all).await
}

/// A door serving TLS with `files`' certificate.
async fn tls_door(files: &Certificates) -> Gateway {
    door(&[
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ])
    .await
}

/// A door serving TLS with `files`' certificate, with `settings`.
async fn tls_door_with(files: &Certificates, settings: &[&str]) -> Gateway {
    let mut all = vec![
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ];
    all.extend_from_slice(settings);
    door(&all).await
}

/// psql from the binaries the tests use, or PostgreSQL 15's.
fn psql() -> PathBuf {
    let psql = pgway::devdb::find_binaries(None).unwrap().join("psql");
    if psql.exists() {
        psql
    } else {
        "/usr/lib/postgresql/15/bin/psql".into()
    }
}

/// Runs psql with `conninfo` and `-c` commands; (success, stdout, stderr).
async fn run_psql(conninfo: &str, commands: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(psql());
    command.args(["-X", "-At", conninfo]);
    for c in commands {
        command.args(["-c", c]);
    }
    let output = command
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn conninfo(gw: &Gateway, host: &str, ssl: &str) -> String {
    format!(
        "host={host} port={} user=postgres dbname={} {ssl}",
        gw.pg_addr.unwrap().port(),
        gw.database
    )
}

#[tokio::test]
async fn psql_verifies_the_doors_certificate_and_talks_tls() {
    let files = certificates("pgway door test CA");
    let gw = tls_door(&files).await;
    let ssl = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    let (ok, out, err) = run_psql(
        &conninfo(&gw, "localhost", &ssl),
        &["SELECT 40 + 2", "\\conninfo"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("42\n"), "{out}");
    assert!(out.contains("SSL connection"), "{out}");

    // A CA that didn't sign it: psql refuses the certificate.
    let other = certificates("unrelated test CA");
    let ssl = format!("sslmode=verify-full sslrootcert={}", other.ca.display());
    let (ok, _, err) = run_psql(&conninfo(&gw, "localhost", &ssl), &["SELECT 1"]).await;
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");
    drop(files.dir);
}

#[tokio::test]
async fn without_tls_prefer_goes_plain_and_require_is_refused() {
    let gw = door(&[]).await;
    let (ok, out, err) = run_psql(
        &conninfo(&gw, "127.0.0.1", "sslmode=prefer"),
        &["SELECT current_user", "\\conninfo"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("postgres\n"), "{out}");
    assert!(!out.contains("SSL connection"), "{out}");
    let (ok, _, err) = run_psql(
        &conninfo(&gw, "127.0.0.1", "sslmode=require"),
        &["SELECT 1"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("does not support SSL"), "{err}");
}

/// Bytes pipelined after SSLRequest would be read as if they had come over TLS: refused in
/// the clear, before any handshake.
#[tokio::test]
async fn bytes_after_ssl_request_are_refused() {
    let files = certificates("pgway door test CA");
    let gw = tls_door(&files).await;
    let mut stream = tokio::net::TcpStream::connect(gw.pg_addr.unwrap())
        .await
        .unwrap();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&8i32.to_be_bytes());
    bytes.extend_from_slice(&80_877_103i32.to_be_bytes());
    // A startup packet right behind it, unencrypted.
    let body = b"user\0postgres\0database\0postgres\0\0";
    bytes.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
    bytes.extend_from_slice(&196_608i32.to_be_bytes());
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the door closes the connection")
    .unwrap();
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08P01"), "{text}");
    // The door still serves others.
    let ssl = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    let (ok, _, err) = run_psql(&conninfo(&gw, "localhost", &ssl), &["SELECT 1"]).await;
    assert!(ok, "{err}");
}

/// `PGWAY_PG_REQUIRE_TLS`: a plaintext login is refused as PostgreSQL refuses one that only
/// a `hostssl` line would allow (28000), before any password is asked for; TLS gets in.
#[tokio::test]
async fn plaintext_is_refused_when_tls_is_required() {
    let files = certificates("pgway door test CA");
    let gw = tls_door_with(&files, &["--pg-require-tls", "true"]).await;
    let (ok, _, err) = run_psql(
        &conninfo(&gw, "127.0.0.1", "sslmode=disable"),
        &["SELECT 1"],
    )
    .await;
    assert!(!ok, "a plaintext login got in");
    assert!(err.contains("no encryption"), "{err}");
    assert!(err.contains("PGWAY_PG_REQUIRE_TLS"), "{err}");
    let refused = gw
        .metric("pgway_pg_auth_failures_total{reason=\"tls_required\"}")
        .await;
    // At least: another test of this binary is refused for the same cause.
    assert!(refused >= 1.0, "the refusal is not counted");
    let ssl = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    let (ok, out, err) = run_psql(&conninfo(&gw, "localhost", &ssl), &["SELECT 7"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "7\n");
}

/// With `PGWAY_TLS_CLIENT_CA` the PostgreSQL port asks for a certificate exactly as the gRPC
/// port does: no plaintext, no TLS without a certificate, and a certificate the CA signed plus
/// the password gets in.
#[tokio::test]
async fn a_client_ca_requires_a_certificate_on_the_postgres_port_too() {
    let files = certificates("pgway door test CA");
    let gw = tls_door_with(&files, &["--tls-client-ca", files.ca.to_str().unwrap()]).await;
    let (ok, _, err) = run_psql(
        &conninfo(&gw, "127.0.0.1", "sslmode=disable"),
        &["SELECT 1"],
    )
    .await;
    assert!(!ok, "a plaintext login got in");
    assert!(err.contains("PGWAY_TLS_CLIENT_CA"), "{err}");
    let ssl = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    let (ok, _, err) = run_psql(&conninfo(&gw, "localhost", &ssl), &["SELECT 1"]).await;
    assert!(!ok, "a login without a certificate got in");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A certificate another CA signed.
    let other = certificates("unrelated test CA");
    let with_other = format!(
        "{ssl} sslcert={} sslkey={}",
        other.client_cert.display(),
        other.client_key.display()
    );
    let (ok, _, err) = run_psql(&conninfo(&gw, "localhost", &with_other), &["SELECT 1"]).await;
    assert!(!ok, "a certificate from another CA got in");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("alert"),
        "{err}"
    );
    let with_cert = format!(
        "{ssl} sslcert={} sslkey={}",
        files.client_cert.display(),
        files.client_key.display()
    );
    let (ok, out, err) = run_psql(
        &conninfo(&gw, "localhost", &with_cert),
        &["SELECT 40 + 2", "\\conninfo"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("42\n") && out.contains("SSL connection"),
        "{out}"
    );
}
