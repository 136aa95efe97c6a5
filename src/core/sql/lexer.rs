//! SQL split into tokens the way PostgreSQL's own lexer (`scan.l`) splits it: comments (`--`,
//! nested `/* */`), quoted identifiers, every string form (`'…'`, `E'…'`, `B'…'`, `X'…'`,
//! `N'…'`, `U&'…'`, `$tag$…$tag$`), parameters (`$1`) and the `;` that ends a statement.
//!
//! Hand-written rather than PostgreSQL's parser as a library (libpg_query, the `pg_query`
//! crate): the door reads every simple Query and every unnamed Parse, and only needs to know
//! where words, strings and statements begin and end, not the whole grammar. A tokenizer is one
//! linear pass that borrows the text (about 10–30 ns per token here, measured by
//! `lexing_is_cheap` below in release builds), where a full parse costs tens of microseconds a
//! statement and a C build; what the tokens mean is read in [`super::session_effect`].

/// One token. Words and strings borrow the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier or keyword, as written (compare it case-insensitively).
    Word(&'a [u8]),
    /// A quoted identifier's text between its quotes (a doubled `""` left as it is).
    Quoted(&'a [u8]),
    /// A Unicode-escaped identifier (`U&"…"`): what it spells can't be read without decoding.
    UnicodeQuoted,
    /// A string constant's text between its quotes, undecoded.
    Str { text: &'a [u8], escapes: bool },
    /// `$n`.
    Param(u32),
    /// A number.
    Number,
    /// One character of punctuation or of an operator: `(`, `)`, `,`, `.`, `;`, `=`, ….
    Punct(u8),
}

/// The tokens of `sql`. `standard_strings` is the session's `standard_conforming_strings`:
/// when it is off, a backslash escapes inside plain `'…'` strings too.
pub fn tokens(sql: &[u8], standard_strings: bool) -> Vec<Token<'_>> {
    let mut lexer = Lexer {
        s: sql,
        i: 0,
        standard_strings,
    };
    // About one token in three bytes of an ORM's text (`u.id, u.email`): a quarter made the
    // vector grow once for most of them. Capped, so a long text of literals doesn't reserve
    // tens of bytes for each of its bytes at once.
    let mut out = Vec::with_capacity((sql.len() / 3 + 4).min(4096));
    while let Some(token) = lexer.next_token() {
        out.push(token);
    }
    out
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    standard_strings: bool,
}

const fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Which bytes continue an identifier, as a table: every byte of every word of every simple
/// Query goes through here, and one load replaced about ten instructions of comparisons a byte
/// (a point select's text read in 2,235 instructions before, callgrind).
const IDENT_CONT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        b += 1;
    }
    table
};

fn ident_cont(b: u8) -> bool {
    IDENT_CONT[usize::from(b)]
}

/// What a byte can begin, looked up once per byte instead of matched arm by arm: each token
/// (and each space) went through a cascade of comparisons (whitespace, comments, quotes,
/// digits, letters) before its own reading, most of them for the letter of a word. With the
/// vector sized for one token in three bytes, a 323-byte query of an ORM's shape (93 tokens)
/// is lexed in 7,929 instructions instead of 8,447 (callgrind).
#[derive(Clone, Copy)]
enum Class {
    Space,
    Word,
    Digit,
    /// A byte that may begin a comment, a string, a quoted name, a parameter or a number
    /// (`-`, `/`, `'`, `"`, `$`, `.`): read by the full match.
    Special,
    Punct,
}

const CLASS: [Class; 256] = {
    let mut table = [Class::Punct; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
            Class::Space
        } else if c.is_ascii_digit() {
            Class::Digit
        } else if ident_start(c) {
            Class::Word
        } else if matches!(c, b'-' | b'/' | b'\'' | b'"' | b'$' | b'.') {
            Class::Special
        } else {
            Class::Punct
        };
        b += 1;
    }
    table
};

impl<'a> Lexer<'a> {
    fn peek(&self, at: usize) -> u8 {
        self.s.get(self.i + at).copied().unwrap_or(0)
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let b = *self.s.get(self.i)?;
            match CLASS[usize::from(b)] {
                Class::Space => {
                    self.i += 1;
                    continue;
                }
                Class::Word => return Some(self.word()),
                Class::Punct => {
                    self.i += 1;
                    return Some(Token::Punct(b));
                }
                Class::Digit => return Some(self.number()),
                Class::Special => {}
            }
            match b {
                b'-' if self.peek(1) == b'-' => {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                b'/' if self.peek(1) == b'*' => self.block_comment(),
                _ => break,
            }
        }
        let b = self.s[self.i];
        let token = match b {
            b'\'' => {
                self.i += 1;
                self.string(!self.standard_strings)
            }
            b'"' => {
                self.i += 1;
                Token::Quoted(self.quoted(b'"'))
            }
            b'$' => self.dollar(),
            // Digits and letters were taken by their class above.
            b'.' if self.peek(1).is_ascii_digit() => self.number(),
            _ => {
                self.i += 1;
                Token::Punct(b)
            }
        };
        Some(token)
    }

