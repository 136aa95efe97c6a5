//! Results of the gRPC door against a real PostgreSQL: every result value is its natural
//! protobuf kind or exactly the server's own `value::text`, in arrays too, and types the gateway
//! can't know come back as text. Parameters are in parameters.rs.

mod support;

use pgway::proto::{self, value::Kind};
use support::types::{DbClient, same, setup};
use support::*;

fn string_of(kind: &Option<Kind>) -> &str {
    match kind {
        Some(Kind::StringValue(s)) => s,
        other => panic!("expected a string_value, got {other:?}"),
    }
}

/// Types whose results are string_values: (expression, the type name the gateway reports).
const SERVER_TEXT_CASES: &[(&str, &str)] = &[
    // numeric: scale, precision and the special values.
    ("'0.00001000'::numeric", "numeric"),
    ("'-12345678901234567890.123456789'::numeric", "numeric"),
    ("'NaN'::numeric", "numeric"),
    ("'Infinity'::numeric", "numeric"),
    ("'-Infinity'::numeric", "numeric"),
    ("'0'::numeric", "numeric"),
    ("'0.000'::numeric", "numeric"),
    ("'-0.5'::numeric", "numeric"),
    ("'1e-20'::numeric", "numeric"),
    ("'10000'::numeric", "numeric"),
    ("'100000000.00000001'::numeric", "numeric"),
    ("'1e40'::numeric", "numeric"),
    ("1::numeric(10,4)", "numeric"),
    // text types.
    ("'héllo wörld ✓ 🎉 日本'::text", "text"),
    ("''::text", "text"),
    ("E'line\\nbreak\\ttab \"quote\" \\\\ back'::text", "text"),
    ("'abc'::varchar(10)", "varchar"),
    ("'ab'::char(5)", "bpchar"),
    ("'abcde'::char(5)", "bpchar"),
    ("'  '::char(3)", "bpchar"),
    ("'x'::\"char\"", "char"),
    ("'some_name'::name", "name"),
    ("'CaseLess'::citext", "citext"),
    // uuid and json.
    ("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid", "uuid"),
    (
        "'{\"b\": [1, 2, {\"c\": null}],  \"a\": \"x\"}'::json",
        "json",
    ),
    (
        "'{\"b\": [1, 2.50, {\"c\": null}], \"a\": {\"nested\": {\"deep\": [true, \"ü\"]}}}'::jsonb",
        "jsonb",
    ),
    ("'\"just a string\"'::jsonb", "jsonb"),
    // dates and times, including the edges.
    ("'2024-02-29'::date", "date"),
    ("'4713-01-01 BC'::date", "date"),
    ("'infinity'::date", "date"),
    ("'-infinity'::date", "date"),
    ("'23:59:59.999999'::time", "time"),
    ("'12:34:56+05:30'::timetz", "timetz"),
    ("'2024-01-02 03:04:05.678901'::timestamp", "timestamp"),
    ("'0044-03-15 12:00:00 BC'::timestamp", "timestamp"),
    ("'infinity'::timestamp", "timestamp"),
    ("'2024-06-01 12:00:00+09:30'::timestamptz", "timestamptz"),
    ("'2024-01-01 00:00:00-08'::timestamptz", "timestamptz"),
    ("'1900-01-01 00:00:00+00:19:32'::timestamptz", "timestamptz"),
    ("'-infinity'::timestamptz", "timestamptz"),
    ("'1 year 2 mons -3 days 04:05:06.789'::interval", "interval"),
    ("'-178000000 years'::interval", "interval"),
    // network, money, bits, text search, xml, geometry, system types.
    ("'192.168.0.1'::inet", "inet"),
    ("'2001:db8::1/64'::inet", "inet"),
    ("'10.0.0.0/8'::cidr", "cidr"),
    ("'08:00:2b:01:02:03'::macaddr", "macaddr"),
    ("'08:00:2b:01:02:03:04:05'::macaddr8", "macaddr8"),
    ("'12.34'::money", "money"),
    ("'-1234567.89'::money", "money"),
    ("B'101'::bit(3)", "bit"),
    ("B'1011001'::varbit", "varbit"),
    ("'a fat cat sat on a mat'::tsvector", "tsvector"),
    ("'fat & (rat | cat)'::tsquery", "tsquery"),
    ("'<a x=\"1\">b &amp; c</a>'::xml", "xml"),
    ("'(1.5,-2)'::point", "point"),
    ("'((0,0),(1,1),(2,0))'::polygon", "polygon"),
    ("'<(1,2),3>'::circle", "circle"),
    ("'(1,1),(0,0)'::box", "box"),
    ("'pg_class'::regclass", "regclass"),
    ("'16/B374D848'::pg_lsn", "pg_lsn"),
    ("'a=>1, b=>NULL'::hstore", "hstore"),
    // user-defined types.
    ("'happy'::mood", "mood"),
    ("'with \"quotes\", commas'::mood", "mood"),
    ("'hello'::short_text", "text"),
    ("'[1,10)'::int4range", "int4range"),
    ("'(,5]'::int4range", "int4range"),
    ("'empty'::int4range", "int4range"),
    (
        "'[2024-01-01 00:00+02, 2024-01-02 00:00+02)'::tstzrange",
        "tstzrange",
    ),
    ("'[1.5,2.25]'::numrange", "numrange"),
    ("'[sad,happy]'::mood_range", "mood_range"),
    ("'{[1,3), [5,7)}'::int4multirange", "int4multirange"),
    ("ROW(1, 'a \"b\", c', '2024-01-01')::pair", "pair"),
    ("ROW(NULL, NULL, NULL)::pair", "pair"),
    (
        "ROW(ROW(2, '', NULL)::pair, '{sad,happy}', '2024-06-01 12:00+09:30')::nested",
        "nested",
    ),
    ("ROW(3, 'x', 'infinity')::pair_domain", "pair"),
    ("'a b'::\"Other Schema\".\"Weird Type\"", "Weird Type"),
];

