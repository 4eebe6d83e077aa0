#!/usr/bin/env python3
"""Benchmark harness: user-service with its full observability, side by side
with a bare tonic server, grpc-go and grpcio, all serving user.v1 from the
same seed file on 127.0.0.1.

    python3 bench/bench.py              # full run (make bench): 3 rounds, rewrites the
                                        # generated section of BENCHMARKS.md
    python3 bench/bench.py --smoke      # make bench-smoke: checks, not speeds; report
                                        # into a temporary directory

Servers run on CPU 0, the load generator (h2load; ghz for spot checks) and
this script on CPU 1. Every figure is the median over the rounds, and its
ratio to the bare tonic server of the same run. bench/README.md explains
each figure. Standard library only: the venv under .tools/ is used for the
grpcio peer and for the chart.
"""

import argparse
import atexit
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_BIN = os.path.join(ROOT, ".tools", "bin")
VENV_PY = os.path.join(ROOT, ".tools", "bench-venv", "bin", "python")
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
RELEASE = os.path.join(TARGET, "release")
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = "user/v1/user_service.proto"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# One argon2id PHC string for every seeded user: well-formed (the service
# parses it), but the hash of no password anyone knows.
PHC = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzZWVkc2FsdDAwMA$Oq7nTWzGDMB2r8kLgYhTtBDBwJ8HqRkC1bLUyR5fqWY"

SERVERS = ["chart", "chart-no-otlp", "warn", "bare-tonic", "grpc-go", "python-grpcio"]
OURS = {"chart", "chart-no-otlp", "warn"}
# Ours with authentication on, as the chart deploys it (`warn` is the
# floor: the least the service can be configured to do).
AUTHED = {"chart", "chart-no-otlp"}
# Only signs the harness's own tokens; at least 32 bytes, as required.
BENCH_JWT_SECRET = "bench-only-jwt-secret-0123456789abcdef"
BASELINE = "bare-tonic"

SERVER_CPU, LOAD_CPU = "0", "1"


class BenchError(Exception):
    """A check failed or a step did not finish: the run stops and says why."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Process bookkeeping: every child gets its own process group and is killed
# on exit, on failure and on SIGINT/SIGTERM.

_children = []


def spawn(cmd, **kw):
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(proc)
    return proc


def kill_group(proc, sig=signal.SIGKILL):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_all():
    for proc in _children:
        if proc.poll() is None:
            kill_group(proc)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run(cmd, timeout, check=True, **kw):
    """Runs a command to completion within timeout seconds, output captured."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{cmd[0]} did not finish within {timeout}s") from e
    if check and out.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out


def pinned(cpu, cmd):
    return ["taskset", "-c", cpu, *cmd] if PIN else cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# /proc readings.

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ChartServer:
    """A release server started by start_chart_server: its ports and the id
    of the user it created."""

    def __init__(self, proc, addr, admin, user_id):
        self.proc, self.addr, self.admin, self.user_id = proc, addr, admin, user_id


