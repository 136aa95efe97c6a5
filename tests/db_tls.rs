//! TLS between the gateway and PostgreSQL: each `sslmode` through the real gateway, against a
//! PostgreSQL of this binary's own with a certificate from a test CA, checked the way a user
//! would (`pg_stat_ssl`), and the refusals a wrong CA or host name must cause.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use pgway::app::config::{Cli, Command};
use pgway::devdb::{ClusterSetup, TempPostgres};
use pgway::proto::value::Kind;
use support::*;
use tokio::sync::OnceCell;
use tonic::Code;

/// A role that pg_hba.conf lets in over TLS only.
const TLS_ONLY_ROLE: &str = "tls_only";

/// Roles that log in with SCRAM (over TLS or not): the URL's, and one the door logs in as
/// with the ClientKey its client proved.
const SCRAM_ROLE: &str = "tls_scram";
const SCRAM_PASSWORD: &str = "pw-tls-scram";
const KEY_ROLE: &str = "tls_key";
const KEY_PASSWORD: &str = "pw-tls-key";

/// The TLS-enabled server and the CA files a connection string can name.
struct TlsServer {
    pg: TempPostgres,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that has nothing to do with the server.
    other_ca: PathBuf,
}

static SERVER: OnceCell<TlsServer> = OnceCell::const_new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

fn test_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn start_server() -> TlsServer {
    let ca = test_ca("pgway test CA");
    let other_ca = test_ca("unrelated test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgway test server");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params.signed_by(&key, &ca).unwrap();

    let setup = ClusterSetup {
        files: vec![
            ("server.crt".into(), certificate.pem().into_bytes()),
            ("server.key".into(), key.serialize_pem().into_bytes()),
        ],
        conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        hba: vec![
            format!("hostnossl all {TLS_ONLY_ROLE} all reject"),
            format!("hostssl all {SCRAM_ROLE},{KEY_ROLE} all scram-sha-256"),
            format!("hostnossl all {SCRAM_ROLE},{KEY_ROLE} all scram-sha-256"),
        ],
    };
    let pg = TempPostgres::start_with(None, &setup).unwrap_or_else(|e| panic!("{e}"));

    // Beside the cluster, not in a directory of their own: the server lives in a static, which
    // is never dropped, and the cluster's watchdog removes its whole directory once this test
    // binary exits, these files with it.
    let ca_path = pg.dir().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let other_path = pg.dir().join("other-ca.pem");
    std::fs::write(&other_path, other_ca.pem()).unwrap();
    TlsServer {
        pg,
        ca: ca_path,
        other_ca: other_path,
    }
}

/// The binary's TLS server, started on first use.
async fn server() -> &'static TlsServer {
    SERVER
        .get_or_init(|| async {
            let server = tokio::task::spawn_blocking(start_server)
                .await
                .expect("starting PostgreSQL panicked");
            connect(&server.pg.url("postgres"))
                .await
                .batch_execute(&format!(
                    "CREATE ROLE {TLS_ONLY_ROLE} LOGIN;
                     SET password_encryption = 'scram-sha-256';
                     CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{SCRAM_PASSWORD}';
                     CREATE ROLE {KEY_ROLE} LOGIN PASSWORD '{KEY_PASSWORD}';"
                ))
                .await
                .expect("CREATE ROLE");
            server
        })
        .await
}

