"""Checks the Grafana dashboard JSON: what sidecar provisioning and the
go-grpc-prometheus series need. Exits non-zero with the reasons."""
import json
import re
import sys

path = sys.argv[1]
dash = json.load(open(path))
problems = []

for key in ("uid", "title", "schemaVersion", "panels", "templating"):
    if key not in dash:
        problems.append(f"missing top-level {key!r}")
if "__inputs" in dash:
    problems.append("__inputs cannot be resolved by sidecar provisioning; use a datasource variable")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if variables.get("datasource", {}).get("type") != "datasource":
    problems.append("no template variable 'datasource' of type datasource")

exprs = []
for panel in dash.get("panels", []):
    if panel.get("type") == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"panel {panel.get('title')!r} does not use ${{datasource}}")
    for target in panel.get("targets", []):
        if target.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"a target of {panel.get('title')!r} does not use ${{datasource}}")
        exprs.append(target.get("expr", ""))
    if not panel.get("targets"):
        problems.append(f"panel {panel.get('title')!r} has no query")

text = "\n".join(exprs)
for needed in (
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "grpc_server_started_total",
    "grpc_server_msg_sent_total",
    "grpc_server_msg_received_total",
    "process_resident_memory_bytes",
    "user_service_store_operation_duration_seconds_bucket",
    "user_service_store_pool_connections",
):
    if needed not in text:
        problems.append(f"no panel queries {needed}")
for q in ("0.5", "0.9", "0.99"):
    if f"histogram_quantile({q}," not in text:
        problems.append(f"no p{q} latency query")
for expr in exprs:
    if expr.count("(") != expr.count(")"):
        problems.append(f"unbalanced parentheses: {expr}")
    for var in re.findall(r"\$(\w+)", expr):
        if var not in variables and not var.startswith("__"):
            problems.append(f"query uses undefined variable ${var}")

if problems:
    print("\n".join(f"dashboard: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"    dashboard ok: {len(exprs)} queries, variables {sorted(variables)}")
