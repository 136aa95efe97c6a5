//! What a login hands its session: the client's connection and what the login settled.

use bytes::BytesMut;

use super::super::roster::ClientGuard;
use super::super::server::Stream;
use super::Wanted;

/// What a client's login left: its startup settings, and the parameters it was told.
#[derive(Debug)]
pub struct LoggedIn {
    pub wanted: Wanted,
    pub reported: Vec<(String, String)>,
}

/// A logged-in client's connection: its stream, what it sent beyond its login, and where it
/// comes from (named in the log of what the door refuses it).
pub struct Connection {
    pub stream: Stream,
    pub buf: BytesMut,
    pub peer: std::net::SocketAddr,
    /// Its entry in the door's roster (`SHOW CLIENTS`), for as long as it is connected.
    pub listed: ClientGuard,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}