def start_chart_server(extra_env, tag):
    """The release server with the chart's logging (JSON at info, no drain
    delay) and EXTRA_ENV, on free loopback ports, pinned to SERVER_CPU,
    once it has answered a CreateUser (of a user named TAG). Its JSON line
    per call goes to /dev/null: at 100k+ calls/s, or for ten minutes of a
    soak, those lines are gigabytes, and formatting them is what is
    measured, not storing them."""
    addr, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
        "USER_SERVICE__GRPC__ADDR": addr, "USER_SERVICE__ADMIN__ADDR": admin,
        "USER_SERVICE__LOG__FORMAT": "json", "USER_SERVICE__LOG__LEVEL": "info",
        "USER_SERVICE__SHUTDOWN__DRAIN_DELAY": "0s",
        **extra_env,
    }
    proc = spawn(pinned(SERVER_CPU, [os.path.join(RELEASE, "user-service"), "serve"]),
                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            out = run([os.path.join(RELEASE, "bench-client"), "create", "--addr", addr,
                       "--email", f"{tag.lower()}-{time.monotonic_ns()}@example.com", "--name", tag], timeout=30)
            return ChartServer(proc, addr, admin, json.loads(out.stdout)["id"])
        except BenchError:
            time.sleep(0.5)
    kill_group(proc)
    raise BenchError(f"{tag}: the server never answered CreateUser")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name (which may hold spaces) start at 3.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def reset_peak_rss(pid):
    # "5" resets VmHWM to the current RSS (proc(5), clear_refs).
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


# --------------------------------------------------------------------------
# Seed data and request bodies.


def uuid7(ms, rand):
    """A canonical UUIDv7 for a millisecond timestamp and 74 random bits."""
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def write_seed(path, count):
    """JSON Lines users with ids ascending (one millisecond apart)."""
    base = 1_700_000_000_000
    rng = random.Random()  # ids need to be unique, not unpredictable
    ids = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            uid = uuid7(base + i, rng.getrandbits(74))
            ids.append(uid)
            # Every value is plain ASCII without quotes or backslashes, so an
            # f-string is valid JSON and far faster than json.dumps for 1M lines.
            f.write(f'{{"id":"{uid}","email":"user{i}@example.com","name":"User {i}","password_hash":"{PHC}"}}\n')
    return ids


def grpc_frame_get_user(user_id):
    """A gRPC length-prefixed frame holding GetUserRequest{user_id}."""
    raw = user_id.encode()
    msg = b"\x0a" + bytes([len(raw)]) + raw  # field 1, wire type 2
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


# --------------------------------------------------------------------------
# Metrics scraping (our servers).

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def handled_by_code(text, method):
    """grpc_server_handled_total for one method, by grpc_code."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != "grpc_server_handled_total":
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if labels.get("grpc_method") == method and labels.get("grpc_service") == "user.v1.UserService":
            out[labels.get("grpc_code", "")] = out.get(labels.get("grpc_code", ""), 0) + float(m.group(3))
    return out


class Scraper:
    """GETs /metrics every second, as a Prometheus would, for the server's lifetime."""

    def __init__(self, admin):
        self.url = f"http://{admin}/metrics"
        self.stop = threading.Event()
        self.scrapes = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def get(self):
        with urllib.request.urlopen(self.url, timeout=5) as r:
            return r.read().decode()

    def _loop(self):
        while not self.stop.wait(1.0):
            try:
                self.get()
                self.scrapes += 1
            except OSError:
                self.errors += 1

    def close(self):
        self.stop.set()
        self.thread.join(timeout=6)


# --------------------------------------------------------------------------
# Servers.


class Server:
    def __init__(self, name, ctx, seed, seeded_ids):
        self.name = name
        self.ctx = ctx
        self.addr = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}" if name in OURS else None
        self.seed = seed
        self.user_id = seeded_ids[len(seeded_ids) // 2] if seeded_ids else None
        self.proc = None
        self.pid = None
        self.startup_ms = None
        self.scraper = None
        # The admin token every call carries, when authentication is on.
        self.token = None
        self.log_path = os.path.join(ctx.work, f"{name}-{time.monotonic_ns()}.log")

    def command(self):
        if self.name in OURS:
            return [os.path.join(RELEASE, "user-service"), "serve"]
        if self.name == "bare-tonic":
            return [os.path.join(RELEASE, "bare-tonic"), "--addr", self.addr, "--seed", self.seed]
        if self.name == "grpc-go":
            return [os.path.join(TOOLS_BIN, "user-peer-go"), "-addr", self.addr, "-seed", self.seed]
        if self.name == "python-grpcio":
            return [VENV_PY, os.path.join(ROOT, "bench", "peers", "python", "server.py"), "--addr", self.addr, "--seed", self.seed]
        raise BenchError(f"unknown server {self.name}")

    def env(self):
        # A clean environment, so nothing from the caller's shell (RUST_LOG,
        # OTEL_*) changes what is measured.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
        if self.name not in OURS:
            return env
        # As helm/user-service/templates/deployment.yaml sets them with the
        # default values.yaml (config.*, otel.*), on loopback ports.
        env.update(
            {
                "USER_SERVICE__GRPC__ADDR": self.addr,
                "USER_SERVICE__ADMIN__ADDR": self.admin,
                "USER_SERVICE__LOG__LEVEL": "warn" if self.name == "warn" else "info",
                "USER_SERVICE__LOG__FORMAT": "json",
                # The chart's 5s drain delay only makes room for endpoint
                # propagation after SIGTERM; nothing routes here, so waiting
                # would only lengthen every round. The served path is unchanged.
                "USER_SERVICE__SHUTDOWN__DRAIN_DELAY": "0s",
                "USER_SERVICE__SHUTDOWN__TIMEOUT": "20s",
                "USER_SERVICE__GRPC__MAX_CONNECTION_AGE": "5m",
                # Bare tonic and grpc-go take any number of streams per
                # connection; the chart's 64 would turn the 50 x 1000
                # "peak RSS" load away at the door (its effect under load
                # is measured in RELIABILITY.md, "Overload"). Explicit, so
                # the figure does not move with the binary's default.
                "USER_SERVICE__GRPC__MAX_CONCURRENT_STREAMS": "1024",
                "USER_SERVICE__LIMITS__BULK_MAX_ITEMS": "1000",
                "OTEL_SERVICE_NAME": "user-service",
                "OTEL_TRACES_SAMPLER": "parentbased_always_on",
                "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=bench,service.version=bench",
            }
        )
        if self.name in AUTHED:
            # The chart turns authentication on with an HS256 secret.
            env["USER_SERVICE__AUTH__ENABLED"] = "true"
            env["USER_SERVICE__AUTH__JWT_SECRET"] = BENCH_JWT_SECRET
        if self.name == "chart":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{self.ctx.sink_addr}"
        if self.ctx.seed_supported and self.seed:
            env["USER_SERVICE__STORE__SEED_FILE"] = self.seed
        return env

    def start(self, timeout_s):
        if self.name in OURS:
            check = ["--check", "health", "--service", "user.v1.UserService"]
        else:
            check = ["--check", "get", "--user-id", self.user_id]
        cmd = [
            os.path.join(RELEASE, "bench-client"), "startup", "--addr", self.addr, *check,
            "--timeout-ms", str(int(timeout_s * 1000)), "--log", self.log_path,
            "--", *pinned(SERVER_CPU, self.command()),
        ]
        self.proc = spawn(cmd, stdout=subprocess.PIPE, text=True, env=self.env(), cwd=ROOT)
        lines = read_lines(self.proc, 2, timeout_s + 5)
        if len(lines) < 2:
            tail = read_tail(self.log_path)
            self.stop()
            raise BenchError(f"{self.name} did not become ready within {timeout_s}s; its log ends:\n{tail}")
        self.pid = json.loads(lines[0])["pid"]
        self.startup_ms = json.loads(lines[1])["startup_ms"]
        if self.name in OURS:
            if not self.ctx.seed_supported:
                self.user_id = self._create_user()
            self.scraper = Scraper(self.admin)
        if self.name in AUTHED:
            # Minted by the binary itself, as an operator would; admin, so
            # it reads any user and may call ListUsers.
            out = run([os.path.join(RELEASE, "user-service"), "token", "--sub", "bench", "--role", "admin",
                       "--ttl", "4h"], timeout=30, env=self.env())
            self.token = out.stdout.strip()
        return self

    def _create_user(self):
        out = run(
            [os.path.join(RELEASE, "bench-client"), "create", "--addr", self.addr,
             "--email", f"bench-{time.monotonic_ns()}@example.com", "--name", "Bench"],
            timeout=30,
        )
        return json.loads(out.stdout)["id"]

    def metrics(self):
        """/metrics once the call counters stop moving (calls h2load gave up
        on may still finish), so each delta belongs to one load phase."""
        if not self.scraper:
            return None
        text = self.scraper.get()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.1)
            again = self.scraper.get()
            if calls_served(again) == calls_served(text):
                return again
            text = again
        return text

    def stop(self):
        if self.scraper:
            self.scraper.close()
            self.scraper = None
        if self.proc is None:
            return
        if self.pid and self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within 30s after SIGTERM: killed")
            kill_group(self.proc)
            self.proc.wait(timeout=10)
        self.proc = None