/// Types with a natural kind: (expression, type name, the value a user expects).
fn natural_cases() -> Vec<(String, &'static str, Kind)> {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let cases: Vec<(&str, &str, Kind)> = vec![
        ("true", "bool", Kind::BoolValue(true)),
        ("false", "bool", Kind::BoolValue(false)),
        ("(-32768)::int2", "int2", Kind::IntValue(-32768)),
        ("32767::int2", "int2", Kind::IntValue(32767)),
        ("(-2147483648)::int4", "int4", Kind::IntValue(-2147483648)),
        ("2147483647::int4", "int4", Kind::IntValue(2147483647)),
        (
            "'-9223372036854775808'::int8",
            "int8",
            Kind::IntValue(i64::MIN),
        ),
        (
            "'9223372036854775807'::int8",
            "int8",
            Kind::IntValue(i64::MAX),
        ),
        ("'4294967295'::oid", "oid", Kind::IntValue(4294967295)),
        (
            "'3.4028235e38'::float4",
            "float4",
            Kind::DoubleValue(f32::MAX.into()),
        ),
        (
            "'-3.4028235e38'::float4",
            "float4",
            Kind::DoubleValue(f32::MIN.into()),
        ),
        (
            "'1.17549435e-38'::float4",
            "float4",
            Kind::DoubleValue(f32::MIN_POSITIVE.into()),
        ),
        (
            "'1e-45'::float4",
            "float4",
            Kind::DoubleValue(f32::from_bits(1).into()),
        ),
        ("'0.1'::float4", "float4", Kind::DoubleValue(0.1f32.into())),
        ("'NaN'::float4", "float4", Kind::DoubleValue(f64::NAN)),
        ("'-0'::float4", "float4", Kind::DoubleValue(-0.0)),
        (
            "'Infinity'::float4",
            "float4",
            Kind::DoubleValue(f64::INFINITY),
        ),
        (
            "'-Infinity'::float4",
            "float4",
            Kind::DoubleValue(f64::NEG_INFINITY),
        ),
        (
            "'1.7976931348623157e308'::float8",
            "float8",
            Kind::DoubleValue(f64::MAX),
        ),
        (
            "'-1.7976931348623157e308'::float8",
            "float8",
            Kind::DoubleValue(f64::MIN),
        ),
        ("'5e-324'::float8", "float8", Kind::DoubleValue(5e-324)),
        (
            "'2.2250738585072014e-308'::float8",
            "float8",
            Kind::DoubleValue(f64::MIN_POSITIVE),
        ),
        ("'0.1'::float8", "float8", Kind::DoubleValue(0.1)),
        ("'NaN'::float8", "float8", Kind::DoubleValue(f64::NAN)),
        ("'-0'::float8", "float8", Kind::DoubleValue(-0.0)),
        (
            "'Infinity'::float8",
            "float8",
            Kind::DoubleValue(f64::INFINITY),
        ),
        (
            "'-Infinity'::float8",
            "float8",
            Kind::DoubleValue(f64::NEG_INFINITY),
        ),
        ("''::bytea", "bytea", Kind::BytesValue(Vec::new())),
        (
            "(SELECT decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex') FROM generate_series(0, 255) i)",
            "bytea",
            Kind::BytesValue(all_bytes),
        ),
        // PostgreSQL describes a domain's column as its base type: it takes the base's kind.
        ("7::posint", "int4", Kind::IntValue(7)),
    ];
    cases
        .into_iter()
        .map(|(e, t, k)| (e.to_owned(), t, k))
        .collect()
}

