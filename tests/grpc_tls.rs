//! TLS and mutual TLS on the gRPC side, as callers see it: who gets in, who is refused, and
//! certificates replaced under a running gateway.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use pgway::app::config::{Cli, Command};
use pgway::proto::database_client::DatabaseClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for the loopback address and `localhost`.
    fn server(&self) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "pgway");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The gateway's TLS files in a directory of their own.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn new(server: &Pair, client_ca: &Ca) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: dir.path().join("client-ca.crt"),
            _dir: dir,
        };
        files.replace(server);
        std::fs::write(&files.client_ca, client_ca.pem()).unwrap();
        files
    }

    /// Overwrites the certificate and key in place, as an operator would.
    fn replace(&self, server: &Pair) {
        std::fs::write(&self.key, &server.key).unwrap();
        std::fs::write(&self.cert, &server.cert).unwrap();
    }

    fn path(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// `pgway serve` flags for TLS, with or without client certificates.
    fn flags(&self, mutual: bool) -> Vec<&str> {
        let mut flags = vec![
            "--tls-cert",
            Files::path(&self.cert),
            "--tls-key",
            Files::path(&self.key),
        ];
        if mutual {
            flags.extend(["--tls-client-ca", Files::path(&self.client_ca)]);
        }
        flags
    }
}

/// A client that trusts only `ca` and presents `identity`, connected to the gateway.
async fn tls_client(
    gateway: &Gateway,
    ca: &Ca,
    identity: Option<&Pair>,
) -> Result<DatabaseClient<Channel>, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", gateway.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    Ok(DatabaseClient::new(channel))
}

/// Runs `SELECT 1` on `client`.
async fn select_one(client: &mut DatabaseClient<Channel>) -> Result<(), String> {
    let response = client
        .query(query("SELECT 1", vec![]))
        .await
        .map_err(|status| format!("{status:?}"))?
        .into_inner();
    assert_eq!(
        scalar(&response),
        Some(pgway::proto::value::Kind::IntValue(1))
    );
    Ok(())
}

/// Connects as `tls_client` does and runs `SELECT 1`. With TLS 1.3 a refused client
/// certificate surfaces on the first call, not at connect, so both count.
async fn tls_query(gateway: &Gateway, ca: &Ca, identity: Option<&Pair>) -> Result<(), String> {
    let mut client = tls_client(gateway, ca, identity).await?;
    select_one(&mut client).await
}

