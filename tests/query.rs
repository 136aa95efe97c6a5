//! The unary Query RPC against a real PostgreSQL.

mod support;

use pgway::proto::value::Kind;
use support::*;
use tonic::Code;

#[tokio::test]
async fn select_with_parameters() {
    let gw = Gateway::start().await;
    let mut client = gw.client().await;
    let response = run(
        &mut client,
        "SELECT $1::int4 + 1 AS answer, $2::text AS greeting",
        vec![int(41), text("hi")],
    )
    .await;
    assert_eq!(response.columns.len(), 2);
    assert_eq!(response.columns[0].name, "answer");
    assert_eq!(response.columns[0].type_name, "int4");
    assert_eq!(response.columns[0].type_oid, 23);
    assert_eq!(response.rows[0].values[0].kind, Some(Kind::IntValue(42)));
    assert_eq!(
        response.rows[0].values[1].kind,
        Some(Kind::StringValue("hi".into()))
    );
    assert_eq!(response.rows_affected, 1);
}