/// Every type that has no natural kind comes back as exactly what the server's `::text` of the
/// same value says, in the same query (so whatever TimeZone, DateStyle or lc_monetary the
/// server runs with).
#[tokio::test]
async fn results_are_the_servers_text() {
    let (_gw, mut client, _direct) = setup().await;
    for (expr, type_name) in SERVER_TEXT_CASES {
        let sql = format!("SELECT {expr} AS v, ({expr})::text AS t");
        let response = run(&mut client, &sql, vec![]).await;
        assert_eq!(response.columns[0].type_name, *type_name, "{sql}");
        let row = &response.rows[0];
        let server = string_of(&row.values[1].kind);
        assert_eq!(
            row.values[0].kind,
            Some(Kind::StringValue(server.to_owned())),
            "{sql}"
        );
    }
}

/// Spot checks with the text spelled out, so a server-text path that answered with something
/// else entirely (the binary form, the output function instead of `::text`) would show.
#[tokio::test]
async fn results_spelled_out() {
    let (_gw, mut client, _direct) = setup().await;
    let cases: &[(&str, &str)] = &[
        ("'0.00001000'::numeric", "0.00001000"),
        (
            "'-12345678901234567890.123456789'::numeric",
            "-12345678901234567890.123456789",
        ),
        ("'NaN'::numeric", "NaN"),
        ("'Infinity'::numeric", "Infinity"),
        ("'1e-20'::numeric", "0.00000000000000000001"),
        ("'100000000.00000001'::numeric", "100000000.00000001"),
        ("'4713-01-01 BC'::date", "4713-01-01 BC"),
        ("'infinity'::timestamptz", "infinity"),
        (
            "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        (
            "'{\"b\": 1, \"a\": {\"x\": [1, 2]}}'::jsonb",
            "{\"a\": {\"x\": [1, 2]}, \"b\": 1}",
        ),
        // `::text` of a char(n) drops the padding.
        ("'ab'::char(5)", "ab"),
        ("'happy'::mood", "happy"),
        ("ROW(1, 'a b', NULL)::pair", "(1,\"a b\",)"),
        ("'[1,10]'::int4range", "[1,11)"),
    ];
    for (expr, text) in cases {
        let response = run(&mut client, &format!("SELECT {expr}"), vec![]).await;
        assert_eq!(
            scalar(&response),
            Some(Kind::StringValue((*text).to_owned())),
            "{expr}"
        );
    }
    // The test cluster is made with --locale=C: money is in dollars.
    let response = run(
        &mut client,
        "SELECT '1 year 2 mons -3 days 04:05:06.789'::interval, '-1234567.89'::money",
        vec![],
    )
    .await;
    let shown: Vec<&str> = response.rows[0]
        .values
        .iter()
        .map(|v| string_of(&v.kind))
        .collect();
    assert_eq!(
        shown,
        ["1 year 2 mons -3 days +04:05:06.789", "-$1,234,567.89"]
    );
}

