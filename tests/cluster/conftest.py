"""pytest wiring for tests/cluster: the cluster must be up (make cluster-up,
or scripts/test-cluster.sh, which starts and stops it around the run)."""

import contextlib
import json
from pathlib import Path

import pytest

from kube import FIGURES, KUBECONFIG, STATE, kubectl, kubectl_json


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("cluster figures")
    for k, v in FIGURES.items():
        terminalreporter.write_line(f"{k}: {v}")
    with contextlib.suppress(OSError):
        (STATE / "logs").mkdir(parents=True, exist_ok=True)
        (STATE / "logs" / "test-figures.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="session", autouse=True)
def cluster_reachable():
    if not Path(KUBECONFIG).exists():
        pytest.exit(f"no cluster: {KUBECONFIG} is missing (make cluster-up)", returncode=2)
    kubectl("get", "--raw", "/readyz")
    nodes = kubectl_json("get", "nodes")["items"]
    assert len(nodes) == 1 and any(
        c["type"] == "Ready" and c["status"] == "True" for c in nodes[0]["status"]["conditions"]
    ), "the node is not Ready"
    yield
