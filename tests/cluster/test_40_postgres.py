"""PostgreSQL mode: two replicas sharing a database, migrated by the
chart's hook Job. The database is a throwaway cluster of this test,
listening only on the bridge's gateway address (the host side of the
node's pod network), so the pods reach it and nothing else does.
"""

import glob
import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kube import (
    assert_nothing_left,
    BRIDGE_IP, CHART, FIGURES, IMAGE_VALUES, PortForward, grpcurl, helm, kubectl, kubectl_json, mint_token,
    log, namespace, pods, release_selector, run, wait_all_ready,
)

NS = "it-postgres"
REL = "pg"
NAME = "pg-user-service"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"{name} not found under /usr/lib/postgresql (Debian's postgresql package)"
    return found[-1]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def database():
    """(url, psql-args): a fresh PostgreSQL on BRIDGE_IP, stopped afterwards."""
    tmp = tempfile.mkdtemp(prefix="user-service-pg-")
    os.chown(tmp, *_postgres_ids())
    data = Path(tmp) / "data"
    password = secrets.token_hex(16)
    pwfile = Path(tmp) / "pw"
    pwfile.write_text(password)
    os.chown(pwfile, *_postgres_ids())
    as_pg = ["runuser", "-u", "postgres", "--"]
    run(as_pg + [pg_bin("initdb"), "-D", str(data), "-U", "users", "--auth=scram-sha-256",
                 f"--pwfile={pwfile}"], quiet=True)
    pwfile.unlink()
    with open(data / "pg_hba.conf", "a") as f:
        f.write("host all all 10.244.0.0/16 scram-sha-256\n")
    port = free_port(BRIDGE_IP)
    run(as_pg + [pg_bin("pg_ctl"), "-D", str(data), "-l", f"{tmp}/pg.log", "-w", "start", "-o",
                 f"-c listen_addresses={BRIDGE_IP} -c port={port} -c unix_socket_directories={tmp}"])
    try:
        env = {"PGPASSWORD": password}
        run(["psql", "-h", tmp, "-p", str(port), "-U", "users", "-d", "postgres", "-c", "CREATE DATABASE users"],
            env=env)
        yield f"postgres://users:{password}@{BRIDGE_IP}:{port}/users", (tmp, port, env)
    finally:
        run(as_pg + [pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], check=False)
        subprocess.run(["rm", "-rf", tmp], check=False)


def _postgres_ids():
    import pwd
    p = pwd.getpwnam("postgres")
    return p.pw_uid, p.pw_gid


def test_two_replicas_share_the_database(database):
    url, (sock_dir, port, env) = database
    with namespace(NS) as ns, tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        # The URL holds the password: a values file, not --set (argv, logs).
        json.dump({"store": {"type": "postgres", "postgres": {"url": url}}, "replicaCount": 2}, values)
        values.flush()
        start = time.monotonic()
        helm("install", REL, str(CHART), "-n", ns, *IMAGE_VALUES, "-f", values.name, "--wait", "--timeout", "4m")
        wait_all_ready(ns, REL, 2)
        FIGURES["install -> all pods Ready (postgres, migration Job + 2 pods)"] = f"{time.monotonic() - start:.1f} s"
        # The hook Job migrated (and was deleted on success); the pods do not.
        applied = run(["psql", "-h", sock_dir, "-p", str(port), "-U", "users", "-d", "users", "-Atc",
                       "SELECT count(*) FROM _sqlx_migrations WHERE success"], env=env).stdout.strip()
        assert int(applied) >= 1
        a, b = sorted(p["metadata"]["name"] for p in pods(ns, release_selector(REL)))
        env_of = {e["name"]: e.get("value") for e in
                  kubectl_json("-n", ns, "get", "pod", a)["spec"]["containers"][0]["env"]}
        assert env_of["USER_SERVICE__STORE__MIGRATE"] == "false"
        with PortForward(ns, f"pod/{a}", 50051) as pa:
            uid = json.loads(grpcurl(pa.addr(50051), "user.v1.UserService/CreateUser", {
                "email": "grace@example.com", "name": "Grace", "password": "correct horse battery"}).stdout)["id"]
        token = mint_token(ns, f"pod/{b}", uid)
        with PortForward(ns, f"pod/{b}", 50051) as pb:
            got = json.loads(grpcurl(pb.addr(50051), "user.v1.UserService/GetUser", {"user_id": uid},
                                     token=token).stdout)
        assert got["email"] == "grace@example.com"

        # `kubectl drain` honours the PodDisruptionBudget (maxUnavailable 1):
        # on this one node the evicted pod's replacement cannot be scheduled
        # (cordoned), so the second eviction is refused until uncordon.
        node = kubectl_json("get", "nodes")["items"][0]["metadata"]["name"]
        try:
            p = kubectl("drain", node, "--pod-selector", f"app.kubernetes.io/instance={REL}",
                        "--ignore-daemonsets", "--timeout=20s", check=False, timeout=60)
            log("drain: " + " | ".join(p.stderr.strip().splitlines()[-2:]))
            assert kubectl_json("get", "node", node)["spec"].get("unschedulable") is True
            assert p.returncode != 0, "drain evicted both replicas despite the PDB"
            assert "disruption budget" in p.stderr, p.stderr[-1000:]
            running = [x for x in pods(ns, release_selector(REL)) if x["metadata"].get("deletionTimestamp") is None
                       and x["status"].get("phase") == "Running"]
            assert len(running) == 1, f"{len(running)} replicas running during the drain"
        finally:
            kubectl("uncordon", node)
        wait_all_ready(ns, REL, 2)
        helm("uninstall", REL, "-n", ns, "--wait", "--timeout", "2m")
        assert_nothing_left(REL)