    /// `/* … */`, nested as PostgreSQL nests them; an unterminated one runs to the end.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.i < self.s.len() {
            if self.s[self.i] == b'/' && self.peek(1) == b'*' {
                depth += 1;
                self.i += 2;
            } else if self.s[self.i] == b'*' && self.peek(1) == b'/' {
                depth -= 1;
                self.i += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.i += 1;
            }
        }
    }

    /// The rest of a `'…'` string after its opening quote. `''` is a quote; with `escapes`, so
    /// is `\'`. Adjacent strings separated by a newline continue it (PostgreSQL's rule), which
    /// changes nothing here: each part is read as a string.
    fn string(&mut self, escapes: bool) -> Token<'a> {
        let start = self.i;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' if escapes => self.i += 2,
                b'\'' if self.peek(1) == b'\'' => self.i += 2,
                b'\'' => {
                    let text = &self.s[start..self.i];
                    self.i += 1;
                    return Token::Str { text, escapes };
                }
                _ => self.i += 1,
            }
        }
        Token::Str {
            text: &self.s[start.min(self.s.len())..],
            escapes,
        }
    }

    /// The rest of a `"…"` identifier after its opening quote.
    fn quoted(&mut self, quote: u8) -> &'a [u8] {
        let start = self.i;
        while self.i < self.s.len() {
            if self.s[self.i] == quote {
                if self.peek(1) == quote {
                    self.i += 2;
                    continue;
                }
                let text = &self.s[start..self.i];
                self.i += 1;
                return text;
            }
            self.i += 1;
        }
        &self.s[start..]
    }

    /// `$n`, or a dollar-quoted string `$tag$…$tag$`, or a lone `$`.
    fn dollar(&mut self) -> Token<'a> {
        let start = self.i;
        self.i += 1;
        if self.peek(0).is_ascii_digit() {
            let mut n: u32 = 0;
            while self.peek(0).is_ascii_digit() {
                n = n
                    .saturating_mul(10)
                    .saturating_add(u32::from(self.peek(0) - b'0'));
                self.i += 1;
            }
            return Token::Param(n);
        }
        let tag_start = self.i;
        if ident_start(self.peek(0)) {
            while ident_cont(self.peek(0)) && self.peek(0) != b'$' {
                self.i += 1;
            }
        }
        if self.peek(0) != b'$' {
            self.i = start + 1;
            return Token::Punct(b'$');
        }
        let delimiter = &self.s[start..=self.i];
        self.i += 1;
        let body = self.i;
        let _ = tag_start;
        while self.i < self.s.len() {
            if self.s[self.i..].starts_with(delimiter) {
                let text = &self.s[body..self.i];
                self.i += delimiter.len();
                return Token::Str {
                    text,
                    escapes: false,
                };
            }
            self.i += 1;
        }
        Token::Str {
            text: &self.s[body..],
            escapes: false,
        }
    }

    fn number(&mut self) -> Token<'a> {
        let start = self.i;
        while self.i < self.s.len() {
            let b = self.s[self.i];
            // `1e-3`, not `0x1e` followed by a minus.
            let exponent_sign = matches!(b, b'+' | b'-')
                && self.i > start
                && matches!(self.s[self.i - 1], b'e' | b'E')
                && !self.s[start..self.i]
                    .iter()
                    .any(|c| matches!(c, b'x' | b'X'));
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || exponent_sign {
                // `1..2` is not a number followed by a number; ranges don't occur in SQL, so
                // a second dot simply stays in the number.
                self.i += 1;
            } else {
                break;
            }
        }
        Token::Number
    }

    /// A word, or the string or identifier it prefixes (`E'…'`, `B'…'`, `X'…'`, `N'…'`,
    /// `U&'…'`, `U&"…"`).
    fn word(&mut self) -> Token<'a> {
        let start = self.i;
        // Most words go on with a letter: only a quote or `&` after the first letter can make
        // it a prefix, so the rest is looked at only then.
        let next = self.peek(1);
        if next == b'\'' || next == b'&' {
            if let Some(token) = self.prefixed(next) {
                return token;
            }
        }
        let rest = self.s.get(self.i..).unwrap_or_default();
        self.i += rest
            .iter()
            .position(|&b| !ident_cont(b))
            .unwrap_or(rest.len());
        Token::Word(&self.s[start..self.i])
    }

    /// The string or identifier a word's first letter prefixes, if it does.
    fn prefixed(&mut self, next: u8) -> Option<Token<'a>> {
        let first = self.s[self.i].to_ascii_lowercase();
        if next == b'\'' {
            match first {
                b'e' => {
                    self.i += 2;
                    return Some(self.string(true));
                }
                b'b' | b'x' | b'n' => {
                    self.i += 2;
                    return Some(self.string(!self.standard_strings));
                }
                _ => {}
            }
        }
        if first == b'u' && next == b'&' {
            match self.peek(2) {
                b'\'' => {
                    self.i += 3;
                    return Some(self.string(!self.standard_strings));
                }
                b'"' => {
                    self.i += 3;
                    self.quoted(b'"');
                    return Some(Token::UnicodeQuoted);
                }
                _ => {}
            }
        }
        None
    }
}

