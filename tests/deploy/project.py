"""Where the chart, the rules and the dashboard are, and the Kubernetes
versions and custom resources the chart is rendered for: the facts every
deployment test module shares."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/user-service"
DASHBOARD = ROOT / "grafana/dashboards/user-service.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"
ALERTS_TEST = ROOT / "deploy/prometheus/alerts_test.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"

# Kubernetes versions the rendered manifests are validated against: the
# chart's minimum and a common production version.
KUBE_VERSIONS = ("1.27.0", "1.30.0")
KUBE_VERSION = "1.30.0"

# Custom resources have no schema in kubernetes-validate: these kinds, and
# only these, are skipped by schema validation (their wiring is checked by
# the fact tests).
UNCHECKED_KINDS = ("ServiceMonitor", "PrometheusRule", "GRPCRoute")

# The chart refuses those kinds unless the cluster serves them
# (.Capabilities.APIVersions); `helm template` is told so for the value sets
# that enable them, as a cluster with the CRDs installed would report them.
CRD_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "gateway.networking.k8s.io/v1/GRPCRoute",
)
CRD_API_ARGS = tuple(arg for api in CRD_APIS for arg in ("--api-versions", api))
# Value sets (helm/user-service/ci/NAME.yaml) that enable them.
CRD_SETS = ("postgres-full-values",)

# The chart's defaults, and every value set it is tested with.
VALUE_SETS = ("default", *sorted(p.stem for p in (CHART / "ci").glob("*.yaml")))


def value_args(value_set):
    """helm arguments that select a value set."""
    return () if value_set == "default" else ("-f", str(CHART / "ci" / f"{value_set}.yaml"))


def template_args(value_set):
    """`helm template` arguments of a value set, as the checks render it:
    with its CRDs' API versions when it enables custom resources."""
    apis = CRD_API_ARGS if value_set in CRD_SETS else ()
    return ("release", str(CHART), *value_args(value_set), *apis,
            "--namespace", "users", "--kube-version", KUBE_VERSION)
