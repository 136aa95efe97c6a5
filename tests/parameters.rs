//! Parameters of the gRPC door against a real PostgreSQL: every value sent means what the server
//! makes of it (its `::text` after a round trip through a column of each type), types are
//! inferred from the statement, and a value that doesn't fit is INVALID_ARGUMENT naming its
//! parameter, with nothing sent. Results are in values.rs.

mod support;

use pgway::proto::{self, value::Kind};
use support::types::setup;
use support::*;
use tonic::Code;

/// One parameter round trip: the column's type, the value sent, the column's `::text` after.
struct RoundTrip {
    column: &'static str,
    value: proto::Value,
    text: String,
}

fn trip(column: &'static str, value: proto::Value, text: &str) -> RoundTrip {
    RoundTrip {
        column,
        value,
        text: text.to_owned(),
    }
}

fn round_trips() -> Vec<RoundTrip> {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let all_bytes_hex: String = std::iter::once("\\x".to_owned())
        .chain(all_bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let ints = |values: &[i64]| array(values.iter().map(|&v| int(v)).collect());
    vec![
        // bool
        trip("bool", boolean(true), "true"),
        trip("bool", boolean(false), "false"),
        trip("bool", text("yes"), "true"),
        // integers, from ints and from text
        trip("int2", int(-32768), "-32768"),
        trip("int2", int(32767), "32767"),
        trip("int2", text(" 12 "), "12"),
        trip("int4", int(i64::from(i32::MIN)), "-2147483648"),
        trip("int4", int(i64::from(i32::MAX)), "2147483647"),
        trip("int8", int(i64::MIN), "-9223372036854775808"),
        trip("int8", int(i64::MAX), "9223372036854775807"),
        trip("int8", text("-42"), "-42"),
        trip("oid", int(4294967295), "4294967295"),
        trip("oid", int(0), "0"),
        // numeric from ints, doubles and text
        trip("numeric", int(i64::MAX), "9223372036854775807"),
        trip("numeric", int(i64::MIN), "-9223372036854775808"),
        trip("numeric", double(0.1), "0.1"),
        trip("numeric", double(-2.5e-7), "-0.00000025"),
        trip("numeric", double(1e21), "1000000000000000000000"),
        trip("numeric", double(-0.0), "0"),
        trip("numeric", double(f64::NAN), "NaN"),
        trip("numeric", double(f64::INFINITY), "Infinity"),
        trip("numeric", double(f64::NEG_INFINITY), "-Infinity"),
        trip(
            "numeric",
            text("-12345678901234567890.123456789"),
            "-12345678901234567890.123456789",
        ),
        trip("numeric", text("0.00001000"), "0.00001000"),
        trip("numeric(10,2)", double(1.005), "1.01"),
        // floats from doubles, ints and text
        trip("float4", double(1.5), "1.5"),
        trip("float4", double(f64::from(f32::MAX)), "3.4028235e+38"),
        trip("float4", double(f64::from(f32::from_bits(1))), "1e-45"),
        trip("float4", double(-0.0), "-0"),
        trip("float4", double(f64::NAN), "NaN"),
        trip("float4", double(f64::NEG_INFINITY), "-Infinity"),
        trip("float4", int(16777216), "1.6777216e+07"),
        trip("float4", int(-16777216), "-1.6777216e+07"),
        // Beyond 2^24 only every other integer is a float4, but those are exact.
        trip("float4", int(16777218), "1.6777218e+07"),
        trip("float4", int(1 << 40), "1.0995116e+12"),
        trip("float4", text("3.25"), "3.25"),
        trip("float8", double(0.1), "0.1"),
        trip("float8", double(f64::MAX), "1.7976931348623157e+308"),
        trip("float8", double(5e-324), "5e-324"),
        trip("float8", double(-0.0), "-0"),
        trip("float8", double(f64::INFINITY), "Infinity"),
        trip("float8", int(1 << 53), "9.007199254740992e+15"),
        trip("float8", int((1 << 53) + 2), "9.007199254740994e+15"),
        trip("float8", int(i64::MIN), "-9.223372036854776e+18"),
        trip("float8", text("-1.25e-300"), "-1.25e-300"),
        // text types
        trip(
            "text",
            text("héllo wörld ✓ 🎉 'single' \"double\" \\ back, {braces}"),
            "héllo wörld ✓ 🎉 'single' \"double\" \\ back, {braces}",
        ),
        trip("text", text(""), ""),
        trip("text", text("NULL"), "NULL"),
        trip("varchar(5)", text("abc"), "abc"),
        trip("char(5)", text("ab"), "ab"),
        trip("\"char\"", text("x"), "x"),
        trip("name", text("a_name"), "a_name"),
        trip("citext", text("MiXeD"), "MiXeD"),
        // bytea from bytes and from both text syntaxes
        trip("bytea", bytes(&all_bytes), &all_bytes_hex),
        trip("bytea", bytes(&[]), "\\x"),
        trip("bytea", text("\\xDEADbeef"), "\\xdeadbeef"),
        trip("bytea", text("abc\\\\"), "\\x6162635c"),
        // uuid, json
        trip(
            "uuid",
            text("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        trip(
            "uuid",
            text("{a0eebc999c0b4ef8bb6d6bb9bd380a11}"),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        trip(
            "json",
            text("{\"b\":1,  \"a\":[1,2]}"),
            "{\"b\":1,  \"a\":[1,2]}",
        ),
        trip(
            "jsonb",
            text("{\"b\": {\"deep\": {\"er\": [1, 2.50, null]}}, \"a\": \"ü\"}"),
            "{\"a\": \"ü\", \"b\": {\"deep\": {\"er\": [1, 2.50, null]}}}",
        ),
        // dates and times (the direct connection reads in UTC, ISO)
        trip("date", text("2024-02-29"), "2024-02-29"),
        trip("date", text("4713-01-01 BC"), "4713-01-01 BC"),
        trip("date", text("infinity"), "infinity"),
        trip("date", text("-infinity"), "-infinity"),
        trip("time", text("23:59:59.999999"), "23:59:59.999999"),
        trip("timetz", text("12:34:56+05:30"), "12:34:56+05:30"),
        trip(
            "timestamp",
            text("2024-01-02 03:04:05.678901"),
            "2024-01-02 03:04:05.678901",
        ),
        trip(
            "timestamp",
            text("0044-03-15 12:00 BC"),
            "0044-03-15 12:00:00 BC",
        ),
        trip(
            "timestamptz",
            text("2024-06-01 12:00:00+09:30"),
            "2024-06-01 02:30:00+00",
        ),
        trip(
            "timestamptz",
            text("2024-01-01 00:00:00-08"),
            "2024-01-01 08:00:00+00",
        ),
        trip("timestamptz", text("infinity"), "infinity"),
        trip(
            "interval",
            text("1 year 2 mons -3 days 04:05:06.789"),
            "1 year 2 mons -3 days +04:05:06.789",
        ),
        trip(
            "interval",
            text("P1Y2M3DT4H5M6S"),
            "1 year 2 mons 3 days 04:05:06",
        ),
        // network, money, bits, text search, xml, geometry
        trip("inet", text("192.168.0.1"), "192.168.0.1/32"),
        trip("cidr", text("10.0.0.0/8"), "10.0.0.0/8"),
        trip("macaddr", text("08-00-2B-01-02-03"), "08:00:2b:01:02:03"),
        trip("money", text("12.34"), "$12.34"),
        trip("money", text("-1,234,567.89"), "-$1,234,567.89"),
        trip("bit(3)", text("101"), "101"),
        trip("varbit", text("1011001"), "1011001"),
        trip("tsvector", text("a fat cat"), "'a' 'cat' 'fat'"),
        trip("xml", text("<a x=\"1\">b</a>"), "<a x=\"1\">b</a>"),
        trip("point", text("(1.5,-2)"), "(1.5,-2)"),
        trip("hstore", text("b=>2, a=>1"), "\"a\"=>\"1\", \"b\"=>\"2\""),
        // user-defined types
        trip("mood", text("happy"), "happy"),
        trip(
            "mood",
            text("with \"quotes\", commas"),
            "with \"quotes\", commas",
        ),
        trip("posint", int(5), "5"),
        trip("posint", text("6"), "6"),
        trip("short_text", text("hi"), "hi"),
        trip("int4range", text("[1,10]"), "[1,11)"),
        trip("int4range", text("empty"), "empty"),
        trip(
            "tstzrange",
            text("[2024-01-01 00:00+02,infinity)"),
            "[\"2023-12-31 22:00:00+00\",infinity)",
        ),
        trip("mood_range", text("[sad,ok]"), "[sad,ok]"),
        trip(
            "pair",
            text("(1,\"a, \"\"b\"\"\",2024-01-01)"),
            "(1,\"a, \"\"b\"\"\",2024-01-01)",
        ),
        trip(
            "nested",
            text("(\"(2,x,)\",\"{sad,happy}\",\"2024-06-01 12:00+09:30\")"),
            "(\"(2,x,)\",\"{sad,happy}\",\"2024-06-01 02:30:00+00\")",
        ),
        trip("\"Other Schema\".\"Weird Type\"", text("ü"), "ü"),
        // arrays from array values
        trip("int4[]", ints(&[1, 2, 3]), "{1,2,3}"),
        trip(
            "int4[]",
            array(vec![int(1), null(), int(-3)]),
            "{1,NULL,-3}",
        ),
        trip("int4[]", array(vec![]), "{}"),
        trip(
            "int4[]",
            array(vec![ints(&[1, 2]), ints(&[3, 4])]),
            "{{1,2},{3,4}}",
        ),
        trip(
            "int4[]",
            array(vec![
                array(vec![ints(&[1]), ints(&[2])]),
                array(vec![ints(&[3]), array(vec![null()])]),
            ]),
            "{{{1},{2}},{{3},{NULL}}}",
        ),
        trip(
            "int4[]",
            array(vec![
                array(vec![int(1), null()]),
                array(vec![null(), int(4)]),
            ]),
            "{{1,NULL},{NULL,4}}",
        ),
        trip("int2[]", ints(&[-32768, 32767]), "{-32768,32767}"),
        trip(
            "int8[]",
            ints(&[i64::MIN, i64::MAX]),
            "{-9223372036854775808,9223372036854775807}",
        ),
        trip(
            "text[]",
            array(vec![
                text("a\"b"),
                text("back\\slash"),
                text("com,ma"),
                null(),
                text(""),
                text("NULL"),
                text(" spaced "),
                text("{braces}"),
                text("ü ✓"),
            ]),
            r#"{"a\"b","back\\slash","com,ma",NULL,"","NULL"," spaced ","{braces}","ü ✓"}"#,
        ),
        trip(
            "text[]",
            array(vec![
                array(vec![text("a"), text("b")]),
                array(vec![text("c"), null()]),
            ]),
            "{{a,b},{c,NULL}}",
        ),
        trip(
            "bytea[]",
            array(vec![bytes(&[0, 255]), null(), bytes(&[]), text("\\x41")]),
            r#"{"\\x00ff",NULL,"\\x","\\x41"}"#,
        ),
        trip(
            "bool[]",
            array(vec![boolean(true), boolean(false), null(), text("yes")]),
            "{t,f,NULL,t}",
        ),
        trip(
            "numeric[]",
            array(vec![
                double(0.1),
                double(-2.5),
                double(1e-7),
                double(f64::NAN),
                int(i64::MAX),
                text("1.50"),
            ]),
            "{0.1,-2.5,0.0000001,NaN,9223372036854775807,1.50}",
        ),
        trip(
            "float4[]",
            array(vec![double(1.5), int(16777216), double(f64::NEG_INFINITY)]),
            "{1.5,1.6777216e+07,-Infinity}",
        ),
        trip(
            "float8[]",
            array(vec![
                double(0.1),
                double(-0.0),
                double(f64::INFINITY),
                int(1 << 53),
            ]),
            "{0.1,-0,Infinity,9.007199254740992e+15}",
        ),
        trip(
            "mood[]",
            array(vec![text("happy"), text("with \"quotes\", commas"), null()]),
            r#"{happy,"with \"quotes\", commas",NULL}"#,
        ),
        trip("posint[]", ints(&[1, 2]), "{1,2}"),
        trip("intlist", ints(&[1, 2]), "{1,2}"),
        trip(
            "date[]",
            array(vec![text("4713-01-01 BC"), text("infinity")]),
            r#"{"4713-01-01 BC",infinity}"#,
        ),
        trip(
            "timestamptz[]",
            array(vec![text("2024-06-01 12:00:00+09:30")]),
            r#"{"2024-06-01 02:30:00+00"}"#,
        ),
        trip(
            "uuid[]",
            array(vec![text("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")]),
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        ),
        trip(
            "jsonb[]",
            array(vec![text("{\"a\": [1, \"x,y\"]}")]),
            r#"{"{\"a\": [1, \"x,y\"]}"}"#,
        ),
        trip(
            "pair[]",
            array(vec![text("(1,\"a b\",)"), null()]),
            r#"{"(1,\"a b\",)",NULL}"#,
        ),
        trip(
            "int4range[]",
            array(vec![text("[1,2)"), text("empty")]),
            r#"{"[1,2)",empty}"#,
        ),
        // box is the one built-in type whose array delimiter is ';', not ','.
        trip(
            "box[]",
            array(vec![text("(1,1),(0,0)"), text("(2,2),(1,1)")]),
            "{(1,1),(0,0);(2,2),(1,1)}",
        ),
        // and arrays as text
        trip("int4[]", text("{{1,2},{3,4}}"), "{{1,2},{3,4}}"),
        trip("text[]", text("{a,\"b c\",NULL}"), "{a,\"b c\",NULL}"),
        trip("int4[]", text("[0:1]={5,6}"), "[0:1]={5,6}"),
    ]
}

/// Every value sent as a parameter lands in a column of its type as what the server makes of
/// it, and a NULL of every type is a NULL.
#[tokio::test]
async fn parameters_round_trip() {
    let (_gw, mut client, direct) = setup().await;
    let mut failures = Vec::new();
    for (i, case) in round_trips().into_iter().enumerate() {
        let table = format!("rt_{i}");
        direct
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int GENERATED ALWAYS AS IDENTITY, v {})",
                case.column
            ))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.column));
        let insert = format!("INSERT INTO {table} (v) VALUES ($1)");
        for value in [case.value.clone(), null()] {
            if let Err(status) = client.query(query(&insert, vec![value.clone()])).await {
                failures.push(format!("{} {value:?}: {status:?}", case.column));
            }
        }
        let read: Vec<Option<String>> = direct
            .query(&format!("SELECT v::text FROM {table} ORDER BY id"), &[])
            .await
            .expect("read back")
            .iter()
            .map(|row| row.get(0))
            .collect();
        if read != vec![Some(case.text.clone()), None] {
            failures.push(format!(
                "{} {:?}: read back {read:?}, expected [{:?}, None]",
                case.column, case.value, case.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A parameter's type is what PostgreSQL infers from the statement, not from the value: the
/// same string means a number, a date or a jsonb document depending on where it goes.
#[tokio::test]
async fn parameter_types_are_inferred() {
    let (_gw, mut client, _direct) = setup().await;
    let response = run(
        &mut client,
        "SELECT $1::numeric * 2, $2::date + 1, $3::jsonb -> 'a', $4 = 'happy'::mood, $5::int4 + $6",
        vec![
            text("1.25"),
            text("2024-02-28"),
            text("{\"a\": [1]}"),
            text("happy"),
            text("40"),
            int(2),
        ],
    )
    .await;
    let values: Vec<_> = response.rows[0]
        .values
        .iter()
        .map(|v| v.kind.clone())
        .collect();
    assert_eq!(
        values,
        vec![
            Some(Kind::StringValue("2.50".into())),
            Some(Kind::StringValue("2024-02-29".into())),
            Some(Kind::StringValue("[1]".into())),
            Some(Kind::BoolValue(true)),
            Some(Kind::IntValue(42)),
        ]
    );
    // A parameter compared with a numeric column takes doubles and ints exactly.
    let response = run(
        &mut client,
        "SELECT $1::numeric = 0.1 AND $2::numeric = 12345678901234567",
        vec![double(0.1), int(12345678901234567)],
    )
    .await;
    assert_eq!(scalar(&response), Some(Kind::BoolValue(true)));
}

/// A value without any kind set.
fn unset() -> proto::Value {
    proto::Value { kind: None }
}

/// Values the gateway refuses itself: INVALID_ARGUMENT naming the parameter and its type, with
/// nothing sent to the server, and the gateway serves the next call as usual.
#[tokio::test]
async fn bad_parameters_are_invalid_argument() {
    let (_gw, mut client, direct) = setup().await;
    direct
        .batch_execute("CREATE TABLE sink (i2 int2, i4 int4, f4 float4, f8 float8, t text, o oid, a int4[], p posint)")
        .await
        .expect("sink table");
    // (sql, params, what the message names)
    let cases: Vec<(&str, Vec<proto::Value>, &[&str])> = vec![
        (
            "SELECT $1::int2",
            vec![int(32768)],
            &["$1", "int2", "32768"],
        ),
        ("SELECT $1::int2", vec![int(-32769)], &["$1", "int2"]),
        (
            "INSERT INTO sink (i4) VALUES ($1)",
            vec![int(2147483648)],
            &["$1", "int4"],
        ),
        ("SELECT $1::oid", vec![int(-1)], &["$1", "oid"]),
        ("SELECT $1::oid", vec![int(4294967296)], &["$1", "oid"]),
        // The second of two parameters is named as the second.
        (
            "SELECT $1::int4, $2::int2",
            vec![int(1), int(99999)],
            &["$2", "int2"],
        ),
        (
            "SELECT $1::text",
            vec![int(5)],
            &["$1", "text", "int_value"],
        ),
        (
            "INSERT INTO sink (t) VALUES ($1)",
            vec![double(1.5)],
            &["$1", "text", "double_value"],
        ),
        ("SELECT $1::float4", vec![double(1e39)], &["$1", "float4"]),
        (
            "SELECT $1::float4",
            vec![double(-3.5e38)],
            &["$1", "float4"],
        ),
        (
            "SELECT $1::float4",
            vec![double(f64::MAX)],
            &["$1", "float4"],
        ),
        // Too small for a float4: it would silently become 0.
        ("SELECT $1::float4", vec![double(1e-50)], &["$1", "float4"]),
        (
            "SELECT $1::float4",
            vec![int(16777217)],
            &["$1", "float4", "16777217"],
        ),
        ("SELECT $1::float4", vec![int(i64::MAX)], &["$1", "float4"]),
        (
            "SELECT $1::float8",
            vec![int((1 << 53) + 1)],
            &["$1", "float8"],
        ),
        ("SELECT $1::float8", vec![int(i64::MAX)], &["$1", "float8"]),
        (
            "SELECT $1::int4",
            vec![double(1.0)],
            &["$1", "int4", "double_value"],
        ),
        (
            "SELECT $1::int4",
            vec![boolean(true)],
            &["$1", "int4", "bool_value"],
        ),
        (
            "SELECT $1::bool",
            vec![int(1)],
            &["$1", "bool", "int_value"],
        ),
        (
            "SELECT $1::text",
            vec![bytes(b"abc")],
            &["$1", "text", "bytes_value"],
        ),
        (
            "SELECT $1::bytea",
            vec![array(vec![])],
            &["$1", "bytea", "array_value"],
        ),
        (
            "SELECT $1::int4",
            vec![array(vec![int(1)])],
            &["$1", "int4", "array_value"],
        ),
        (
            "SELECT $1::int4[]",
            vec![int(1)],
            &["$1", "_int4", "int_value"],
        ),
        ("SELECT $1::int4", vec![unset()], &["$1", "int4"]),
        (
            "SELECT $1::int4[]",
            vec![array(vec![int(1), unset()])],
            &["$1", "_int4", "element 1"],
        ),
        (
            "SELECT $1::int2[]",
            vec![array(vec![int(1), int(40000)])],
            &["$1", "_int2", "element 1", "40000"],
        ),
        (
            "INSERT INTO sink (a) VALUES ($1)",
            vec![array(vec![array(vec![int(1), text("x"), boolean(true)])])],
            &["$1", "_int4", "bool_value"],
        ),
        (
            "SELECT $1::float4[]",
            vec![array(vec![double(1e39)])],
            &["$1", "_float4", "element 0"],
        ),
        (
            "SELECT $1::text[]",
            vec![array(vec![int(7)])],
            &["$1", "_text", "int_value"],
        ),
        (
            "SELECT $1::mood",
            vec![int(1)],
            &["$1", "mood", "int_value"],
        ),
        (
            "INSERT INTO sink (p) VALUES ($1)",
            vec![boolean(true)],
            &["$1", "posint", "bool_value"],
        ),
        (
            "SELECT $1::uuid",
            vec![bytes(&[0; 16])],
            &["$1", "uuid", "bytes_value"],
        ),
        // PostgreSQL can't take a NUL byte in any text: refused before it is sent.
        (
            "SELECT $1::text",
            vec![text("a\0b")],
            &["$1", "text", "NUL"],
        ),
        (
            "SELECT $1::int4, $2::jsonb",
            vec![int(1), text("\"\0\"")],
            &["$2", "jsonb", "NUL"],
        ),
        (
            "SELECT $1::text[]",
            vec![array(vec![text("ok"), text("\0")])],
            &["$1", "_text", "element 1", "NUL"],
        ),
        // Too few values: the first parameter without one is named.
        (
            "SELECT $1::int4, $2::text",
            vec![int(1)],
            &["$2", "text", "2 parameter", "1 value"],
        ),
        ("SELECT $1::uuid", vec![], &["$1", "uuid"]),
        // Too many: nothing to name but the counts.
        (
            "SELECT $1::int4",
            vec![int(1), int(2)],
            &["1 parameter", "2 value"],
        ),
        ("SELECT 1", vec![int(1)], &["0 parameter", "1 value"]),
    ];
    let mut failures = Vec::new();
    for (sql, params, named) in cases {
        match client.query(query(sql, params.clone())).await {
            Ok(response) => failures.push(format!(
                "{sql} {params:?}: succeeded: {:?}",
                response.into_inner().rows
            )),
            Err(status) => {
                let missing: Vec<_> = named
                    .iter()
                    .filter(|part| !status.message().contains(**part))
                    .collect();
                if status.code() != Code::InvalidArgument || !missing.is_empty() {
                    failures.push(format!(
                        "{sql} {params:?}: {:?} {:?} doesn't name {missing:?}",
                        status.code(),
                        status.message()
                    ));
                } else if error_info(&status).domain != "pgway" {
                    failures.push(format!(
                        "{sql} {params:?}: not refused by the gateway itself: {status:?}"
                    ));
                }
            }
        }
        // The gateway (and its connection) is fine afterwards.
        let response = run(&mut client, "SELECT $1::int4 + 1", vec![int(41)]).await;
        assert_eq!(scalar(&response), Some(Kind::IntValue(42)));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Nothing reached the table.
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM sink", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0);

    // The same checks apply in a streamed query and in a transaction.
    let status = match client
        .query_stream(query("SELECT $1::int2", vec![int(70000)]))
        .await
    {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            stream
                .message()
                .await
                .expect_err("QueryStream with a bad parameter")
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("$1") && status.message().contains("int2"),
        "{status:?}"
    );
    let status = client
        .transaction(proto::TransactionRequest {
            statements: vec![
                proto::Statement {
                    sql: "INSERT INTO sink (i4) VALUES ($1)".into(),
                    params: vec![int(1)],
                },
                proto::Statement {
                    sql: "INSERT INTO sink (t) VALUES ($1)".into(),
                    params: vec![int(2)],
                },
            ],
            ..Default::default()
        })
        .await
        .expect_err("Transaction with a bad parameter");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("$1") && status.message().contains("text"),
        "{status:?}"
    );
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM sink", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "the transaction's first statement was rolled back");
}

/// Strings the server can't read as the parameter's type: PostgreSQL refuses them (the gateway
/// can't know every type's syntax), which is still INVALID_ARGUMENT naming the type, with the
/// SQLSTATE; nothing is stored and the gateway stays usable.
#[tokio::test]
async fn bad_strings_are_refused_by_the_server() {
    let (_gw, mut client, _direct) = setup().await;
    let cases: &[(&str, &str, &str, &str)] = &[
        ("SELECT $1::uuid", "not-a-uuid", "uuid", "22P02"),
        ("SELECT $1::int4", "12abc", "integer", "22P02"),
        ("SELECT $1::int2", "70000", "smallint", "22003"),
        ("SELECT $1::date", "2024-13-45", "date", "22008"),
        ("SELECT $1::numeric", "1.2.3", "numeric", "22P02"),
        ("SELECT $1::jsonb", "{not json", "json", "22P02"),
        ("SELECT $1::mood", "angry", "mood", "22P02"),
        ("SELECT $1::int4[]", "{1,x}", "integer", "22P02"),
        ("SELECT $1::int4[]", "{1,{2}}", "array", "22P02"),
        ("SELECT $1::float4", "1e39", "real", "22003"),
    ];
    for (sql, value, type_name, sqlstate) in cases {
        let status = client
            .query(query(sql, vec![text(value)]))
            .await
            .expect_err(&format!("{sql} {value:?} should fail"));
        let info = error_info(&status);
        assert_eq!(
            info.metadata.get("sqlstate").map(String::as_str),
            Some(*sqlstate),
            "{sql} {value:?}: {status:?}"
        );
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{sql} {value:?}: {status:?}"
        );
        assert!(
            status.message().contains(type_name),
            "{sql} {value:?}: {:?} doesn't name {type_name}",
            status.message()
        );
        let response = run(&mut client, "SELECT $1::text", vec![text("still fine")]).await;
        assert_eq!(
            scalar(&response),
            Some(Kind::StringValue("still fine".into()))
        );
    }
}