def read_lines(proc, count, timeout_s):
    """Reads up to count lines of proc's stdout, giving up after timeout_s."""
    lines = []

    def reader():
        for _ in range(count):
            line = proc.stdout.readline()
            if not line:
                return
            lines.append(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    return list(lines)


def read_tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# Load.


_H2_TIME = re.compile(r"finished in ([\d.]+)(ms|s|us),")
_H2_REQS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")


def h2load(server, body, clients, streams, duration, rps=None, log_file=None, warmup=None):
    """h2load against GetUser; returns the parsed summary."""
    cmd = [
        "h2load", "-c", str(clients), "-m", str(streams), "-D", f"{int(duration * 1000)}ms",
        "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers",
    ]
    if rps:
        cmd += ["--rps", f"{rps:.3f}"]
    if log_file:
        cmd += ["--log-file", log_file]
    if warmup:
        cmd += ["--warm-up-time", f"{int(warmup * 1000)}ms"]
    if server.token:
        cmd += ["-H", f"authorization: Bearer {server.token}"]
    cmd.append(f"http://{server.addr}/user.v1.UserService/GetUser")
    out = run(pinned(LOAD_CPU, cmd), timeout=duration + (warmup or 0) + 60)
    text = out.stdout
    t = _H2_TIME.search(text)
    r = _H2_REQS.search(text)
    if not t or not r:
        raise BenchError(f"unexpected h2load output:\n{text[-2000:]}")
    secs = float(t.group(1)) / {"s": 1, "ms": 1e3, "us": 1e6}[t.group(2)]
    total, started, done, ok, failed, errored, tmo = map(int, r.groups())
    return {"seconds": secs, "started": started, "done": done, "succeeded": ok, "failed": failed,
            "errored": errored, "timeout": tmo, "rps": ok / secs if secs else 0.0}


def ghz_spot_check(server, calls):
    """A handful of GetUser calls through a real gRPC client: all must be OK."""
    out = run(
        pinned(LOAD_CPU, [
            os.path.join(TOOLS_BIN, "ghz"), "--insecure", "--proto", os.path.join(PROTO_DIR, PROTO),
            "--import-paths", PROTO_DIR, "--call", "user.v1.UserService/GetUser",
            "-d", json.dumps({"user_id": server.user_id}), "-n", str(calls), "-c", "2",
            "--timeout", "5s", "-O", "json",
            *(["--metadata", json.dumps({"authorization": f"Bearer {server.token}"})] if server.token else []),
            server.addr,
        ]),
        timeout=60,
    )
    report = json.loads(out.stdout)
    codes = report.get("statusCodeDistribution") or {}
    if codes != {"OK": calls}:
        raise BenchError(f"{server.name}: GetUser spot check expected {calls} OK, got {codes}")
    return codes


def recovered(server, calls, timeout_s):
    """ghz_spot_check, retried until it passes or timeout_s has passed."""
    started = time.monotonic()
    while True:
        try:
            return ghz_spot_check(server, calls), round(time.monotonic() - started, 1)
        except BenchError:
            if time.monotonic() - started > timeout_s:
                raise
            time.sleep(1)


def list_users(server, expect, timeout_s):
    token = ["--token", server.token] if server.token else []
    out = run(
        pinned(LOAD_CPU, [os.path.join(RELEASE, "bench-client"), "list", "--addr", server.addr, "--timeout-s", str(timeout_s), *token]),
        timeout=timeout_s + 10, check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"{server.name}: ListUsers failed: {out.stderr.strip()}{out.stdout.strip()}")
    res = json.loads(out.stdout)
    if res["code"] != "OK" or res["users"] != expect:
        raise BenchError(f"{server.name}: ListUsers returned {res['users']} users ({res['code']}), expected {expect}")
    return res


def percentiles(log_file):
    lat = []
    bad = 0
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if parts[1] == "200":
                lat.append(int(parts[2]))
            else:
                bad += 1
    if not lat:
        raise BenchError("open-loop run completed no request")
    lat.sort()

    def pct(p):
        # Nearest rank: the smallest sample with at least p of all at or below it.
        return lat[min(len(lat) - 1, max(0, math.ceil(p * len(lat)) - 1))] / 1000.0

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "samples": len(lat), "non_200": bad}