/// bool, integers, floats and bytea come back as their natural kinds, equal to the constants a
/// user expects and to what a direct connection reads.
#[tokio::test]
async fn results_of_natural_kinds() {
    let (_gw, mut client, direct) = setup().await;
    for (expr, type_name, expected) in natural_cases() {
        let sql = format!("SELECT {expr} AS v");
        let response = run(&mut client, &sql, vec![]).await;
        assert_eq!(response.columns[0].type_name, type_name, "{sql}");
        let got = scalar(&response);
        let expected = Some(expected);
        assert!(
            same(&got, &expected),
            "{sql}: got {got:?}, expected {expected:?}"
        );
        // The same value read directly, in the widest Rust type of its kind.
        let read = match &expected {
            Some(Kind::BoolValue(_)) => Kind::BoolValue(
                direct
                    .query_one(&format!("SELECT ({expr})::bool"), &[])
                    .await
                    .expect("direct")
                    .get(0),
            ),
            Some(Kind::IntValue(_)) => Kind::IntValue(
                direct
                    .query_one(&format!("SELECT ({expr})::int8"), &[])
                    .await
                    .expect("direct")
                    .get(0),
            ),
            Some(Kind::DoubleValue(_)) => Kind::DoubleValue(
                direct
                    .query_one(&format!("SELECT ({expr})::float8"), &[])
                    .await
                    .expect("direct")
                    .get(0),
            ),
            Some(Kind::BytesValue(_)) => Kind::BytesValue(
                direct
                    .query_one(&format!("SELECT ({expr})"), &[])
                    .await
                    .expect("direct")
                    .get(0),
            ),
            other => panic!("not a natural kind: {other:?}"),
        };
        assert!(
            same(&got, &Some(read.clone())),
            "{sql}: gateway {got:?}, direct {read:?}"
        );
    }
    // NULL of any type is null_value.
    let response = run(
        &mut client,
        "SELECT NULL::int4, NULL::text, NULL::numeric, NULL::timestamptz, NULL::mood, NULL::pair, NULL::int4[], NULL::bytea",
        vec![],
    )
    .await;
    for value in &response.rows[0].values {
        assert_eq!(value.kind, Some(Kind::NullValue(0)));
    }
}

/// More values needing the server's text than fit one conversion round trip (1000), in unary
/// and streamed results: every value is its own row's text, in order.
#[tokio::test]
async fn many_server_texts_stay_in_order() {
    let (_gw, mut client, _direct) = setup().await;
    let sql = "SELECT t, t::text, i::numeric / 7, (i::numeric / 7)::text \
               FROM generate_series(1, 2500) i, LATERAL (SELECT '2000-01-01 00:00+05'::timestamptz + i * interval '1 hour 1 second') s(t) \
               ORDER BY i";
    let response = run(&mut client, sql, vec![]).await;
    assert_eq!(response.rows.len(), 2500);
    for row in &response.rows {
        assert_eq!(row.values[0].kind, row.values[1].kind);
        assert_eq!(row.values[2].kind, row.values[3].kind);
    }
    let mut stream = client
        .query_stream(query(sql, vec![]))
        .await
        .expect("QueryStream")
        .into_inner();
    let mut rows = 0;
    while let Some(message) = stream.message().await.expect("stream message") {
        for row in &message.rows {
            assert_eq!(row.values[0].kind, row.values[1].kind);
            assert_eq!(row.values[2].kind, row.values[3].kind);
            rows += 1;
        }
    }
    assert_eq!(rows, 2500);
}

/// Arrays in results: natural elements keep their kind, every other element is the server's
/// text of that element (as `unnest(...)::text` gives it), NULL elements are null_values and
/// more dimensions are nested arrays.
#[tokio::test]
async fn arrays_in_results() {
    let (_gw, mut client, _direct) = setup().await;
    arrays_come_back_as_spelled(&mut client).await;
    elements_needing_the_server_are_its_text(&mut client).await;
}

