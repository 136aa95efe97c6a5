//! Putting back what a client's Parse or Close did to its statements when the server never
//! carried it out.
//!
//! The door applies a Parse's or Close's effect on the client's statements (its names, its
//! unnamed statement) as the client sends it: the messages behind it in the same pipeline are
//! read in that light. Directly, a message the server skips (an earlier one up to the same
//! Sync failed) never happened, and a failed Parse leaves no statement of its name. So while
//! the answer is still to come, the message's entries in `expect` are followed by how to undo
//! it: dropped once they are answered, applied if they are skipped (see `skip_to_sync`).

use super::*;

/// How to put back what one client message did to its statements.
#[derive(Debug)]
pub(super) enum Undo {
    /// What the client's name named before (`None`: nothing).
    Name(Bytes, Option<Arc<Statement>>),
    /// The client's unnamed statement before.
    Unnamed(Option<Unnamed>),
}

impl Session {
    /// Follows what the client's message just pushed onto `expect` with how to undo it, if
    /// any answer is still to come (a reply sent at once can't be skipped).
    pub(super) fn undoable(&mut self, undo: Undo) {
        if !self.expect.is_empty() {
            // Boxed: `Expect` is moved at every message, an undo is rare.
            self.expect.push_back(Expect::Undo(Box::new(undo)));
        }
    }

    /// Puts back what `undo` says.
    pub(super) fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Name(name, Some(statement)) => {
                self.names.insert(name, statement);
            }
            Undo::Name(name, None) => {
                self.names.remove(&name);
            }
            Undo::Unnamed(unnamed) => {
                // What the server holds as its unnamed statement isn't known: parsed again
                // there before the client's next use of it.
                self.unnamed = unnamed;
                self.unnamed_here = false;
            }
        }
    }
}
