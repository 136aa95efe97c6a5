//! Unit tests of the SCRAM exchange, each side against a real client or against the other side,
//! and of the verifier.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::*;

/// Produced by PostgreSQL 15 for the password "secret"
/// (`SET password_encryption = 'scram-sha-256'; CREATE ROLE x LOGIN PASSWORD 'secret'`).
const PG15_SECRET: &str = "SCRAM-SHA-256$4096:R97VKp+8HDJX4BV8hUfz3w==$\
    yGamRchyeMEp3E2iEtsuyB55AfuVWvndMSICuWwS664=:4T9aH1M+/lF7g/2qvhyBh8ZrPmxeBE/PoD84dqmlLSU=";

/// A server-first-message made for the client's nonce.
type ServerFirstFor<'a> = dyn Fn(&str) -> String + 'a;
/// A client-final-message made from a good one and the exchange's nonce.
type Tamper<'a> = dyn Fn(&str, &str) -> Vec<u8> + 'a;

fn random_salt() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

/// HMAC(SaltedPassword, "Client Key"), computed with ring rather than this module.
fn independent_client_key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
    ring::hmac::sign(&key, b"Client Key")
        .as_ref()
        .try_into()
        .unwrap()
}

/// A real client (postgres-protocol's, as tokio-postgres uses) against the exchange.
fn real_client(
    verifier: &Verifier,
    password: &str,
    binding: ChannelBinding,
) -> Result<[u8; 32], String> {
    let mut client = ScramSha256::new(password.as_bytes(), binding);
    let mut server = ServerExchange::new(verifier.clone());
    let first = server
        .client_first(SCRAM_SHA_256, client.message())
        .map_err(|e| e.to_string())?;
    client.update(&first).map_err(|e| e.to_string())?;
    let (last, key) = server
        .client_final(client.message())
        .map_err(|e| e.to_string())?;
    client.finish(&last).map_err(|e| e.to_string())?;
    Ok(key)
}

#[test]
fn postgres_protocol_client_round_trip() {
    let salt = random_salt();
    let verifier = Verifier::from_password("pencil", &salt, 4096);
    let expected = independent_client_key("pencil", &salt, 4096);
    for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        assert_eq!(real_client(&verifier, "pencil", binding).unwrap(), expected);
    }
    let err = real_client(&verifier, "pencils", ChannelBinding::unsupported()).unwrap_err();
    assert!(err.contains("invalid proof"), "{err}");
}

#[test]
fn saslprep_applies_to_passwords() {
    // U+00AA normalises to "a" under NFKC; postgres-protocol prepares the same way.
    let salt = random_salt();
    let verifier = Verifier::from_password("p\u{aa}ss", &salt, 16);
    assert_eq!(verifier, Verifier::from_password("pass", &salt, 16));
    real_client(&verifier, "p\u{aa}ss", ChannelBinding::unsupported()).unwrap();
}

/// pgway on both sides: the client's exchange yields a ClientKey that logs in as the user.
fn key_client_against_server(
    key: [u8; 32],
    client_verifier: Verifier,
    server_verifier: &Verifier,
) -> Result<(), ScramError> {
    let mut client = KeyClient::new(key, client_verifier, Binding::Unsupported);
    let mut server = ServerExchange::new(server_verifier.clone());
    let first = server.client_first(SCRAM_SHA_256, &client.client_first())?;
    let last = client.server_first(&first)?;
    let (reply, recovered) = server.client_final(&last)?;
    assert_eq!(recovered, key);
    client.server_final(&reply)
}

#[test]
fn key_client_logs_in_with_the_recovered_key() {
    let salt = random_salt();
    let verifier = Verifier::from_password("hunter2", &salt, 4096);
    let key = real_client(&verifier, "hunter2", ChannelBinding::unsupported()).unwrap();
    key_client_against_server(key, verifier.clone(), &verifier).unwrap();

    // The server's verifier has another salt (the password was set again).
    let other = Verifier::from_password("hunter2", &random_salt(), 4096);
    let err = key_client_against_server(key, verifier.clone(), &other).unwrap_err();
    assert!(matches!(err, ScramError::VerifierMismatch), "{err}");
    // Or other iterations.
    let other = Verifier::from_password("hunter2", &salt, 4097);
    let err = key_client_against_server(key, verifier.clone(), &other).unwrap_err();
    assert!(matches!(err, ScramError::VerifierMismatch), "{err}");

    // A wrong key is refused by the server.
    let mut wrong = key;
    wrong[0] ^= 1;
    let err = key_client_against_server(wrong, verifier.clone(), &verifier).unwrap_err();
    assert!(matches!(err, ScramError::InvalidProof), "{err}");
}

