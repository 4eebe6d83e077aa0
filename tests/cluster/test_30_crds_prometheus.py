"""The chart's custom resources on a server that serves their CRDs, and a
real Prometheus scraping the pods the way the chart's ServiceMonitor says.

CRDs: Prometheus Operator and Gateway API, from their Go modules at the
versions pinned in deploy/cluster/versions.sh (deploy/cluster/crds.sh).
Prometheus: the one scripts/install-test-deps.sh builds with Kubernetes
discovery (Debian's has none), on a free 127.0.0.1 port, with kubernetes_sd against
this API server; its scrape job is derived from the ServiceMonitor object
the chart rendered (selector, port, path, scheme, interval, jobLabel), as
the Prometheus Operator would.
"""

import json
import re
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from kube import (
    CACHE_ROOT, CHART, IMAGE_VALUES, REPO, STATE, assert_nothing_left, PortForward, grpcurl, helm, kubectl,
    kubectl_json, log, namespace, run, wait_all_ready, wait_until,
)

NS = "it-crds"
PROMETHEUS_VERSION = re.search(r"^PROMETHEUS_VERSION=(\S+)", (REPO / "scripts" / "install-test-deps.sh").read_text(),
                               re.M).group(1)
PROMETHEUS = CACHE_ROOT / f"prometheus-{PROMETHEUS_VERSION}" / "bin" / "prometheus"
REL = "mon"
NAME = "mon-user-service"


@pytest.fixture(scope="module")
def ns():
    run([str(REPO / "deploy" / "cluster" / "crds.sh")], timeout=300)
    with namespace(NS) as n:
        yield n


def test_crd_objects_accepted(ns):
    helm("install", REL, str(CHART), "-n", ns, *IMAGE_VALUES,
         "--set", "metrics.serviceMonitor.enabled=true",
         "--set", "metrics.serviceMonitor.interval=2s",
         "--set", "metrics.prometheusRule.enabled=true",
         "--set", "gatewayAPI.enabled=true",
         "--set", "gatewayAPI.parentRefs[0].name=public",
         "--set", "gatewayAPI.hostnames[0]=users.example.com",
         "--wait", "--timeout", "3m")
    wait_all_ready(ns, REL, 1)
    for kind in ("servicemonitor", "prometheusrule", "grpcroute"):
        obj = kubectl_json("-n", ns, "get", kind, NAME)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == REL
    rule = kubectl_json("-n", ns, "get", "prometheusrule", NAME)
    assert rule["spec"]["groups"], "PrometheusRule without groups"
    # The CRDs validate: a ServiceMonitor the schema forbids is refused,
    # so the chart's objects above passed real validation.
    bad = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
           "metadata": {"name": "bad", "namespace": ns},
           "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "every now and then"}]}}
    p = kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert p.returncode != 0 and "interval" in p.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def scrape_job(sm: dict) -> dict:
    """The scrape configuration the Prometheus Operator derives from a
    ServiceMonitor (the subset the chart uses)."""
    (ep,) = sm["spec"]["endpoints"]
    ns = sm["metadata"]["namespace"]
    relabel = [
        {"source_labels": [f"__meta_kubernetes_service_label_{label(k)}"], "regex": v, "action": "keep"}
        for k, v in sm["spec"]["selector"]["matchLabels"].items()
    ]
    relabel += [
        {"source_labels": ["__meta_kubernetes_endpointslice_port_name"], "regex": ep["port"], "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": [f"__meta_kubernetes_service_label_{label(sm['spec']['jobLabel'])}"],
         "target_label": "job"},
    ]
    pki = STATE / "pki"
    return {
        "job_name": f"serviceMonitor/{ns}/{sm['metadata']['name']}/0",
        "scrape_interval": ep["interval"],
        "metrics_path": ep["path"],
        "scheme": ep["scheme"],
        "kubernetes_sd_configs": [{
            "role": "endpointslice",
            "api_server": "https://127.0.0.1:6443",
            "namespaces": {"names": [ns]},
            "tls_config": {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "admin.crt"),
                           "key_file": str(pki / "admin.key")},
        }],
        "relabel_configs": relabel,
    }


def test_prometheus_scrapes_what_the_service_monitor_selects(ns):
    sm = kubectl_json("-n", ns, "get", "servicemonitor", NAME)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        # JSON is YAML.
        cfg.write_text(json.dumps({"global": {"scrape_interval": "2s"}, "scrape_configs": [scrape_job(sm)]}))
        logf = open(Path(tmp) / "prometheus.log", "w")
        prom = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp}/data"], stdout=logf, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"

            def api(path, **params):
                url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.load(r)["data"]

            def targets_up():
                ts = api("targets")["activeTargets"]
                return ts if ts and all(t["health"] == "up" for t in ts) else None

            try:
                targets = wait_until("Prometheus targets up", targets_up, timeout=60)
            except AssertionError as e:
                logf.flush()
                raise AssertionError(f"{e}\n--- prometheus log\n{(Path(tmp) / 'prometheus.log').read_text()[-3000:]}")
            # One target per pod: the headless Service has no metrics port,
            # so a pod is not scraped twice.
            assert len(targets) == 1, [t["labels"] for t in targets]
            assert targets[0]["labels"]["job"] == "user-service"
            with PortForward(ns, f"svc/{NAME}", 50051) as pf:
                for i in range(3):
                    grpcurl(pf.addr(50051), "user.v1.UserService/CreateUser",
                            {"email": f"p{i}@example.com", "name": "P", "password": "correct horse battery"})

            def counted():
                r = api("query", query='sum(grpc_server_handled_total{job="user-service",'
                                       'grpc_method="CreateUser",grpc_code="OK"})')["result"]
                return r and float(r[0]["value"][1]) >= 3

            wait_until("grpc_server_handled_total in Prometheus", counted, timeout=30)
            log("Prometheus sees the CreateUser calls")
        finally:
            prom.terminate()
            prom.wait(15)
            logf.close()


def test_uninstall_leaves_no_custom_resources(ns):
    helm("uninstall", REL, "-n", ns, "--wait", "--timeout", "2m")
    kubectl("-n", ns, "delete", "servicemonitor", "bad", "--ignore-not-found")
    assert_nothing_left(REL, "servicemonitor,prometheusrule,grpcroute")
