//! The texts a client parsed lately as its unnamed statement, with what each does to its
//! session, read once.
//!
//! Applications cycle through a handful of texts as the unnamed statement: pgbench's TPC-B
//! script seven, an ORM its queries. Reading a text for its effect (the lexer and the
//! statement's words) was 23% of the door's instructions in that script (callgrind, `pgbench
//! -b tpcb-like -M extended`, 10 clients), while the text it read was nearly always one it had
//! read a few statements before. Simple Queries are read every time: there the texts mostly
//! carry their literals (`pgbench -M simple`, drivers that interpolate), so each is new, and
//! keeping them cost 1,070 instructions a query (a tenth more) for nothing found.
//!
//! The reading is a function of the text and of `standard_conforming_strings` alone, so an
//! entry is found by both. Per client, not shared: nothing of one client reaches another, no
//! lock is taken, and the bound is small (a few kilobytes a client, 1,000 idle clients no
//! more than a few megabytes).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::core::sql::{SessionEffect, session_effect};

/// Texts kept at most.
const COUNT: usize = 16;
/// Bytes of text kept at most; a longer text is read every time.
const BYTES: usize = 8 * 1024;

#[derive(Debug)]
struct Read {
    text: Bytes,
    standard_strings: bool,
    effect: Arc<SessionEffect>,
}

/// A client's recently read texts, most recent first.
#[derive(Debug, Default)]
pub(super) struct Recent {
    reads: VecDeque<Read>,
    bytes: usize,
}

impl Recent {
    /// `text` (as kept) and what it does, read under `standard_strings`: from the texts kept
    /// if it is one of them, else read now and kept.
    pub(super) fn read(
        &mut self,
        text: &[u8],
        standard_strings: bool,
    ) -> (Bytes, Arc<SessionEffect>) {
        // Texts that differ mostly differ in their last bytes (the literals), after a long
        // common start: compared there first, a text not kept costs a few instructions an
        // entry instead of a comparison of its whole length.
        let found = self.reads.iter().position(|read| {
            read.text.len() == text.len()
                && read.standard_strings == standard_strings
                && tail(&read.text) == tail(text)
                && read.text[..] == *text
        });
        if let Some(at) = found {
            if at > 0
                && let Some(read) = self.reads.remove(at)
            {
                self.reads.push_front(read);
            }
            if let Some(read) = self.reads.front() {
                return (read.text.clone(), Arc::clone(&read.effect));
            }
        }
        let read = Read {
            text: Bytes::copy_from_slice(text),
            standard_strings,
            effect: Arc::new(session_effect(text, standard_strings)),
        };
        let answer = (read.text.clone(), Arc::clone(&read.effect));
        if text.len() <= BYTES / 2 {
            self.bytes += text.len();
            self.reads.push_front(read);
            while self.reads.len() > COUNT || self.bytes > BYTES {
                match self.reads.pop_back() {
                    Some(old) => self.bytes -= old.text.len(),
                    None => break,
                }
            }
        }
        answer
    }
}

/// The last eight bytes of `text` (all of a shorter one).
fn tail(text: &[u8]) -> &[u8] {
    &text[text.len().saturating_sub(8)..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_read_again_is_the_same_reading() {
        let mut recent = Recent::default();
        let (text, first) = recent.read(b"SET search_path = app", true);
        assert_eq!(&text[..], b"SET search_path = app");
        assert!(first.settings);
        recent.read(b"SELECT 1", true);
        let (_, again) = recent.read(b"SET search_path = app", true);
        assert!(Arc::ptr_eq(&first, &again), "read anew");
        assert_eq!(recent.reads.len(), 2);
    }

    #[test]
    fn where_strings_end_is_part_of_the_reading() {
        // With standard_conforming_strings off, \' doesn't end the string: no SET follows.
        let sql = br"SELECT 'a\'; SET search_path = x; --'";
        let mut recent = Recent::default();
        let (_, on) = recent.read(sql, true);
        let (_, off) = recent.read(sql, false);
        assert!(on.settings);
        assert!(!off.settings);
        let (_, on_again) = recent.read(sql, true);
        assert!(Arc::ptr_eq(&on, &on_again));
    }

    #[test]
    fn the_bounds_hold() {
        let mut recent = Recent::default();
        for n in 0..100 {
            recent.read(format!("SELECT {n}").as_bytes(), true);
        }
        assert_eq!(recent.reads.len(), COUNT);
        let long = vec![b'x'; BYTES];
        let (text, _) = recent.read(&long, true);
        assert_eq!(text.len(), BYTES);
        assert_eq!(recent.reads.len(), COUNT, "a long text is not kept");
        let mid = format!("SELECT '{}'", "y".repeat(BYTES / 2 - 20));
        for n in 0..4 {
            recent.read(format!("{mid} -- {n}").as_bytes(), true);
        }
        assert!(recent.bytes <= BYTES);
        assert_eq!(
            recent.bytes,
            recent.reads.iter().map(|r| r.text.len()).sum::<usize>()
        );
    }
}
