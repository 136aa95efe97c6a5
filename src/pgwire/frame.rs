//! Framing of the PostgreSQL v3 protocol, and the few messages the door reads or writes itself.
//!
//! The door relays bytes; it decodes only what pooling needs (a message's tag and length, the
//! status in ReadyForQuery, the code in ErrorResponse, CommandComplete's tag, the names in
//! Parse/Bind/Describe/Close). postgres-protocol has writers for the frontend messages (used
//! toward the server) but no backend writers and no frontend decoder, so those few are written
//! here: each is a handful of bytes, and borrowing slices of the message avoids copying rows.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version pgway speaks: 3.0.
pub const PROTOCOL_3_0: i32 = 3 << 16;
/// The codes in a startup packet's version field that are not versions.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// PostgreSQL refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Why a byte stream is not the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Splits one whole message (tag, length and body) off the front of `buf`, or `None` until all
/// of it has arrived. The message is returned as it came, to be forwarded untouched.
pub fn split_message(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    Ok(message_len(buf, max)?.map(|total| buf.split_to(total)))
}

/// The whole length of the message at the front of `buf` (tag, length and body), or `None`
/// until all of it has arrived (room for the rest is reserved): for reading a message in
/// place and then advancing past it, which costs less than splitting it off as a
/// reference-counted piece when it is only copied on (measured).
pub fn message_len(buf: &mut BytesMut, max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len.into()));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(total))
}

/// Splits a startup-phase packet (a length, then the body; no tag) off the front of `buf`.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(FrameError::BadLength(len.into()));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    Ok(Some(packet))
}

/// What the first packet of a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: Bytes,
    },
    Start {
        major: u16,
        minor: u16,
        /// The parameters in order, `_pq_.` protocol options included.
        params: Vec<(String, String)>,
    },
}

/// Reads a startup-phase packet's body (after its length).
pub fn parse_startup(body: &[u8]) -> Result<Startup, FrameError> {
    let mut body = body;
    if body.len() < 4 {
        return Err(FrameError::Malformed("startup"));
    }
    let code = body.get_i32();
    match code {
        SSL_REQUEST if body.is_empty() => Ok(Startup::Ssl),
        GSSENC_REQUEST if body.is_empty() => Ok(Startup::GssEnc),
        CANCEL_REQUEST if body.len() >= 8 => {
            let pid = body.get_i32();
            Ok(Startup::Cancel {
                pid,
                key: Bytes::copy_from_slice(body),
            })
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(FrameError::Malformed("startup")),
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            let mut params = Vec::new();
            loop {
                let name = take_cstr(&mut body).ok_or(FrameError::Malformed("startup"))?;
                if name.is_empty() {
                    break;
                }
                let value = take_cstr(&mut body).ok_or(FrameError::Malformed("startup"))?;
                params.push((utf8(name)?, utf8(value)?));
            }
            Ok(Startup::Start {
                major,
                minor,
                params,
            })
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::Malformed("startup"))
}

/// Takes a NUL-terminated string off the front of `buf`.
pub fn take_cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    // Most names are empty (the unnamed statement and portal): those are read off the first
    // byte. The rest go to memchr, not a byte loop: every Parse's SQL text is scanned here,
    // and the loop was 4% of the door's instructions per transaction, memchr on every string
    // 3% (callgrind, pgbench -S -M extended).
    let end = match buf.first() {
        Some(0) => 0,
        _ => memchr::memchr(0, buf)?,
    };
    let (s, rest) = buf.split_at(end);
    *buf = rest.get(1..)?;
    Some(s)
}

/// The body of a whole message (after tag and length).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(5..).unwrap_or(&[])
}

/// The client's Parse: statement name, query text, parameter types (raw, as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The parameter-count field and the type OIDs, as they were sent.
    pub types: &'a [u8],
}

pub fn read_parse(msg: &[u8]) -> Result<Parse<'_>, FrameError> {
    let mut b = body(msg);
    let name = take_cstr(&mut b).ok_or(FrameError::Malformed("Parse"))?;
    let query = take_cstr(&mut b).ok_or(FrameError::Malformed("Parse"))?;
    if b.len() < 2 {
        return Err(FrameError::Malformed("Parse"));
    }
    let count = i16::from_be_bytes([b[0], b[1]]);
    if count < 0 || b.len() != 2 + 4 * count as usize {
        return Err(FrameError::Malformed("Parse"));
    }
    Ok(Parse {
        name,
        query,
        types: b,
    })
}

