//! Result sets of the console, written as PgBouncer writes its own: RowDescription with the
//! same column types (text, int4, int8, numeric), DataRows in text format, then
//! `CommandComplete` and `ReadyForQuery`. Hand-written: postgres-protocol writes only the
//! frontend's messages, and these three are a few lines each.

use bytes::{BufMut, BytesMut};

use crate::pgwire::frame;

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;

/// A column's type, PgBouncer's letters: `s`/`T` text, `i` int4, `q` int8, `N` numeric.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Text,
    Int4,
    Int8,
    Numeric,
}

/// A value of a row: text, or NULL.
pub type Cell = Option<String>;

/// One result set being written into `out`.
#[derive(Debug)]
pub struct Table<'a> {
    out: &'a mut BytesMut,
    rows: usize,
}

impl<'a> Table<'a> {
    /// Starts a result set with these columns.
    pub fn new(out: &'a mut BytesMut, columns: &[(&str, Kind)]) -> Table<'a> {
        let start = out.len();
        out.put_u8(b'T');
        out.put_u32(0);
        out.put_u16(columns.len() as u16);
        for (name, kind) in columns {
            out.put_slice(name.as_bytes());
            out.put_u8(0);
            out.put_u32(0);
            out.put_u16(0);
            let (oid, size) = match kind {
                Kind::Text => (TEXT, -1i16),
                Kind::Int4 => (INT4, 4),
                Kind::Int8 => (INT8, 8),
                Kind::Numeric => (NUMERIC, -1),
            };
            out.put_u32(oid);
            out.put_i16(size);
            out.put_i32(-1);
            out.put_u16(0);
        }
        finish(out, start);
        Table { out, rows: 0 }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<Cell>) {
        let start = self.out.len();
        self.out.put_u8(b'D');
        self.out.put_u32(0);
        self.out.put_u16(cells.len() as u16);
        for cell in cells {
            match cell {
                Some(text) => {
                    self.out.put_u32(text.len() as u32);
                    self.out.put_slice(text.as_bytes());
                }
                None => self.out.put_i32(-1),
            }
        }
        finish(self.out, start);
        self.rows += 1;
    }

    /// Ends the result set as PgBouncer does: `SHOW`, then ReadyForQuery.
    pub fn done(self) {
        frame::write_command_complete(self.out, "SHOW");
        frame::write_ready(self.out, b'I');
    }
}

fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// A text cell.
pub fn text(value: impl ToString) -> Cell {
    Some(value.to_string())
}

/// A timestamp cell (µs since the epoch), as `2026-12-05 18:45:01 UTC`; 0 is NULL.
pub fn timestamp(us: u64) -> Cell {
    if us == 0 {
        return None;
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    let rfc = humantime::format_rfc3339_seconds(at).to_string();
    Some(format!(
        "{} UTC",
        rfc.trim_end_matches('Z').replacen('T', " ", 1)
    ))
}