#[tokio::test]
async fn tls_serves_and_plaintext_is_refused() {
    let ca = Ca::new("pgway test CA");
    let files = Files::new(&ca.server(), &ca);
    let mut flags = files.flags(false);
    flags.extend(["--shutdown-grace", "5s"]);
    let gateway = Gateway::with_settings(&flags).await;

    // A client that connects and says nothing doesn't hold up the others.
    let _silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let mut client = tls_client(&gateway, &ca, None).await.unwrap();
    select_one(&mut client).await.unwrap();

    // A plaintext client does not get a gRPC answer from a TLS port.
    let plaintext = async {
        let channel = Endpoint::from_shared(format!("http://{}", gateway.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        select_one(&mut DatabaseClient::new(channel)).await
    };
    assert!(plaintext.await.is_err(), "a plaintext call succeeded");

    // A client that doesn't trust the gateway's CA refuses it.
    let stranger = Ca::new("some other CA");
    assert!(tls_query(&gateway, &stranger, None).await.is_err());

    // Shutdown still works with a TLS connection open, and the port stops accepting.
    let addr = gateway.addr;
    gateway.shutdown().await.unwrap();
    drop(client);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn mutual_tls_admits_only_certificates_from_the_client_ca() {
    let ca = Ca::new("pgway test CA");
    let files = Files::new(&ca.server(), &ca);
    let gateway = Gateway::with_settings(&files.flags(true)).await;

    let good = ca.client("orders");
    tls_query(&gateway, &ca, Some(&good)).await.unwrap();

    let refused = tls_query(&gateway, &ca, None).await;
    assert!(refused.is_err(), "a client without a certificate got in");

    let other = Ca::new("another CA").client("orders");
    let refused = tls_query(&gateway, &ca, Some(&other)).await;
    assert!(refused.is_err(), "a certificate from another CA got in");

    // Refused handshakes are counted (the recorder is shared by this binary's gateways).
    eventually(
        Duration::from_secs(10),
        "handshake failures counted",
        || async {
            gateway
                .metric("pgway_tls_handshake_failures_total{reason=\"error\"}")
                .await
                >= 2.0
        },
    )
    .await;

    // The right certificate still works after the refusals.
    tls_query(&gateway, &ca, Some(&good)).await.unwrap();
}

#[tokio::test]
async fn certificates_reload_when_the_files_change() {
    let old_ca = Ca::new("old CA");
    let files = Files::new(&old_ca.server(), &old_ca);
    let mut flags = files.flags(false);
    flags.extend(["--tls-reload-interval", "100ms"]);
    let gateway = Gateway::with_settings(&flags).await;

    let mut old_client = tls_client(&gateway, &old_ca, None).await.unwrap();
    select_one(&mut old_client).await.unwrap();

    let new_ca = Ca::new("new CA");
    files.replace(&new_ca.server());
    eventually(
        Duration::from_secs(30),
        "a client that trusts only the new CA connects",
        || async { tls_query(&gateway, &new_ca, None).await.is_ok() },
    )
    .await;
    // The connection opened before keeps the certificate it was made with. (Had it been
    // replaced, this client, trusting only the old CA, could not connect again.)
    select_one(&mut old_client).await.unwrap();
    assert!(tls_query(&gateway, &old_ca, None).await.is_err());
    assert!(
        gateway
            .metric("pgway_tls_reloads_total{outcome=\"success\"}")
            .await
            >= 1.0
    );

    // A broken file is reported and the last good certificate keeps serving.
    let failures = "pgway_tls_reloads_total{outcome=\"failure\"}";
    let before = gateway.metric(failures).await;
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    eventually(
        Duration::from_secs(30),
        "the broken certificate file is reported",
        || async { gateway.metric(failures).await > before },
    )
    .await;
    tls_query(&gateway, &new_ca, None).await.unwrap();
    select_one(&mut old_client).await.unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    // Handled by tokio from now on in this process, so the signal can't kill the test even
    // before the gateway listens for it.
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let old_ca = Ca::new("old CA");
    let files = Files::new(&old_ca.server(), &old_ca);
    let mut flags = files.flags(false);
    // No polling: only the signal reloads.
    flags.extend(["--tls-reload-interval", "0s"]);
    let gateway = Gateway::with_settings(&flags).await;
    tls_query(&gateway, &old_ca, None).await.unwrap();

    let new_ca = Ca::new("new CA");
    files.replace(&new_ca.server());
    eventually(
        Duration::from_secs(30),
        "SIGHUP reloads the certificate",
        || async {
            // Sent again each time: the gateway may not have listened for it yet.
            let pid = std::process::id().to_string();
            let sent = tokio::process::Command::new("kill")
                .args(["-s", "HUP", &pid])
                .status()
                .await
                .unwrap();
            assert!(sent.success());
            tls_query(&gateway, &new_ca, None).await.is_ok()
        },
    )
    .await;
}

#[tokio::test]
async fn probe_checks_a_tls_gateway() {
    let ca = Ca::new("pgway test CA");
    let files = Files::new(&ca.server(), &ca);
    let gateway = Gateway::with_settings(&files.flags(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let client = ca.client("probe");
    let (cert, key) = (dir.path().join("probe.crt"), dir.path().join("probe.key"));
    std::fs::write(&cert, &client.cert).unwrap();
    std::fs::write(&key, &client.key).unwrap();

    let probe = |extra: &[&str]| {
        let mut args = vec![
            format!("-addr={}", gateway.addr),
            "-connect-timeout=10s".to_owned(),
            "-rpc-timeout=10s".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        async move { pgway::admin::probe::run(&args).await }
    };
    let ca_flag = format!("-tls-ca-cert={}", files.client_ca.display());
    let cert_flag = format!("-tls-client-cert={}", cert.display());
    let key_flag = format!("-tls-client-key={}", key.display());
    let tls = [
        "-tls",
        &ca_flag,
        &cert_flag,
        &key_flag,
        "-tls-server-name=localhost",
    ];
    assert_eq!(probe(&tls).await, pgway::admin::probe::exit::SERVING);
    // Without a client certificate, or without TLS, the probe fails.
    assert_ne!(probe(&tls[..2]).await, pgway::admin::probe::exit::SERVING);
    assert_ne!(probe(&[]).await, pgway::admin::probe::exit::SERVING);
}

#[test]
fn unusable_tls_files_stop_start_up_with_their_name() {
    let ca = Ca::new("pgway test CA");
    let files = Files::new(&ca.server(), &ca);
    let validate = |extra: &[&str]| {
        let mut argv = vec![
            "pgway",
            "serve",
            "--database-url",
            "postgres://u@127.0.0.1/db",
            "--auth",
            "none",
        ];
        argv.extend_from_slice(extra);
        let Some(Command::Serve(args)) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not a serve command")
        };
        args.validate()
    };
    assert!(validate(&files.flags(true)).unwrap().tls.is_some());

    // A key file that isn't a key: named with its path, its contents never echoed.
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.key");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nSECRETSECRET!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = validate(&[
        "--tls-cert",
        Files::path(&files.cert),
        "--tls-key",
        Files::path(&bad_key),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "PGWAY_TLS_KEY");
    let message = err.to_string();
    assert!(message.contains(Files::path(&bad_key)), "{message}");
    assert!(!message.contains("SECRET"), "{message}");

    // A key that belongs to another certificate.
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.server().key).unwrap();
    let err = validate(&[
        "--tls-cert",
        Files::path(&files.cert),
        "--tls-key",
        Files::path(&other_key),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "PGWAY_TLS_KEY");

    // A client CA file that holds no certificate.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let mut flags = files.flags(false);
    flags.extend(["--tls-client-ca", Files::path(&empty)]);
    let err = validate(&flags).unwrap_err();
    assert_eq!(err.setting, "PGWAY_TLS_CLIENT_CA");
}
