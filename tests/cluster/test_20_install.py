"""The chart with its defaults on a real node: install, probes, helm test,
calls through the Service, upgrade, rollback, uninstall.

Only the image is overridden (nothing can be pulled here). The defaults
turn authentication on with a Secret the chart generates; tokens are
minted with `user-service token` inside a pod, which holds that Secret.
"""

import json
import time
import urllib.request

import pytest

from kube import (
    CHART, FIGURES, IMAGE_VALUES, PortForward, assert_nothing_left, grpcurl, helm, kubectl_json, mint_token,
    namespace, pods, ready, release_selector, wait_all_ready,
)

NS = "it-install"
REL = "users"
NAME = "users-user-service"


@pytest.fixture(scope="module")
def ns():
    with namespace(NS) as n:
        yield n


def test_install_defaults_ready_and_helm_test(ns):
    start = time.monotonic()
    helm("install", REL, str(CHART), "-n", ns, *IMAGE_VALUES, "--wait", "--timeout", "3m")
    took = wait_all_ready(ns, REL, 1, timeout=10) + (time.monotonic() - start)
    FIGURES["install -> all pods Ready (defaults, 1 pod)"] = f"{time.monotonic() - start:.1f} s"
    del took
    (pod,) = pods(ns, release_selector(REL))
    c = pod["spec"]["containers"][0]
    # The kubelet's native gRPC probes, not exec or HTTP.
    assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "user.v1.UserService"}
    assert c["livenessProbe"]["grpc"]["port"] == 50051
    assert c["startupProbe"]["grpc"]["port"] == 50051
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert ready(pod)
    # ...and they ran: no probe failure events for the pod.
    events = kubectl_json("-n", ns, "get", "events", "--field-selector",
                          f"involvedObject.name={pod['metadata']['name']}")["items"]
    assert not [e for e in events if e["reason"] == "Unhealthy"], "probe failures on a healthy pod"
    out = helm("test", REL, "-n", ns, "--logs", "--timeout", "2m").stdout
    assert "status: SERVING" in out, out


def test_grpc_through_the_service(ns):
    with PortForward(ns, f"svc/{NAME}", 50051, 8080) as pf:
        addr = pf.addr(50051)
        listed = grpcurl(addr, "list").stdout.split()
        assert "user.v1.UserService" in listed and "grpc.health.v1.Health" in listed
        # Sign-up is public; reading needs the user's own token.
        created = json.loads(grpcurl(addr, "user.v1.UserService/CreateUser", {
            "email": "ada@example.com", "name": "Ada", "password": "correct horse battery"}).stdout)
        uid = created["id"]
        denied = grpcurl(addr, "user.v1.UserService/GetUser", {"user_id": uid}, check=False)
        assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
        token = mint_token(ns, f"deploy/{NAME}", uid)
        got = json.loads(grpcurl(addr, "user.v1.UserService/GetUser", {"user_id": uid}, token=token).stdout)
        assert got["email"] == "ada@example.com"
        admin = mint_token(ns, f"deploy/{NAME}", "ops", "admin")
        listed = grpcurl(addr, "user.v1.UserService/ListUsers", {"page_size": 10}, token=admin).stdout
        assert uid in listed
        forbidden = grpcurl(addr, "user.v1.UserService/ListUsers", {"page_size": 10}, token=token, check=False)
        assert forbidden.returncode != 0 and "PermissionDenied" in forbidden.stderr
        admin_url = f"http://{pf.addr(8080)}"
        with urllib.request.urlopen(admin_url + "/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'grpc_server_handled_total{' in metrics and 'grpc_method="CreateUser"' in metrics


def test_upgrade_rollback_uninstall_leaves_nothing(ns):
    helm("upgrade", REL, str(CHART), "-n", ns, *IMAGE_VALUES, "--set", "config.logLevel=debug",
         "--wait", "--timeout", "3m")
    wait_all_ready(ns, REL, 1)
    env = {e["name"]: e.get("value") for e in
           kubectl_json("-n", ns, "get", "deploy", NAME)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["USER_SERVICE__LOG__LEVEL"] == "debug"
    secret_before = kubectl_json("-n", ns, "get", "secret", f"{NAME}-jwt")["data"]
    helm("rollback", REL, "1", "-n", ns, "--wait", "--timeout", "3m")
    wait_all_ready(ns, REL, 1)
    env = {e["name"]: e.get("value") for e in
           kubectl_json("-n", ns, "get", "deploy", NAME)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["USER_SERVICE__LOG__LEVEL"] == "info"
    # The generated JWT secret survived upgrade and rollback (tokens stay valid).
    assert kubectl_json("-n", ns, "get", "secret", f"{NAME}-jwt")["data"] == secret_before
    history = json.loads(helm("history", REL, "-n", ns, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3]

    helm("uninstall", REL, "-n", ns, "--wait", "--timeout", "2m")
    assert_nothing_left(REL)
