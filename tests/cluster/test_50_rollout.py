"""A rolling upgrade under load, seen from a client pod inside the cluster.

The client is the user-service image itself (its own server idles in the
pod; the calls are `/userctl` processes started with `kubectl exec`), so
every call resolves the Service through cluster DNS and goes through
kube-proxy, as an application's would. While `helm upgrade` replaces the
pod: a steady stream of unary CreateUser calls must all succeed, and an
open WatchUsers must end with a retryable status (UNAVAILABLE) when its
pod drains. The replaced pod's log must show the shutdown sequence
(not ready -> draining -> complete), and the container must exit 0 within
terminationGracePeriodSeconds.
"""

import json
import os
import subprocess
import threading
import time

from kube import (
    assert_nothing_left,
    CHART, FIGURES, IMAGE_VALUES, K8S_BIN, KUBECONFIG, helm, kubectl, mint_token,
    namespace, pods, release_selector, wait_all_ready, wait_until,
)

NS = "it-rollout"
REL = "roll"
NAME = "roll-user-service"


def client_pod(ns: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": ns},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "client", "image": "user-service:dev", "imagePullPolicy": "Never",
                # The image has no shell or sleep: its own server keeps the
                # pod alive (auth off, nothing calls it).
                "args": ["serve"],
                "env": [
                    {"name": "USER_SERVICE__AUTH__ENABLED", "value": "false"},
                    {"name": "USERCTL_ADDR", "value": f"http://{NAME}:50051"},
                    {"name": "USERCTL_PASSWORD", "value": "correct horse battery"},
                    {"name": "USERCTL_TOKEN", "valueFrom": {"secretKeyRef": {"name": "client-token", "key": "token"}}},
                ],
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def exec_client(ns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(K8S_BIN / "kubectl"), "-n", ns, "exec", "client", "--", "/userctl", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, KUBECONFIG=KUBECONFIG))


class PodWatch(threading.Thread):
    """Every state of one pod until it is deleted (kubectl get -w)."""

    def __init__(self, ns: str, pod: str):
        super().__init__(daemon=True)
        self.states: list[dict] = []
        self.proc = subprocess.Popen(
            [str(K8S_BIN / "kubectl"), "-n", ns, "get", "pod", pod, "-w", "-o", "json", "--output-watch-events"],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, KUBECONFIG=KUBECONFIG))

    def run(self):
        dec, buf = json.JSONDecoder(), ""
        for line in self.proc.stdout:
            buf += line
            while buf.strip():
                try:
                    obj, end = dec.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                self.states.append(obj)
                if obj.get("type") == "DELETED":
                    self.proc.terminate()
                    return