/// Arrays checked against values spelled out: natural elements keep their kind (-0 and NaN
/// too), the others are text, NULL elements are null_values, more dimensions nest, and a lower
/// bound other than 1 changes nothing.
async fn arrays_come_back_as_spelled(client: &mut DbClient) {
    let ints =
        |values: &[Option<i64>]| array(values.iter().map(|v| v.map_or_else(null, int)).collect());
    let spelled: Vec<(&str, proto::Value)> = vec![
        ("ARRAY[1, NULL, 3]::int4[]", ints(&[Some(1), None, Some(3)])),
        ("'{}'::int4[]", array(vec![])),
        (
            "'{{1,2},{3,NULL}}'::int4[]",
            array(vec![ints(&[Some(1), Some(2)]), ints(&[Some(3), None])]),
        ),
        (
            "'{{{1},{2}},{{3},{4}}}'::int8[]",
            array(vec![
                array(vec![ints(&[Some(1)]), ints(&[Some(2)])]),
                array(vec![ints(&[Some(3)]), ints(&[Some(4)])]),
            ]),
        ),
        ("'[5:6]={7,8}'::int2[]", ints(&[Some(7), Some(8)])),
        (
            "ARRAY[true, NULL, false]",
            array(vec![boolean(true), null(), boolean(false)]),
        ),
        (
            "ARRAY['-0'::float8, 'NaN', 'Infinity', 0.5]",
            array(vec![
                double(-0.0),
                double(f64::NAN),
                double(f64::INFINITY),
                double(0.5),
            ]),
        ),
        (
            "ARRAY['\\x00ff'::bytea, NULL, '']",
            array(vec![bytes(&[0, 255]), null(), bytes(&[])]),
        ),
        (
            "ARRAY['a\"b', 'back\\slash', 'com,ma', '', NULL, 'NULL', ' spaced ', '{braces}', 'ü ✓']",
            array(vec![
                text("a\"b"),
                text("back\\slash"),
                text("com,ma"),
                text(""),
                null(),
                text("NULL"),
                text(" spaced "),
                text("{braces}"),
                text("ü ✓"),
            ]),
        ),
        (
            "'{{a,b},{c,NULL}}'::text[]",
            array(vec![
                array(vec![text("a"), text("b")]),
                array(vec![text("c"), null()]),
            ]),
        ),
        (
            "'{0.00001000,NaN,-1.5}'::numeric[]",
            array(vec![text("0.00001000"), text("NaN"), text("-1.5")]),
        ),
        (
            "'{4713-01-01 BC,infinity,NULL}'::date[]",
            array(vec![text("4713-01-01 BC"), text("infinity"), null()]),
        ),
        ("'{happy,NULL}'::mood[]", array(vec![text("happy"), null()])),
    ];
    for (expr, expected) in spelled {
        let response = run(client, &format!("SELECT {expr}"), vec![]).await;
        let got = scalar(&response);
        assert!(
            same(&got, &expected.kind),
            "{expr}: got {got:?}, expected {expected:?}"
        );
    }
}

