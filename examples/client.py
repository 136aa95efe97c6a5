#!/usr/bin/env python3
"""A small Python client of pgway (gRPC service pgway.v1.Database).

    pip install -r examples/requirements.txt             # Python 3.9+
    pgway dev                                            # a gateway on a throwaway database
    python3 examples/client.py --addr 127.0.0.1:50051
    PGWAY_TOKEN=… python3 examples/client.py --addr gw:50051   # a gateway that checks tokens

The stubs are generated at run time from proto/pgway/v1/pgway.proto into a temporary directory,
so no generated code is committed. The run checks every value it reads back and exits non-zero
on any unexpected error, so it doubles as a smoke test of a gateway.
"""

import argparse
import os
import importlib
import importlib.resources
import queue
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
from grpc_tools import protoc

try:  # grpcio-status decodes google.rpc.Status and its details from the trailers.
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
except ImportError:
    rpc_status = None

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
TIMEOUT = 10  # seconds: every call carries a deadline


def load_stubs(proto_root):
    """Compiles pgway.proto into a temporary directory and imports the generated modules."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{proto_root}", f"-I{well_known}",
                f"--python_out={out}", f"--grpc_python_out={out}", "pgway/v1/pgway.proto"]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {proto_root}/pgway/v1/pgway.proto")
        sys.path.insert(0, out)
        try:
            pb = importlib.import_module("pgway.v1.pgway_pb2")
            rpc = importlib.import_module("pgway.v1.pgway_pb2_grpc")
        finally:
            sys.path.remove(out)
    return pb, rpc


def to_value(pb, v):
    """A Python value as a pgway.v1.Value (bool before int: True is an int in Python)."""
    if v is None:
        return pb.Value(null_value=0)
    if isinstance(v, bool):
        return pb.Value(bool_value=v)
    if isinstance(v, int):
        return pb.Value(int_value=v)
    if isinstance(v, float):
        return pb.Value(double_value=v)
    if isinstance(v, bytes):
        return pb.Value(bytes_value=v)
    if isinstance(v, (list, tuple)):
        return pb.Value(array_value=pb.ArrayValue(values=[to_value(pb, x) for x in v]))
    return pb.Value(string_value=str(v))


def from_value(v):
    """A pgway.v1.Value as a Python value."""
    kind = v.WhichOneof("kind")
    if kind == "array_value":
        return [from_value(x) for x in v.array_value.values]
    return None if kind in (None, "null_value") else getattr(v, kind)


def rows(response):
    return [tuple(from_value(v) for v in row.values) for row in response.rows]


def show(title, response):
    columns = ", ".join(f"{c.name}:{c.type_name}" for c in response.columns)
    print(f"{title}: [{columns}] {rows(response)} (rows_affected={response.rows_affected})")


def expect(actual, wanted, what):
    if actual != wanted:
        raise AssertionError(f"{what}: got {actual!r}, wanted {wanted!r}")


def error_info(err):
    """The google.rpc.ErrorInfo of a failed call, or None."""
    status = rpc_status.from_call(err) if rpc_status else None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def print_error(err):
    print(f"gRPC error {err.code().name}: {err.details()}")
    info = error_info(err)
    if info is not None:
        print(f"  reason={info.reason} domain={info.domain} metadata={dict(sorted(info.metadata.items()))}")
    elif rpc_status is None:
        print("  (pip install grpcio-status to see the error details)")


def demo(db, pb):
    def query(sql, *params):
        return db.Query(pb.QueryRequest(sql=sql, params=[to_value(pb, p) for p in params]),
                        timeout=TIMEOUT)

    def statement(sql, *params):
        return pb.Statement(sql=sql, params=[to_value(pb, p) for p in params])

    # Query with parameters: a string, an int and a bool.
    query("CREATE TABLE IF NOT EXISTS pgway_example_people ("
          "id bigserial PRIMARY KEY, name text NOT NULL, age int4, active bool)")
    name = f"ada-{uuid.uuid4().hex[:8]}"  # unique, so reruns against one database still check
    inserted = query("INSERT INTO pgway_example_people (name, age, active) VALUES ($1, $2, $3)"
                     " RETURNING id", name, 36, True)
    show("insert", inserted)
    expect(inserted.rows_affected, 1, "rows inserted")
    person = rows(inserted)[0][0]
    selected = query("SELECT name, age, active FROM pgway_example_people WHERE id = $1", person)
    show("select", selected)
    expect(rows(selected), [(name, 36, True)], "selected row")

    # QueryStream: rows arrive in batches.
    batches, total, count, last = 0, 0, 0, None
    for message in db.QueryStream(pb.QueryRequest(
            sql="SELECT g AS n FROM generate_series(1, $1::int4) AS g", params=[to_value(pb, 10000)]),
            timeout=TIMEOUT):
        batches, last = batches + 1, message
        count += len(message.rows)
        total += sum(from_value(row.values[0]) for row in message.rows)
    print(f"stream: {count} rows in {batches} batch(es), sum {total}, "
          f"rows_affected={last.rows_affected}, truncated={last.truncated}")
    expect((count, total, last.rows_affected), (10000, 50005000, 10000), "streamed rows")

    # Transaction: two statements, committed together (re-run by the gateway on conflicts).
    tx = db.Transaction(pb.TransactionRequest(
        isolation_level=pb.ISOLATION_LEVEL_SERIALIZABLE,
        statements=[statement("UPDATE pgway_example_people SET age = age + 1 WHERE id = $1", person),
                    statement("SELECT age FROM pgway_example_people WHERE id = $1", person)]),
        timeout=TIMEOUT)
    print(f"transaction: committed after {tx.attempts} attempt(s)")
    for i, result in enumerate(tx.results):
        show(f"  statement {i}", result)
    expect(rows(tx.results[1]), [(37,)], "age after the transaction")

    # InteractiveTransaction: send one step, read its answer, decide the next step.
    requests = queue.Queue()
    responses = db.InteractiveTransaction(iter(requests.get, None), timeout=TIMEOUT)
    try:
        requests.put(pb.InteractiveTransactionRequest(begin=pb.TransactionOptions(
            isolation_level=pb.ISOLATION_LEVEL_REPEATABLE_READ)))
        expect(next(responses).WhichOneof("event"), "begun", "answer to begin")
        requests.put(pb.InteractiveTransactionRequest(statement=statement(
            "UPDATE pgway_example_people SET active = $2 WHERE id = $1 RETURNING active", person, False)))
        answer = next(responses)
        expect(answer.WhichOneof("event"), "result", "answer to the statement")
        show("interactive: statement", answer.result)
        requests.put(pb.InteractiveTransactionRequest(commit=pb.Commit()))
        expect(next(responses).WhichOneof("event"), "committed", "answer to commit")
        print("interactive: committed")
    finally:
        requests.put(None)  # ends the request stream
    expect(rows(query("SELECT name, age, active FROM pgway_example_people WHERE id = $1", person)),
           [(name, 37, False)], "row after both transactions")

    # An error on purpose: PostgreSQL's answer comes back with its SQLSTATE in ErrorInfo.
    try:
        query("SELECT 1 / $1::int4", 0)
        raise AssertionError("dividing by zero succeeded")
    except grpc.RpcError as err:
        print("expected error:", end=" ")
        print_error(err)
        expect(err.code(), grpc.StatusCode.INVALID_ARGUMENT, "code of a division by zero")
        if rpc_status is not None:
            info = error_info(err)
            expect((info.reason, info.domain, info.metadata["sqlstate"]),
                   ("DIVISION_BY_ZERO", "postgresql", "22012"), "ErrorInfo of a division by zero")


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token):
        self.metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self.metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="the gateway's host:port")
    parser.add_argument("--proto", type=Path, default=PROTO_ROOT, help="the proto/ directory")
    parser.add_argument("--token", default=os.environ.get("PGWAY_TOKEN"),
                        help="bearer token (default: $PGWAY_TOKEN; none for an open gateway)")
    args = parser.parse_args()
    pb, rpc = load_stubs(args.proto)
    with grpc.insecure_channel(args.addr) as plain:
        channel = grpc.intercept_channel(plain, BearerToken(args.token)) if args.token else plain
        try:
            grpc.channel_ready_future(plain).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            print(f"cannot reach a gateway at {args.addr}", file=sys.stderr)
            return 2
        try:
            demo(rpc.DatabaseStub(channel), pb)
        except grpc.RpcError as err:
            print_error(err)
            return 1
        except AssertionError as err:
            print(f"check failed: {err}", file=sys.stderr)
            return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