# --------------------------------------------------------------------------
# One server, one round.


def verify_counts(server, before, after, load):
    """Our servers: the OK delta of grpc_server_handled_total must cover every
    call h2load saw succeed (HTTP 200 alone does not mean grpc-status 0)."""
    if before is None:
        return None
    b, a = handled_by_code(before, "GetUser"), handled_by_code(after, "GetUser")
    delta = {code: a.get(code, 0) - b.get(code, 0) for code in set(a) | set(b)}
    ok = delta.pop("OK", 0)
    not_ok = sum(v for v in delta.values() if v)
    in_flight_at_end = load["started"] - load["succeeded"]
    if ok < load["succeeded"] or ok > load["started"] or not_ok > in_flight_at_end:
        raise BenchError(
            f"{server.name}: h2load saw {load['succeeded']} succeed ({load['started']} started) "
            f"but the server counted OK={ok:.0f}, other={ {k: v for k, v in delta.items() if v} }"
        )
    return {"ok_delta": ok, "other_delta": not_ok}


def calls_served(text):
    """Every call of user.v1.UserService the server has finished, any code."""
    total = 0.0
    for line in (text or "").splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == "grpc_server_handled_total" and 'grpc_service="user.v1.UserService"' in m.group(2):
            total += float(m.group(3))
    return total