/// Arrays of types whose elements are the server's text: each element, at any depth, is its
/// `unnest(...)::text`.
async fn elements_needing_the_server_are_its_text(client: &mut DbClient) {
    // Arrays whose elements need the server's text: each element is `unnest(...)::text`.
    let server_elements = [
        "ARRAY['2024-06-01 12:00+09:30'::timestamptz, NULL, 'infinity', '1999-12-31 23:59:59.5-03']",
        "'{{2024-01-01 00:00+01,2024-01-01 00:00+02},{NULL,-infinity}}'::timestamptz[]",
        "'{0.00001000,-12345678901234567890.123456789,NaN,Infinity}'::numeric[]",
        "'{{2024-02-29,4713-01-01 BC},{infinity,NULL}}'::date[]",
        "ARRAY['1 year 2 mons -3 days 04:05:06.789'::interval, '-1 second']",
        "ARRAY['192.168.0.1'::inet, '::1']",
        "ARRAY['ab'::char(5), 'abcde']",
        "ARRAY['12.34'::money]",
        "ARRAY['[1,10)'::int4range, 'empty']",
        "ARRAY[ROW(1, 'a \"b\", c', NULL)::pair, NULL]",
        "ARRAY['[sad,happy]'::mood_range]",
        "ARRAY['{\"a\": {\"b\": [1, 2]}}'::jsonb, 'null']",
        "ARRAY['A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'::uuid]",
        "ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)']",
        "ARRAY['a=>1'::hstore]",
    ];
    for expr in server_elements {
        let response = run(
            client,
            &format!("SELECT a, {} FROM (SELECT {expr}) s(a)", element_texts("a")),
            vec![],
        )
        .await;
        let row = &response.rows[0];
        let flat = flatten(&row.values[0]);
        let Some(Kind::ArrayValue(texts)) = &row.values[1].kind else {
            panic!("{expr}: no element texts: {row:?}");
        };
        let texts: Vec<Option<Kind>> = texts.values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(flat, texts, "{expr}");
    }
}

/// SQL for the texts of an array's elements, in order: `unnest(a)::text` as a text[]. (Not
/// `FROM unnest(a)`, which splits composite elements into columns.)
fn element_texts(array: &str) -> String {
    format!("ARRAY(SELECT unnest({array})::text)")
}

/// Columns of pseudo-type anyarray (pg_stats' most common values) are arrays of whatever type
/// the statistics are about.
#[tokio::test]
async fn anyarray_results() {
    let (_gw, mut client, direct) = setup().await;
    direct
        .batch_execute(
            "CREATE TABLE stats AS SELECT i % 3 AS n, (ARRAY['sad', 'ok', 'happy'])[i % 3 + 1]::mood AS m, \
                    '2024-01-01 00:00+05'::timestamptz + (i % 2) * interval '1 day' AS t \
             FROM generate_series(1, 300) i; \
             ANALYZE stats",
        )
        .await
        .expect("stats");
    let response = run(
        &mut client,
        "SELECT attname, most_common_vals, most_common_vals::text FROM pg_stats WHERE tablename = 'stats' ORDER BY attname",
        vec![],
    )
    .await;
    assert_eq!(response.columns[1].type_name, "anyarray");
    assert_eq!(response.rows.len(), 3);
    for row in &response.rows {
        let column = string_of(&row.values[0].kind);
        let mut elements = flatten(&row.values[1]);
        // The statistics' order is by frequency: compare as sets, via each element's text.
        let mut texts: Vec<String> = elements
            .iter()
            .map(|e| match e {
                Some(Kind::IntValue(v)) => v.to_string(),
                Some(Kind::StringValue(s)) => s.clone(),
                other => panic!("{column}: {other:?}"),
            })
            .collect();
        texts.sort();
        let server = string_of(&row.values[2].kind);
        let mut expected: Vec<String> = server
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|e| e.trim_matches('"').to_owned())
            .collect();
        expected.sort();
        assert_eq!(texts, expected, "{column}");
        if column == "n" {
            elements.sort_by_key(|e| format!("{e:?}"));
            assert_eq!(
                elements,
                [
                    Some(Kind::IntValue(0)),
                    Some(Kind::IntValue(1)),
                    Some(Kind::IntValue(2))
                ]
            );
        }
    }
}

/// The elements of a (nested) array value, outermost dimension first; panics on a non-array.
fn flatten(value: &proto::Value) -> Vec<Option<Kind>> {
    let Some(Kind::ArrayValue(array)) = &value.kind else {
        panic!("not an array: {value:?}");
    };
    let mut out = Vec::new();
    for element in &array.values {
        match &element.kind {
            Some(Kind::ArrayValue(_)) => out.extend(flatten(element)),
            other => out.push(other.clone()),
        }
    }
    out
}