#[test]
fn key_client_checks_the_server() {
    let verifier = Verifier::from_password("hunter2", &random_salt(), 4096);
    let key = independent_client_key("hunter2", &verifier.salt, 4096);
    let run = |reply: &dyn Fn(&[u8]) -> Vec<u8>| {
        let mut client = KeyClient::new(key, verifier.clone(), Binding::Unsupported);
        let mut server = ServerExchange::new(verifier.clone());
        let first = server
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let last = client.server_first(&first).unwrap();
        let (good, _) = server.client_final(&last).unwrap();
        client.server_final(&reply(&good))
    };
    run(&|good| good.to_vec()).unwrap();
    let mut forged = [0u8; 32];
    forged[5] = 7;
    let err = run(&|_| format!("v={}", STANDARD.encode(forged)).into_bytes()).unwrap_err();
    assert!(matches!(err, ScramError::InvalidServerSignature), "{err}");
    let err = run(&|_| b"e=invalid-proof".to_vec()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server refused SCRAM authentication: invalid-proof"
    );
    for bad in [&b"v="[..], b"v=AAAA", b"x=1", b"", b"\xff", b"v=!!!"] {
        assert!(run(&|_| bad.to_vec()).is_err());
    }
    let err = run(&|good| [good, b",x=1"].concat()).unwrap_err();
    assert!(matches!(err, ScramError::Malformed(_)), "{err}");
}

#[test]
fn key_client_refuses_bad_server_first() {
    let verifier = Verifier::from_password("x", b"salt", 4096);
    let salt = STANDARD.encode(b"salt");
    let try_first = |make: &dyn Fn(&str) -> String| {
        let mut client = KeyClient::new([0; 32], verifier.clone(), Binding::Unsupported);
        let first = String::from_utf8(client.client_first()).unwrap();
        let nonce = first.strip_prefix("n,,n=,r=").unwrap().to_owned();
        client.server_first(make(&nonce).as_bytes())
    };
    try_first(&|n| format!("r={n}abc,s={salt},i=4096")).unwrap();
    try_first(&|n| format!("r={n}abc,s={salt},i=4096,x=ext")).unwrap();
    let cases: Vec<Box<ServerFirstFor<'_>>> = vec![
        Box::new(|n| format!("r={n},s={salt},i=4096")),
        Box::new(|n| format!("r=X{n}abc,s={salt},i=4096")),
        Box::new(|n| format!("r={n}abc,s=***,i=4096")),
        Box::new(|n| format!("r={n}abc,s={salt},i=")),
        Box::new(|n| format!("r={n}abc,s={salt},i=-1")),
        Box::new(|n| format!("r={n}abc,s={salt},i=0")),
        Box::new(|n| format!("r={n}abc,s={salt},i=99999999999")),
        Box::new(|n| format!("r={n}abc,s={salt}")),
        Box::new(|n| format!("r={n}abc")),
        Box::new(|n| format!("m=x,r={n}abc,s={salt},i=4096")),
        Box::new(|n| format!("r={n}abc,s={salt},i=4096,")),
        Box::new(|_| String::new()),
    ];
    for case in &cases {
        assert!(try_first(case.as_ref()).is_err(), "{}", case("N"));
    }
    let mut client = KeyClient::new([0; 32], verifier.clone(), Binding::Unsupported);
    client.client_first();
    assert!(matches!(
        client.server_first(b"r=\xff"),
        Err(ScramError::NotUtf8)
    ));
    // Out of order.
    let mut client = KeyClient::new([0; 32], verifier, Binding::Unsupported);
    assert!(matches!(
        client.server_first(b"r=a"),
        Err(ScramError::OutOfOrder)
    ));
    assert!(matches!(
        client.server_final(b"v=a"),
        Err(ScramError::OutOfOrder)
    ));
}

