#!/usr/bin/env node
// A small Node.js client of pgway (gRPC service pgway.v1.Database).
//
//     npm ci --prefix examples/node                         # Node.js 18.3+
//     pgway dev                                             # a gateway on a throwaway database
//     node examples/node/client.js --addr 127.0.0.1:50051
//     PGWAY_TOKEN=… node examples/node/client.js --addr gw:50051   # a gateway that checks tokens
//
// The service definition is loaded at run time from proto/pgway/v1/pgway.proto with
// @grpc/proto-loader, so no generated code is committed. The run checks every value it reads
// back and exits non-zero on any unexpected error, so it doubles as a smoke test of a gateway.
'use strict';

const path = require('node:path');
const { parseArgs, isDeepStrictEqual } = require('node:util');
const { randomBytes } = require('node:crypto');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const TIMEOUT_MS = 10_000; // every call carries a deadline

// How proto-loader maps messages to JS objects: the proto's own field names (int_value, not
// intValue), 64-bit integers as decimal strings (an int8 or a bigserial doesn't fit a JS number;
// fromValue turns them into BigInt), enums by name, absent fields as their defaults, and a
// `kind` property naming the field set in the Value oneof.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

function loadService(protoRoot) {
  const definition = protoLoader.loadSync('pgway/v1/pgway.proto', {
    ...LOADER_OPTIONS,
    includeDirs: [protoRoot], // google/protobuf/struct.proto comes with proto-loader
  });
  return grpc.loadPackageDefinition(definition).pgway.v1.Database;
}

// The error details travel in the `grpc-status-details-bin` trailer as a serialized
// google.rpc.Status, whose `details` are google.protobuf.Any messages (one of them a
// google.rpc.ErrorInfo). Those protos are not in proto/, and grpc-js does not decode them, so
// protobufjs (the library under proto-loader) does, from this inline definition of just the
// three messages needed. Their field numbers are a stable public contract (googleapis'
// google/rpc/status.proto and error_details.proto, protobuf's google/protobuf/any.proto);
// inline JSON keeps the example to one file and needs no proto search path.
const RPC_TYPES = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: {
              fields: {
                type_url: { type: 'string', id: 1 },
                value: { type: 'bytes', id: 2 },
              },
            },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const Status = RPC_TYPES.lookupType('google.rpc.Status');
const ErrorInfo = RPC_TYPES.lookupType('google.rpc.ErrorInfo');

// gRPC status codes by number, for printing (grpc.status maps names to numbers).
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** A JS value as a pgway.v1.Value. An integral number or a BigInt goes as int_value. */
function toValue(v) {
  if (v === null || v === undefined) return { null_value: 'NULL_VALUE' };
  if (typeof v === 'boolean') return { bool_value: v };
  if (typeof v === 'bigint') return { int_value: v.toString() };
  if (typeof v === 'number') {
    return Number.isInteger(v) ? { int_value: String(v) } : { double_value: v };
  }
  if (Buffer.isBuffer(v)) return { bytes_value: v };
  if (Array.isArray(v)) return { array_value: { values: v.map(toValue) } };
  return { string_value: String(v) };
}

/** A pgway.v1.Value as a JS value: int_value as a BigInt, bytes_value as a Buffer. */
function fromValue(v) {
  switch (v.kind) {
    case 'int_value':
      return BigInt(v.int_value);
    case 'array_value':
      return v.array_value.values.map(fromValue);
    case undefined:
    case 'null_value':
      return null;
    default:
      return v[v.kind];
  }
}

function rows(response) {
  return response.rows.map((row) => row.values.map(fromValue));
}

/** A value for printing: strings quoted, BigInts without their `n`, bytes in hex. */
function format(value) {
  if (Array.isArray(value)) return `[${value.map(format).join(', ')}]`;
  if (Buffer.isBuffer(value)) return `<${value.toString('hex')}>`;
  if (typeof value === 'string') return JSON.stringify(value);
  return String(value);
}

function show(title, response) {
  const columns = response.columns.map((c) => `${c.name}:${c.type_name}`).join(', ');
  console.log(
    `${title}: [${columns}] ${format(rows(response))} (rows_affected=${response.rows_affected})`,
  );
}

class CheckFailed extends Error {}

