"""The Helm chart: lint, render and package for every value set, strict
Kubernetes schemas, values it must refuse and values it must honour, its
NOTES, and the `lookup` of live replicas under autoscaling."""

import base64
import difflib
import os
import re
import shutil
import tarfile

import pytest
import yaml

from fakeapi import deployment_path, fake_api
from manifests import load_all
from project import (CHART, CRD_API_ARGS, CRD_SETS, KUBE_VERSION, KUBE_VERSIONS, UNCHECKED_KINDS, VALUE_SETS,
                     template_args, value_args)

# `helm lint` has no --api-versions, so it would stop at the CRD guard: the
# sets that enable custom resources are linted without those objects (their
# rendering is checked by `helm template` with --api-versions and the facts).
WITHOUT_CRD_KINDS = ("--set", "metrics.serviceMonitor.enabled=false", "--set", "metrics.prometheusRule.enabled=false",
                     "--set", "gatewayAPI.enabled=false")
FULL = ("-f", str(CHART / "ci/postgres-full-values.yaml"))
JWT_SECRET = "0123456789abcdef0123456789abcdef-test"


def crd_error(api, crd):
    return (f"needs the {api} custom resource, which this cluster does not serve: "
            f"install the {crd}")


# (text the error must contain, helm arguments), by what is refused.
REFUSED = [
    pytest.param("/replicaCount", ["--set", "replicaCount=-1"], id="replicaCount=-1"),
    pytest.param("additional properties 'replicas' not allowed", ["--set", "replicas=3"], id="an unknown top-level key"),
    pytest.param("additional properties 'typo' not allowed", ["--set", "service.typo=1"], id="an unknown nested key"),
    pytest.param("/ports/grpc", ["--set", "ports.grpc=grpc"], id="a string where a port number belongs"),
    pytest.param("/service/port", ["--set", "service.port=70000"], id="a port above 65535"),
    pytest.param("missing property 'limits'", ["--set", "resources.limits=null"], id="resources without limits"),
    pytest.param("/store/type", ["--set", "store.type=mysql"], id="an unknown store type"),
    pytest.param("/store/postgres/url", ["--set", "store.type=postgres", "--set", "store.postgres.url=mysql://x"],
                 id="a non-postgres URL"),
    pytest.param("existingSecret", ["--set", "store.type=postgres"], id="postgres without a URL or Secret"),
    pytest.param("store.type=memory keeps users inside each pod", ["--set", "replicaCount=3"],
                 id="several replicas on the memory store"),
    pytest.param("store.type=memory keeps users inside each pod", ["--set", "autoscaling.enabled=true"],
                 id="autoscaling on the memory store"),
    pytest.param("minReplicas", ["--set", "store.type=postgres", "--set", "store.postgres.existingSecret=db",
                                 "--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5",
                                 "--set", "autoscaling.maxReplicas=2"], id="minReplicas above maxReplicas"),
    pytest.param("terminationGracePeriodSeconds", ["--set", "terminationGracePeriodSeconds=25"],
                 id="a grace period shorter than drain + timeout + 5s"),
    pytest.param("/service/type", ["--set", "service.type=NodePort"], id="a service type the chart does not support"),
    pytest.param("loadBalancerSourceRanges", ["--set", "service.loadBalancerSourceRanges={10.0.0.0/8}"],
                 id="source ranges on a ClusterIP Service"),
    pytest.param("/probes/type", ["--set", "probes.type=exec"], id="an exec probe type"),
    pytest.param("/config/logFormat", ["--set", "config.logFormat=xml"], id="a bad log format"),
    pytest.param("parentRefs", ["--set", "gatewayAPI.enabled=true", *CRD_API_ARGS], id="a GRPCRoute without parentRefs"),
    pytest.param(crd_error("monitoring.coreos.com/v1/ServiceMonitor",
                           "Prometheus Operator's CRD servicemonitors.monitoring.coreos.com"),
                 ["--set", "metrics.serviceMonitor.enabled=true"], id="a ServiceMonitor on a cluster without its CRD"),
    pytest.param(crd_error("monitoring.coreos.com/v1/PrometheusRule",
                           "Prometheus Operator's CRD prometheusrules.monitoring.coreos.com"),
                 ["--set", "metrics.prometheusRule.enabled=true"], id="a PrometheusRule on a cluster without its CRD"),
    pytest.param(crd_error("gateway.networking.k8s.io/v1/GRPCRoute", "Gateway API CRD grpcroutes.gateway.networking.k8s.io"),
                 ["--set", "gatewayAPI.enabled=true", "--set", "gatewayAPI.parentRefs[0].name=public"],
                 id="a GRPCRoute on a cluster without the Gateway API CRDs"),
    pytest.param("custom resource, which this cluster does not serve", [*FULL],
                 id="the full set on a cluster without any of its CRDs"),
    pytest.param("/tests/image", ["--set", "tests.image=ghcr.io/grpc-ecosystem/grpc-health-probe:v0.4.61"],
                 id="tests.image as a single string (the old form)"),
    pytest.param("/tests/image/tag", ["--set", "tests.image.tag="], id="an unpinned test image"),
    pytest.param("kubeVersion", ["--kube-version", "1.26.0"], id="Kubernetes older than 1.27"),
    pytest.param("/auth/jwtSecret", ["--set", "auth.jwtSecret=too-short"], id="a JWT secret shorter than 32 characters"),
    pytest.param("additional properties 'secret' not allowed", ["--set", "auth.secret=x"], id="an unknown auth key"),
    pytest.param("tls.secretName", ["--set", "tls.enabled=true"], id="TLS without a Secret"),
    pytest.param("tls.clientAuth needs tls.enabled", ["--set", "tls.clientAuth=true"], id="client auth without TLS"),
    pytest.param("resources has neither limits.cpu nor requests.cpu", ["--set", "resources.requests.cpu=null"],
                 id="a concurrency limit to derive from no CPU value"),
    pytest.param("/resources/limits/cpu", ["--set-string", "resources.limits.cpu=2Gi"], id="a CPU quantity in bytes"),
    pytest.param("/resources/requests/cpu", ["--set-string", "resources.requests.cpu=-1"], id="a negative CPU"),
    pytest.param("/resources/requests/cpu", ["--set-string", "resources.requests.cpu=half"], id="a CPU that is no number"),
    pytest.param("/config/maxConcurrentRequests", ["--set", "config.maxConcurrentRequests=-1"],
                 id="a negative concurrency limit"),
    pytest.param("/config/maxConcurrentRequests", ["--set-string", "config.maxConcurrentRequests=lots"],
                 id="a concurrency limit that is no number"),
    pytest.param("/config/maxConcurrentRequestsPerCpu", ["--set", "config.maxConcurrentRequestsPerCpu=0"],
                 id="no calls per CPU"),
    pytest.param("/config/maxConcurrentRequestsMin", ["--set", "config.maxConcurrentRequestsMin=0"],
                 id="a derived limit with no floor"),
    pytest.param("/config/maxConcurrentStreams", ["--set", "config.maxConcurrentStreams=0"],
                 id="no streams per connection"),
]