/// Writes a Parse message.
pub fn write_parse(out: &mut BytesMut, name: &[u8], query: &[u8], types: &[u8]) {
    let len = 4 + name.len() + 1 + query.len() + 1 + types.len();
    out.put_u8(b'P');
    out.put_i32(len as i32);
    put_cstr(out, name);
    put_cstr(out, query);
    out.put_slice(types);
}

/// A Bind's portal name, statement name, and the rest of it as sent.
pub type BindParts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// The statement name of a Bind (after the portal name), and where the rest starts.
pub fn read_bind(msg: &[u8]) -> Result<BindParts<'_>, FrameError> {
    let mut b = body(msg);
    let portal = take_cstr(&mut b).ok_or(FrameError::Malformed("Bind"))?;
    let statement = take_cstr(&mut b).ok_or(FrameError::Malformed("Bind"))?;
    Ok((portal, statement, b))
}

/// The value of parameter `n` (1-based) in what follows a Bind's names ([`read_bind`]'s
/// `rest`); `None` if it is NULL or the message is short.
pub fn bind_param(rest: &[u8], n: u32) -> Option<&[u8]> {
    let mut b = rest;
    if b.len() < 2 {
        return None;
    }
    let formats = usize::try_from(b.get_i16()).ok()?;
    b = b.get(formats * 2..)?;
    if b.len() < 2 {
        return None;
    }
    let count = u32::try_from(b.get_i16()).ok()?;
    if n == 0 || n > count {
        return None;
    }
    for i in 1..=n {
        if b.len() < 4 {
            return None;
        }
        let len = b.get_i32();
        let len = usize::try_from(len).ok();
        if i == n {
            return b.get(..len?);
        }
        b = b.get(len.unwrap_or(0)..)?;
    }
    None
}

/// Every parameter value of a Bind (`rest` as in [`bind_param`]); NULLs left out.
pub fn bind_params(rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut b = rest;
    let Some(formats) = (b.len() >= 2).then(|| b.get_i16()) else {
        return out;
    };
    let Some(after) = usize::try_from(formats).ok().and_then(|f| b.get(f * 2..)) else {
        return out;
    };
    b = after;
    if b.len() < 2 {
        return out;
    }
    let count = b.get_i16();
    for _ in 0..count {
        if b.len() < 4 {
            break;
        }
        let Ok(len) = usize::try_from(b.get_i32()) else {
            continue;
        };
        let Some(value) = b.get(..len) else { break };
        out.push(value);
        b = &b[len..];
    }
    out
}

/// Writes a Bind naming `statement` with the rest of the client's Bind unchanged.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + rest.len();
    out.put_u8(b'B');
    out.put_i32(len as i32);
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
}

/// The kind (`S` or `P`) and name of a Describe or Close.
pub fn read_target(msg: &[u8]) -> Result<(u8, &[u8]), FrameError> {
    let mut b = body(msg);
    let kind = *b.first().ok_or(FrameError::Malformed("Describe/Close"))?;
    b = &b[1..];
    let name = take_cstr(&mut b).ok_or(FrameError::Malformed("Describe/Close"))?;
    if !b.is_empty() || !(kind == b'S' || kind == b'P') {
        return Err(FrameError::Malformed("Describe/Close"));
    }
    Ok((kind, name))
}

/// Writes a Describe (`tag` b'D') or Close (`tag` b'C') of a statement or portal.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    out.put_u8(tag);
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    put_cstr(out, name);
}

/// A simple Query's text (without its NUL).
pub fn read_query(msg: &[u8]) -> Result<&[u8], FrameError> {
    let mut b = body(msg);
    take_cstr(&mut b).ok_or(FrameError::Malformed("Query"))
}