function expect(actual, wanted, what) {
  if (!isDeepStrictEqual(actual, wanted)) {
    throw new CheckFailed(`${what}: got ${format(actual)}, wanted ${format(wanted)}`);
  }
}

function isGrpcError(err) {
  return err instanceof Error && typeof err.code === 'number' && err.metadata instanceof grpc.Metadata;
}

/** The google.rpc.ErrorInfo of a failed call, or null. */
function errorInfo(err) {
  for (const trailer of err.metadata.get('grpc-status-details-bin')) {
    const status = Status.decode(trailer);
    for (const detail of status.details) {
      if (detail.type_url.endsWith('/google.rpc.ErrorInfo')) {
        return ErrorInfo.decode(detail.value);
      }
    }
  }
  return null;
}

function printError(err) {
  console.log(`gRPC error ${CODE_NAMES[err.code]}: ${err.details}`);
  const info = errorInfo(err);
  if (info !== null) {
    const metadata = Object.keys(info.metadata)
      .sort()
      .map((key) => ` ${key}=${info.metadata[key]}`)
      .join('');
    console.log(`  reason=${info.reason} domain=${info.domain}${metadata}`);
  }
}

/** Adds `authorization: Bearer <token>` to every call. */
function bearerToken(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

function deadline() {
  return new Date(Date.now() + TIMEOUT_MS);
}

async function demo(db) {
  const query = (sql, ...params) =>
    new Promise((resolve, reject) => {
      db.Query({ sql, params: params.map(toValue) }, { deadline: deadline() }, (err, reply) =>
        err ? reject(err) : resolve(reply),
      );
    });
  const transaction = (request) =>
    new Promise((resolve, reject) => {
      db.Transaction(request, { deadline: deadline() }, (err, reply) =>
        err ? reject(err) : resolve(reply),
      );
    });
  const statement = (sql, ...params) => ({ sql, params: params.map(toValue) });

  // Query with parameters: a string, an int and a bool.
  await query(
    'CREATE TABLE IF NOT EXISTS pgway_node_example_people (' +
      'id bigserial PRIMARY KEY, name text NOT NULL, age int4, active bool)',
  );
  const suffix = randomBytes(4).toString('hex'); // unique, so reruns against one database still check
  const ada = `ada-${suffix}`;
  const grace = `grace-${suffix}`;
  const inserted = await query(
    'INSERT INTO pgway_node_example_people (name, age, active) VALUES ($1, $2, $3) RETURNING id',
    ada,
    36,
    true,
  );
  show('insert', inserted);
  expect(inserted.rows_affected, '1', 'rows inserted');
  const person = rows(inserted)[0][0];
  const selected = await query(
    'SELECT name, age, active FROM pgway_node_example_people WHERE id = $1',
    person,
  );
  show('select', selected);
  expect(rows(selected), [[ada, 36n, true]], 'selected row');

  // QueryStream: rows arrive in batches.
  let batches = 0;
  let count = 0;
  let total = 0n;
  let last = null;
  const stream = db.QueryStream(
    { sql: 'SELECT g AS n FROM generate_series(1, $1::int4) AS g', params: [toValue(10000)] },
    { deadline: deadline() },
  );
  for await (const message of stream) {
    batches += 1;
    last = message;
    count += message.rows.length;
    for (const row of message.rows) total += fromValue(row.values[0]);
  }
  console.log(
    `stream: ${count} rows in ${batches} batch(es), sum ${total}, ` +
      `rows_affected=${last.rows_affected}, truncated=${last.truncated}`,
  );
  expect([count, total, last.rows_affected], [10000, 50005000n, '10000'], 'streamed rows');

  // Transaction: three statements, committed together (re-run by the gateway on conflicts).
  const tx = await transaction({
    isolation_level: 'ISOLATION_LEVEL_SERIALIZABLE',
    statements: [
      statement('UPDATE pgway_node_example_people SET age = age + 1 WHERE id = $1', person),
      statement(
        'INSERT INTO pgway_node_example_people (name, age, active) VALUES ($1, $2, $3)',
        grace,
        45,
        true,
      ),
      statement(
        'SELECT name, age FROM pgway_node_example_people WHERE name IN ($1, $2) ORDER BY name',
        ada,
        grace,
      ),
    ],
  });
  console.log(`transaction: committed after ${tx.attempts} attempt(s)`);
  tx.results.forEach((result, i) => show(`  statement ${i}`, result));
  expect(tx.results.length, 3, 'results of the transaction');
  expect(tx.results[0].rows_affected, '1', 'rows updated by statement 0');
  expect(tx.results[1].rows_affected, '1', 'rows inserted by statement 1');
  expect(
    rows(tx.results[2]),
    [
      [ada, 37n],
      [grace, 45n],
    ],
    'rows selected by statement 2',
  );

  // InteractiveTransaction: send one step, read its answer, decide the next step.
  const call = db.InteractiveTransaction({ deadline: deadline() });
  const events = call[Symbol.asyncIterator]();
  const answer = async (what) => {
    const { value, done } = await events.next();
    if (done) throw new CheckFailed(`the stream ended before the answer to ${what}`);
    return value;
  };
  try {
    call.write({ begin: { isolation_level: 'ISOLATION_LEVEL_REPEATABLE_READ' } });
    expect((await answer('begin')).event, 'begun', 'answer to begin');
    call.write({
      statement: statement(
        'UPDATE pgway_node_example_people SET active = $2 WHERE id = $1 RETURNING active',
        person,
        false,
      ),
    });
    const result = await answer('the statement');
    expect(result.event, 'result', 'answer to the statement');
    show('interactive: statement', result.result);
    expect(rows(result.result), [[false]], 'row returned by the statement');
    call.write({ commit: {} });
    expect((await answer('commit')).event, 'committed', 'answer to commit');
    console.log('interactive: committed');
  } finally {
    call.end(); // ends the request stream
  }
  expect(
    rows(
      await query(
        'SELECT name, age, active FROM pgway_node_example_people WHERE name IN ($1, $2) ORDER BY name',
        ada,
        grace,
      ),
    ),
    [
      [ada, 37n, false],
      [grace, 45n, true],
    ],
    'rows after both transactions',
  );

  // An error on purpose: PostgreSQL's answer comes back with its SQLSTATE in ErrorInfo.
  let failure = null;
  try {
    await query('SELECT 1 / $1::int4', 0);
  } catch (err) {
    if (!isGrpcError(err)) throw err;
    failure = err;
  }
  if (failure === null) throw new CheckFailed('dividing by zero succeeded');
  process.stdout.write('expected error: ');
  printError(failure);
  expect(CODE_NAMES[failure.code], 'INVALID_ARGUMENT', 'code of a division by zero');
  const info = errorInfo(failure);
  if (info === null) throw new CheckFailed('no google.rpc.ErrorInfo in grpc-status-details-bin');
  expect(
    [info.reason, info.domain, info.metadata.sqlstate],
    ['DIVISION_BY_ZERO', 'postgresql', '22012'],
    'ErrorInfo of a division by zero',
  );
}

const USAGE = `usage: node client.js [--addr HOST:PORT] [--token TOKEN] [--proto DIR]

  --addr   the gateway's host:port (default 127.0.0.1:50051)
  --token  bearer token (default: $PGWAY_TOKEN; none for an open gateway)
  --proto  the proto/ directory (default ${PROTO_ROOT})`;

function waitForReady(client) {
  return new Promise((resolve, reject) =>
    client.waitForReady(deadline(), (err) => (err ? reject(err) : resolve())),
  );
}

async function main() {
  let args;
  try {
    ({ values: args } = parseArgs({
      options: {
        addr: { type: 'string', default: '127.0.0.1:50051' },
        token: { type: 'string', default: process.env.PGWAY_TOKEN },
        proto: { type: 'string', default: PROTO_ROOT },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  const Database = loadService(args.proto);
  const interceptors = args.token ? [bearerToken(args.token)] : [];
  const db = new Database(args.addr, grpc.credentials.createInsecure(), { interceptors });
  try {
    try {
      await waitForReady(db);
    } catch {
      console.error(`cannot reach a gateway at ${args.addr}`);
      return 2;
    }
    try {
      await demo(db);
    } catch (err) {
      if (isGrpcError(err)) {
        printError(err);
        return 1;
      }
      if (err instanceof CheckFailed) {
        console.error(`check failed: ${err.message}`);
        return 1;
      }
      throw err;
    }
  } finally {
    db.close();
  }
  console.log('all checks passed');
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err);
    process.exitCode = 1;
  },
);
