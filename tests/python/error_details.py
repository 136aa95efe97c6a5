#!/usr/bin/env python3
"""Reads the rich error details of a failed call of each Database RPC the standard way,
with grpcio-status' `rpc_status.from_call`, which refuses details whose code or message
differ from the call's. Prints one line per RPC:

    <rpc> <code> reason=<reason> domain=<domain> sqlstate=<sqlstate> statement_index=<index>

Usage: error_details.py <host:port>
"""

import os
import queue
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import client  # noqa: E402  (examples/client.py: compiles the stubs from proto/)

TIMEOUT = 10


def describe(rpc, err):
    status = rpc_status.from_call(err)  # raises ValueError on a mismatch
    if status is None:
        raise AssertionError(f"{rpc}: no google.rpc.Status in the trailers")
    if status.code != err.code().value[0] or status.message != err.details():
        raise AssertionError(f"{rpc}: details say {status.code}/{status.message!r}, "
                             f"the call {err.code()}/{err.details()!r}")
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    if len(infos) != 1:
        raise AssertionError(f"{rpc}: {len(infos)} ErrorInfo details")
    info = infos[0]
    print(f"{rpc} {err.code().name} reason={info.reason} domain={info.domain} "
          f"sqlstate={info.metadata.get('sqlstate', '-')} "
          f"statement_index={info.metadata.get('statement_index', '-')}")


def main():
    pb, rpc = client.load_stubs(client.PROTO_ROOT)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        db = rpc.DatabaseStub(channel)
        try:
            db.Query(pb.QueryRequest(sql="SELECT 1 / 0"), timeout=TIMEOUT)
            raise AssertionError("Query: no error")
        except grpc.RpcError as err:
            describe("Query", err)

        try:
            for _ in db.QueryStream(pb.QueryRequest(sql="SELECT 1 / 0"), timeout=TIMEOUT):
                pass
            raise AssertionError("QueryStream: no error")
        except grpc.RpcError as err:
            describe("QueryStream", err)

        try:
            db.Transaction(pb.TransactionRequest(statements=[
                pb.Statement(sql="SELECT 1"),
                pb.Statement(sql="SELECT 1 / 0"),
            ]), timeout=TIMEOUT)
            raise AssertionError("Transaction: no error")
        except grpc.RpcError as err:
            describe("Transaction", err)

        requests = queue.Queue()
        responses = db.InteractiveTransaction(iter(requests.get, None), timeout=TIMEOUT)
        try:
            requests.put(pb.InteractiveTransactionRequest(begin=pb.TransactionOptions()))
            next(responses)
            requests.put(pb.InteractiveTransactionRequest(
                statement=pb.Statement(sql="SELECT 1 / 0")))
            for _ in responses:
                pass
            raise AssertionError("InteractiveTransaction: no error")
        except grpc.RpcError as err:
            describe("InteractiveTransaction", err)
        finally:
            requests.put(None)


if __name__ == "__main__":
    main()
