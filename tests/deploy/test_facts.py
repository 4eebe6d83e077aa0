"""Facts about the objects the chart renders for each value set: wiring
(selectors, ports, Secrets, hooks), hardening, shutdown budget, and what
each value set is there to show. Each test collects all its problems, so a
failure lists every broken fact of its area."""

import base64
import json
import math
import re

import pytest
import yaml

from manifests import Problems, env_of, hardened, secret_ref
from project import ALERTS, CHART, DASHBOARD, VALUE_SETS

STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart")
# The value sets whose pods mount the JWT Secret the chart creates.
CHART_JWT_SECRET_SETS = ("default", "memory-values", "loadbalancer-values")

each_value_set = pytest.mark.parametrize("value_set", VALUE_SETS)


@each_value_set
def test_standard_labels(render_set, value_set):
    m, problems = render_set(value_set), Problems()
    for doc in m.docs:
        labels = doc["metadata"].get("labels", {})
        for key in STANDARD_LABELS:
            problems.check(key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}")
    problems.assert_none(value_set)


@each_value_set
def test_deployment(render_set, value_set):
    """Hardened pods, a selector of its own, rollouts that keep capacity,
    restarts on config changes, spread over nodes."""
    m, problems = render_set(value_set), Problems()
    check = problems.check
    hardened(problems, m.pod, "Deployment")
    check(m.selector.items() <= m.pod_template["metadata"]["labels"].items(),
          "the Deployment's selector does not match its pods")
    check(m.selector.get("app.kubernetes.io/component") == "server", "selector lacks component=server")
    check(m.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rollout may drop below capacity")
    check("checksum/config" in m.pod_template["metadata"].get("annotations", {}), "no checksum/config annotation")
    check(m.pod.get("topologySpreadConstraints"), "no topologySpreadConstraints")
    for tsc in m.pod.get("topologySpreadConstraints", []):
        check(tsc["labelSelector"]["matchLabels"] == m.selector, "topology spread selects other pods")
    check(isinstance(m.deployment["spec"].get("replicas"), int),
          "Deployment without replicas: the API server would default it to 1 (also when an HPA takes over)")
    problems.assert_none(value_set)


def whole_seconds(problems, env, name):
    match = re.fullmatch(r"(\d+)s", env[name]["value"])
    problems.check(match, f"{name} is not a whole number of seconds")
    return int(match.group(1)) if match else 0


@each_value_set
def test_server_settings(render_set, value_set):
    """The pod's grace period covers the service's own shutdown, and the
    addresses, log format and service name it is told match the pod."""
    m, problems = render_set(value_set), Problems()
    check, env, cports = problems.check, m.env, m.cports
    budget = (whole_seconds(problems, env, "USER_SERVICE__SHUTDOWN__DRAIN_DELAY")
              + whole_seconds(problems, env, "USER_SERVICE__SHUTDOWN__TIMEOUT") + 5)
    grace = m.pod["terminationGracePeriodSeconds"]
    check(grace >= budget, f"terminationGracePeriodSeconds {grace} < drain + timeout + 5 = {budget}")
    check(env["USER_SERVICE__GRPC__ADDR"]["value"] == f"0.0.0.0:{cports.get('grpc')}", "gRPC address and container port differ")
    check(env["USER_SERVICE__ADMIN__ADDR"]["value"] == f"0.0.0.0:{cports.get('admin')}", "admin address and container port differ")
    check(env.get("USER_SERVICE__LOG__FORMAT", {}).get("value") == "json", "logs are not JSON")
    check(env.get("OTEL_SERVICE_NAME", {}).get("value"), "OTEL_SERVICE_NAME not set")
    problems.assert_none(value_set)


def values_of(value_set):
    """The values a value set gives (for "default": the chart's values.yaml)."""
    path = CHART / ("values.yaml" if value_set == "default" else f"ci/{value_set}.yaml")
    return yaml.safe_load(path.read_text()) or {}


def cpu_millis(quantity):
    """A Kubernetes CPU quantity (2, 1.5, "1.5", "500m") in millicores,
    sub-millicore fractions rounded up as the API server does."""
    text = str(quantity)
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return math.ceil(round(cores * 1000, 6))


@each_value_set
def test_concurrency_limit_follows_the_pods_cpu(render_set, value_set):
    """Unless a value set gives grpc.max_concurrent_requests, the pod gets
    ceil(cores x per-CPU), at least the floor: its CPU limit, else its
    request. Computed here from the rendered container, not from values."""
    m, problems = render_set(value_set), Problems()
    given = values_of(value_set).get("config", {})
    defaults = values_of("default")["config"]
    got = m.env.get("USER_SERVICE__GRPC__MAX_CONCURRENT_REQUESTS", {}).get("value")
    if given.get("maxConcurrentRequests") is not None:
        want = str(given["maxConcurrentRequests"])
    else:
        res = m.container["resources"]
        cpu = res.get("limits", {}).get("cpu") or res.get("requests", {}).get("cpu")
        per_cpu = given.get("maxConcurrentRequestsPerCpu", defaults["maxConcurrentRequestsPerCpu"])
        floor = given.get("maxConcurrentRequestsMin", defaults["maxConcurrentRequestsMin"])
        want = str(max(floor, math.ceil(cpu_millis(cpu) * per_cpu / 1000)))
    problems.check(got == want, f"grpc.max_concurrent_requests {got!r}, expected {want!r} from the pod's CPU")
    problems.assert_none(value_set)


@each_value_set
def test_probes(render_set, value_set):
    """gRPC probes need a numeric port and the right health service names;
    HTTP probes the admin port's /livez and /readyz."""
    m, problems = render_set(value_set), Problems()
    container, cports = m.container, m.cports
    if "grpc" in container["readinessProbe"]:
        for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", "user.v1.UserService")):
            spec = container.get(probe, {}).get("grpc", {})
            problems.check(type(spec.get("port")) is int and spec.get("port") == cports.get("grpc"),
                           f"{probe}: gRPC port must be the number {cports.get('grpc')}, got {spec.get('port')!r}")
            problems.check(spec.get("service") == service,
                           f"{probe}: service should be {service!r}, got {spec.get('service')!r}")
    else:
        for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            http = container.get(probe, {}).get("httpGet", {})
            problems.check(http.get("path") == path, f"{probe}: HTTP path should be {path}")
            problems.check(http.get("port") in ("admin", cports.get("admin")), f"{probe}: not on the admin port")
    problems.assert_none(value_set)


@each_value_set
def test_config_file(render_set, value_set):
    """A config file reaches the pod as the mounted ConfigMap; without one
    the server runs on its environment alone."""
    m, problems = render_set(value_set), Problems()
    container, cms = m.container, m.config_maps
    if cms:
        problems.check(m.volumes.get("config", {}).get("configMap", {}).get("name") == cms[0]["metadata"]["name"],
                       "config volume does not reference the ConfigMap")
        problems.check(m.mounts.get("config", {}).get("mountPath") == "/etc/user-service",
                       "config not mounted at /etc/user-service")
        args = container.get("args", [])
        problems.check(args[:2] == ["--config", "/etc/user-service/config.toml"] and "config.toml" in cms[0]["data"],
                       f"--config does not point at the mounted file: {args}")
    else:
        problems.check(container.get("args") == ["serve"], f"args {container.get('args')}")
    problems.assert_none(value_set)


@each_value_set
def test_services(render_set, value_set):
    """Services select the Deployment's pods, target its ports, announce
    h2c exactly when gRPC is plaintext, and metrics are published once."""
    m, problems = render_set(value_set), Problems()
    check, ports, cports = problems.check, m.ports, m.cports
    check(len(m.main_services) == 1, "expected one non-headless Service")
    if m.tls:
        check(ports.get("grpc", {}).get("appProtocol") != "kubernetes.io/h2c",
              "Service announces plaintext h2c although gRPC is TLS")
    else:
        check(ports.get("grpc", {}).get("appProtocol") == "kubernetes.io/h2c",
              "Service grpc port lacks appProtocol kubernetes.io/h2c")
    check(ports.get("metrics", {}).get("port") == cports.get("admin"), "Service has no metrics port on the admin port")
    for s in m.services:
        check(s["spec"]["selector"] == m.selector, f"Service {s['metadata']['name']} selects other pods than the Deployment's")
        for p in s["spec"]["ports"]:
            check(p["targetPort"] in cports, f"Service {s['metadata']['name']} targets unknown port {p['targetPort']}")
    check(sum(1 for s in m.services for p in s["spec"]["ports"] if p["name"] == "metrics") == 1,
          "more than one Service publishes metrics (pods would be scraped twice)")
    problems.assert_none(value_set)


def check_tls_test_pods(problems, m):
    """Under TLS, helm test verifies the server's certificate (and presents
    its own under mTLS)."""
    for t in m.test_pods:
        targs = t["spec"]["containers"][0].get("args", [])
        problems.check("-tls" in targs and any(a.startswith("-tls-ca-cert=") for a in targs),
                       f"helm test does not verify the server's certificate: {targs}")
        tvol = [v for v in t["spec"].get("volumes", []) if "secret" in v]
        problems.check(tvol and tvol[0]["secret"]["secretName"] == m.volumes.get("tls", {}).get("secret", {}).get("secretName"),
                       "helm test does not mount the TLS Secret")
        if "USER_SERVICE__TLS__CLIENT_CA_FILE" in m.env:
            problems.check(any(a.startswith("-tls-client-cert=") for a in targs),
                           "helm test presents no client certificate under mTLS")


@each_value_set
def test_tls(render_set, value_set):
    """The TLS Secret is mounted so that renewals show up, the server is
    pointed into it, and the probes avoid gRPC (the kubelet cannot speak
    TLS)."""
    m, problems = render_set(value_set), Problems()
    check, env, container = problems.check, m.env, m.container
    if not m.tls:
        check(not any(k.startswith("USER_SERVICE__TLS__") for k in env), "TLS settings without tls.enabled")
        problems.assert_none(value_set)
        return
    mount = m.mounts.get("tls", {})
    check(mount.get("readOnly") is True, "TLS Secret is not mounted read-only")
    check("subPath" not in mount, "TLS Secret mounted with subPath: renewals would never show up")
    tls_dir = mount.get("mountPath", "<unmounted>")
    for var, file in (("USER_SERVICE__TLS__CERT_FILE", "tls.crt"), ("USER_SERVICE__TLS__KEY_FILE", "tls.key")):
        check(env.get(var, {}).get("value") == f"{tls_dir}/{file}", f"{var} does not point into the mounted Secret")
    check(all("grpc" not in container[p] for p in ("readinessProbe", "livenessProbe", "startupProbe")),
          "gRPC probes with TLS on: the kubelet cannot speak TLS")
    check(all("httpGet" in container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")),
          "probes are not httpGet with TLS on")
    check_tls_test_pods(problems, m)
    problems.assert_none(value_set)


def check_migration_job(problems, m, job):
    check = problems.check
    ann = job["metadata"].get("annotations", {})
    check(set(ann.get("helm.sh/hook", "").split(",")) == {"pre-install", "pre-upgrade"},
          f"migration Job hook is {ann.get('helm.sh/hook')!r}")
    jspec = job["spec"]["template"]["spec"]
    jc = jspec["containers"][0]
    check(jc["args"] == ["migrate"], "migration Job does not run `migrate`")
    check(jc["image"] == m.container["image"], "migration Job runs another image")
    check(secret_ref(env_of(jc)), "the migration Job does not read the database URL from a Secret")
    check(jspec.get("restartPolicy") == "Never", "migration Job restarts in place")
    jlabels = job["spec"]["template"]["metadata"].get("labels", {})
    check(not m.selector.items() <= jlabels.items(), "migration pods match the Service selector")
    hardened(problems, jspec, "migration Job")


@each_value_set
def test_database_url_and_migration_job(render_set, value_set):
    """The database URL only ever comes from a Secret; the migration Job is
    a pre-install/pre-upgrade hook running the server's image."""
    m, problems = render_set(value_set), Problems()
    if m.postgres:
        problems.check(m.ref, "the database URL is not read from a Secret")
    for e in m.container.get("env", []):
        problems.check("postgres://" not in str(e.get("value", "")), f"plaintext database URL in env {e['name']}")
    for job in m.jobs:
        check_migration_job(problems, m, job)
    problems.assert_none(value_set)


def check_hook_copy(problems, m, job):
    """The migration Job reads a hook-lived copy of the chart's Secret, made
    before the Job and deleted after it."""
    check = problems.check
    jref = secret_ref(env_of(job["spec"]["template"]["spec"]["containers"][0])) or {}
    if not m.release_secrets:  # existingSecret: there before the release
        check(jref == m.ref, f"migration Job reads {jref}, the pods {m.ref}")
        return
    copy = {d["metadata"]["name"]: d for d in m.secrets}.get(jref.get("name"))
    check(copy in m.hook_secrets, "the migration Job reads a Secret that does not exist when pre-install hooks run")
    if copy not in m.hook_secrets:
        return
    ann = copy["metadata"]["annotations"]
    check(set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"},
          f"the Job's Secret hook is {ann['helm.sh/hook']!r}")
    check(int(ann.get("helm.sh/hook-weight", "0")) < int(job["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
          "the Job's Secret is created after the Job")
    policy = set(ann.get("helm.sh/hook-delete-policy", "").split(","))
    check({"hook-succeeded", "before-hook-creation"} <= policy,
          f"the Job's Secret outlives the hook run (delete policy {policy})")
    check(jref.get("key") == (m.ref or {}).get("key") and copy.get("stringData") == m.release_secrets[0].get("stringData"),
          "the Job's Secret holds other data than the pods' Secret")


@each_value_set
def test_database_secrets(render_set, value_set):
    """The chart's own Secret (store.postgres.url) is a normal release
    resource, so `helm uninstall` deletes it; the migration hook Job, which
    runs before release resources exist, reads a hook-lived copy instead."""
    m, problems = render_set(value_set), Problems()
    by_name = {d["metadata"]["name"]: d for d in m.secrets}
    if m.postgres and m.ref and m.ref["name"] in by_name:
        problems.check(by_name[m.ref["name"]] in m.release_secrets,
                       "the pods' database Secret is a hook: `helm uninstall` would leave it (and the password) behind")
    problems.check(len(m.release_secrets) <= 1, "more than one release Secret")
    for job in m.jobs:
        check_hook_copy(problems, m, job)
    problems.check(len(m.hook_secrets) == (1 if m.release_secrets and m.jobs else 0),
                   f"{len(m.hook_secrets)} hook Secrets (expected one copy exactly when the chart's Secret and the Job are both rendered)")
    problems.assert_none(value_set)


@each_value_set
def test_authentication(render_set, value_set):
    """On in every value set; the HS256 secret reaches the pods as a file
    from a Secret (the chart's own, or auth.existingSecret), never as a
    value."""
    m, problems = render_set(value_set), Problems()
    check, env = problems.check, m.env
    check(env.get("USER_SERVICE__AUTH__ENABLED", {}).get("value") == "true", "auth is not enabled")
    check("USER_SERVICE__AUTH__JWT_SECRET" not in env, "the JWT secret is passed as an environment value")
    secret_file = env.get("USER_SERVICE__AUTH__JWT_SECRET_FILE", {}).get("value", "")
    jwt_mount, jwt_volume = m.mounts.get("jwt-secret", {}), m.jwt_volume
    check(jwt_mount.get("readOnly") is True and secret_file == jwt_mount.get("mountPath", "?") + "/jwt-secret",
          f"USER_SERVICE__AUTH__JWT_SECRET_FILE {secret_file!r} is not the mounted secret {jwt_mount}")
    check([i.get("path") for i in jwt_volume.get("items", [])] == ["jwt-secret"],
          f"the secret volume does not provide jwt-secret: {jwt_volume}")
    for secret in m.jwt_secrets:
        key = jwt_volume["items"][0]["key"]
        value = base64.b64decode(secret.get("data", {}).get(key, "")).decode()
        check(len(value) >= 32, f"the chart's JWT secret is {len(value)} characters, not at least 32")
        check(not secret["metadata"].get("annotations", {}).get("helm.sh/hook"),
              "the JWT Secret is a hook (deleted and recreated: tokens would break)")
    if value_set in CHART_JWT_SECRET_SETS:
        check(len(m.jwt_secrets) == 1, "the chart did not create the JWT Secret the pods mount")
    for job in m.jobs:
        jenv = env_of(job["spec"]["template"]["spec"]["containers"][0])
        check(not any(n.startswith("USER_SERVICE__AUTH__") for n in jenv),
              "the migration Job gets the JWT secret it does not need")
    problems.assert_none(value_set)


@each_value_set
def test_helm_test_pod(render_set, value_set):
    """`helm test` checks readiness through the Service with a pinned image
    from values, and its pod is kept for `helm test --logs`."""
    m, problems = render_set(value_set), Problems()
    check = problems.check
    if value_set != "loadbalancer-values":
        check(len(m.test_pods) == 1, "no helm test pod")
    for t in m.test_pods:
        hardened(problems, t["spec"], "test pod")
        # hook-succeeded would delete the pod before `helm test --logs` reads it.
        policy = t["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "")
        check(policy == "before-hook-creation", f"test pod delete policy {policy!r}: `helm test --logs` needs the pod")
        tc = t["spec"]["containers"][0]
        image = tc["image"]
        check("grpc-health-probe" in image and re.search(r":v\d+\.\d+\.\d+$", image), f"test image not pinned: {image}")
        check(tc.get("imagePullPolicy") in ("Always", "IfNotPresent", "Never"), "test pod has no imagePullPolicy")
        check(t["spec"].get("imagePullSecrets") == m.pod.get("imagePullSecrets"),
              "test pod pulls with other secrets than the server")
        args = tc.get("args", [])
        check(f"-addr={m.service['metadata']['name']}:{m.ports.get('grpc', {}).get('port')}" in args,
              f"helm test does not target the Service's grpc port: {args}")
        check("-service=user.v1.UserService" in args, "helm test does not check readiness")
        check(not m.selector.items() <= t["metadata"]["labels"].items(), "test pod matches the Service selector")
    problems.assert_none(value_set)


@each_value_set
def test_postgres_replicas(render_set, value_set):
    """Several replicas share PostgreSQL; a PDB keeps one serving during
    drains."""
    m, problems = render_set(value_set), Problems()
    if m.postgres:
        replicas = m.deployment["spec"].get("replicas", 0)
        problems.check(replicas >= 2, f"PostgreSQL set runs {replicas} replica(s)")
        problems.check(m.of_kind("PodDisruptionBudget"), "PostgreSQL set without a PodDisruptionBudget")
    problems.assert_none(value_set)


@pytest.mark.parametrize("value_set", ["default", "memory-values"])
def test_memory_store_sets(render_set, value_set):
    """The image tag defaults to the chart's appVersion; the memory store
    runs alone and renders no database parts."""
    m, problems = render_set(value_set), Problems()
    with open(CHART / "Chart.yaml") as f:
        app_version = str(yaml.safe_load(f)["appVersion"])
    problems.check(m.container["image"].endswith(":" + app_version), f"image tag is not appVersion: {m.container['image']}")
    problems.check(m.deployment["spec"]["replicas"] == 1, "memory store with more than one replica")
    problems.check(not m.postgres and not m.jobs and not m.secrets, "memory store renders database parts")
    problems.assert_none(value_set)


def check_full_set_scaling(problems, m):
    """HPA, PDB and NetworkPolicy of the full set select and scale the
    Deployment's pods, and let the helm test pod in."""
    check = problems.check
    hpa = m.one("HorizontalPodAutoscaler")
    # No live Deployment to look up under `helm template`: minReplicas.
    check(m.deployment["spec"].get("replicas") == hpa.get("spec", {}).get("minReplicas"),
          "without a live Deployment, replicas must start at autoscaling.minReplicas")
    check(hpa.get("apiVersion") == "autoscaling/v2", "HPA is not autoscaling/v2")
    check(hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == m.deployment["metadata"]["name"], "HPA scales something else")
    check(hpa.get("spec", {}).get("minReplicas") == 3, "HPA minReplicas")
    pdb = m.one("PodDisruptionBudget")
    check(pdb.get("spec", {}).get("selector", {}).get("matchLabels") == m.selector, "PDB selects other pods")
    netpol = m.one("NetworkPolicy")
    ingress_rules = netpol.get("spec", {}).get("ingress", [])
    np_ports = sorted(p["port"] for r in ingress_rules for p in r["ports"])
    check(np_ports == sorted([m.cports["grpc"], m.cports["admin"]]), f"NetworkPolicy opens {np_ports}")
    check(netpol.get("spec", {}).get("podSelector", {}).get("matchLabels") == m.selector, "NetworkPolicy selects other pods")
    grpc_rule = next((r for r in ingress_rules if any(p["port"] == m.cports["grpc"] for p in r["ports"])), {})
    for t in m.test_pods:
        check(not grpc_rule.get("from") or any(
                  f.get("podSelector", {}).get("matchLabels", {}).items() <= t["metadata"]["labels"].items()
                  and "namespaceSelector" not in f for f in grpc_rule["from"]),
              "NetworkPolicy blocks the helm test pod")


def check_full_set_routing(problems, m):
    """The headless Service, Ingress and GRPCRoute of the full set reach the
    gRPC port."""
    check, service, ports = problems.check, m.service, m.ports
    headless = m.one("Service", "-headless")
    check(headless.get("spec", {}).get("clusterIP") == "None", "headless Service is not headless")
    check(headless.get("spec", {}).get("ports", [{}])[0].get("appProtocol") == "kubernetes.io/h2c", "headless Service lacks h2c")
    ingress = m.one("Ingress")
    check(ingress["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC", "Ingress is not GRPC")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    check(backend["name"] == service["metadata"]["name"] and backend["port"].get("name") in ports, "Ingress points elsewhere")
    route = m.one("GRPCRoute")
    check(route.get("apiVersion") == "gateway.networking.k8s.io/v1", "GRPCRoute is not gateway.networking.k8s.io/v1")
    rb = route["spec"]["rules"][0]["backendRefs"][0]
    check(rb["name"] == service["metadata"]["name"] and rb["port"] == ports["grpc"]["port"], "GRPCRoute points elsewhere")
    check(route["spec"].get("parentRefs"), "GRPCRoute has no parentRefs")


def check_full_set_monitoring(problems, m):
    """ServiceMonitor, PrometheusRule and dashboard ConfigMap of the full
    set: scraped as job user-service, the canonical rules and dashboard
    verbatim (Helm must not render their {{ }})."""
    check, service = problems.check, m.service
    monitor = m.one("ServiceMonitor")
    check(monitor.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor is not monitoring.coreos.com/v1")
    endpoint = monitor["spec"]["endpoints"][0]
    check(endpoint["port"] == "metrics" and endpoint.get("path") == "/metrics", "ServiceMonitor scrapes the wrong port or path")
    check(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), "ServiceMonitor selects no Service")
    check(service["metadata"]["labels"].get(monitor["spec"].get("jobLabel")) == "user-service",
          "ServiceMonitor's job label would not be user-service (alerts match job=~\".*user-service.*\")")
    rule = m.one("PrometheusRule")
    with open(ALERTS) as f:
        check(rule["spec"] == yaml.safe_load(f), "PrometheusRule differs from the canonical alert rules")
    check("{{ $labels.job }}" in json.dumps(rule["spec"]), "Helm rendered the alert annotations' templates")
    dashboard = m.one("ConfigMap", "-dashboard")
    check(dashboard["metadata"]["labels"].get("grafana_dashboard") == "1", 'dashboard ConfigMap lacks grafana_dashboard: "1"')
    body = dashboard["data"]["user-service.json"]
    with open(DASHBOARD) as f:
        check(json.loads(body) == json.load(f), "dashboard ConfigMap differs from the canonical dashboard")
    check("{{grpc_method}}" in body and "${datasource}" in body, "Helm rendered the dashboard's {{...}} legends")


def test_postgres_full_set(render_set):
    """The set with every option on: existing Secrets, migration Job,
    autoscaling, routing and monitoring objects."""
    m, problems = render_set("postgres-full-values"), Problems()
    check, env = problems.check, m.env
    check(m.postgres and len(m.jobs) == 1, "postgres set lacks its migration Job")
    check(m.ref == {"name": "user-service-db", "key": "url"}, f"URL not taken from the existing Secret: {m.ref}")
    check(not m.of_kind("Secret"), "chart creates a Secret although existingSecret is set")
    check(m.jwt_volume.get("secretName") == "user-service-jwt", f"JWT secret not taken from auth.existingSecret: {m.jwt_volume}")
    check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "false", "pods migrate although the hook Job does")
    check_full_set_scaling(problems, m)
    check_full_set_routing(problems, m)
    check_full_set_monitoring(problems, m)
    check(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http"), "OTLP endpoint not passed")
    problems.assert_none("postgres-full-values")


def test_tls_set(render_set):
    m, problems = render_set("tls-values"), Problems()
    check, env = problems.check, m.env
    check(m.volumes.get("tls", {}).get("secret", {}).get("secretName") == "user-service-tls", "TLS volume is not the Secret")
    check(env.get("USER_SERVICE__TLS__CLIENT_CA_FILE", {}).get("value", "").endswith("/ca.crt"), "mTLS CA not passed")
    check(env.get("USER_SERVICE__TLS__RELOAD_INTERVAL", {}).get("value") == "30s", "tls.reloadInterval not passed")
    ingress = m.one("Ingress")
    check(ingress["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPCS",
          "Ingress talks plaintext gRPC to a TLS backend")
    problems.assert_none("tls-values")


def test_loadbalancer_set(render_set):
    """A LoadBalancer with the chart's own database Secret, no migration
    Job (the pods migrate), a config file and no test pod."""
    m, problems = render_set("loadbalancer-values"), Problems()
    check, service, env = problems.check, m.service, m.env
    check(service["spec"]["type"] == "LoadBalancer", "Service is not a LoadBalancer")
    check(service["spec"].get("loadBalancerSourceRanges") == ["203.0.113.0/24"], "loadBalancerSourceRanges lost")
    check(service["spec"].get("externalTrafficPolicy") == "Local", "externalTrafficPolicy lost")
    check(not any(s["spec"].get("clusterIP") == "None" for s in m.services), "headless Service although disabled")
    check(len(m.release_secrets) == 1 and not m.hook_secrets and not m.jobs, "expected the chart's Secret and no migration Job")
    secret = m.release_secrets[0] if m.release_secrets else {"metadata": {"name": ""}}
    check(m.ref == {"name": secret["metadata"]["name"], "key": "url"}, "pods do not read the chart's Secret")
    check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "true", "pods must migrate when the hook Job is off")
    check(m.config_maps, "configFile did not render a ConfigMap")
    check(not m.test_pods, "tests.enabled=false still renders the test pod")
    problems.assert_none("loadbalancer-values")


def test_postgres_url_set(render_set):
    m, problems = render_set("postgres-url-values"), Problems()
    problems.check(len(m.jobs) == 1 and len(m.release_secrets) == 1 and len(m.hook_secrets) == 1,
                   "expected the chart's Secret, its hook copy and the migration Job")
    problems.check(m.env["USER_SERVICE__STORE__MIGRATE"]["value"] == "false", "pods migrate although the hook Job does")
    problems.assert_none("postgres-url-values")