def measure(name, ctx, rate, calibrate=False):
    """One server start to stop. calibrate: only the closed-loop req/s."""
    srv = Server(name, ctx, ctx.seed_small, ctx.ids_small)
    res = {"server": name}
    sink_before = ctx.sink_spans()
    try:
        srv.start(timeout_s=60)
        res["startup_ms"] = srv.startup_ms
        time.sleep(ctx.settle)
        res["idle_rss_kib"] = status_kib(srv.pid, "VmRSS")
        res["spot_check"] = ghz_spot_check(srv, ctx.spot_calls)
        body = os.path.join(ctx.work, f"get-{name}.bin")
        with open(body, "wb") as f:
            f.write(grpc_frame_get_user(srv.user_id))

        h2load(srv, body, 8, 32, ctx.warmup)  # warm-up, discarded

        before = srv.metrics()
        cpu0 = cpu_seconds(srv.pid)
        closed = h2load(srv, body, 8, 32, ctx.duration)
        cpu1 = cpu_seconds(srv.pid)
        after = srv.metrics()
        res["closed"] = closed
        res["verified"] = verify_counts(srv, before, after, closed)
        if closed["succeeded"] == 0:
            raise BenchError(f"{name}: no GetUser succeeded under load")
        res["rps"] = closed["rps"]
        res["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / closed["succeeded"]
        if calibrate:
            return res

        if rate:
            lf = os.path.join(ctx.work, f"open-{name}.tsv")
            before = srv.metrics()
            opened = h2load(srv, body, 8, 32, ctx.duration, rps=rate / 8, log_file=lf)
            after = srv.metrics()
            res["open"] = {**opened, **percentiles(lf), "target_rps": rate}
            res["open_verified"] = verify_counts(srv, before, after, opened)
            os.unlink(lf)

        reset_peak_rss(srv.pid)
        before = srv.metrics()
        burst = h2load(srv, body, ctx.peak_clients, ctx.peak_streams, ctx.peak_duration)
        after = srv.metrics()
        res["peak"] = burst
        res["peak_verified"] = verify_counts(srv, before, after, burst)
        res["peak_rss_kib"] = status_kib(srv.pid, "VmHWM")

        # A server may still be working off the burst's abandoned calls
        # (grpcio queues them in its thread pool): give it time to recover,
        # then every call must succeed.
        res["spot_check_after"], res["recovery_s"] = recovered(srv, ctx.spot_calls, 60)
        if ctx.smoke:
            # The smoke run checks ListUsers on the small seed instead of a
            # separate million-user phase.
            expect = len(ctx.ids_small) if (name not in OURS or ctx.seed_supported) else 1
            res["list_small"] = list_users(srv, expect, 60)
        res["calls_served"] = calls_served(srv.metrics())
    finally:
        srv.stop()
    # Only `chart` has an exporter; the others must deliver nothing.
    res["spans"] = wait_spans(ctx, sink_before) if name == "chart" else ctx.sink_spans() - sink_before
    return res


def wait_spans(ctx, before):
    """Spans the sink received from this server (the exporter flushes on stop)."""
    deadline = time.monotonic() + 10
    got = ctx.sink_spans() - before
    while got <= 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        got = ctx.sink_spans() - before
    return got


def measure_list(name, ctx):
    srv = Server(name, ctx, ctx.seed_big, ctx.ids_big)
    res = {"server": name}
    try:
        srv.start(timeout_s=600)
        res["load_startup_ms"] = srv.startup_ms
        time.sleep(ctx.settle)
        base = status_kib(srv.pid, "VmRSS")
        reset_peak_rss(srv.pid)
        got = list_users(srv, len(ctx.ids_big), 600)
        res["list_users"] = got["users"]
        res["list_users_per_s"] = got["users"] / got["seconds"] if got["seconds"] else 0.0
        res["list_rss_base_kib"] = base
        res["list_rss_growth_kib"] = max(0, status_kib(srv.pid, "VmHWM") - base)
    finally:
        srv.stop()
    return res


# --------------------------------------------------------------------------
# Report.

FIGURES = [
    # key, heading, format, higher is better
    ("rps", "GetUser req/s", "{:.0f}", True),
    ("p50_ms", "p50 ms", "{:.2f}", False),
    ("p99_ms", "p99 ms", "{:.2f}", False),
    ("p999_ms", "p99.9 ms", "{:.2f}", False),
    ("cpu_us_per_req", "CPU µs/req", "{:.1f}", False),
    ("idle_rss_mib", "idle RSS MiB", "{:.1f}", False),
    ("peak_rss_mib", "peak RSS MiB", "{:.1f}", False),
    ("startup_ms", "start ms", "{:.1f}", False),
    ("list_users_per_s", "ListUsers users/s", "{:.0f}", True),
    ("list_rss_growth_mib", "ListUsers RSS +MiB", "{:.1f}", False),
]


def flatten(r):
    out = {}
    for key in ("rps", "cpu_us_per_req", "startup_ms", "list_users_per_s"):
        if key in r:
            out[key] = r[key]
    if "open" in r:
        for key in ("p50_ms", "p99_ms", "p999_ms"):
            out[key] = r["open"][key]
    for src, dst in (("idle_rss_kib", "idle_rss_mib"), ("peak_rss_kib", "peak_rss_mib"), ("list_rss_growth_kib", "list_rss_growth_mib")):
        if src in r:
            out[dst] = r[src] / 1024
    return out


def summarize(rounds, lists, servers):
    summary = {}
    for name in servers:
        samples = {}
        for r in [x for rnd in rounds for x in rnd if x["server"] == name] + [x for rnd in lists for x in rnd if x["server"] == name]:
            for k, v in flatten(r).items():
                samples.setdefault(k, []).append(v)
        summary[name] = {k: statistics.median(v) for k, v in samples.items()}
    base = summary.get(BASELINE, {})
    ratios = {
        name: {k: (v / base[k]) if base.get(k) else None for k, v in figs.items()}
        for name, figs in summary.items()
    }
    return summary, ratios


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = status_meminfo()
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "mem_gib": mem}