#[test]
fn verifier_parse_and_encode() {
    let parsed = Verifier::parse(PG15_SECRET).unwrap();
    assert_eq!(parsed.iterations, 4096);
    assert_eq!(parsed.salt.len(), 16);
    assert_eq!(
        Verifier::from_password("secret", &parsed.salt, parsed.iterations),
        parsed
    );
    assert_eq!(parsed.encode(), PG15_SECRET);
    let made = Verifier::from_password("other", &random_salt(), 1000);
    assert_eq!(Verifier::parse(&made.encode()).unwrap(), made);
    // Debug shows no key.
    assert_eq!(format!("{parsed:?}"), "Verifier { iterations: 4096, .. }");
    let credential = Credential::ClientKey {
        client_key: [1; 32],
        verifier: parsed,
    };
    assert_eq!(
        format!("{credential:?}"),
        "ClientKey { verifier: Verifier { iterations: 4096, .. }, .. }"
    );
    assert_eq!(
        format!("{:?}", Credential::Password("pw".into())),
        "Password(..)"
    );
}

#[test]
fn verifier_parse_refuses_malformed() {
    let good = Verifier::parse(PG15_SECRET).unwrap().encode();
    let key = STANDARD.encode([0u8; 32]);
    let cases = [
        String::new(),
        "SCRAM-SHA-256$".into(),
        "md5abcdef".into(),
        "secret".into(),
        good.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
        good.replace("4096", "0"),
        good.replace("4096", "-4096"),
        good.replace("4096", "+4096"),
        good.replace("4096", ""),
        good.replace("4096", "99999999999"),
        good.replacen(':', ";", 1),
        good.replacen('$', "#", 2),
        format!("SCRAM-SHA-256$4096:$${key}:{key}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==${key}:AAAA"),
        format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}x"),
        format!("SCRAM-SHA-256$4096:c2FsdA=${key}:{key}"),
        format!("SCRAM-SHA-256$4096:***${key}:{key}"),
        format!(" {good}"),
        format!("{good}\n"),
        good[..good.len() - 1].to_owned(),
    ];
    for case in &cases {
        let err = Verifier::parse(case).unwrap_err();
        assert!(
            matches!(err, ScramError::InvalidVerifier(_)),
            "{case}: {err}"
        );
    }
    Verifier::parse(&format!("SCRAM-SHA-256$1:c2FsdA==${key}:{key}")).unwrap();
}

/// Runs a server exchange's first step, returning its server-first-message.
fn server_first(server: &mut ServerExchange, data: &str) -> Result<String, ScramError> {
    server
        .client_first(SCRAM_SHA_256, data.as_bytes())
        .map(|m| String::from_utf8(m).unwrap())
}

