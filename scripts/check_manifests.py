"""Asserts facts about a rendered chart that schemas cannot: probes,
hardening, wiring between objects, hooks, and that the alert rules and
dashboard arrive unrendered. Usage: check_manifests.py SET RENDERED ALERTS DASHBOARD"""
import json
import sys

import yaml

value_set, rendered, alerts_path, dashboard_path = sys.argv[1:5]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


def of_kind(kind):
    return [d for d in docs if d["kind"] == kind]


def one(kind, suffix=""):
    found = [d for d in of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
    check(len(found) == 1, f"expected one {kind} *{suffix}, found {len(found)}")
    return found[0] if found else {}


for doc in docs:
    labels = doc["metadata"].get("labels", {})
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"):
        check(key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}")


def check_hardened(pod_spec, where):
    check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: service account token is mounted")
    psc = pod_spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
    for c in pod_spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation")
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: readOnlyRootFilesystem")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}: drop ALL")
        res = c.get("resources", {})
        check("requests" in res and "limits" in res, f"{where}/{c['name']}: requests and limits")


deployment = one("Deployment")
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
env = {e["name"]: e for e in container.get("env", [])}
check_hardened(pod, "Deployment")
check(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rollout may drop below capacity")
check("checksum/config" in deployment["spec"]["template"]["metadata"].get("annotations", {}), "no checksum/config annotation")
seconds = lambda name: int(env[name]["value"].rstrip("s"))
budget = seconds("USER_SERVICE__SHUTDOWN__DRAIN_DELAY") + seconds("USER_SERVICE__SHUTDOWN__TIMEOUT")
check(pod["terminationGracePeriodSeconds"] > budget, "terminationGracePeriodSeconds does not cover drain + timeout")
grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
check(env["USER_SERVICE__GRPC__ADDR"]["value"].endswith(f":{grpc_port}"), "gRPC address and container port differ")

if "grpc" in container["readinessProbe"]:
    for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", "user.v1.UserService")):
        spec = container[probe].get("grpc", {})
        check(spec.get("port") == grpc_port and isinstance(spec.get("port"), int), f"{probe}: gRPC port must be the number {grpc_port}")
        check(spec.get("service") == service, f"{probe}: service should be {service!r}")
else:
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "HTTP readiness probe is not /readyz")
    check(container["livenessProbe"]["httpGet"]["path"] == "/livez", "HTTP liveness probe is not /livez")

service = one("Service", "user-service")
ports = {p["name"]: p for p in service["spec"]["ports"]}
check(ports.get("grpc", {}).get("appProtocol") == "kubernetes.io/h2c", "Service grpc port lacks appProtocol h2c")
check("metrics" in ports, "Service has no metrics port")

postgres = "USER_SERVICE__STORE__URL" in env
if postgres:
    check("secretKeyRef" in env["USER_SERVICE__STORE__URL"].get("valueFrom", {}), "the database URL is not read from a Secret")
for e in container.get("env", []):
    check("postgres://" not in str(e.get("value", "")), f"plaintext database URL in env {e['name']}")

test_pods = [d for d in of_kind("Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
check(len(test_pods) == 1, "no helm test pod")
if test_pods:
    check_hardened(test_pods[0]["spec"], "test pod")
    check("-service=user.v1.UserService" in test_pods[0]["spec"]["containers"][0]["args"], "helm test does not check readiness")

jobs = of_kind("Job")
for job in jobs:
    hooks = job["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    check(set(hooks.split(",")) == {"pre-install", "pre-upgrade"}, f"migration job hook is {hooks!r}")
    check(job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], "migration job does not run `migrate`")
    check_hardened(job["spec"]["template"]["spec"], "migration job")
for secret in of_kind("Secret"):
    check("pre-install" in secret["metadata"].get("annotations", {}).get("helm.sh/hook", ""), "the DB Secret must exist before the migration hook")

if value_set in ("default", "memory-values"):
    check(deployment["spec"]["replicas"] == 1, "memory store with more than one replica")
    check(not postgres and not jobs and not of_kind("Secret"), "memory store renders database parts")

if value_set == "postgres-full-values":
    check(postgres and len(jobs) == 1, "postgres set lacks its migration job")
    check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "false", "pods migrate although the hook Job does")
    check("replicas" not in deployment["spec"], "replicas set although the HPA owns them")
    check(one("HorizontalPodAutoscaler").get("spec", {}).get("minReplicas") == 3, "HPA minReplicas")
    check(one("PodDisruptionBudget") != {}, "no PDB")
    check(one("NetworkPolicy") != {}, "no NetworkPolicy")
    check(one("Service", "-headless")["spec"].get("clusterIP") == "None", "headless Service is not headless")
    ingress = one("Ingress")
    check(ingress["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC", "Ingress is not GRPC")
    route = one("GRPCRoute")
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    check(backend["name"] == service["metadata"]["name"] and backend["port"] == ports["grpc"]["port"], "GRPCRoute points elsewhere")
    monitor = one("ServiceMonitor")
    check(monitor["spec"]["endpoints"][0]["port"] in ports, "ServiceMonitor scrapes a port the Service lacks")
    check(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), "ServiceMonitor selects no Service")
    rule = one("PrometheusRule")
    check(rule["spec"] == yaml.safe_load(open(alerts_path)), "PrometheusRule differs from deploy/prometheus/alerts.yaml")
    check("{{ $labels.job }}" in json.dumps(rule["spec"]), "Helm rendered the alert annotations' templates")
    dashboard = one("ConfigMap", "-dashboard")
    check(dashboard["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap lacks grafana_dashboard: \"1\"")
    body = dashboard["data"]["user-service.json"]
    check(json.loads(body) == json.load(open(dashboard_path)), "dashboard ConfigMap differs from grafana/dashboards/user-service.json")
    check("{{grpc_method}}" in body, "Helm rendered the dashboard's legend templates")
    check(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http"), "OTLP endpoint not passed")

if value_set == "loadbalancer-values":
    check(service["spec"]["type"] == "LoadBalancer", "Service is not a LoadBalancer")
    check(service["spec"].get("loadBalancerSourceRanges") == ["203.0.113.0/24"], "loadBalancerSourceRanges lost")
    check(service["spec"].get("externalTrafficPolicy") == "Local", "externalTrafficPolicy lost")
    check(len(of_kind("Secret")) == 1 and not jobs, "chart-managed Secret without migration job expected")
    check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "true", "pods must migrate when the hook Job is off")

if problems:
    print("\n".join(f"{value_set}: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"    {value_set}: {len(docs)} objects ok")