def status_meminfo():
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None


def git_sha():
    out = run(["git", "rev-parse", "HEAD"], timeout=10, check=False, cwd=ROOT)
    sha = out.stdout.strip() or "unknown"
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], timeout=10, check=False, cwd=ROOT).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def markdown(result):
    m, meta = result["machine"], result["meta"]
    lines = [
        BEGIN,
        "<!-- Generated by bench/bench.py; edits here are overwritten. -->",
        "",
        f"### Latest run: {meta['date']}",
        "",
        f"- Command: `{meta['command']}`",
        f"- Git: `{meta['git']}`",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, kernel {m['kernel']}",
        f"- Rounds: {meta['rounds']}, servers interleaved each round, medians; GetUser load {meta['duration']:g} s per "
        f"figure after {meta['warmup']:g} s warm-up; servers pinned to CPU {SERVER_CPU}, load to CPU {LOAD_CPU}"
        + ("" if meta["pinned"] else " (not pinned: fewer than 2 CPUs)"),
        f"- Open-loop latency at {result['rate']:.0f} req/s (50 % of bare tonic's closed-loop saturation)",
        f"- Peak RSS under {meta['peak_clients']} connections × {meta['peak_streams']} streams (ours with "
        f"`grpc.max_concurrent_streams` 1024: bare tonic and grpc-go take any number per connection); "
        f"ListUsers over {meta['list_users']} users",
        "- `chart` and `chart-no-otlp` run with authentication on, as the chart deploys the service: every call "
        "carries an admin JWT (HS256, minted by `user-service token`); `warn` runs without",
    ]
    if not meta["seed_supported"]:
        lines.append("- **Our servers ran unseeded** (this build has no `store.seed_file`): GetUser read one user "
                     "created at start, and their ListUsers figures are left out")
    if meta["smoke"]:
        lines.append("- **Smoke run**: durations far too short for meaningful numbers")
    lines += ["", "Absolute figures, and in brackets the ratio to bare tonic from the same run:", ""]
    present = [f for f in FIGURES if any(f[0] in result["summary"][s] for s in result["servers"])]
    lines.append("| server | " + " | ".join(h for _, h, _, _ in present) + " |")
    lines.append("| --- |" + " ---: |" * len(present))
    for name in result["servers"]:
        cells = []
        for key, _, fmt, _ in present:
            v = result["summary"][name].get(key)
            r = result["ratios"][name].get(key)
            if v is None:
                cells.append("—")
            elif name == BASELINE or r is None:
                cells.append(fmt.format(v))
            else:
                cells.append(f"{fmt.format(v)} ({r:.2f}×)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    spans = result.get("spans_per_call")
    if spans is not None:
        lines += ["", f"`chart` delivered {spans:.2f} spans per call served to the OTLP sink (median over rounds). "
                  "Each call creates a SERVER span plus its store spans; fewer arriving means the batch "
                  "exporter's queue dropped some under load (the service counts them: "
                  "`user_service_spans_ended_total` minus `user_service_spans_exported_total`, alert "
                  "`UserServiceSpansLost`)."]
    lines += ["", "![req/s and p99 per server](bench/results/chart.png)", "", END]
    return "\n".join(lines) + "\n"


def write_report(result, out_dir, benchmarks_md):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    run([VENV_PY, os.path.join(ROOT, "bench", "chart.py"), os.path.join(out_dir, "latest.json"), os.path.join(out_dir, "chart.png")], timeout=120)
    section = markdown(result)
    with open(os.path.join(ROOT, "BENCHMARKS.md"), encoding="utf-8") as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Harness results\n\n" + section
    with open(benchmarks_md, "w", encoding="utf-8") as f:
        f.write(text)


# --------------------------------------------------------------------------


class Ctx:
    pass


def seed_supported():
    """Whether this build knows store.seed_file (unknown keys stop startup)."""
    env = {"PATH": os.environ.get("PATH", ""), "USER_SERVICE__STORE__SEED_FILE": "/nonexistent-bench-probe"}
    out = run([os.path.join(RELEASE, "user-service"), "--print-config"], timeout=30, check=False, env=env)
    return out.returncode == 0 and "seed_file" in out.stdout


def build():
    run([os.path.join(ROOT, "bench", "install-deps.sh")], timeout=3600, cwd=ROOT)
    run(["cargo", "build", "--locked", "--release", "--bin", "user-service"], timeout=3600, cwd=ROOT)
    run(["cargo", "build", "--locked", "--release", "-p", "bench-bare"], timeout=3600, cwd=ROOT)


def main():
    global PIN
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="check every server and the report, not speeds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured load")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded load before each server's figures")
    p.add_argument("--peak-duration", type=float, default=5.0)
    p.add_argument("--seed-users", type=int, default=1000)
    p.add_argument("--list-users", type=int, default=1_000_000, help="users in the ListUsers phase (0: skip it)")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    p.add_argument("--out-dir", help="results directory (default bench/results; smoke: a temporary directory)")
    p.add_argument("--no-build", action="store_true", help="use the binaries and tools already built")
    args = p.parse_args()

    signal.signal(signal.SIGTERM, _on_signal)
    PIN = (os.cpu_count() or 1) >= 2
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown or BASELINE not in servers:
        p.error(f"unknown servers {unknown}" if unknown else f"{BASELINE} is the baseline and must run")
    if args.smoke:
        args.rounds, args.duration, args.warmup, args.peak_duration = 1, 1.0, 0.5, 1.0
        args.seed_users, args.list_users = min(args.seed_users, 1000), 0
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds and --duration must be positive")
    if PIN:
        # This script shares CPU 1 with the load generator; CPU 0 is the server's.
        os.sched_setaffinity(0, {int(LOAD_CPU)})

    if not args.no_build:
        log("installing tools and building (release)")
        build()
    os.environ["PATH"] = TOOLS_BIN + os.pathsep + os.environ.get("PATH", "")

    work = tempfile.mkdtemp(prefix="user-service-bench-")
    out_dir = args.out_dir or (tempfile.mkdtemp(prefix="user-service-bench-report-") if args.smoke else os.path.join(ROOT, "bench", "results"))
    benchmarks_md = os.path.join(out_dir, "BENCHMARKS.md") if args.smoke else os.path.join(ROOT, "BENCHMARKS.md")
    ctx = Ctx()
    ctx.work, ctx.smoke = work, args.smoke
    ctx.duration, ctx.warmup, ctx.peak_duration = args.duration, args.warmup, args.peak_duration
    ctx.peak_clients, ctx.peak_streams = (4, 100) if args.smoke else (50, 1000)
    ctx.spot_calls = 10
    ctx.settle = 0.5 if args.smoke else 2.0
    ctx.seed_supported = seed_supported() if OURS & set(servers) else True
    if not ctx.seed_supported:
        log("WARNING: this user-service has no store.seed_file: our servers run unseeded (one created user)")
    ctx.seed_small = os.path.join(work, "seed-small.jsonl")
    ctx.ids_small = write_seed(ctx.seed_small, args.seed_users)

    try:
        ctx.sink_addr = f"127.0.0.1:{free_port()}"
        count_file = os.path.join(work, "spans.json")
        spawn(pinned(LOAD_CPU, [os.path.join(RELEASE, "otlp-sink"), "--addr", ctx.sink_addr, "--count-file", count_file]),
              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "otlp-sink.log"), "w"))

        def sink_spans():
            try:
                with open(count_file) as f:
                    return json.load(f)["spans"]
            except (OSError, ValueError, KeyError):
                return 0

        ctx.sink_spans = sink_spans
        deadline = time.monotonic() + 10
        while not os.path.exists(count_file):
            if time.monotonic() > deadline:
                raise BenchError("otlp-sink did not start")
            time.sleep(0.05)

        log(f"calibrating: {BASELINE} saturation")
        calib = measure(BASELINE, ctx, None, calibrate=True)
        rate = calib["rps"] * 0.5
        log(f"{BASELINE}: {calib['rps']:.0f} req/s; open-loop rate {rate:.0f} req/s")

        rounds, lists = [], []
        for rnd in range(args.rounds):
            order = servers[rnd % len(servers):] + servers[: rnd % len(servers)]
            results = []
            for name in order:
                log(f"round {rnd + 1}/{args.rounds}: {name}")
                r = measure(name, ctx, rate)
                log(f"  {name}: {r['rps']:.0f} req/s, p99 {r['open']['p99_ms']:.2f} ms, start {r['startup_ms']:.1f} ms"
                    + f", {r['spans']} spans")
                results.append(r)
            rounds.append(results)
        if args.list_users:
            ctx.seed_big = os.path.join(work, "seed-big.jsonl")
            log(f"writing a {args.list_users}-user seed file")
            ctx.ids_big = write_seed(ctx.seed_big, args.list_users)
            # Unseeded, our servers would stream one user: no figure beats a
            # meaningless one.
            list_servers = [n for n in servers if ctx.seed_supported or n not in OURS]
            for rnd in range(args.rounds):
                results = []
                for name in list_servers:
                    log(f"ListUsers round {rnd + 1}/{args.rounds}: {name}")
                    r = measure_list(name, ctx)
                    log(f"  {name}: {r['list_users_per_s']:.0f} users/s, +{r['list_rss_growth_kib'] / 1024:.1f} MiB")
                    results.append(r)
                lists.append(results)

        if args.smoke:
            smoke_checks(servers, rounds, ctx)

        summary, ratios = summarize(rounds, lists, servers)
        spans = [r["spans"] / r["calls_served"] for rnd in rounds for r in rnd if r["server"] == "chart" and r.get("calls_served")]
        result = {
            "meta": {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": os.environ.get("BENCH_COMMAND") or " ".join(["python3", "bench/bench.py", *sys.argv[1:]]),
                "git": git_sha(), "rounds": args.rounds, "duration": args.duration, "warmup": args.warmup,
                "peak_clients": ctx.peak_clients, "peak_streams": ctx.peak_streams, "list_users": args.list_users or len(ctx.ids_small),
                "seed_users": args.seed_users, "seed_supported": ctx.seed_supported, "smoke": args.smoke, "pinned": PIN,
            },
            "machine": machine(),
            "rate": rate,
            "calibration": calib,
            "servers": servers,
            "summary": summary,
            "ratios": ratios,
            "spans_per_call": statistics.median(spans) if spans else None,
            "rounds": rounds,
            "list_rounds": lists,
        }
        write_report(result, out_dir, benchmarks_md)
        if args.smoke:
            check_report(out_dir, benchmarks_md, servers)
            log(f"smoke passed: report in {out_dir}")
        else:
            log(f"report: {benchmarks_md}, {out_dir}/latest.json, {out_dir}/chart.png")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        _kill_all()
        big = getattr(ctx, "seed_big", None)
        if big and os.path.exists(big):
            os.unlink(big)  # hundreds of MB; the logs are what a failure needs
        if os.path.isdir(work):
            log(f"server logs and seed files kept in {work}")