# (helm arguments, grpc.max_concurrent_requests expected), by what the chart
# must derive from the container's CPU or take as given.
CONCURRENCY = [
    pytest.param([], "128", id="the default 250m request: 512 per CPU"),
    pytest.param(["--set-string", "resources.limits.cpu=500m"], "256", id="a 500m limit wins over the 250m request"),
    pytest.param(["--set-string", "resources.limits.cpu=2"], "1024", id="a limit of \"2\" cores"),
    pytest.param(["--set", "resources.limits.cpu=2"], "1024", id="a limit of 2 cores as a number"),
    pytest.param(["--set-json", "resources.limits.cpu=1.5"], "768", id="a limit of 1.5 cores as a number"),
    pytest.param(["--set-string", "resources.requests.cpu=1.5"], "768", id="a request of \"1.5\" cores"),
    pytest.param(["--set-string", "resources.requests.cpu=1500m"], "768", id="a request of 1500m"),
    pytest.param(["--set-string", "resources.requests.cpu=100m"], "52", id="100m: rounded up"),
    pytest.param(["--set-string", "resources.requests.cpu=10m"], "32", id="10m: the floor"),
    pytest.param(["--set-string", "resources.requests.cpu=0.0015"], "32", id="a sub-millicore fraction"),
    pytest.param(["--set-string", "resources.requests.cpu=2", "--set", "config.maxConcurrentRequestsPerCpu=64",
                  "--set", "config.maxConcurrentRequestsMin=16"], "128", id="per-CPU and floor from the values"),
    pytest.param(["--set-string", "resources.requests.cpu=100m", "--set", "config.maxConcurrentRequestsMin=64"], "64",
                 id="a raised floor"),
    pytest.param(["--set-string", "resources.limits.cpu=4", "--set", "config.maxConcurrentRequests=7"], "7",
                 id="an explicit value wins over the CPU"),
    pytest.param(["--set", "config.maxConcurrentRequests=0"], "0", id="an explicit 0: no limit"),
    pytest.param(["--set", "resources.requests.cpu=null", "--set", "config.maxConcurrentRequests=200"], "200",
                 id="an explicit value needs no CPU"),
]

