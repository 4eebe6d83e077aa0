"""Shared functions of the chart tests on the local cluster (deploy/cluster).

The cluster is started by scripts/test-cluster.sh (make cluster-up) and
reached only through 127.0.0.1: the API server, `kubectl port-forward`, and
from there the pods on the node's own bridge. Tokens and secrets are kept
out of command lines and logs: grpcurl reads the token from its
environment (-expand-headers), and no test prints one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "user-service"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "user-service"
STATE = Path(os.environ.get("USER_SERVICE_CLUSTER_STATE", CACHE_ROOT / "cluster"))
TOOLS = REPO / ".tools" / "bin"


def _sourced(name: str, var: str) -> str:
    """A variable of one of deploy/cluster's sourced shell files."""
    out = subprocess.run(
        ["bash", "-c", f'source "{REPO}/deploy/cluster/{name}" && printf %s "${var}"'],
        check=True, capture_output=True, text=True,
    )
    return out.stdout


K8S_BIN = Path(_sourced("versions.sh", "K8S_BIN"))
GRPC_HEALTH_PROBE_VERSION = _sourced("versions.sh", "GRPC_HEALTH_PROBE_VERSION")
BRIDGE_IP = _sourced("network.sh", "BRIDGE_IP")
KUBECONFIG = os.environ.get("KUBECONFIG", str(STATE / "pki" / "admin.kubeconfig"))
HELM = os.environ.get("HELM", str(TOOLS / "helm"))
GRPCURL = str(TOOLS / "grpcurl")

# The image override the chart needs on a cluster without a registry:
# everything imported by deploy/cluster/image.sh, never pulled.
IMAGE_VALUES = [
    "--set", "image.repository=user-service",
    "--set", "image.tag=dev",
    "--set", "image.pullPolicy=Never",
    "--set", "tests.image.repository=localhost/grpc-health-probe",
    "--set", f"tests.image.tag={GRPC_HEALTH_PROBE_VERSION}",
    "--set", "tests.image.pullPolicy=Never",
]

# Figures printed at the end of the run (and kept in the cluster's logs).
FIGURES: dict[str, object] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, check: bool = True, timeout: float = 300, env: dict | None = None,
        input: str | None = None, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a command; on failure show its output (never its environment)."""
    if not quiet:
        log("$ " + " ".join(shlex.quote(c) for c in cmd))
    full_env = dict(os.environ, KUBECONFIG=KUBECONFIG)
    if env:
        full_env.update(env)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, input=input)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{cmd[0]} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def kubectl(*args: str, **kw) -> subprocess.CompletedProcess:
    return run([str(K8S_BIN / "kubectl"), *args], **kw)


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json", quiet=True).stdout)


def helm(*args: str, **kw) -> subprocess.CompletedProcess:
    return run([HELM, *args], **kw)


def wait_until(what: str, fn, timeout: float = 120, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - shown if it never succeeds
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def pods(ns: str, selector: str) -> list[dict]:
    return kubectl_json("-n", ns, "get", "pods", "-l", selector)["items"]


def ready(pod: dict) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds
    )


def release_selector(release: str) -> str:
    return f"app.kubernetes.io/instance={release},app.kubernetes.io/component!=test"


def wait_all_ready(ns: str, release: str, count: int, timeout: float = 180) -> float:
    """Seconds until `count` pods of the release are Ready (and no others)."""
    start = time.monotonic()

    def check():
        ps = [p for p in pods(ns, release_selector(release)) if p["metadata"].get("deletionTimestamp") is None
              and p["status"].get("phase") != "Succeeded"]
        return len(ps) == count and all(ready(p) for p in ps)

    wait_until(f"{count} Ready pods of {release}", check, timeout)
    return time.monotonic() - start


class PortForward:
    """`kubectl port-forward` on 127.0.0.1 with kernel-chosen local ports."""

    def __init__(self, ns: str, target: str, *ports: int):
        self.ns, self.target, self.ports = ns, target, ports
        self.local: dict[int, int] = {}

    def __enter__(self):
        cmd = [str(K8S_BIN / "kubectl"), "-n", self.ns, "port-forward", "--address", "127.0.0.1",
               self.target, *[f"0:{p}" for p in self.ports]]
        log("$ " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, KUBECONFIG=KUBECONFIG))
        deadline = time.monotonic() + 30
        pat = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")
        while len(self.local) < len(self.ports):
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError(f"port-forward to {self.target} did not start")
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"port-forward to {self.target} exited")
            m = pat.search(line)
            if m:
                self.local[int(m.group(2))] = int(m.group(1))
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        return self

    def addr(self, port: int) -> str:
        return f"127.0.0.1:{self.local[port]}"

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def grpcurl(addr: str, method: str | None = None, data: dict | None = None, token: str | None = None,
            check: bool = True, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """grpcurl -plaintext; the token travels in the environment, not argv."""
    cmd = [GRPCURL, "-plaintext", "-max-time", "10", *(extra or [])]
    env = {}
    if token:
        cmd += ["-expand-headers", "-H", "authorization: Bearer ${USER_SERVICE_TEST_TOKEN}"]
        env["USER_SERVICE_TEST_TOKEN"] = token
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd.append(addr)
    if method:
        cmd += method.split()
    return run(cmd, check=check, env=env, timeout=30)


def mint_token(ns: str, workload: str, sub: str, *roles: str) -> str:
    """A token from `user-service token` inside a running pod: it signs with
    the secret the chart mounted (USER_SERVICE__AUTH__JWT_SECRET_FILE)."""
    args = ["-n", ns, "exec", workload, "-c", "user-service", "--", "/user-service", "token", "--sub", sub,
            "--ttl", "15m"]
    for r in roles:
        args += ["--role", r]
    out = kubectl(*args, quiet=True).stdout.strip()
    assert out.count(".") == 2, "user-service token did not print a JWT"
    return out


@contextlib.contextmanager
def namespace(name: str):
    # A namespace of an earlier run may still be terminating.
    kubectl("wait", "--for=delete", f"namespace/{name}", "--timeout=120s", check=False, quiet=True)
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


# Everything a release could leave behind (the list, and the rest
# of what the chart renders).
LEFTOVER_KINDS = "all,cm,secret,pdb,hpa,networkpolicy,serviceaccount,role,rolebinding,job"


def assert_nothing_left(release: str, extra_kinds: str = "", timeout: float = 90) -> None:
    """After `helm uninstall`: only the `helm test` pod may remain (Helm
    never deletes hook resources; NOTES.txt says to delete it with
    kubectl, which this does), and the release's pods finish terminating;
    then nothing labelled with the release, nor its release records."""
    kinds = LEFTOVER_KINDS + ("," + extra_kinds if extra_kinds else "")

    def left():
        names = kubectl("get", kinds, "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name",
                        quiet=True).stdout.split()
        return names + kubectl("get", "secret", "-A", "-l", f"owner=helm,name={release}", "-o", "name",
                               quiet=True).stdout.split()

    tests = kubectl("get", "pods", "-A", "-l", f"app.kubernetes.io/instance={release},app.kubernetes.io/component=test",
                    "-o", "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}", quiet=True).stdout.split()
    for t in tests:
        ns, name = t.split("/")
        kubectl("-n", ns, "delete", "pod", name, "--wait=true")
    try:
        wait_until(f"nothing left of {release}", lambda: not left(), timeout=timeout, interval=1)
    except AssertionError:
        raise AssertionError(f"left after helm uninstall of {release}: {left()}") from None