/// Writes a simple Query.
pub fn write_query(out: &mut BytesMut, sql: &str) {
    out.put_u8(b'Q');
    out.put_i32((4 + sql.len() + 1) as i32);
    put_cstr(out, sql.as_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// The fields of an ErrorResponse or NoticeResponse the door acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// `S`: ERROR, FATAL, PANIC (localized) — `V` preferred when present.
    pub severity: String,
    pub code: String,
    pub message: String,
}

pub fn read_error(msg: &[u8]) -> ErrorFields {
    let mut b = body(msg);
    let mut fields = ErrorFields::default();
    while let Some((&kind, rest)) = b.split_first() {
        if kind == 0 {
            break;
        }
        b = rest;
        let Some(value) = take_cstr(&mut b) else {
            break;
        };
        let value = String::from_utf8_lossy(value);
        match kind {
            b'V' => fields.severity = value.into_owned(),
            b'S' if fields.severity.is_empty() => fields.severity = value.into_owned(),
            b'C' => fields.code = value.into_owned(),
            b'M' => fields.message = value.into_owned(),
            _ => {}
        }
    }
    fields
}

/// The tag of a CommandComplete, such as `SELECT 1` or `DISCARD ALL`.
pub fn read_command_tag(msg: &[u8]) -> &[u8] {
    let mut b = body(msg);
    take_cstr(&mut b).unwrap_or(&[])
}

/// A ParameterStatus's name and value.
pub fn read_parameter_status(msg: &[u8]) -> Option<(String, String)> {
    let mut b = body(msg);
    let name = take_cstr(&mut b)?;
    let value = take_cstr(&mut b)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// An ErrorResponse as PostgreSQL writes one (severity twice: localized and not).
pub fn write_error(
    out: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let start = out.len();
    out.put_u8(b'E');
    out.put_i32(0);
    for (kind, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(kind);
        put_cstr(out, value.as_bytes());
    }
    if let Some(hint) = hint {
        out.put_u8(b'H');
        put_cstr(out, hint.as_bytes());
    }
    out.put_u8(0);
    finish_len(out, start);
}

fn finish_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// AuthenticationOk (0), or the SASL steps: 10 (mechanisms), 11 (continue), 12 (final).
pub fn write_auth(out: &mut BytesMut, code: i32, data: &[u8]) {
    out.put_u8(b'R');
    out.put_i32((8 + data.len()) as i32);
    out.put_i32(code);
    out.put_slice(data);
}

pub fn write_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    out.put_u8(b'S');
    out.put_i32((4 + name.len() + 1 + value.len() + 1) as i32);
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
}

pub fn write_backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    out.put_u8(b'K');
    out.put_i32(12);
    out.put_i32(pid);
    out.put_i32(key);
}

/// EmptyQueryResponse.
pub fn write_empty_query(out: &mut BytesMut) {
    out.put_u8(b'I');
    out.put_i32(4);
}

/// A NoticeResponse of severity NOTICE, with a detail.
pub fn write_notice(out: &mut BytesMut, message: &str, detail: &str) {
    let start = out.len();
    out.put_u8(b'N');
    out.put_i32(0);
    for (kind, value) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', message),
        (b'D', detail),
    ] {
        out.put_u8(kind);
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    finish_len(out, start);
}

pub fn write_ready(out: &mut BytesMut, status: u8) {
    out.put_slice(&[b'Z', 0, 0, 0, 5, status]);
}

pub fn write_command_complete(out: &mut BytesMut, tag: &str) {
    out.put_u8(b'C');
    out.put_i32((4 + tag.len() + 1) as i32);
    put_cstr(out, tag.as_bytes());
}

/// ParseComplete.
pub const PARSE_COMPLETE: &[u8] = &[b'1', 0, 0, 0, 4];
/// Bind of the unnamed statement to the unnamed portal, no parameters, then Execute of it.
pub const BIND_EXECUTE_UNNAMED: &[u8] = &[
    b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0,
];
/// BindComplete.
pub const BIND_COMPLETE: &[u8] = &[b'2', 0, 0, 0, 4];
/// NoData.
pub const NO_DATA: &[u8] = &[b'n', 0, 0, 0, 4];
/// ParameterDescription of no parameters, then NoData: a Describe of a statement that takes
/// none and returns no rows.
pub const NO_PARAMETERS_NO_DATA: &[u8] = &[b't', 0, 0, 0, 6, 0, 0, b'n', 0, 0, 0, 4];
/// CloseComplete.
pub const CLOSE_COMPLETE: &[u8] = &[b'3', 0, 0, 0, 4];