AUTOSCALING = ("--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=2",
               "--set", "autoscaling.maxReplicas=10")
# (replicas of the live Deployment, None: there is none; replicas expected;
# helm arguments), by what the chart must do.
LIVE_REPLICAS = [
    pytest.param(7, 7, AUTOSCALING, id="autoscaling on: keeps the live Deployment's replicas (7), not 1"),
    pytest.param(None, 2, AUTOSCALING, id="autoscaling on: first install starts at minReplicas"),
    pytest.param(1, 2, AUTOSCALING, id="autoscaling on: live replicas below minReplicas are raised to it"),
    pytest.param(50, 10, AUTOSCALING, id="autoscaling on: live replicas above maxReplicas are capped"),
]


@pytest.fixture(scope="session")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes_validate is not importable: `make test` (scripts/test-deploy.sh) installs it "
                    "in the virtualenv that runs these tests", pytrace=False)
    return kubernetes_validate


def schema_problems(kubernetes_validate, docs, version):
    """Every object not valid under Kubernetes VERSION's strict schemas
    (unknown fields refused), but for the UNCHECKED_KINDS."""
    problems = []
    for doc in docs:
        if doc.get("kind") in UNCHECKED_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {getattr(e, 'message', str(e))}")
    return problems


def test_kubernetes_validate_refuses_an_unknown_field(kubernetes_validate):
    """Without strictness the schema tests below would prove little."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 1, "appProtocl": "typo"}]}}
    assert schema_problems(kubernetes_validate, [bad], KUBE_VERSION), "kubernetes-validate accepted a misspelt field"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm, value_set):
    lint_args = WITHOUT_CRD_KINDS if value_set in CRD_SETS else ()
    result = helm.run("lint", "--strict", CHART, *value_args(value_set), *lint_args, "--kube-version", KUBE_VERSION)
    assert result.returncode == 0, f"helm lint --strict ({value_set}) failed:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_template(helm, value_set):
    assert load_all(helm.rendered(*template_args(value_set))), f"{value_set}: helm template rendered no objects"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_strict_schemas(kubernetes_validate, render_set, value_set, kube_version):
    docs = render_set(value_set).docs
    problems = schema_problems(kubernetes_validate, docs, kube_version)
    assert not problems, f"{value_set}, Kubernetes {kube_version}:\n  " + "\n  ".join(problems)


def test_packaged_chart_renders_the_same_objects(helm, tmp_path):
    """The .tgz holds the files the templates read, and renders what the
    chart directory renders."""
    result = helm.run("package", CHART, "-d", tmp_path)
    assert result.returncode == 0, f"helm package failed:\n{result.stderr}"
    (tgz,) = tmp_path.glob("user-service-*.tgz")
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    for needed in ("files/dashboard.json", "files/alerts.yaml", "values.schema.json"):
        assert f"user-service/{needed}" in names, f"the package lacks {needed}"
    packaged = helm.rendered("release", tgz, *FULL, *CRD_API_ARGS, "--namespace", "users", "--kube-version", KUBE_VERSION)
    unpacked = helm.rendered(*template_args("postgres-full-values"))
    diff = "".join(difflib.unified_diff(unpacked.splitlines(True), packaged.splitlines(True), "chart", "package"))
    assert not diff, f"the package renders other objects:\n{diff[:4000]}"


@pytest.mark.parametrize(("expect", "args"), REFUSED)
def test_refuses(helm, expect, args):
    result = helm.template("release", CHART, "--kube-version", KUBE_VERSION, *args)
    assert result.returncode != 0, f"accepted, but should have been refused: {' '.join(args)}"
    said = result.stdout + result.stderr
    assert expect in said, f"refused, but without mentioning {expect!r}:\n{said}"


def plain(helm, *args):
    """The default values rendered with ARGS."""
    return helm.rendered("r", CHART, "--kube-version", KUBE_VERSION, *args)


def lines_with(text, needle):
    return [line for line in text.splitlines() if needle in line]


def test_image_tag_overrides_app_version(helm):
    out = plain(helm, "--set", "image.tag=9.9.9")
    assert "image: ghcr.io/example/user-service:9.9.9" in out, "image.tag=9.9.9 is not the server's image tag"


def test_changing_a_setting_changes_the_config_checksum(helm):
    """Pods restart on a config change only if the checksum changes."""
    before = lines_with(plain(helm), "checksum/config")
    after = lines_with(plain(helm, "--set", "config.logLevel=debug"), "checksum/config")
    assert before, "no checksum/config annotation"
    assert before != after, "config.logLevel=debug left checksum/config as it was"


def test_jwt_secret_becomes_the_secret_and_rolls_the_pods(helm):
    out = plain(helm, "--set", f"auth.jwtSecret={JWT_SECRET}")
    encoded = base64.b64encode(JWT_SECRET.encode()).decode()
    assert f'jwt-secret: "{encoded}"' in out, "auth.jwtSecret is not the Secret's jwt-secret"
    assert JWT_SECRET not in out, "auth.jwtSecret appears in plain text"
    before = lines_with(out, "checksum/jwt-secret")
    after = lines_with(plain(helm, "--set", f"auth.jwtSecret={JWT_SECRET}x"), "checksum/jwt-secret")
    assert before, "no checksum/jwt-secret annotation"
    assert before != after, "a new auth.jwtSecret leaves checksum/jwt-secret as it was: pods keep the old one"


def test_auth_disabled_mounts_no_secret(helm):
    lines = plain(helm, "--set", "auth.enabled=false").splitlines()
    flags = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "name: USER_SERVICE__AUTH__ENABLED" in line]
    assert any('value: "false"' in v for v in flags), f"USER_SERVICE__AUTH__ENABLED is not \"false\": {flags}"
    assert not any("jwt-secret" in line for line in lines), "auth.enabled=false still renders the JWT secret"


def test_renders_at_the_minimum_kubernetes_version(helm):
    helm.rendered("release", CHART, *FULL, *CRD_API_ARGS, "--kube-version", "1.27.0")


def test_test_image_comes_from_values(helm):
    """Offline clusters pull the test image from a mirror."""
    out = plain(helm, "--set", "tests.image.repository=mirror.internal:5000/grpc-health-probe",
                "--set", "tests.image.tag=v9.9.9", "--set", "tests.image.pullPolicy=Never",
                "--set", "imagePullSecrets[0].name=mirror")
    start = out.find("# Source: user-service/templates/tests/")
    assert start >= 0, "no test pod rendered"
    test = out[start:]
    for needed in ("image: mirror.internal:5000/grpc-health-probe:v9.9.9", "imagePullPolicy: Never", "name: mirror"):
        assert needed in test, f"the test pod lacks {needed!r}"


def test_every_image_is_a_value(helm):
    """No hard-coded registry: every image can come from a mirror."""
    out = plain(helm, "-f", CHART / "ci/postgres-url-values.yaml", "--set", "image.repository=mirror.internal/us",
                "--set", "tests.image.repository=mirror.internal/probe")
    images = sorted({line.strip() for line in out.splitlines() if re.match(r"^\s*image: ", line)})
    assert images, "no images rendered"
    others = [i for i in images if "image: mirror.internal/" not in i]
    assert not others, f"images not from the values: {others}"


@pytest.fixture(scope="session")
def notes_chart(tmp_path_factory):
    """A copy of the chart with a ConfigMap that includes NOTES.txt, which
    `helm template` does not render otherwise."""
    chart = tmp_path_factory.mktemp("notes") / "user-service"
    shutil.copytree(CHART, chart)
    (chart / "templates/notes-rendered.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "user-service/templates/NOTES.txt" . | toJson }}}\n')
    return chart


def notes(helm, chart, *args):
    out = helm.rendered("r", chart, "--kube-version", KUBE_VERSION, "--show-only", "templates/notes-rendered.yaml", *args)
    return yaml.safe_load(out)["data"]["notes"]


@pytest.mark.parametrize(("text", "args"), [
    pytest.param("each restart is an outage", [], id="a restart of the memory store's pod is an outage"),
    pytest.param("a single replica", ["--set", "store.type=postgres", "--set", "store.postgres.existingSecret=db"],
                 id="a single PostgreSQL replica is an outage on eviction"),
    pytest.param("kubectl -n default delete pod r-user-service-health-test", [],
                 id="the kept test pod and how to remove it"),
])
def test_notes_say(helm, notes_chart, text, args):
    said = notes(helm, notes_chart, *args)
    assert text in said, f"NOTES lack {text!r}:\n{said}"


def test_notes_warn_of_no_outage_with_two_postgres_replicas(helm, notes_chart):
    said = notes(helm, notes_chart, "-f", CHART / "ci/postgres-url-values.yaml")
    assert "outage" not in said, f"NOTES say 'outage':\n{said}"


def replicas_against(helm, tmp_path, live, *args):
    """spec.replicas as `helm template --dry-run=server` renders it against
    a stand-in API server whose Deployment has LIVE replicas (None: there
    is no Deployment); also the paths helm requested."""
    with fake_api("users", "release-user-service", live) as (url, requests):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            f'apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: "{url}"}}}}]\n'
            "users: [{name: fake, user: {}}]\ncontexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
            "current-context: fake\n")
        result = helm.run("template", "release", CHART, "--namespace", "users", "--kube-version", KUBE_VERSION,
                          "--dry-run=server", "--show-only", "templates/deployment.yaml", "--set", "store.type=postgres",
                          "--set", "store.postgres.existingSecret=db", *args,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 0, f"helm template --dry-run=server failed:\n{result.stderr}"
    found = re.findall(r"^  replicas: (.*)$", result.stdout, re.M)
    return " ".join(found), list(requests)


@pytest.mark.parametrize(("live", "want", "args"), LIVE_REPLICAS)
def test_autoscaling_replicas_from_the_live_deployment(helm, tmp_path, live, want, args):
    got, requests = replicas_against(helm, tmp_path, live, *args)
    assert deployment_path("users", "release-user-service") in requests, "helm never looked the Deployment up"
    assert got == str(want), f"replicas: {got}, expected {want}"


def test_autoscaling_off_uses_replica_count_whatever_runs_now(helm, tmp_path):
    got, _ = replicas_against(helm, tmp_path, None, "--set", "replicaCount=4")
    assert got == "4", f"replicas: {got}, expected 4"


def server_env(helm, *args):
    """The server container's environment, NAME -> value, rendered from the
    default values with ARGS."""
    out = helm.rendered("r", CHART, "--kube-version", KUBE_VERSION, "--show-only", "templates/deployment.yaml", *args)
    container = yaml.safe_load(out)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_streams_per_connection_reach_the_server(helm):
    assert server_env(helm).get("USER_SERVICE__GRPC__MAX_CONCURRENT_STREAMS") == "64"
    raised = server_env(helm, "--set", "config.maxConcurrentStreams=1024")
    assert raised.get("USER_SERVICE__GRPC__MAX_CONCURRENT_STREAMS") == "1024"


@pytest.mark.parametrize(("args", "want"), CONCURRENCY)
def test_concurrency_limit_from_the_cpu(helm, args, want):
    got = server_env(helm, *args).get("USER_SERVICE__GRPC__MAX_CONCURRENT_REQUESTS")
    assert got == want, f"grpc.max_concurrent_requests {got!r}, expected {want!r}"