/// The text of a string constant as PostgreSQL reads it, for the escapes that matter to a
/// setting's name (`''`, and with `escapes` a backslash before any character). Octal,
/// hexadecimal and Unicode escapes are not decoded: `None`, so the caller treats the name as
/// unknown.
pub fn string_value(text: &[u8], escapes: bool) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\'' if text.get(i + 1) == Some(&b'\'') => {
                out.push(b'\'');
                i += 2;
            }
            b'\\' if escapes => {
                let next = *text.get(i + 1)?;
                if next.is_ascii_alphanumeric() {
                    return None;
                }
                out.push(next);
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Token::*;

    fn words(sql: &str) -> Vec<String> {
        tokens(sql.as_bytes(), true)
            .into_iter()
            .filter_map(|t| match t {
                Word(w) => Some(String::from_utf8_lossy(w).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_and_strings_hide_their_words() {
        assert_eq!(
            words("/* tag */ SET search_path = evil"),
            ["SET", "search_path", "evil"]
        );
        assert_eq!(
            words("/* a /* nested */ still comment */ SELECT 1"),
            ["SELECT"]
        );
        assert_eq!(words("-- SET x = 1\nSELECT 'SET y = 2'"), ["SELECT"]);
        assert_eq!(
            words("SELECT E'it\\'s SET', $q$ SET $q$, $$x$$"),
            ["SELECT"]
        );
        assert_eq!(words("SELECT \"SET role\" FROM t"), ["SELECT", "FROM", "t"]);
        assert_eq!(words("SELECT U&\"\\0073et\" , U&'x'"), ["SELECT"]);
        assert_eq!(words("SELECT a$b$ FROM x"), ["SELECT", "a$b$", "FROM", "x"]);
        // A prefix is one letter before the quote; a longer word before a quote or `&` is a
        // word of its own.
        assert_eq!(
            words("SELECT b'1 SET', x'ff', n'SET', e'\\' SET', ab'c', u&x, ux&'y'"),
            ["SELECT", "ab", "u", "x", "ux"]
        );
    }

    #[test]
    fn strings_follow_standard_conforming_strings() {
        // With standard_conforming_strings off, the backslash escapes the quote and the SET
        // is inside the string; with it on, the string ends at the backslash.
        let sql = b"SELECT 'x\\''; SET role x; --'";
        assert!(!tokens(sql, true).contains(&Word(b"role")));
        assert!(tokens(sql, false).contains(&Word(b"role")));
        let sql = b"SELECT 'x\\'; SET role x; --'";
        assert!(tokens(sql, true).contains(&Word(b"role")));
        assert!(!tokens(sql, false).contains(&Word(b"role")));
    }

    #[test]
    fn parameters_dollar_quotes_and_punctuation() {
        assert_eq!(
            tokens(b"SELECT $1, $tag$a$b$tag$;", true),
            [
                Word(b"SELECT"),
                Param(1),
                Punct(b','),
                Str {
                    text: b"a$b",
                    escapes: false
                },
                Punct(b';'),
            ]
        );
        assert_eq!(
            tokens(b"x::int8 1.5e-3", true),
            [Word(b"x"), Punct(b':'), Punct(b':'), Word(b"int8"), Number,]
        );
    }

    #[test]
    fn string_values() {
        assert_eq!(
            string_value(b"app.it''s", false).as_deref(),
            Some("app.it's")
        );
        assert_eq!(string_value(b"a\\.b", true).as_deref(), Some("a.b"));
        assert_eq!(string_value(b"a\\x41", true), None);
    }

    #[test]
    fn lexing_is_cheap() {
        // Not a benchmark (timings don't belong in tests): shows the cost stays linear on a
        // long statement, and gives `cargo test --release -- --nocapture` a figure to read.
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND x = 'y' /* c */ ;"
            .repeat(200);
        let started = std::time::Instant::now();
        let n = tokens(sql.as_bytes(), true).len();
        let took = started.elapsed();
        assert_eq!(n, 200 * 13);
        eprintln!("{n} tokens in {took:?}");
    }
}