def test_rolling_upgrade_under_load():
    with namespace(NS) as ns:
        helm("install", REL, str(CHART), "-n", ns, *IMAGE_VALUES, "--wait", "--timeout", "3m")
        wait_all_ready(ns, REL, 1)
        (old,) = pods(ns, release_selector(REL))
        old_name = old["metadata"]["name"]
        grace = old["spec"]["terminationGracePeriodSeconds"]
        admin = mint_token(ns, f"deploy/{NAME}", "ops", "admin")
        kubectl("-n", ns, "create", "secret", "generic", "client-token", f"--from-literal=token={admin}", quiet=True)
        kubectl("apply", "-f", "-", input=json.dumps(client_pod(ns)))
        kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/client", "--timeout=60s")
        assert exec_client(ns, "create", "--email", "warmup@example.com", "--name", "W").returncode == 0

        # The old pod: its log to the end, and its every status.
        logs = subprocess.Popen([str(K8S_BIN / "kubectl"), "-n", ns, "logs", "-f", old_name],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, KUBECONFIG=KUBECONFIG))
        watch = PodWatch(ns, old_name)
        watch.start()
        # --once: end with the status the draining pod sends (the default
        # follows, and would meet the new pod's fresh memory store instead).
        watcher = subprocess.Popen(
            [str(K8S_BIN / "kubectl"), "-n", ns, "exec", "client", "--", "/userctl", "--timeout", "10m", "watch", "--once"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, KUBECONFIG=KUBECONFIG))

        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load(worker: int):
            i = 0
            while not stop.is_set():
                i += 1
                p = exec_client(ns, "create", "--email", f"w{worker}-{i}@example.com", "--name", "L")
                results.append((time.monotonic(), p.returncode, p.stderr.strip()[-300:]))

        workers = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(2)]
        for w in workers:
            w.start()
        time.sleep(3)
        start = time.monotonic()
        # A pod-template change: the Deployment rolls.
        helm("upgrade", REL, str(CHART), "-n", ns, *IMAGE_VALUES, "--set", "podAnnotations.rollout=second",
             "--wait", "--timeout", "3m")
        wait_until("the old pod gone", lambda: not any(
            p["metadata"]["name"] == old_name for p in pods(ns, release_selector(REL))), timeout=90)
        time.sleep(3)
        stop.set()
        for w in workers:
            w.join(60)
        FIGURES["rollout: helm upgrade -> old pod gone"] = f"{time.monotonic() - start:.1f} s"

        failed = [r for r in results if r[1] != 0]
        FIGURES["rollout: unary calls during the rollout (failed)"] = f"{len(results)} ({len(failed)})"
        assert len(results) >= 20, f"only {len(results)} calls made"
        assert not failed, f"{len(failed)} of {len(results)} calls failed: {failed[:3]}"

        _, werr = watcher.communicate(timeout=60)
        assert watcher.returncode != 0, "the watch did not end with the old pod"
        # userctl prints the status code in lower case: "unavailable: ..."
        assert "unavailable" in werr.lower(), f"watch ended with: {werr[-500:]}"

        log_text, _ = logs.communicate(timeout=60)
        watch.join(60)
        events = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        msgs = [e.get("fields", {}).get("message", e.get("message", "")) for e in events]

        def at(fragment: str) -> int:
            hits = [i for i, m in enumerate(msgs) if fragment in m]
            assert hits, f"'{fragment}' missing from the old pod's log: {msgs[-10:]}"
            return hits[0]

        assert at("shutdown requested") < at("not ready, still serving") < at("draining") < at("shutdown complete")
        # Readiness went NOT_SERVING (Ready False) while the container ran...
        states = [s["object"] for s in watch.states]
        assert any(
            any(c["type"] == "Ready" and c["status"] == "False" for c in s["status"].get("conditions", []))
            and s["status"]["containerStatuses"][0]["state"].get("running")
            and s["metadata"].get("deletionTimestamp")
            for s in states), "the old pod never reported not-ready while draining"
        # ...then it exited 0 within the grace period.
        terminated = [s["status"]["containerStatuses"][0]["state"]["terminated"] for s in states
                      if s["status"].get("containerStatuses") and
                      s["status"]["containerStatuses"][0]["state"].get("terminated")]
        assert terminated, "no terminated state seen for the old pod"
        assert terminated[-1]["exitCode"] == 0, terminated[-1]
        deleted_at = next(s["metadata"]["deletionTimestamp"] for s in states if s["metadata"].get("deletionTimestamp"))
        t0 = time.mktime(time.strptime(deleted_at, "%Y-%m-%dT%H:%M:%SZ"))
        t1 = time.mktime(time.strptime(terminated[-1]["finishedAt"], "%Y-%m-%dT%H:%M:%SZ"))
        FIGURES["rollout: SIGTERM -> exit 0"] = f"{t1 - (t0 - grace):.0f} s (grace {grace} s)"
        # deletionTimestamp is the deadline: now + grace at deletion.
        assert t1 <= t0, "the container outlived terminationGracePeriodSeconds"
        helm("uninstall", REL, "-n", ns, "--wait", "--timeout", "2m")
        assert_nothing_left(REL)