/// Types the gateway can't know (enums, composites, domains, ranges over a user-defined
/// subtype, extension types, anonymous records) come back as the server's text in every RPC,
/// and take strings as parameters.
#[tokio::test]
async fn user_defined_types_come_back_as_text() {
    let (_gw, mut client, direct) = setup().await;
    direct
        .batch_execute(
            r#"CREATE TABLE things (
                   id int PRIMARY KEY,
                   m mood, ms mood[], p pair, ps pair[], n nested, pd pair_domain, st short_text,
                   r mood_range, w "Other Schema"."Weird Type", c citext, h hstore
               );
               INSERT INTO things VALUES
                   (1, 'happy', '{sad,NULL,"with \"quotes\", commas"}', '(1,"a, b",2024-01-01)',
                    ARRAY['(2,x,)'::pair, NULL], '("(3,y,infinity)","{ok}",2024-06-01 12:00+09:30)',
                    '(4,z,)', 'short', '[sad,happy)', 'a b', 'MiXeD', 'k=>v'),
                   (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"#,
        )
        .await
        .expect("things");
    every_rpc_returns_each_columns_text(&mut client).await;
    strings_in_come_back_as_the_same_text(&mut client).await;
    anonymous_records_are_composites_too(&mut client).await;
    many_records_each_get_their_own_text(&mut client).await;
}