/// NegotiateProtocolVersion: the newest minor version pgway supports (0) and the options it
/// does not know.
pub fn write_negotiate(out: &mut BytesMut, minor: i32, unknown: &[&str]) {
    let start = out.len();
    out.put_u8(b'v');
    out.put_i32(0);
    out.put_i32(minor);
    out.put_i32(unknown.len() as i32);
    for name in unknown {
        put_cstr(out, name.as_bytes());
    }
    finish_len(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_split_only_once_whole() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT 1\0Z"[..]);
        let msg = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(read_query(&msg).unwrap(), b"SELECT 1");
        assert_eq!(&buf[..], b"Z");
        assert_eq!(split_message(&mut buf, 1 << 20).unwrap(), None);
    }

    #[test]
    fn a_message_is_measured_in_place_only_once_whole() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x0dSELECT 1"[..]);
        assert_eq!(message_len(&mut buf, 1 << 20), Ok(None));
        buf.extend_from_slice(b"\0Z");
        assert_eq!(message_len(&mut buf, 1 << 20), Ok(Some(14)));
        assert_eq!(read_query(&buf[..14]).unwrap(), b"SELECT 1");
        assert_eq!(buf.len(), 15, "measuring takes nothing off");
        assert_eq!(
            message_len(&mut buf, 10),
            Err(FrameError::TooLarge { len: 14, max: 10 })
        );
    }

    #[test]
    fn a_nul_ends_a_string_wherever_it_falls() {
        let mut rest: &[u8] = b"name\0SELECT 1\0\0\0";
        assert_eq!(take_cstr(&mut rest), Some(&b"name"[..]));
        assert_eq!(take_cstr(&mut rest), Some(&b"SELECT 1"[..]));
        assert_eq!(take_cstr(&mut rest), Some(&b""[..]));
        assert_eq!(rest, b"\0");
        let mut unterminated: &[u8] = b"SELECT 1";
        assert_eq!(take_cstr(&mut unterminated), None);
    }

    #[test]
    fn bad_and_oversize_lengths_are_errors() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x02xx"[..]);
        assert_eq!(split_message(&mut buf, 100), Err(FrameError::BadLength(2)));
        let mut buf = BytesMut::from(&b"Q\x7f\0\0\0"[..]);
        assert!(matches!(
            split_message(&mut buf, 100),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&b"\x7f\0\0\0\0\0\0\0"[..]);
        assert!(split_startup(&mut buf).is_err());
    }

    #[test]
    fn startup_packets_are_read() {
        let mut packet = BytesMut::new();
        packet.put_i32(PROTOCOL_3_0);
        for s in ["user", "alice", "database", "db", ""] {
            put_cstr(&mut packet, s.as_bytes());
        }
        assert_eq!(
            parse_startup(&packet).unwrap(),
            Startup::Start {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        assert_eq!(
            parse_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            Startup::Ssl
        );
        let mut cancel = BytesMut::new();
        cancel.put_i32(CANCEL_REQUEST);
        cancel.put_i32(7);
        cancel.put_i32(9);
        assert_eq!(
            parse_startup(&cancel).unwrap(),
            Startup::Cancel {
                pid: 7,
                key: Bytes::copy_from_slice(&9i32.to_be_bytes())
            }
        );
        // No terminator.
        let mut bad = BytesMut::new();
        bad.put_i32(PROTOCOL_3_0);
        bad.put_slice(b"user\0alice");
        assert!(parse_startup(&bad).is_err());
    }

    #[test]
    fn parse_bind_describe_close_round_trip() {
        let mut out = BytesMut::new();
        write_parse(&mut out, b"s1", b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let p = read_parse(&out).unwrap();
        assert_eq!((p.name, p.query), (&b"s1"[..], &b"SELECT $1"[..]));
        let mut bind = BytesMut::new();
        write_bind(&mut bind, b"", b"s1", &[0, 0, 0, 0, 0, 0]);
        let (portal, statement, rest) = read_bind(&bind).unwrap();
        let mut again = BytesMut::new();
        write_bind(&mut again, portal, b"pgway_1", rest);
        assert_eq!(read_bind(&again).unwrap().1, b"pgway_1");
        let mut d = BytesMut::new();
        write_target(&mut d, b'D', b'S', statement);
        assert_eq!(read_target(&d).unwrap(), (b'S', &b"s1"[..]));
        // A Parse whose type count disagrees with its length.
        let mut bad = BytesMut::new();
        write_parse(&mut bad, b"s1", b"x", &[0, 2, 0, 0, 0, 23]);
        assert!(read_parse(&bad).is_err());
    }

    #[test]
    fn errors_are_written_and_read() {
        let mut out = BytesMut::new();
        write_error(
            &mut out,
            "FATAL",
            "28P01",
            "password authentication failed",
            None,
        );
        let fields = read_error(&out);
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.severity, "FATAL");
        let whole = out.len();
        assert_eq!(fields.message, "password authentication failed");
        assert_eq!(
            split_message(&mut out, 1000).unwrap().map(|m| m.len()),
            Some(whole)
        );
    }
}
