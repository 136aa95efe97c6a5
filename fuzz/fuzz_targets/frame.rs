//! The PostgreSQL door's decoding of what clients send: message framing, startup packets, and
//! the fields read from Parse, Bind, Describe/Close, Query and ErrorResponse; plus what the
//! door reads of a statement's text (session effects).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgway::core::sql::session_effect;
use pgway::pgwire::frame;

fuzz_target!(|data: &[u8]| {
    let mut startup = BytesMut::from(data);
    while let Ok(Some(packet)) = frame::split_startup(&mut startup) {
        let _ = frame::parse_startup(&packet);
    }
    let _ = frame::parse_startup(data);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = frame::split_message(&mut buf, 1 << 16) {
        let _ = frame::read_parse(&msg);
        let _ = frame::read_bind(&msg);
        let _ = frame::read_target(&msg);
        let _ = frame::read_query(&msg);
        let _ = frame::read_error(&msg);
        let _ = frame::read_command_tag(&msg);
        let _ = frame::read_parameter_status(&msg);
    }
    let _ = session_effect(data, true);
    let _ = session_effect(data, false);
});
