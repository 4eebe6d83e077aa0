"""A grpcio server of user.v1.UserService for the benchmark, written the way
the gRPC Python tutorials write one: generated stubs, a servicer class over a
dict, ``grpc.server(futures.ThreadPoolExecutor(max_workers=10))``.

Stubs are generated at start-up from the service's own proto with
``grpc_tools.protoc`` (the protoc bundled in grpcio-tools), into a temporary
directory, so no generated code is kept in the repository.

    python server.py --addr 127.0.0.1:50051 --seed users.jsonl
"""

import argparse
import bisect
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "proto")
PROTO = "user/v1/user_service.proto"


def generate_stubs(out_dir):
    """Compiles the proto into out_dir and returns the (pb2, pb2_grpc) modules."""
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROTO,
        ]
    )
    if rc != 0:
        raise SystemExit(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("user.v1.user_service_pb2"),
        importlib.import_module("user.v1.user_service_pb2_grpc"),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--seed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="user-peer-py-") as stubs:
        pb2, pb2_grpc = generate_stubs(stubs)

        users = {}
        if args.seed:
            now = time.time_ns()
            with open(args.seed, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    user = pb2.User(
                        id=row["id"],
                        email=row["email"],
                        name=row["name"],
                        status=pb2.USER_STATUS_INACTIVE if row.get("status") == "inactive" else pb2.USER_STATUS_ACTIVE,
                        roles=row.get("roles") or ["user"],
                    )
                    user.created_at.FromNanoseconds(now)
                    user.updated_at.FromNanoseconds(now)
                    users[user.id] = user
        ordered_ids = sorted(users)

        class UserService(pb2_grpc.UserServiceServicer):
            def GetUser(self, request, context):
                user = users.get(request.user_id)
                if user is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "user not found")
                return user

            def ListUsers(self, request, context):
                if request.page_size < 0:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
                start = bisect.bisect_right(ordered_ids, request.page_token) if request.page_token else 0
                end = len(ordered_ids) if request.page_size == 0 else min(len(ordered_ids), start + request.page_size)
                for user_id in ordered_ids[start:end]:
                    yield users[user_id]

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
        pb2_grpc.add_UserServiceServicer_to_server(UserService(), server)
        if server.add_insecure_port(args.addr) == 0:
            raise SystemExit(f"cannot listen on {args.addr}")
        server.start()
        # SIGTERM stops the server (and removes the stub directory) cleanly.
        signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
        server.wait_for_termination()


if __name__ == "__main__":
    main()