/// A fresh database on the TLS server, made over a plain superuser connection.
async fn fresh_database(server: &TlsServer) -> String {
    let database = format!(
        "tls_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    connect(&server.pg.url("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("CREATE DATABASE");
    database
}

/// A gateway for `user` on a fresh database at `host`, with `query` as the URL's query string.
/// A long acquire timeout: a refusal that arrives as CONNECT_FAILED (not POOL_TIMEOUT) was
/// reported at once.
async fn gateway(user: &str, host: &str, query: &str) -> Gateway {
    let server = server().await;
    let database = fresh_database(server).await;
    let url = format!(
        "postgres://{user}:not-a-secret-pw@{host}:{}/{database}?{query}",
        server.pg.port()
    );
    Gateway::serving(&url, database, &["--acquire-timeout", "60s"]).await
}

const IS_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// Whether the gateway's connection to PostgreSQL uses TLS, as PostgreSQL sees it.
async fn uses_tls(gateway: &Gateway) -> bool {
    let mut client = gateway.client().await;
    match scalar(&run(&mut client, IS_SSL, vec![]).await) {
        Some(Kind::BoolValue(ssl)) => ssl,
        other => panic!("pg_stat_ssl.ssl is {other:?}"),
    }
}

/// The refusal of a gateway whose database connections can't be made.
async fn refusal(gateway: &Gateway) -> tonic::Status {
    let mut client = gateway.client().await;
    let status = client
        .query(query("SELECT 1", vec![]))
        .await
        .expect_err("the query should be refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status).reason, "CONNECT_FAILED", "{status:?}");
    assert!(
        !status.message().contains("not-a-secret-pw"),
        "the password leaked: {status:?}"
    );
    status
}

#[tokio::test]
async fn disable_is_plaintext_and_refused_where_tls_is_required() {
    let plain = gateway("postgres", "127.0.0.1", "sslmode=disable").await;
    assert!(!uses_tls(&plain).await);

    let refused = gateway(TLS_ONLY_ROLE, "127.0.0.1", "sslmode=disable").await;
    let status = refusal(&refused).await;
    assert_eq!(
        error_info(&status)
            .metadata
            .get("sqlstate")
            .map(String::as_str),
        Some("28000"),
        "{status:?}"
    );
}

#[tokio::test]
async fn require_encrypts_without_a_ca() {
    let gw = gateway(TLS_ONLY_ROLE, "127.0.0.1", "sslmode=require").await;
    assert!(uses_tls(&gw).await);
}

#[tokio::test]
async fn prefer_is_the_default_and_uses_tls_when_offered() {
    let gw = gateway(TLS_ONLY_ROLE, "127.0.0.1", "application_name=tls-test").await;
    assert!(uses_tls(&gw).await);
}

#[tokio::test]
async fn verify_ca_accepts_the_right_ca_and_refuses_another() {
    let server = server().await;
    let good = gateway(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={}", server.ca.display()),
    )
    .await;
    assert!(uses_tls(&good).await);

    let wrong = gateway(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            server.other_ca.display()
        ),
    )
    .await;
    let status = refusal(&wrong).await;
    assert!(
        status.message().contains("certificate") && status.message().contains("unknown CA"),
        "{status:?}"
    );
}

#[tokio::test]
async fn require_with_a_ca_checks_the_chain_like_libpq() {
    let server = server().await;
    let wrong = gateway(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", server.other_ca.display()),
    )
    .await;
    let status = refusal(&wrong).await;
    assert!(status.message().contains("certificate"), "{status:?}");
}

#[tokio::test]
async fn verify_full_checks_ip_and_dns_names() {
    let server = server().await;
    let ca = server.ca.display();
    for host in ["127.0.0.1", "localhost"] {
        let gw = gateway(
            TLS_ONLY_ROLE,
            host,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        )
        .await;
        assert!(uses_tls(&gw).await, "{host}");
    }
}

/// The certificate names 127.0.0.1 and localhost; `db.invalid` (reached through hostaddr) is
/// not among them: verify-full refuses, verify-ca with the same certificate and CA doesn't.
#[tokio::test]
async fn verify_full_refuses_a_host_the_certificate_does_not_name() {
    let server = server().await;
    let ca = server.ca.display();
    let mismatch = gateway(
        TLS_ONLY_ROLE,
        "db.invalid",
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}"),
    )
    .await;
    let status = refusal(&mismatch).await;
    assert!(
        status.message().contains("certificate") && status.message().contains("name mismatch"),
        "{status:?}"
    );

    let chain_only = gateway(
        TLS_ONLY_ROLE,
        "db.invalid",
        &format!("hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={ca}"),
    )
    .await;
    assert!(uses_tls(&chain_only).await);
}

#[tokio::test]
async fn key_value_form_works_too() {
    let server = server().await;
    let database = fresh_database(server).await;
    let url = format!(
        "host=localhost port={} user={TLS_ONLY_ROLE} dbname={database} sslmode=verify-full \
         sslrootcert='{}'",
        server.pg.port(),
        server.ca.display()
    );
    let gw = Gateway::serving(&url, database, &[]).await;
    assert!(uses_tls(&gw).await);
}

