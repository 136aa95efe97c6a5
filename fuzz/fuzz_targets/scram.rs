//! SCRAM-SHA-256 and the auth_file: verifiers, userlist.txt, and both sides of an exchange fed
//! arbitrary messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgway::pgwire::scram::{
    Binding, KeyClient, SCRAM_SHA_256, ServerExchange, Verifier, tls_server_end_point,
};
use pgway::pgwire::userlist::UserList;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Verifier::parse(&text);
    let _ = UserList::parse(&text);

    // Few iterations: deriving the verifier is not what is being fuzzed.
    let verifier = Verifier::from_password("fuzz", b"fuzzing-salt", 1);
    let (first, last) = data.split_at(data.len() / 2);

    // The server side, with arbitrary client messages.
    let mut server = ServerExchange::new(verifier.clone());
    if server.client_first(SCRAM_SHA_256, first).is_ok() {
        let _ = server.client_final(last);
    }
    // A well-formed client-first-message, so the arbitrary client-final-message is parsed too.
    let mut server = ServerExchange::new(verifier.clone());
    if server
        .client_first(SCRAM_SHA_256, b"n,,n=,r=fuzznonce")
        .is_ok()
    {
        let _ = server.client_final(data);
    }

    // The channel-binding data of an arbitrary "certificate".
    let _ = tls_server_end_point(data);

    // The client side, with arbitrary server messages, bound to TLS or not.
    let binding = match data.first() {
        Some(b) if b % 2 == 0 => Binding::EndPoint(data.to_vec()),
        _ => Binding::Unsupported,
    };
    let mut client = KeyClient::new([7; 32], verifier, binding);
    let _ = client.client_first();
    if client.server_first(first).is_ok() {
        let _ = client.server_final(last);
    }
});