def smoke_checks(servers, rounds, ctx):
    for name in servers:
        r = next(x for x in rounds[0] if x["server"] == name)
        if not (r.get("startup_ms") and r["startup_ms"] > 0):
            raise BenchError(f"smoke: {name} has no startup time")
        if r["spot_check"] != {"OK": ctx.spot_calls} or r["spot_check_after"] != {"OK": ctx.spot_calls}:
            raise BenchError(f"smoke: {name} GetUser spot checks failed")
        if "list_small" not in r:
            raise BenchError(f"smoke: {name} did not answer ListUsers")
    for r in rounds[0]:
        if r["server"] == "chart" and r["spans"] <= 0:
            raise BenchError("smoke: the OTLP sink received no span from the chart server")
        if r["server"] != "chart" and r["spans"] != 0:
            raise BenchError(f"smoke: {r['server']} has no exporter, yet {r['spans']} spans arrived")


def check_report(out_dir, benchmarks_md, servers):
    with open(os.path.join(out_dir, "latest.json")) as f:
        data = json.load(f)
    for name in servers:
        if not data["summary"].get(name, {}).get("rps"):
            raise BenchError(f"smoke: the report has no req/s for {name}")
    with open(benchmarks_md, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text or any(f"| {n} |" not in text for n in servers):
        raise BenchError("smoke: the generated BENCHMARKS.md section is incomplete")
    if os.path.getsize(os.path.join(out_dir, "chart.png")) < 1000:
        raise BenchError("smoke: chart.png is missing or empty")


PIN = True

if __name__ == "__main__":
    signal.signal(signal.SIGINT, _on_signal)
    try:
        main()
    except BenchError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