/// A call past its deadline cancels its statement with a cancel request of its own, which
/// must use TLS too (sslmode=verify-full refuses a plaintext one).
#[tokio::test]
async fn cancel_requests_use_tls() {
    let server = server().await;
    let gw = gateway(
        TLS_ONLY_ROLE,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", server.ca.display()),
    )
    .await;
    let mut request = tonic::Request::new(query("SELECT pg_sleep(60)", vec![]));
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let status = gw
        .client_without_local_deadline()
        .query(request)
        .await
        .expect_err("past its deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    let direct = connect(&server.pg.url(&gw.database)).await;
    statements_end(
        &direct,
        "SELECT pg_sleep%",
        Duration::from_secs(20),
        "the sleeping statement was cancelled",
    )
    .await;
}

fn validate(url: &str) -> Result<pgway::app::config::Config, pgway::app::config::ConfigError> {
    let cli =
        Cli::try_parse_from(["pgway", "serve", "--auth", "none", "--database-url", url]).unwrap();
    let Some(Command::Serve(args)) = cli.command else {
        panic!("not a serve command")
    };
    args.validate()
}

#[test]
fn unusable_ca_files_stop_the_start() {
    let error = validate(
        "postgres://u:not-a-secret-pw@h/db?sslmode=verify-full&sslrootcert=/no/such/ca.pem",
    )
    .unwrap_err();
    assert_eq!(error.setting, "PGWAY_DATABASE_URL");
    assert!(error.reason.contains("/no/such/ca.pem"), "{error}");
    assert!(!error.to_string().contains("not-a-secret-pw"), "{error}");

    let files = tempfile::tempdir().unwrap();
    let junk = files.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let error = validate(&format!(
        "postgres://u:not-a-secret-pw@h/db?sslmode=verify-ca&sslrootcert={}",
        junk.display()
    ))
    .unwrap_err();
    assert_eq!(error.setting, "PGWAY_DATABASE_URL");
    assert!(!error.to_string().contains("not-a-secret-pw"), "{error}");

    let error = validate("postgres://u:not-a-secret-pw@h/db?sslmode=verify-full").unwrap_err();
    assert_eq!(error.setting, "PGWAY_DATABASE_URL");
    assert!(error.reason.contains("sslrootcert"), "{error}");
}

/// The PostgreSQL door logs in to a TLS server with SCRAM-SHA-256-PLUS, bound to the TLS
/// connection: with the URL's password and with a client's recovered ClientKey alike. The
/// URL's `channel_binding=require` makes that a requirement: a login the server accepts is
/// then a bound one; without TLS it is refused before anything is sent.
#[tokio::test]
async fn the_postgres_door_binds_its_logins_to_tls() {
    let server = server().await;
    let database = fresh_database(server).await;
    let verifier: String = connect(&server.pg.url("postgres"))
        .await
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&KEY_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("userlist.txt");
    std::fs::write(&file, format!("\"{KEY_ROLE}\" \"{verifier}\"\n")).unwrap();
    let file = file.to_str().unwrap();
    for (tls, expect_ok) in [
        (
            format!("sslmode=verify-full&sslrootcert={}", server.ca.display()),
            true,
        ),
        ("sslmode=disable".to_string(), false),
    ] {
        let url = format!(
            "postgres://{SCRAM_ROLE}:{SCRAM_PASSWORD}@localhost:{}/{database}?{tls}&channel_binding=require",
            server.pg.port()
        );
        let argv = [
            "--pg-addr",
            "127.0.0.1:0",
            "--pool-min",
            "0",
            "--pg-auth-file",
            file,
        ];
        let gw = Gateway::serving(&url, database.clone(), &argv).await;
        let addr = gw.pg_addr.unwrap();
        for (role, password) in [(SCRAM_ROLE, SCRAM_PASSWORD), (KEY_ROLE, KEY_PASSWORD)] {
            let dsn = format!("postgresql://{role}:{password}@{addr}/{database}?sslmode=disable");
            let outcome = async {
                let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                let row = client
                    .query_one(
                        "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                Ok::<(String, bool), tokio_postgres::Error>((row.get(0), row.get(1)))
            }
            .await;
            match outcome {
                Ok((user, ssl)) if expect_ok => {
                    assert_eq!(user, role);
                    assert!(ssl, "{role}: the server connection uses TLS");
                }
                Err(error) if !expect_ok => {
                    let db = error.as_db_error().expect("refused by the door");
                    assert_eq!(db.code().code(), "28000", "{role}: {db:?}");
                    assert!(db.message().contains("channel_binding"), "{}", db.message());
                }
                other => panic!("{role} with {tls}: {other:?}"),
            }
        }
    }
}