#[test]
fn server_refuses_bad_client_first() {
    let verifier = Verifier::from_password("x", b"salt", 4096);
    let mut server = ServerExchange::new(verifier.clone());
    let first = server_first(&mut server, "n,,n=ignored,r=abc").unwrap();
    let nonce = first.strip_prefix("r=abc").unwrap();
    let (nonce, rest) = nonce.split_once(',').unwrap();
    assert_eq!(nonce.len(), 24);
    assert_eq!(rest, "s=c2FsdA==,i=4096");
    // Out of order, and only once.
    assert!(matches!(
        server_first(&mut server, "n,,n=,r=abc"),
        Err(ScramError::OutOfOrder)
    ));

    let refused = |mechanism: &str, data: &[u8]| {
        ServerExchange::new(verifier.clone())
            .client_first(mechanism, data)
            .unwrap_err()
    };
    assert!(matches!(
        refused("SCRAM-SHA-256-PLUS", b"n,,n=,r=abc"),
        ScramError::UnsupportedMechanism(_)
    ));
    assert!(matches!(
        refused(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc"),
        ScramError::ChannelBindingUnsupported
    ));
    assert!(matches!(
        refused(SCRAM_SHA_256, b"n,a=bob,n=,r=abc"),
        ScramError::AuthzidUnsupported
    ));
    assert!(matches!(
        refused(SCRAM_SHA_256, b"n,,n=,r=a\xffb"),
        ScramError::NotUtf8
    ));
    for bad in [
        &b""[..],
        b"n",
        b"n,",
        b"n,,",
        b"n,,n=",
        b"n,,n=,",
        b"n,,n=,r=",
        b"n,,r=abc",
        b"n,,n=,r=a b",
        b"n,,n=,r=abc,",
        b"n,,n=,r=abc,1=x",
        b"n,,m=x,n=,r=abc",
        b"x,,n=,r=abc",
        b"n,x,n=,r=abc",
        b"y,,n=,x=abc",
    ] {
        let err = refused(SCRAM_SHA_256, bad);
        assert!(
            matches!(err, ScramError::Malformed(_)),
            "{}: {err}",
            String::from_utf8_lossy(bad)
        );
    }
    // Extensions are ignored.
    server_first(&mut ServerExchange::new(verifier), "y,,n=u,r=abc,x=1").unwrap();
}

#[test]
fn server_refuses_bad_client_final() {
    let password = "pw";
    let verifier = Verifier::from_password(password, &random_salt(), 4096);
    // A correct client-final-message for a fresh exchange, then a tampered one.
    let attempt = |tamper: &dyn Fn(&str, &str) -> Vec<u8>| {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut server = ServerExchange::new(verifier.clone());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        let good = std::str::from_utf8(client.message()).unwrap().to_owned();
        let nonce = std::str::from_utf8(&first).unwrap()[2..]
            .split(',')
            .next()
            .unwrap()
            .to_owned();
        let result = server.client_final(&tamper(&good, &nonce));
        // One attempt only.
        assert!(matches!(
            server.client_final(good.as_bytes()),
            Err(ScramError::OutOfOrder)
        ));
        result
    };
    attempt(&|good, _| good.as_bytes().to_vec()).unwrap();
    let proof = |good: &str| good.rsplit_once(",p=").unwrap().1.to_owned();
    let err = attempt(&|good, _| good.replace("c=biws", "c=eSws").into_bytes()).unwrap_err();
    assert!(matches!(err, ScramError::ChannelBindingMismatch), "{err}");
    let err = attempt(&|good, n| good.replace(n, &format!("{n}x")).into_bytes()).unwrap_err();
    assert!(matches!(err, ScramError::NonceMismatch), "{err}");
    let err = attempt(&|good, n| good.replace(n, &n[1..]).into_bytes()).unwrap_err();
    assert!(matches!(err, ScramError::NonceMismatch), "{err}");
    let err = attempt(&|good, _| {
        let mut raw = STANDARD.decode(proof(good)).unwrap();
        raw[31] ^= 0x80;
        good.replace(&proof(good), &STANDARD.encode(raw))
            .into_bytes()
    })
    .unwrap_err();
    assert!(matches!(err, ScramError::InvalidProof), "{err}");
    let malformed: Vec<Box<Tamper<'_>>> = vec![
        Box::new(|_, _| Vec::new()),
        Box::new(|good, _| good.as_bytes()[..good.len() / 2].to_vec()),
        Box::new(|good, _| good.as_bytes()[..good.len() - 1].to_vec()),
        Box::new(|good, _| good.replace(",p=", ",q=").into_bytes()),
        Box::new(|good, _| good.replace("c=biws", "c=bi*s").into_bytes()),
        Box::new(|good, _| good.replace("c=biws,", "").into_bytes()),
        Box::new(|good, n| good.replace(&format!("r={n},"), "").into_bytes()),
        Box::new(|good, n| {
            good.replace(&format!("r={n}"), &format!("x={n}"))
                .into_bytes()
        }),
        Box::new(|good, _| good.replace(&proof(good), "AAAA").into_bytes()),
        Box::new(|good, _| format!("{good},x=1").into_bytes()),
        Box::new(|good, _| good.replace(",p=", ",,p=").into_bytes()),
    ];
    for tamper in &malformed {
        let err = attempt(tamper.as_ref()).unwrap_err();
        assert!(matches!(err, ScramError::Malformed(_)), "{err}");
    }
    let err = attempt(&|good, _| [good.as_bytes(), b"\xff"].concat()).unwrap_err();
    assert!(matches!(err, ScramError::NotUtf8), "{err}");
    // An extension before the proof is ignored, but it is part of the signed message, so
    // the real client's proof no longer matches.
    let err = attempt(&|good, _| good.replace(",p=", ",x=1,p=").into_bytes()).unwrap_err();
    assert!(matches!(err, ScramError::InvalidProof), "{err}");
    // Out of order.
    let mut server = ServerExchange::new(verifier);
    assert!(matches!(
        server.client_final(b"c=biws,r=a,p=b"),
        Err(ScramError::OutOfOrder)
    ));
}

#[test]
fn errors_carry_no_secrets() {
    let verifier = Verifier::parse(PG15_SECRET).unwrap();
    let texts = [
        ScramError::InvalidProof.to_string(),
        ScramError::VerifierMismatch.to_string(),
        Verifier::parse(&PG15_SECRET.replace("4096", "x"))
            .unwrap_err()
            .to_string(),
    ];
    let secrets = [
        STANDARD.encode(verifier.stored_key),
        STANDARD.encode(verifier.server_key),
    ];
    for text in &texts {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{text}");
        }
    }
}
