"""A real user-service on loopback ports, so that the dashboard and the alert
rules are checked against the metric names it exports rather than against
a list kept by hand."""

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from project import ROOT

STARTUP_SECONDS = 30

# Names of the service's own families in PromQL; a recording rule's name
# (user_service:...:ratio_rate5m) contains one between colons and is not one.
SERVICE_METRIC = re.compile(r"(?<![\w:])((?:grpc_server|process|user_service)_\w+)(?![\w:])")


def target_dir():
    """Cargo's target directory, as `cargo build` would use it."""
    path = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    return path if path.is_absolute() else ROOT / path


def find_or_build_binary():
    """The newest of the debug and release binaries; a debug build when
    there is neither (a fresh checkout that ran no cargo command yet)."""
    built = [p for p in (target_dir() / profile / "user-service" for profile in ("debug", "release")) if p.exists()]
    if built:
        return max(built, key=lambda p: p.stat().st_mtime)
    result = subprocess.run(["cargo", "build", "--locked", "--bin", "user-service"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"cargo build of user-service failed:\n{result.stderr[-4000:]}"
    return target_dir() / "debug" / "user-service"


def postgres_url():
    """The throwaway cluster that pg_virtualenv (scripts/test-deploy.sh) set
    up: the store's pool gauges exist only on PostgreSQL, and the dashboard
    shows them."""
    env = os.environ
    assert env.get("PGHOST") and env.get("PGUSER"), (
        "no PostgreSQL for the service whose /metrics are read (PGHOST/PGUSER unset): "
        "run the tests through scripts/test-deploy.sh, which wraps them in pg_virtualenv")
    user = urllib.parse.quote(env["PGUSER"], safe="")
    password = urllib.parse.quote(env.get("PGPASSWORD", ""), safe="")
    return (f"postgres://{user}:{password}@{env['PGHOST']}:{env.get('PGPORT', '5432')}"
            f"/{env.get('PGDATABASE', 'postgres')}")


class RunningService:
    """One user-service process bound to port 0 on loopback; its JSON log's
    `serving` line tells the ports it got, so no port is guessed."""

    def __init__(self, binary, log_path):
        self.log_path = log_path
        env = {**os.environ, "USER_SERVICE__SHUTDOWN__DRAIN_DELAY": "0s", "USER_SERVICE__SHUTDOWN__TIMEOUT": "1s"}
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [str(binary), "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
                 "--store-url", postgres_url(), "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            self.grpc_addr, self.admin_addr = self._wait_until_serving()
            self._wait_until_ready()
        except BaseException:  # nobody else would stop it
            self.stop()
            raise

    def _wait_until_serving(self):
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                fields = _serving_fields(line)
                if fields:
                    return fields["grpc_addr"], fields["admin_addr"]
            assert self.process.poll() is None, f"user-service exited at startup:\n{self.log_tail()}"
            time.sleep(0.05)
        raise AssertionError(f"user-service did not log `serving` within {STARTUP_SECONDS}s:\n{self.log_tail()}")

    def _wait_until_ready(self):
        """/readyz answers 200 once the store does (migrations done)."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.admin_addr}/readyz", timeout=5):
                    return
            except OSError:  # HTTPError (503) included
                time.sleep(0.05)
        raise AssertionError(f"user-service not ready within {STARTUP_SECONDS}s:\n{self.log_tail()}")

    def log_tail(self, lines=40):
        """The end of the service's log: enough to see why it failed."""
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def call(self, grpcurl, method, data="{}"):
        """One plaintext gRPC call, so that the gRPC families have series."""
        result = subprocess.run([grpcurl, "-plaintext", "-d", data, self.grpc_addr, method],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"grpcurl {method} failed:\n{result.stdout}{result.stderr}"

    def scrape(self):
        with urllib.request.urlopen(f"http://{self.admin_addr}/metrics", timeout=10) as response:
            return response.read().decode()

    def stop(self):
        """SIGTERM, as Kubernetes would (drain delay 0s); kill if it hangs."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _serving_fields(line):
    """The fields of the `serving` log line, or None for any other line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    fields = record.get("fields", record)
    if fields.get("message") == "serving" and "admin_addr" in fields:
        return fields
    return None


def metric_names(exposition):
    """Sample names of a Prometheus text exposition: histograms as their
    _bucket, _sum and _count series, as PromQL sees them."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