/// Over Query, QueryStream and Transaction, every user-defined column of `things` is exactly
/// its `::text` (or NULL), and the arrays' elements are each element's text.
async fn every_rpc_returns_each_columns_text(client: &mut DbClient) {
    // Each column and its `::text`, in the same statement: whatever the session's settings,
    // the gateway's value must be the server's text (arrays: element by element, below).
    let columns = ["m", "ms", "p", "ps", "n", "pd", "st", "r", "w", "c", "h"];
    let arrays = ["ms", "ps"];
    let select = columns
        .iter()
        .map(|c| format!("{c}, {c}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {select} FROM things ORDER BY id");

    let unary = run(client, &sql, vec![]).await;
    let mut stream = client
        .query_stream(query(&sql, vec![]))
        .await
        .expect("QueryStream")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(message) = stream.message().await.expect("stream") {
        streamed.extend(message.rows);
    }
    let transaction = client
        .transaction(proto::TransactionRequest {
            statements: vec![proto::Statement {
                sql: sql.clone(),
                params: vec![],
            }],
            ..Default::default()
        })
        .await
        .expect("Transaction")
        .into_inner();
    for (rpc, rows) in [
        ("Query", &unary.rows),
        ("QueryStream", &streamed),
        ("Transaction", &transaction.results[0].rows),
    ] {
        assert_eq!(rows.len(), 2, "{rpc}");
        for row in rows {
            for (column, pair) in row.values.chunks(2).enumerate() {
                let name = columns[column];
                match (&pair[0].kind, &pair[1].kind) {
                    (Some(Kind::NullValue(_)), Some(Kind::NullValue(_))) => {}
                    (Some(Kind::ArrayValue(_)), Some(Kind::StringValue(_)))
                        if arrays.contains(&name) => {}
                    (Some(Kind::StringValue(got)), Some(Kind::StringValue(text))) => {
                        assert_eq!(got, text, "{rpc} {name}")
                    }
                    other => panic!("{rpc} {name}: {other:?}"),
                }
            }
        }
    }
    for array_column in arrays {
        let response = run(
            client,
            &format!(
                "SELECT {array_column}, {} FROM things WHERE id = 1",
                element_texts(array_column)
            ),
            vec![],
        )
        .await;
        let row = &response.rows[0];
        let Some(Kind::ArrayValue(texts)) = &row.values[1].kind else {
            panic!("{row:?}")
        };
        assert_eq!(
            flatten(&row.values[0]),
            texts
                .values
                .iter()
                .map(|v| v.kind.clone())
                .collect::<Vec<_>>()
        );
    }
}

/// Strings in as parameters, the same text out, for every user-defined type.
async fn strings_in_come_back_as_the_same_text(client: &mut DbClient) {
    // Strings in, the same text out, for every user-defined type.
    let response = run(
        client,
        "SELECT $1::mood, $2::pair, $3::mood_range, $4::\"Other Schema\".\"Weird Type\", $5::pair_domain, $6::hstore",
        vec![text("ok"), text("(9,\"q \"\"r\"\"\",)"), text("(sad,ok]"), text("ü"), text("(1,,)"), text("x=>NULL")],
    )
    .await;
    let got: Vec<&str> = response.rows[0]
        .values
        .iter()
        .map(|v| string_of(&v.kind))
        .collect();
    assert_eq!(
        got,
        [
            "ok",
            "(9,\"q \"\"r\"\"\",)",
            "(sad,ok]",
            "ü",
            "(1,,)",
            "\"x\"=>NULL"
        ]
    );
}

/// Anonymous records, alone, nested or in arrays, come back as their `::text`; an array of
/// them has each element's own text.
async fn anonymous_records_are_composites_too(client: &mut DbClient) {
    // Anonymous records (a ROW(...) or a whole row of a subquery) are composites too.
    for expr in [
        "ROW(1, 'a \"b\", c', NULL::int, 'ab'::char(4), '10.0.0.1'::inet)",
        "ROW()",
        "ROW(NULL)",
        "ROW(ROW(1, 'x'), ARRAY[1, 2], 'happy'::mood, ROW(2, 'y', NULL)::pair, '2024-06-01 12:00+09:30'::timestamptz)",
        "ROW(1, ARRAY[ROW(2, 'x'), NULL::record], ARRAY[]::record[], ARRAY[ARRAY[ROW(3)], ARRAY[ROW(ROW(4, 'y'))]])",
        "(SELECT t FROM (SELECT 1 AS a, 'x y'::text AS b, 'sad'::mood AS c) t)",
        "ROW(1, (SELECT ROW(2) WHERE false), (SELECT ARRAY[ROW(3)] WHERE false))",
    ] {
        let response = run(client, &format!("SELECT {expr}, ({expr})::text"), vec![]).await;
        let row = &response.rows[0];
        assert_eq!(row.values[0].kind, row.values[1].kind, "{expr}");
    }
    // An array of anonymous records: each element is the element's own text.
    let response = run(
        client,
        "SELECT a, ARRAY(SELECT unnest(a)::text) \
         FROM (SELECT array_agg(s ORDER BY n) FROM (VALUES (1, 'a b'), (2, NULL)) s(n, t)) q(a)",
        vec![],
    )
    .await;
    let row = &response.rows[0];
    let Some(Kind::ArrayValue(texts)) = &row.values[1].kind else {
        panic!("{row:?}")
    };
    let texts: Vec<Option<Kind>> = texts.values.iter().map(|v| v.kind.clone()).collect();
    assert_eq!(flatten(&row.values[0]), texts);
    assert_eq!(
        texts,
        [
            Some(Kind::StringValue("(1,\"a b\")".into())),
            Some(Kind::StringValue("(2,)".into()))
        ]
    );
}

/// 1500 records in one result each get their own text, unary and streamed.
async fn many_records_each_get_their_own_text(client: &mut DbClient) {
    // Many records in one result: their fields are formatted in batches, and every record
    // still gets its own text, in unary and streamed results.
    let sql = "SELECT ROW(i, repeat('x', i % 7), NULL::int, i::numeric / 3), \
                      (ROW(i, repeat('x', i % 7), NULL::int, i::numeric / 3))::text \
               FROM generate_series(1, 1500) i ORDER BY i";
    let response = run(client, sql, vec![]).await;
    assert_eq!(response.rows.len(), 1500);
    for row in &response.rows {
        assert_eq!(row.values[0].kind, row.values[1].kind);
    }
    let mut stream = client
        .query_stream(query(sql, vec![]))
        .await
        .expect("QueryStream")
        .into_inner();
    let mut rows = 0;
    while let Some(message) = stream.message().await.expect("stream message") {
        for row in &message.rows {
            assert_eq!(row.values[0].kind, row.values[1].kind);
            rows += 1;
        }
    }
    assert_eq!(rows, 1500);
}
