"""The Grafana dashboard: loadable by the sidecar, every panel on the
datasource variable, the panels operators rely on, only metrics the
service exports, and every query valid PromQL."""

import json
import re
import subprocess

import pytest
import yaml

from project import CHART, DASHBOARD, ROOT
from service import SERVICE_METRIC

DATASOURCE_UIDS = ("${datasource}", "$datasource")
REQUIRED_METRICS = (
    "grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "grpc_server_started_total",
    "grpc_server_msg_sent_total", "grpc_server_msg_received_total", "process_cpu_seconds_total",
    "process_resident_memory_bytes", "process_open_fds",
    "user_service_store_operation_duration_seconds_bucket", "user_service_store_pool_connections",
    "user_service_spans_ended_total", "user_service_log_lines_dropped_total",
)
# Grafana's variables replaced by values PromQL accepts, for promtool.
GRAFANA_SUBSTITUTIONS = (
    (r"\$\{?__rate_interval\}?|\$\{?__interval\}?|\$\{?__range\}?", "5m"),
    (r"\$\{?\w+\}?", ".*"),
)


@pytest.fixture(scope="module")
def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def variables(dashboard):
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def query_panels(dashboard):
    return [p for p in dashboard.get("panels", []) if p.get("type") != "row"]


def queries(dashboard):
    """(panel title, PromQL) of every target."""
    return [(p.get("title"), t.get("expr", "")) for p in query_panels(dashboard) for t in p.get("targets", [])]


def all_queries_text(dashboard):
    return "\n".join(expr for _, expr in queries(dashboard))


def assert_no_problems(problems):
    assert not problems, "dashboard:\n  " + "\n  ".join(problems)


def test_dashboard_is_a_symlink_to_the_chart_copy():
    """The chart can only read files inside itself (.Files.Get), so the one
    source of the dashboard is there; a copy elsewhere could drift."""
    canonical = CHART / "files/dashboard.json"
    assert DASHBOARD.is_symlink(), f"{DASHBOARD.relative_to(ROOT)} is not a symlink to {canonical.relative_to(ROOT)}"
    assert DASHBOARD.resolve() == canonical.resolve(), f"{DASHBOARD.relative_to(ROOT)} points at {DASHBOARD.resolve()}"


def test_structure_and_variables(dashboard):
    """Sidecar provisioning cannot resolve __inputs: the data source must
    come from a variable, and the filters from query variables on it."""
    problems = [f"missing top-level {key!r}" for key in ("uid", "title", "schemaVersion", "panels", "templating")
                if key not in dashboard]
    if "__inputs" in dashboard or "__requires" in dashboard:
        problems.append("__inputs/__requires cannot be resolved by sidecar provisioning; use the datasource variable")
    found = variables(dashboard)
    datasource = found.get("datasource", {})
    if datasource.get("type") != "datasource" or datasource.get("query") != "prometheus":
        problems.append("no template variable 'datasource' of type datasource for prometheus")
    for name in ("job", "namespace", "method"):
        v = found.get(name, {})
        if v.get("type") != "query" or v.get("datasource", {}).get("uid") not in DATASOURCE_UIDS:
            problems.append(f"no query variable {name!r} on ${{datasource}}")
    ids = [p.get("id") for p in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    assert_no_problems(problems)


def test_panels_use_the_datasource_variable(dashboard):
    problems = []
    defined = variables(dashboard)
    for panel in query_panels(dashboard):
        title = panel.get("title")
        if panel.get("datasource", {}).get("uid") not in DATASOURCE_UIDS:
            problems.append(f"panel {title!r} does not use ${{datasource}}")
        if not panel.get("targets"):
            problems.append(f"panel {title!r} has no query")
        if not all(k in panel.get("gridPos", {}) for k in "xywh"):
            problems.append(f"panel {title!r} has no gridPos")
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") not in DATASOURCE_UIDS:
                problems.append(f"a target of {title!r} does not use ${{datasource}}")
            expr = target.get("expr", "")
            problems += [f"{title!r} uses undefined variable ${var}" for var in re.findall(r"\$\{?(\w+)", expr)
                         if var not in defined and not var.startswith("__")]
            if "grpc_service" in expr and 'grpc_service="user.v1.UserService"' not in expr:
                problems.append(f"{title!r} does not select grpc_service=\"user.v1.UserService\"")
    assert_no_problems(problems)


def test_queries_only_exported_metrics(dashboard, exported_metrics):
    """A renamed or dropped metric would leave an empty panel."""
    assert_no_problems([f"{title!r} queries {metric}, which the service does not export"
                        for title, expr in queries(dashboard) for metric in SERVICE_METRIC.findall(expr)
                        if metric not in exported_metrics])


def test_required_panels(dashboard):
    """The panels an operator needs: traffic, errors, latency quantiles, in
    flight, streams, process and store."""
    text = all_queries_text(dashboard)
    problems = [f"no panel queries {needed}" for needed in REQUIRED_METRICS if needed not in text]
    for q in ("0.5", "0.9", "0.99"):
        if not re.search(rf"histogram_quantile\({q}, sum by \([^)]*\ble\b[^)]*\) \(rate\(grpc_server_handling_seconds_bucket", text):
            problems.append(f"no p{q} latency query by le")
    if "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss" not in text:
        problems.append("no error-ratio query on the server-error codes")
    if not re.search(r"\(grpc_server_started_total\{[^}]*\}\)\s*-\s*sum(?: by \([^)]*\))? \(grpc_server_handled_total", text):
        problems.append("no in-flight (started - handled) query")
    legends = [t.get("legendFormat", "") for p in dashboard.get("panels", []) for t in p.get("targets", [])]
    if not any("{{grpc_method}}" in legend for legend in legends):
        problems.append("no {{grpc_method}} legend")
    assert_no_problems(problems)


def as_recording_rules(dashboard):
    """The dashboard's queries as a rule file, so that promtool parses every
    expression (with Grafana's variables replaced)."""
    rules = []
    for i, (_, expr) in enumerate(queries(dashboard)):
        for pattern, value in GRAFANA_SUBSTITUTIONS:
            expr = re.sub(pattern, value, expr)
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    return {"groups": [{"name": "dashboard-queries", "rules": rules}]}


def test_queries_parse_as_promql(dashboard, promtool, tmp_path):
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(as_recording_rules(dashboard)))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"a dashboard query is not valid PromQL:\n{result.stdout}{result.stderr}"
