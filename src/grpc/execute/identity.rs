//! A JWT caller's identity in its transaction: the SQL that sets its role and claims, and the
//! check, after each of its statements, that they are still the ones set.

use tokio_postgres::Statement;

use crate::core::auth::jwt::Verified;
use crate::core::error::{GatewayError, Sent};
use crate::core::pool::PgConn;
use crate::grpc::values::Param;
use crate::proto;

use super::ResultBounds;
use super::fetch::fetch;

/// The statements that make an open transaction run as a JWT caller: its role until the
/// transaction ends, and its claims where row-level security policies read them
/// (`current_setting('request.jwt.claims')`, as Supabase and PostgREST do). Both are `LOCAL`:
/// nothing outlives the transaction.
pub(super) fn identity_sql(identity: &Verified) -> String {
    format!(
        "SET LOCAL ROLE {}; SELECT pg_catalog.set_config('request.jwt.claims', {}, true)",
        quote_ident(&identity.role),
        quote_literal(&identity.claims)
    )
}

/// `BEGIN …` followed, for a JWT caller, by [`identity_sql`]: one round trip.
pub(super) fn begin_as_sql(begin: String, identity: Option<&Verified>) -> String {
    match identity {
        None => begin,
        Some(identity) => format!("{begin}; {}", identity_sql(identity)),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An escape-string literal, right whatever `standard_conforming_strings` says.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Reads who the transaction runs as after a JWT caller's statement.
pub(super) const IDENTITY_CHECK: &str =
    "SELECT current_user, pg_catalog.current_setting('request.jwt.claims', true)";

/// After each statement of a JWT caller, before any of its result leaves: the role and the
/// claims must still be the ones the gateway set. A statement that changed them (past the
/// words [`crate::core::sql::changes_identity`] refuses) fails, and its transaction is rolled
/// back by the caller of this function.
pub(super) fn identity_intact(
    row: &tokio_postgres::Row,
    identity: &Verified,
) -> Result<(), GatewayError> {
    let role: Option<String> = row.try_get(0).ok();
    let claims: Option<String> = row.try_get(1).ok().flatten();
    if role.as_deref() == Some(identity.role.as_str())
        && claims.as_deref() == Some(identity.claims.as_str())
    {
        Ok(())
    } else {
        Err(GatewayError::PermissionDenied(
            "the statement changed the role or the JWT claims it runs with; its transaction \
             was rolled back"
                .into(),
        ))
    }
}

/// A JWT caller's statement with the identity check sent right behind it. PostgreSQL runs
/// them in order, so the check sees what the statement did, and the two cost one round trip
/// instead of two. A failed statement ends the wait at once: the check is dropped and its
/// answer discarded, and the transaction is rolled back by the caller of this function.
pub(super) async fn fetch_checked(
    conn: &mut PgConn,
    statement: &Statement,
    params: &[Param],
    caps: ResultBounds,
    identity: &Verified,
) -> Result<proto::QueryResponse, GatewayError> {
    let check = conn
        .prepare_cached(IDENTITY_CHECK)
        .await
        .map_err(|e| GatewayError::from_postgres(e, Sent::No))?;
    let conn = &*conn;
    // Polled after the statement's future has sent the statement: the check goes second.
    let checked = async {
        conn.client()
            .query_one(&check, &[])
            .await
            .map_err(|e| GatewayError::from_postgres(e, Sent::No))
    };
    let (response, row) =
        futures::future::try_join(fetch(conn, statement, params, caps), checked).await?;
    identity_intact(&row, identity)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_quoted() {
        let identity = Verified {
            role: "we\"ird".into(),
            claims: r#"{"sub":"o'brien \\ x"}"#.into(),
            subject: None,
            expires_at: 0,
        };
        assert_eq!(
            identity_sql(&identity),
            r#"SET LOCAL ROLE "we""ird"; SELECT pg_catalog.set_config('request.jwt.claims', E'{"sub":"o''brien \\\\ x"}', true)"#
        );
    }
}
