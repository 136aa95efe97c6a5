//! The connection string: the TLS keys (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) taken
//! out of it, URL or key=value form, and the rest left to tokio-postgres as written.

use super::connector::build;
use super::{DatabaseTls, TlsParams, TlsSettingError, setting};

/// Parses a database connection string (URL or key=value form): the tokio-postgres settings
/// with the TLS mode applied, and the TLS connector, its CA and client certificate files read
/// now. Blocking (it reads files): call it at start-up.
pub fn parse(
    connection_string: &str,
) -> Result<(tokio_postgres::Config, DatabaseTls), TlsSettingError> {
    let (rest, params) = split(connection_string)?;
    let mut database: tokio_postgres::Config =
        rest.parse().map_err(TlsSettingError::ConnectionString)?;
    let tls = build(&params, database.get_ssl_negotiation())?;
    database.ssl_mode(tls.mode().wire());
    Ok((database, tls))
}

/// Takes the TLS keys out of a connection string; the rest goes to tokio-postgres as it was
/// written.
fn split(connection_string: &str) -> Result<(String, TlsParams), TlsSettingError> {
    match ["postgres://", "postgresql://"]
        .iter()
        .find(|prefix| connection_string.starts_with(*prefix))
    {
        Some(prefix) => Ok(split_url(connection_string, prefix.len())),
        None => split_key_values(connection_string),
    }
}

/// URL form. The query starts at the first `?` after the credentials, which end at the first
/// `@`: the same places tokio-postgres' parser finds them, so a `?` in a password is no query.
fn split_url(url: &str, prefix_len: usize) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let rest = &url[prefix_len..];
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    let Some(question) = rest[host_start..].find('?') else {
        return (url.to_owned(), params);
    };
    let query_start = prefix_len + host_start + question + 1;
    let (head, query) = url.split_at(query_start);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let ours = pair.split_once('=').is_some_and(|(key, value)| {
            match (percent_decode(key), percent_decode(value)) {
                (Some(key), Some(value)) => params.take(&key, value),
                // Left for tokio-postgres to report.
                _ => false,
            }
        });
        if !ours && !pair.is_empty() {
            kept.push(pair);
        }
    }
    let rebuilt = if kept.is_empty() {
        head[..head.len() - 1].to_owned()
    } else {
        format!("{head}{}", kept.join("&"))
    };
    (rebuilt, params)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// key=value form, tokenised with libpq's (and tokio-postgres') rules: values are bare words
/// or single-quoted, with backslash escapes. The other parameters are kept verbatim.
fn split_key_values(text: &str) -> Result<(String, TlsParams), TlsSettingError> {
    let mut params = TlsParams::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key_end = start;
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key_end = i + c.len_utf8();
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let well_formed = key_end > start && chars.next_if(|(_, c)| *c == '=').is_some();
        let value = if well_formed {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            read_value(&mut chars)
        } else {
            None
        };
        let Some(value) = value else {
            // Malformed: let tokio-postgres say how, in its words (they don't echo values).
            return Err(match text.parse::<tokio_postgres::Config>() {
                Err(e) => TlsSettingError::ConnectionString(e),
                Ok(_) => setting("not a valid connection string"),
            });
        };
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        if !params.take(&text[start..key_end], value) {
            kept.push(&text[start..end]);
        }
    }
    Ok((kept.join(" "), params))
}

fn read_value(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Option<String> {
    let mut value = String::new();
    if chars.next_if(|(_, c)| *c == '\'').is_some() {
        loop {
            match chars.next()? {
                (_, '\'') => return Some(value),
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        }
    }
    while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
        if c == '\\' {
            if let Some((_, escaped)) = chars.next() {
                value.push(escaped);
            }
        } else {
            value.push(c);
        }
    }
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(sslmode: Option<&str>, sslrootcert: Option<&str>) -> TlsParams {
        TlsParams {
            sslmode: sslmode.map(str::to_owned),
            sslrootcert: sslrootcert.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn url_keys_are_taken_out() {
        let (rest, found) = split(
            "postgres://u:p%3Fw@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example:5432/app?application_name=x"
        );
        assert_eq!(found, params(Some("verify-full"), Some("/etc/ca.pem")));

        let (rest, found) = split("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(found, params(Some("require"), None));

        // A `?` inside the credentials is no query string.
        let (rest, found) = split("postgres://u:a?b@h/db").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(found, TlsParams::default());
    }

    #[test]
    fn key_value_keys_are_taken_out() {
        let (rest, found) = split(
            "host=h  sslmode = verify-ca password='a b\\'c' sslrootcert='/my certs/ca.pem' dbname=x",
        )
        .unwrap();
        assert_eq!(rest, "host=h password='a b\\'c' dbname=x");
        assert_eq!(found, params(Some("verify-ca"), Some("/my certs/ca.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn malformed_strings_do_not_echo() {
        let error = split("host=h password=hunter2 sslmode").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error = parse("host=h password=hunter2 sslmode=verify-everything").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(error.to_string().contains("verify-everything"), "{error}");
    }
}
