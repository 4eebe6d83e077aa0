#!/usr/bin/env bash
# Deployment checks: the Helm chart, the Prometheus rules and the Grafana
# dashboard. Runs on a fresh Debian 12 machine as root that reaches only
# package registries (Debian, PyPI, the Go module proxy); installs what it
# needs, at pinned versions, under .tools/ (git-ignored) when missing:
#   helm                 go install helm.sh/helm/v3/cmd/helm@HELM_VERSION
#   kubernetes-validate  pip, in a virtualenv (schemas ship inside the wheel)
#   promtool             Debian's prometheus package (its daemon kept stopped)
#
# Usage: scripts/test-deploy.sh          run every check
#
# Every check is something that fails when the chart, the rules or the
# dashboard is broken; the summary lists the failures and the script exits
# non-zero if there is any.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- pins ---------------------------------------------------------------
HELM_VERSION=v3.22.0
# Official helm builds default to the Kubernetes minor of their client-go
# (v0.37 for helm v3.22.0); `go install` must set it the same way, or helm
# assumes Kubernetes 1.20 and refuses the chart's kubeVersion >=1.27.
HELM_K8S_MINOR=37
KUBERNETES_VALIDATE_VERSION=1.37.0
# Go toolchain fetched from the module proxy when no Go >= 1.21 is installed.
GO_TOOLCHAIN_VERSION=1.26.8
# Kubernetes versions the rendered manifests are validated against: the
# chart's minimum and a common production version.
KUBE_VERSIONS=(1.27.0 1.30.0)
KUBE_VERSION=1.30.0
# Custom resources have no schema in kubernetes-validate: these kinds, and
# only these, are skipped by schema validation (their wiring is checked by
# the fact checks below).
UNCHECKED_KINDS=(ServiceMonitor PrometheusRule GRPCRoute)
# The chart refuses those kinds unless the cluster serves them
# (.Capabilities.APIVersions); `helm template` is told so for the value sets
# that enable them, as a cluster with the CRDs installed would report them.
CRD_APIS=(monitoring.coreos.com/v1/ServiceMonitor monitoring.coreos.com/v1/PrometheusRule
  gateway.networking.k8s.io/v1/GRPCRoute)
CRD_API_ARGS=()
for api in "${CRD_APIS[@]}"; do CRD_API_ARGS+=(--api-versions "$api"); done
# Value sets (helm/user-service/ci/NAME.yaml) that enable them.
CRD_SETS=(postgres-full-values)

CHART=helm/user-service
DASHBOARD=grafana/dashboards/user-service.json
ALERTS=deploy/prometheus/alerts.yaml
ALERTS_TEST=deploy/prometheus/alerts_test.yaml
TOOLS="$PWD/.tools"

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# ---- tools --------------------------------------------------------------
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$TOOLS/go/bin:$PATH"

apt_updated=0
apt_install() { # packages...; never lets a package start its daemon
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ "$created" = 1 ]; then rm -f "$policy"; fi
}

go_minor() { go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'; }

ensure_go() { # Go >= 1.21, which fetches newer toolchains from the proxy itself
  if command -v go >/dev/null 2>&1 && [ "$(go_minor)" -ge 21 ] 2>/dev/null; then
    return
  fi
  command -v go >/dev/null 2>&1 || { log "apt-get install golang-go (to bootstrap)"; apt_install golang-go ca-certificates; }
  # Debian 12's Go (1.19) cannot switch toolchains: fetch the pinned one as
  # the golang.org/toolchain module, as newer go commands do.
  local arch module dir
  arch=$(go env GOARCH)
  module="golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-$arch"
  log "go mod download $module"
  dir=$(cd /tmp && GOFLAGS='' go mod download -json "$module" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then die "could not download $module"; fi
  rm -rf "$TOOLS/go"
  cp -r "$dir" "$TOOLS/go"
  chmod -R u+w "$TOOLS/go"
  chmod +x "$TOOLS/go/bin/"* "$TOOLS/go/pkg/tool/"*/*
  hash -r
  [ "$(go_minor)" -ge 21 ] || die "go in PATH is still $(go version)"
}

helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null || true; }

HELM=""
if command -v helm >/dev/null 2>&1 && [ "$(helm_version helm)" = "$HELM_VERSION" ]; then
  HELM=$(command -v helm)
elif [ -x "$TOOLS/bin/helm" ] && [ "$(helm_version "$TOOLS/bin/helm")" = "$HELM_VERSION" ]; then
  HELM="$TOOLS/bin/helm"
else
  ensure_go
  log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION (compiles for a few minutes)"
  # helm's go.mod has no replace directives, so `go install module@version`
  # works; the -X flags are those of helm's Makefile.
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  GOBIN="$TOOLS/bin" GOTOOLCHAIN=auto go install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  HELM="$TOOLS/bin/helm"
  [ "$(helm_version "$HELM")" = "$HELM_VERSION" ] || die "built helm reports $(helm_version "$HELM")"
fi

VENV="$TOOLS/venv"
if ! "$VENV/bin/python" -c "import kubernetes_validate.version as v, sys; sys.exit(v.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "apt-get install python3 python3-venv"
    apt_install python3 python3-venv
  fi
  log "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
PY="$VENV/bin/python"

if ! command -v promtool >/dev/null 2>&1; then
  log "apt-get install prometheus (for promtool; Debian 12 ships 2.42)"
  apt_install prometheus
  # policy-rc.d kept the package from starting its daemon; make sure it
  # does not start at boot either. Only the boot setting of the package
  # installed just now changes: nothing running is stopped.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable prometheus >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi

log "tools: helm $(helm_version "$HELM"), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)," \
  "$(promtool --version 2>&1 | head -1)"

# ---- check runner -------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passed=0
failures=()

# check NAME COMMAND...: runs COMMAND with errexit in a subshell; prints its
# output only when it fails.
check() {
  local name=$1 rc
  shift
  set +e
  (set -e; "$@") >"$WORK/check.out" 2>&1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    printf '  ok    %s\n' "$name"
  else
    failures+=("$name")
    printf '  FAIL  %s\n' "$name"
    # At most 40 lines of 300 characters: enough to see why.
    head -n 40 "$WORK/check.out" | cut -c 1-300 | sed 's/^/        /'
  fi
}

# must_fail EXPECTED_TEXT COMMAND...: COMMAND must fail and say EXPECTED_TEXT.
must_fail() {
  local expect=$1
  shift
  if "$@" >"$WORK/refused.out" 2>&1; then
    echo "accepted, but should have been refused: $*"
    return 1
  fi
  grep -qF -- "$expect" "$WORK/refused.out" || {
    cat "$WORK/refused.out"
    echo "refused, but without mentioning '$expect'"
    return 1
  }
}

# ---- python checks (run with the virtualenv's python: PyYAML and
# kubernetes-validate) --------------------------------------------------------
cat >"$WORK/checks.py" <<'PYEOF'
import json
import re
import sys

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (YAML allows the parser
    to keep the last one silently; Kubernetes clients differ)."""


def _construct_mapping(loader, node, deep=False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d]


def fail_if(problems, prefix):
    if problems:
        print("\n".join(f"{prefix}: {p}" for p in problems), file=sys.stderr)
        sys.exit(1)


# -- validate RENDERED KUBE_VERSION SKIPPED_KINDS... -------------------------
def validate(path, version, *skipped):
    import kubernetes_validate

    problems, counted = [], {}
    docs = load_all(path)
    if not docs:
        problems.append(f"no objects in {path}")
    for doc in docs:
        kind = doc.get("kind")
        if kind in skipped:
            counted.setdefault(f"skipped {kind}", 0)
            counted[f"skipped {kind}"] += 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            counted[kind] = counted.get(kind, 0) + 1
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            msg = getattr(e, "message", str(e))
            problems.append(f"{kind}/{doc.get('metadata', {}).get('name')}: {msg}")
    fail_if(problems, f"Kubernetes {version}")
    print(", ".join(f"{k} x{v}" for k, v in sorted(counted.items())))


# -- facts SET RENDERED CHART_YAML ALERTS DASHBOARD ----------------------------
def facts(value_set, rendered, chart_yaml, alerts_path, dashboard_path):
    docs = load_all(rendered)
    chart = yaml.safe_load(open(chart_yaml))
    problems = []

    def check(condition, message):
        if not condition:
            problems.append(message)

    def of_kind(kind):
        return [d for d in docs if d["kind"] == kind]

    def one(kind, suffix=""):
        found = [d for d in of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
        check(len(found) == 1, f"expected one {kind} named *{suffix}, found {len(found)}")
        return found[0] if found else {}

    standard = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart")
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in standard:
            check(key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}")

    def hardened(pod_spec, where):
        check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: service account token is mounted")
        psc = pod_spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
        for c in pod_spec["containers"]:
            sc = c.get("securityContext", {})
            check(sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation")
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: readOnlyRootFilesystem")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}: capabilities drop ALL")
            check(not sc.get("privileged"), f"{where}/{c['name']}: privileged")
            res = c.get("resources", {})
            check(res.get("requests") and res.get("limits"), f"{where}/{c['name']}: requests and limits")

    # Deployment ------------------------------------------------------------
    deployment = one("Deployment")
    fail_if(problems, value_set)  # nothing below makes sense without it
    pod_template = deployment["spec"]["template"]
    pod = pod_template["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    hardened(pod, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = pod_template["metadata"]["labels"]
    check(selector.items() <= pod_labels.items(), "the Deployment's selector does not match its pods")
    check(selector.get("app.kubernetes.io/component") == "server", "selector lacks component=server")
    check(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rollout may drop below capacity")
    check("checksum/config" in pod_template["metadata"].get("annotations", {}), "no checksum/config annotation")
    check(pod.get("topologySpreadConstraints"), "no topologySpreadConstraints")
    for tsc in pod.get("topologySpreadConstraints", []):
        check(tsc["labelSelector"]["matchLabels"] == selector, "topology spread selects other pods")

    def seconds(name):
        m = re.fullmatch(r"(\d+)s", env[name]["value"])
        check(m, f"{name} is not a whole number of seconds")
        return int(m.group(1)) if m else 0

    budget = seconds("USER_SERVICE__SHUTDOWN__DRAIN_DELAY") + seconds("USER_SERVICE__SHUTDOWN__TIMEOUT") + 5
    check(pod["terminationGracePeriodSeconds"] >= budget,
          f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < drain + timeout + 5 = {budget}")
    cports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(env["USER_SERVICE__GRPC__ADDR"]["value"] == f"0.0.0.0:{cports.get('grpc')}", "gRPC address and container port differ")
    check(env["USER_SERVICE__ADMIN__ADDR"]["value"] == f"0.0.0.0:{cports.get('admin')}", "admin address and container port differ")
    check(env.get("USER_SERVICE__LOG__FORMAT", {}).get("value") == "json", "logs are not JSON")
    check(env.get("OTEL_SERVICE_NAME", {}).get("value"), "OTEL_SERVICE_NAME not set")

    if "grpc" in container["readinessProbe"]:
        for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", "user.v1.UserService")):
            spec = container.get(probe, {}).get("grpc", {})
            check(type(spec.get("port")) is int and spec.get("port") == cports.get("grpc"),
                  f"{probe}: gRPC port must be the number {cports.get('grpc')}, got {spec.get('port')!r}")
            check(spec.get("service") == service, f"{probe}: service should be {service!r}, got {spec.get('service')!r}")
    else:
        for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            http = container.get(probe, {}).get("httpGet", {})
            check(http.get("path") == path, f"{probe}: HTTP path should be {path}")
            check(http.get("port") in ("admin", cports.get("admin")), f"{probe}: not on the admin port")

    # The config file, when there is one.
    cms = [d for d in of_kind("ConfigMap") if d["metadata"]["name"].endswith("-config")]
    if cms:
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        check(volumes.get("config", {}).get("configMap", {}).get("name") == cms[0]["metadata"]["name"],
              "config volume does not reference the ConfigMap")
        check(mounts.get("config", {}).get("mountPath") == "/etc/user-service", "config not mounted at /etc/user-service")
        args = container.get("args", [])
        check(args[:2] == ["--config", "/etc/user-service/config.toml"] and "config.toml" in cms[0]["data"],
              f"--config does not point at the mounted file: {args}")
    else:
        check(container.get("args") == ["serve"], f"args {container.get('args')}")

    # Services ----------------------------------------------------------------
    services = of_kind("Service")
    main = [s for s in services if s["spec"].get("clusterIP") != "None"]
    check(len(main) == 1, "expected one non-headless Service")
    service = main[0] if main else {"metadata": {"name": "", "labels": {}}, "spec": {"ports": []}}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    tls = "USER_SERVICE__TLS__CERT_FILE" in env
    if tls:
        check(ports.get("grpc", {}).get("appProtocol") != "kubernetes.io/h2c", "Service announces plaintext h2c although gRPC is TLS")
    else:
        check(ports.get("grpc", {}).get("appProtocol") == "kubernetes.io/h2c", "Service grpc port lacks appProtocol kubernetes.io/h2c")
    check(ports.get("metrics", {}).get("port") == cports.get("admin"), "Service has no metrics port on the admin port")
    for s in services:
        check(s["spec"]["selector"] == selector, f"Service {s['metadata']['name']} selects other pods than the Deployment's")
        for p in s["spec"]["ports"]:
            check(p["targetPort"] in cports, f"Service {s['metadata']['name']} targets unknown port {p['targetPort']}")
    check(sum(1 for s in services for p in s["spec"]["ports"] if p["name"] == "metrics") == 1,
          "more than one Service publishes metrics (pods would be scraped twice)")

    # TLS -------------------------------------------------------------------------
    if tls:
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mount = mounts.get("tls", {})
        check(mount.get("readOnly") is True, "TLS Secret is not mounted read-only")
        check("subPath" not in mount, "TLS Secret mounted with subPath: renewals would never show up")
        tls_dir = mount.get("mountPath", "<unmounted>")
        for var, file in (("USER_SERVICE__TLS__CERT_FILE", "tls.crt"), ("USER_SERVICE__TLS__KEY_FILE", "tls.key")):
            check(env.get(var, {}).get("value") == f"{tls_dir}/{file}", f"{var} does not point into the mounted Secret")
        check("grpc" not in container["readinessProbe"] and "grpc" not in container["livenessProbe"]
              and "grpc" not in container["startupProbe"], "gRPC probes with TLS on: the kubelet cannot speak TLS")
        check(all("httpGet" in container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")),
              "probes are not httpGet with TLS on")
        for t in [d for d in of_kind("Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]:
            targs = t["spec"]["containers"][0].get("args", [])
            check("-tls" in targs and any(a.startswith("-tls-ca-cert=") for a in targs),
                  f"helm test does not verify the server's certificate: {targs}")
            tvol = [v for v in t["spec"].get("volumes", []) if "secret" in v]
            check(tvol and tvol[0]["secret"]["secretName"] == volumes.get("tls", {}).get("secret", {}).get("secretName"),
                  "helm test does not mount the TLS Secret")
            if "USER_SERVICE__TLS__CLIENT_CA_FILE" in env:
                check(any(a.startswith("-tls-client-cert=") for a in targs), "helm test presents no client certificate under mTLS")
    else:
        check(not any(k.startswith("USER_SERVICE__TLS__") for k in env), "TLS settings without tls.enabled")

    # Database ------------------------------------------------------------------
    postgres = "USER_SERVICE__STORE__URL" in env
    if postgres:
        ref = env["USER_SERVICE__STORE__URL"].get("valueFrom", {}).get("secretKeyRef")
        check(ref, "the database URL is not read from a Secret")
    for e in container.get("env", []):
        check("postgres://" not in str(e.get("value", "")), f"plaintext database URL in env {e['name']}")
    jobs = of_kind("Job")
    for job in jobs:
        ann = job["metadata"].get("annotations", {})
        check(set(ann.get("helm.sh/hook", "").split(",")) == {"pre-install", "pre-upgrade"},
              f"migration Job hook is {ann.get('helm.sh/hook')!r}")
        jspec = job["spec"]["template"]["spec"]
        jc = jspec["containers"][0]
        check(jc["args"] == ["migrate"], "migration Job does not run `migrate`")
        check(jc["image"] == container["image"], "migration Job runs another image")
        jenv = {e["name"]: e for e in jc.get("env", [])}
        jref = jenv.get("USER_SERVICE__STORE__URL", {}).get("valueFrom", {}).get("secretKeyRef")
        check(jref, "the migration Job does not read the database URL from a Secret")
        check(jspec.get("restartPolicy") == "Never", "migration Job restarts in place")
        jlabels = job["spec"]["template"]["metadata"].get("labels", {})
        check(not selector.items() <= jlabels.items(), "migration pods match the Service selector")
        hardened(jspec, "migration Job")
    # The chart's own Secret (store.postgres.url) is a normal release resource,
    # so `helm uninstall` deletes it; the migration hook Job, which runs
    # before release resources exist, reads a hook-lived copy instead.
    def hook_of(doc):
        return doc["metadata"].get("annotations", {}).get("helm.sh/hook")
    # The database Secrets (the JWT Secret is checked on its own).
    secrets = [d for d in of_kind("Secret") if d["metadata"]["name"].endswith(("-db", "-db-migrate"))]
    release_secrets = [d for d in secrets if not hook_of(d)]
    hook_secrets = [d for d in secrets if hook_of(d)]
    secret_names = {d["metadata"]["name"]: d for d in secrets}
    if postgres and ref and ref["name"] in secret_names:
        check(secret_names[ref["name"]] in release_secrets,
              "the pods' database Secret is a hook: `helm uninstall` would leave it (and the password) behind")
    check(len(release_secrets) <= 1, "more than one release Secret")
    for job in jobs:
        jc = job["spec"]["template"]["spec"]["containers"][0]
        jref = {e["name"]: e for e in jc.get("env", [])}.get("USER_SERVICE__STORE__URL", {}) \
            .get("valueFrom", {}).get("secretKeyRef") or {}
        if not release_secrets:  # existingSecret: there before the release
            check(jref == ref, f"migration Job reads {jref}, the pods {ref}")
            continue
        copy = secret_names.get(jref.get("name"))
        check(copy in hook_secrets, "the migration Job reads a Secret that does not exist when pre-install hooks run")
        if copy not in hook_secrets:
            continue
        ann = copy["metadata"]["annotations"]
        check(set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"},
              f"the Job's Secret hook is {ann['helm.sh/hook']!r}")
        check(int(ann.get("helm.sh/hook-weight", "0")) < int(job["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
              "the Job's Secret is created after the Job")
        policy = set(ann.get("helm.sh/hook-delete-policy", "").split(","))
        check({"hook-succeeded", "before-hook-creation"} <= policy,
              f"the Job's Secret outlives the hook run (delete policy {policy})")
        check(jref.get("key") == ref.get("key") and copy.get("stringData") == release_secrets[0].get("stringData"),
              "the Job's Secret holds other data than the pods' Secret")
    check(len(hook_secrets) == (1 if release_secrets and jobs else 0),
          f"{len(hook_secrets)} hook Secrets (expected one copy exactly when the chart's Secret and the Job are both rendered)")

    # Authentication ------------------------------------------------------------
    # On in every value set; the HS256 secret reaches the pods as a file from
    # a Secret (the chart's own, or auth.existingSecret), never as a value.
    check(env.get("USER_SERVICE__AUTH__ENABLED", {}).get("value") == "true", "auth is not enabled")
    check("USER_SERVICE__AUTH__JWT_SECRET" not in env, "the JWT secret is passed as an environment value")
    secret_file = env.get("USER_SERVICE__AUTH__JWT_SECRET_FILE", {}).get("value", "")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    jwt_mount = mounts.get("jwt-secret", {})
    jwt_volume = volumes.get("jwt-secret", {}).get("secret", {})
    check(jwt_mount.get("readOnly") is True and secret_file == jwt_mount.get("mountPath", "?") + "/jwt-secret",
          f"USER_SERVICE__AUTH__JWT_SECRET_FILE {secret_file!r} is not the mounted secret {jwt_mount}")
    check([i.get("path") for i in jwt_volume.get("items", [])] == ["jwt-secret"], f"the secret volume does not provide jwt-secret: {jwt_volume}")
    jwt_secrets = [d for d in of_kind("Secret") if d["metadata"]["name"] == jwt_volume.get("secretName")]
    for secret in jwt_secrets:
        import base64
        key = jwt_volume["items"][0]["key"]
        value = base64.b64decode(secret.get("data", {}).get(key, "")).decode()
        check(len(value) >= 32, f"the chart's JWT secret is {len(value)} characters, not at least 32")
        check(not secret["metadata"].get("annotations", {}).get("helm.sh/hook"), "the JWT Secret is a hook (deleted and recreated: tokens would break)")
    if value_set in ("default", "memory-values", "loadbalancer-values"):
        check(len(jwt_secrets) == 1, "the chart did not create the JWT Secret the pods mount")
    for job in jobs:
        jenv = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        check(not any(n.startswith("USER_SERVICE__AUTH__") for n in jenv), "the migration Job gets the JWT secret it does not need")

    # helm test -------------------------------------------------------------------
    tests = [d for d in of_kind("Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    if value_set != "loadbalancer-values":
        check(len(tests) == 1, "no helm test pod")
    for t in tests:
        hardened(t["spec"], "test pod")
        # hook-succeeded would delete the pod before `helm test --logs` reads it.
        policy = t["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "")
        check(policy == "before-hook-creation", f"test pod delete policy {policy!r}: `helm test --logs` needs the pod")
        tc = t["spec"]["containers"][0]
        image = tc["image"]
        check("grpc-health-probe" in image and re.search(r":v\d+\.\d+\.\d+$", image), f"test image not pinned: {image}")
        check(tc.get("imagePullPolicy") in ("Always", "IfNotPresent", "Never"), "test pod has no imagePullPolicy")
        check(t["spec"].get("imagePullSecrets") == pod.get("imagePullSecrets"), "test pod pulls with other secrets than the server")
        args = tc.get("args", [])
        check(f"-addr={service['metadata']['name']}:{ports.get('grpc', {}).get('port')}" in args,
              f"helm test does not target the Service's grpc port: {args}")
        check("-service=user.v1.UserService" in args, "helm test does not check readiness")
        check(not selector.items() <= t["metadata"]["labels"].items(), "test pod matches the Service selector")

    # Several replicas share PostgreSQL; a PDB keeps one serving during drains.
    if postgres:
        check(deployment["spec"].get("replicas", 0) >= 2, f"PostgreSQL set runs {deployment['spec'].get('replicas')} replica(s)")
        check(of_kind("PodDisruptionBudget"), "PostgreSQL set without a PodDisruptionBudget")
    check(isinstance(deployment["spec"].get("replicas"), int),
          "Deployment without replicas: the API server would default it to 1 (also when an HPA takes over)")

    # The image tag defaults to the chart's appVersion.
    if value_set in ("default", "memory-values"):
        check(container["image"].endswith(":" + str(chart["appVersion"])), f"image tag is not appVersion: {container['image']}")
        check(deployment["spec"]["replicas"] == 1, "memory store with more than one replica")
        check(not postgres and not jobs and not secrets, "memory store renders database parts")

    if value_set == "postgres-full-values":
        check(postgres and len(jobs) == 1, "postgres set lacks its migration Job")
        check(ref == {"name": "user-service-db", "key": "url"}, f"URL not taken from the existing Secret: {ref}")
        check(not of_kind("Secret"), "chart creates a Secret although existingSecret is set")
        check(jwt_volume.get("secretName") == "user-service-jwt", f"JWT secret not taken from auth.existingSecret: {jwt_volume}")
        check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "false", "pods migrate although the hook Job does")
        hpa = one("HorizontalPodAutoscaler")
        # No live Deployment to look up under `helm template`: minReplicas.
        check(deployment["spec"].get("replicas") == hpa.get("spec", {}).get("minReplicas"),
              "without a live Deployment, replicas must start at autoscaling.minReplicas")
        check(hpa.get("apiVersion") == "autoscaling/v2", "HPA is not autoscaling/v2")
        check(hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == deployment["metadata"]["name"], "HPA scales something else")
        check(hpa.get("spec", {}).get("minReplicas") == 3, "HPA minReplicas")
        pdb = one("PodDisruptionBudget")
        check(pdb.get("spec", {}).get("selector", {}).get("matchLabels") == selector, "PDB selects other pods")
        netpol = one("NetworkPolicy")
        np_ports = sorted(p["port"] for r in netpol.get("spec", {}).get("ingress", []) for p in r["ports"])
        check(np_ports == sorted([cports["grpc"], cports["admin"]]), f"NetworkPolicy opens {np_ports}")
        check(netpol.get("spec", {}).get("podSelector", {}).get("matchLabels") == selector, "NetworkPolicy selects other pods")
        grpc_rule = next((r for r in netpol.get("spec", {}).get("ingress", [])
                          if any(p["port"] == cports["grpc"] for p in r["ports"])), {})
        for t in tests:
            check(not grpc_rule.get("from") or any(
                      f.get("podSelector", {}).get("matchLabels", {}).items() <= t["metadata"]["labels"].items()
                      and "namespaceSelector" not in f for f in grpc_rule["from"]),
                  "NetworkPolicy blocks the helm test pod")
        headless = one("Service", "-headless")
        check(headless.get("spec", {}).get("clusterIP") == "None", "headless Service is not headless")
        check(headless.get("spec", {}).get("ports", [{}])[0].get("appProtocol") == "kubernetes.io/h2c", "headless Service lacks h2c")
        ingress = one("Ingress")
        check(ingress["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC", "Ingress is not GRPC")
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        check(backend["name"] == service["metadata"]["name"] and backend["port"].get("name") in ports, "Ingress points elsewhere")
        route = one("GRPCRoute")
        check(route.get("apiVersion") == "gateway.networking.k8s.io/v1", "GRPCRoute is not gateway.networking.k8s.io/v1")
        rb = route["spec"]["rules"][0]["backendRefs"][0]
        check(rb["name"] == service["metadata"]["name"] and rb["port"] == ports["grpc"]["port"], "GRPCRoute points elsewhere")
        check(route["spec"].get("parentRefs"), "GRPCRoute has no parentRefs")
        monitor = one("ServiceMonitor")
        check(monitor.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor is not monitoring.coreos.com/v1")
        endpoint = monitor["spec"]["endpoints"][0]
        check(endpoint["port"] == "metrics" and endpoint.get("path") == "/metrics", "ServiceMonitor scrapes the wrong port or path")
        check(monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), "ServiceMonitor selects no Service")
        check(service["metadata"]["labels"].get(monitor["spec"].get("jobLabel")) == "user-service",
              "ServiceMonitor's job label would not be user-service (alerts match job=~\".*user-service.*\")")
        rule = one("PrometheusRule")
        check(rule["spec"] == yaml.safe_load(open(alerts_path)), "PrometheusRule differs from the canonical alert rules")
        check("{{ $labels.job }}" in json.dumps(rule["spec"]), "Helm rendered the alert annotations' templates")
        dashboard = one("ConfigMap", "-dashboard")
        check(dashboard["metadata"]["labels"].get("grafana_dashboard") == "1", 'dashboard ConfigMap lacks grafana_dashboard: "1"')
        body = dashboard["data"]["user-service.json"]
        check(json.loads(body) == json.load(open(dashboard_path)), "dashboard ConfigMap differs from the canonical dashboard")
        check("{{grpc_method}}" in body and "${datasource}" in body, "Helm rendered the dashboard's {{...}} legends")
        check(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http"), "OTLP endpoint not passed")

    if value_set == "tls-values":
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        check(volumes.get("tls", {}).get("secret", {}).get("secretName") == "user-service-tls", "TLS volume is not the Secret")
        check(env.get("USER_SERVICE__TLS__CLIENT_CA_FILE", {}).get("value", "").endswith("/ca.crt"), "mTLS CA not passed")
        check(env.get("USER_SERVICE__TLS__RELOAD_INTERVAL", {}).get("value") == "30s", "tls.reloadInterval not passed")
        ingress = one("Ingress")
        check(ingress["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPCS",
              "Ingress talks plaintext gRPC to a TLS backend")

    if value_set == "loadbalancer-values":
        check(service["spec"]["type"] == "LoadBalancer", "Service is not a LoadBalancer")
        check(service["spec"].get("loadBalancerSourceRanges") == ["203.0.113.0/24"], "loadBalancerSourceRanges lost")
        check(service["spec"].get("externalTrafficPolicy") == "Local", "externalTrafficPolicy lost")
        check(not any(s["spec"].get("clusterIP") == "None" for s in services), "headless Service although disabled")
        check(len(release_secrets) == 1 and not hook_secrets and not jobs, "expected the chart's Secret and no migration Job")
        secret = release_secrets[0] if release_secrets else {"metadata": {"name": ""}}
        check(ref == {"name": secret["metadata"]["name"], "key": "url"}, "pods do not read the chart's Secret")
        check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "true", "pods must migrate when the hook Job is off")
        check(cms, "configFile did not render a ConfigMap")
        check(not tests, "tests.enabled=false still renders the test pod")

    if value_set == "postgres-url-values":
        check(len(jobs) == 1 and len(release_secrets) == 1 and len(hook_secrets) == 1,
              "expected the chart's Secret, its hook copy and the migration Job")
        check(env["USER_SERVICE__STORE__MIGRATE"]["value"] == "false", "pods migrate although the hook Job does")

    fail_if(problems, value_set)
    print(f"{len(docs)} objects")


# -- dashboard DASHBOARD RULES_OUT: checks it, writes its queries as recording
# rules so that promtool parses every PromQL expression --------------------------
KNOWN_METRICS = {
    "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total", "grpc_server_handling_seconds_bucket", "grpc_server_handling_seconds_sum",
    "grpc_server_handling_seconds_count", "process_resident_memory_bytes", "process_cpu_seconds_total",
    "process_open_fds", "process_max_fds", "process_start_time_seconds", "user_service_build_info",
    "user_service_store_operation_duration_seconds_bucket", "user_service_store_operation_duration_seconds_count",
    "user_service_store_operation_duration_seconds_sum", "user_service_store_pool_connections",
    "user_service_store_pool_max_connections", "up",
}


def dashboard(path, rules_out):
    dash = json.load(open(path))
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            problems.append(f"missing top-level {key!r}")
    if "__inputs" in dash or "__requires" in dash:
        problems.append("__inputs/__requires cannot be resolved by sidecar provisioning; use the datasource variable")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
        problems.append("no template variable 'datasource' of type datasource for prometheus")
    for name in ("job", "namespace", "method"):
        v = variables.get(name, {})
        if v.get("type") != "query" or v.get("datasource", {}).get("uid") not in ("${datasource}", "$datasource"):
            problems.append(f"no query variable {name!r} on ${{datasource}}")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")

    exprs = []
    for panel in dash.get("panels", []):
        if panel.get("type") == "row":
            continue
        title = panel.get("title")
        if panel.get("datasource", {}).get("uid") not in ("${datasource}", "$datasource"):
            problems.append(f"panel {title!r} does not use ${{datasource}}")
        if not panel.get("targets"):
            problems.append(f"panel {title!r} has no query")
        if not all(k in panel.get("gridPos", {}) for k in "xywh"):
            problems.append(f"panel {title!r} has no gridPos")
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("uid") not in ("${datasource}", "$datasource"):
                problems.append(f"a target of {title!r} does not use ${{datasource}}")
            expr = target.get("expr", "")
            exprs.append((title, expr))
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables and not var.startswith("__"):
                    problems.append(f"{title!r} uses undefined variable ${var}")
            for metric in re.findall(r"\b((?:grpc_server|process|user_service)_\w+)", expr):
                if metric not in KNOWN_METRICS:
                    problems.append(f"{title!r} queries {metric}, which the service does not export")
            if "grpc_service" in expr and 'grpc_service="user.v1.UserService"' not in expr:
                problems.append(f"{title!r} does not select grpc_service=\"user.v1.UserService\"")

    text = "\n".join(e for _, e in exprs)
    for needed in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "grpc_server_started_total",
                   "grpc_server_msg_sent_total", "grpc_server_msg_received_total", "process_cpu_seconds_total",
                   "process_resident_memory_bytes", "process_open_fds",
                   "user_service_store_operation_duration_seconds_bucket", "user_service_store_pool_connections"):
        if needed not in text:
            problems.append(f"no panel queries {needed}")
    for q in ("0.5", "0.9", "0.99"):
        if not re.search(rf"histogram_quantile\({q}, sum by \([^)]*\ble\b[^)]*\) \(rate\(grpc_server_handling_seconds_bucket", text):
            problems.append(f"no p{q} latency query by le")
    if "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss" not in text:
        problems.append("no error-ratio query on the server-error codes")
    if not re.search(r"\(grpc_server_started_total\{[^}]*\}\)\s*-\s*sum(?: by \([^)]*\))? \(grpc_server_handled_total", text):
        problems.append("no in-flight (started - handled) query")
    legends = [t.get("legendFormat", "") for p in dash.get("panels", []) for t in p.get("targets", [])]
    if not any("{{grpc_method}}" in l for l in legends):
        problems.append("no {{grpc_method}} legend")

    # Grafana's variables replaced by values PromQL accepts, for promtool.
    subst = [(r"\$\{?__rate_interval\}?|\$\{?__interval\}?|\$\{?__range\}?", "5m"), (r"\$\{?\w+\}?", ".*")]
    rules = []
    for i, (title, expr) in enumerate(exprs):
        for pattern, value in subst:
            expr = re.sub(pattern, value, expr)
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f)

    fail_if(problems, "dashboard")
    print(f"{len(exprs)} queries, variables {sorted(variables)}")


# -- badmanifest OUT: an object with an unknown field, to prove strictness ----
def badmanifest(out):
    with open(out, "w") as f:
        yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                        "spec": {"ports": [{"port": 1, "appProtocl": "typo"}]}}, f)


# -- fakeapi PORT_FILE NAMESPACE NAME REPLICAS: a stand-in Kubernetes API
# server on a free loopback port that knows one Deployment (REPLICAS "none"
# or "off": it does not exist), enough for Helm's `lookup`. Logs each request
# to stderr; runs until killed.
def fakeapi(port_file, namespace, name, replicas):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?")[0]
            sys.stderr.write(f"GET {path}\n")
            sys.stderr.flush()
            if path == "/apis/apps/v1":
                self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
                                 "resources": [{"name": "deployments", "singularName": "deployment", "namespaced": True,
                                                "kind": "Deployment", "verbs": ["get", "list"]}]})
            elif path == f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}" and replicas.isdigit():
                self.reply(200, {"apiVersion": "apps/v1", "kind": "Deployment",
                                 "metadata": {"name": name, "namespace": namespace},
                                 "spec": {"replicas": int(replicas)}})
            else:
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "code": 404, "message": f"{path} not found"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


commands = {"validate": validate, "facts": facts, "dashboard": dashboard, "badmanifest": badmanifest, "fakeapi": fakeapi}
commands[sys.argv[1]](*sys.argv[2:])
PYEOF
checks() { "$PY" "$WORK/checks.py" "$@"; }

# ---- 1. single sources of truth ------------------------------------------
# The dashboard and the alert rules live once, in the chart (Helm can only
# read files inside it: .Files.Get); the top-level paths are symlinks to
# them, so a copy that could drift is an error.
log "one source for the dashboard and the alert rules"
check "$DASHBOARD is a symlink to $CHART/files/dashboard.json" \
  test "$(readlink -f "$DASHBOARD")" = "$(readlink -f "$CHART/files/dashboard.json")" -a -L "$DASHBOARD"
check "$ALERTS is a symlink to $CHART/files/alerts.yaml" \
  test "$(readlink -f "$ALERTS")" = "$(readlink -f "$CHART/files/alerts.yaml")" -a -L "$ALERTS"

# ---- 2. Prometheus rules ----------------------------------------------------
log "Prometheus rules"
check "promtool check rules $ALERTS" promtool check rules "$ALERTS"
check "promtool test rules $ALERTS_TEST" promtool test rules "$ALERTS_TEST"
check "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml

# The unit tests must catch broken expressions: each mutation of the rules
# has to make them fail.
mutant() { # sed expression applied to the rules
  local dir="$WORK/mutant"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$ALERTS_TEST" "$dir/alerts_test.yaml"
  sed -e "$1" "$ALERTS" >"$dir/alerts.yaml"
  if cmp -s "$ALERTS" "$dir/alerts.yaml"; then
    echo "the mutation '$1' no longer applies to $ALERTS: update it"
    return 1
  fi
  must_fail "FAILED" promtool test rules "$dir/alerts_test.yaml"
}
check "tests catch: page threshold 14.4x -> 144x" mutant 's/(14\.4 \* 0\.001)/(144 * 0.001)/g'
check "tests catch: 6h/30m threshold 6x -> 60x" mutant 's/(6 \* 0\.001)/(60 * 0.001)/g'
check "tests catch: short window 5m replaced by 1h" mutant 's/ratio_rate5m > (14/ratio_rate1h > (14/'
check "tests catch: 3d/6h threshold 1x -> 10x" mutant 's/ratio_rate3d > 0\.001/ratio_rate3d > 0.01/'
check "tests catch: Unavailable not counted as an error" mutant 's/|Unavailable|/|/g'
check "tests catch: latency threshold 0.25s -> 0.1s" mutant 's/) > 0\.25$/) > 0.1/'
check "tests catch: absent() without == 1" mutant 's/absent(up{job=~"\.\*user-service\.\*"} == 1)/absent(up{job=~".*user-service.*"})/'
check "tests catch: unready replicas threshold" mutant 's/replicas_unavailable{deployment=~"\.\*user-service\.\*"} > 0/replicas_unavailable{deployment=~".*user-service.*"} > 1/'

# ---- 3. dashboard -----------------------------------------------------------
log "Grafana dashboard"
check "dashboard structure, datasource variable, panels, metric names" \
  checks dashboard "$DASHBOARD" "$WORK/dashboard-rules.yaml"
check "every dashboard query parses as PromQL (promtool)" promtool check rules "$WORK/dashboard-rules.yaml"

# ---- 4. chart ---------------------------------------------------------------
log "kubernetes-validate is strict"
check "kubernetes-validate refuses an unknown field" \
  bash -c "'$PY' '$WORK/checks.py' badmanifest '$WORK/bad.yaml' && ! '$PY' '$WORK/checks.py' validate '$WORK/bad.yaml' $KUBE_VERSION"

sets=(default "$CHART"/ci/*.yaml)
for set in "${sets[@]}"; do
  name=$(basename "$set" .yaml)
  args=()
  [ "$set" != default ] && args=(-f "$set")
  apis=() lint_args=() lint_note="" apis_note=""
  if [[ " ${CRD_SETS[*]} " == *" $name "* ]]; then
    apis=("${CRD_API_ARGS[@]}")
    apis_note="; --api-versions of its CRDs" lint_note="; without the CRD kinds"
    # `helm lint` has no --api-versions, so it would stop at the CRD guard:
    # lint the set without those three objects (their rendering is checked
    # by `helm template` with --api-versions and the facts below).
    lint_args=(--set metrics.serviceMonitor.enabled=false --set metrics.prometheusRule.enabled=false
      --set gatewayAPI.enabled=false)
  fi
  log "value set: $name"
  check "helm lint --strict ($name$lint_note)" \
    "$HELM" lint --strict "$CHART" "${args[@]}" "${lint_args[@]}" --kube-version "$KUBE_VERSION"
  check "helm template ($name$apis_note)" \
    bash -c '"$@" >"'"$WORK/$name.yaml"'"' _ "$HELM" template release "$CHART" "${args[@]}" "${apis[@]}" \
    --namespace users --kube-version "$KUBE_VERSION"
  for kv in "${KUBE_VERSIONS[@]}"; do
    check "strict schemas of Kubernetes $kv ($name; skipped kinds: ${UNCHECKED_KINDS[*]})" \
      checks validate "$WORK/$name.yaml" "$kv" "${UNCHECKED_KINDS[@]}"
  done
  check "facts about the rendered objects ($name)" \
    checks facts "$name" "$WORK/$name.yaml" "$CHART/Chart.yaml" "$ALERTS" "$DASHBOARD"
done

log "the packaged chart renders the same objects"
package_same() {
  "$HELM" package "$CHART" -d "$WORK/pkg" >/dev/null
  local tgz=("$WORK"/pkg/user-service-*.tgz)
  tar -tzf "${tgz[0]}" >"$WORK/pkg/list"
  grep -qx 'user-service/files/dashboard.json' "$WORK/pkg/list"
  grep -qx 'user-service/files/alerts.yaml' "$WORK/pkg/list"
  grep -qx 'user-service/values.schema.json' "$WORK/pkg/list"
  "$HELM" template release "${tgz[0]}" -f "$CHART/ci/postgres-full-values.yaml" "${CRD_API_ARGS[@]}" \
    --namespace users --kube-version "$KUBE_VERSION" >"$WORK/packaged.yaml"
  diff -u "$WORK/postgres-full-values.yaml" "$WORK/packaged.yaml"
}
check "helm package + template from the .tgz" package_same

log "values the chart must refuse"
refuse() { # description, text the error must contain, helm args...
  local what=$1 expect=$2
  shift 2
  check "refuses $what" must_fail "$expect" "$HELM" template release "$CHART" --kube-version "$KUBE_VERSION" "$@"
}
refuse "replicaCount=-1" "/replicaCount" --set replicaCount=-1
refuse "an unknown top-level key" "additional properties 'replicas' not allowed" --set replicas=3
refuse "an unknown nested key" "additional properties 'typo' not allowed" --set service.typo=1
refuse "a string where a port number belongs" "/ports/grpc" --set ports.grpc=grpc
refuse "a port above 65535" "/service/port" --set service.port=70000
refuse "resources without limits" "missing property 'limits'" --set resources.limits=null
refuse "an unknown store type" "/store/type" --set store.type=mysql
refuse "a non-postgres URL" "/store/postgres/url" --set store.type=postgres --set store.postgres.url=mysql://x
refuse "postgres without a URL or Secret" "existingSecret" --set store.type=postgres
refuse "several replicas on the memory store" "store.type=memory keeps users inside each pod" --set replicaCount=3
refuse "autoscaling on the memory store" "store.type=memory keeps users inside each pod" --set autoscaling.enabled=true
refuse "minReplicas above maxReplicas" "minReplicas" --set store.type=postgres \
  --set store.postgres.existingSecret=db --set autoscaling.enabled=true \
  --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=2
refuse "a grace period shorter than drain + timeout + 5s" "terminationGracePeriodSeconds" \
  --set terminationGracePeriodSeconds=25
refuse "a service type the chart does not support" "/service/type" --set service.type=NodePort
refuse "source ranges on a ClusterIP Service" "loadBalancerSourceRanges" \
  --set 'service.loadBalancerSourceRanges={10.0.0.0/8}'
refuse "an exec probe type" "/probes/type" --set probes.type=exec
refuse "a bad log format" "/config/logFormat" --set config.logFormat=xml
refuse "a GRPCRoute without parentRefs" "parentRefs" --set gatewayAPI.enabled=true "${CRD_API_ARGS[@]}"
refuse "a ServiceMonitor on a cluster without its CRD" \
  "needs the monitoring.coreos.com/v1/ServiceMonitor custom resource, which this cluster does not serve: install the Prometheus Operator's CRD servicemonitors.monitoring.coreos.com" \
  --set metrics.serviceMonitor.enabled=true
refuse "a PrometheusRule on a cluster without its CRD" \
  "needs the monitoring.coreos.com/v1/PrometheusRule custom resource, which this cluster does not serve: install the Prometheus Operator's CRD prometheusrules.monitoring.coreos.com" \
  --set metrics.prometheusRule.enabled=true
refuse "a GRPCRoute on a cluster without the Gateway API CRDs" \
  "needs the gateway.networking.k8s.io/v1/GRPCRoute custom resource, which this cluster does not serve: install the Gateway API CRD grpcroutes.gateway.networking.k8s.io" \
  --set gatewayAPI.enabled=true --set 'gatewayAPI.parentRefs[0].name=public'
refuse "the full set on a cluster without any of its CRDs" "custom resource, which this cluster does not serve" \
  -f "$CHART/ci/postgres-full-values.yaml"
refuse "tests.image as a single string (the old form)" "/tests/image" \
  --set tests.image=ghcr.io/grpc-ecosystem/grpc-health-probe:v0.4.61
refuse "an unpinned test image" "/tests/image/tag" --set tests.image.tag=
refuse "Kubernetes older than 1.27" "kubeVersion" --kube-version 1.26.0
refuse "a JWT secret shorter than 32 characters" "/auth/jwtSecret" --set auth.jwtSecret=too-short
refuse "an unknown auth key" "additional properties 'secret' not allowed" --set auth.secret=x
refuse "TLS without a Secret" "tls.secretName" --set tls.enabled=true
refuse "client auth without TLS" "tls.clientAuth needs tls.enabled" --set tls.clientAuth=true

log "values the chart must honour"
check "image.tag overrides appVersion" \
  bash -c 'out=$("$1" template release "$2" --kube-version "$3" --set image.tag=9.9.9)
           grep -q "image: ghcr.io/example/user-service:9.9.9" <<<"$out"' _ "$HELM" "$CHART" "$KUBE_VERSION"
check "changing a setting changes checksum/config" bash -c '
  a=$("$1" template r "$2" --kube-version "$3" | grep checksum/config)
  b=$("$1" template r "$2" --kube-version "$3" --set config.logLevel=debug | grep checksum/config)
  [ -n "$a" ] && [ "$a" != "$b" ]' _ "$HELM" "$CHART" "$KUBE_VERSION"
check "auth.jwtSecret becomes the Secret and rolls the pods when changed" bash -c '
  secret=0123456789abcdef0123456789abcdef-test
  out=$("$1" template r "$2" --kube-version "$3" --set auth.jwtSecret=$secret)
  grep -q "jwt-secret: \"$(printf %s "$secret" | base64 -w0)\"" <<<"$out"
  ! grep -q -- "$secret" <<<"$out"
  a=$(grep checksum/jwt-secret <<<"$out")
  b=$("$1" template r "$2" --kube-version "$3" --set auth.jwtSecret=${secret}x | grep checksum/jwt-secret)
  [ -n "$a" ] && [ "$a" != "$b" ]' _ "$HELM" "$CHART" "$KUBE_VERSION"
check "auth.enabled=false mounts no secret and sets the flag false" bash -c '
  out=$("$1" template r "$2" --kube-version "$3" --set auth.enabled=false)
  grep -A1 "name: USER_SERVICE__AUTH__ENABLED" <<<"$out" | grep -q "value: \"false\""
  ! grep -q "jwt-secret" <<<"$out"' _ "$HELM" "$CHART" "$KUBE_VERSION"
check "renders at the minimum Kubernetes version (1.27.0)" \
  bash -c '"$@" >/dev/null' _ "$HELM" template release "$CHART" -f "$CHART/ci/postgres-full-values.yaml" \
  "${CRD_API_ARGS[@]}" --kube-version 1.27.0
check "the test image comes from tests.image.* (mirrors for offline clusters)" bash -c '
  set -euo pipefail
  out=$("$1" template r "$2" --kube-version "$3" --set tests.image.repository=mirror.internal:5000/grpc-health-probe \
        --set tests.image.tag=v9.9.9 --set tests.image.pullPolicy=Never --set "imagePullSecrets[0].name=mirror")
  test=$(awk "/^# Source: user-service\/templates\/tests\//,0" <<<"$out")
  grep -q "image: mirror.internal:5000/grpc-health-probe:v9.9.9" <<<"$test"
  grep -q "imagePullPolicy: Never" <<<"$test"
  grep -q "name: mirror" <<<"$test"' _ "$HELM" "$CHART" "$KUBE_VERSION"
check "every image of the chart is a value (no hard-coded registry)" bash -c '
  set -euo pipefail
  out=$("$1" template r "$2" -f "$2/ci/postgres-url-values.yaml" --kube-version "$3" \
        --set image.repository=mirror.internal/us --set tests.image.repository=mirror.internal/probe)
  images=$(grep -E "^\s*image: " <<<"$out" | sort -u)
  [ -n "$images" ] && ! grep -v "image: mirror.internal/" <<<"$images"' _ "$HELM" "$CHART" "$KUBE_VERSION"

# NOTES.txt as `helm install` prints it. `helm template` does not render it,
# so a copy of the chart gets a ConfigMap that includes it.
notes() { # helm template args...
  rm -rf "$WORK/notes-chart"
  cp -r "$CHART" "$WORK/notes-chart"
  printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata: {name: notes}' \
    'data: {notes: {{ include "user-service/templates/NOTES.txt" . | toJson }}}' \
    >"$WORK/notes-chart/templates/notes-rendered.yaml"
  "$HELM" template r "$WORK/notes-chart" --kube-version "$KUBE_VERSION" --show-only templates/notes-rendered.yaml "$@" \
    | "$PY" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["data"]["notes"])'
}
notes_say() { # text, helm args...: NOTES must contain text
  local text=$1
  shift
  notes "$@" >"$WORK/notes.out"
  grep -qF -- "$text" "$WORK/notes.out" || { cat "$WORK/notes.out"; echo "NOTES lack '$text'"; return 1; }
}
notes_quiet() { # text, helm args...: NOTES must not contain text
  local text=$1
  shift
  notes "$@" >"$WORK/notes.out"
  ! grep -qF -- "$text" "$WORK/notes.out" || { cat "$WORK/notes.out"; echo "NOTES say '$text'"; return 1; }
}
check "NOTES: a restart of the memory store's pod is an outage" notes_say "each restart is an outage"
check "NOTES: a single PostgreSQL replica is an outage on eviction" \
  notes_say "a single replica" --set store.type=postgres --set store.postgres.existingSecret=db
check "NOTES: no outage warning with two PostgreSQL replicas" \
  notes_quiet "outage" -f "$CHART/ci/postgres-url-values.yaml"
check "NOTES: the kept test pod and how to remove it" notes_say "kubectl -n default delete pod r-user-service-health-test"

# `lookup` of the live Deployment's replicas (autoscaling on) needs an API
# server: a stand-in on a free loopback port that serves just that one
# Deployment (or none), for `helm template --dry-run=server`, which takes
# everything else from its built-in capabilities. Only its own PID is
# stopped.
live_replicas() { # live replicas ("none": no Deployment yet), expected spec.replicas, helm args...
  local live=$1 want=$2 port got
  shift 2
  rm -f "$WORK/fakeapi.port"
  "$PY" "$WORK/checks.py" fakeapi "$WORK/fakeapi.port" users release-user-service "$live" 2>"$WORK/fakeapi.log" &
  FAKEAPI_PID=$!
  # check() runs this in a subshell: whatever fails below, the stand-in
  # (and only it) is stopped when that subshell exits.
  trap 'kill "$FAKEAPI_PID" 2>/dev/null || true; wait "$FAKEAPI_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do [ -s "$WORK/fakeapi.port" ] && break; sleep 0.05; done
  port=$(cat "$WORK/fakeapi.port")
  printf 'apiVersion: v1\nkind: Config\nclusters: [{name: fake, cluster: {server: "http://127.0.0.1:%s"}}]\nusers: [{name: fake, user: {}}]\ncontexts: [{name: fake, context: {cluster: fake, user: fake}}]\ncurrent-context: fake\n' \
    "$port" >"$WORK/kubeconfig"
  got=$(KUBECONFIG="$WORK/kubeconfig" "$HELM" template release "$CHART" --namespace users --kube-version "$KUBE_VERSION" \
        --dry-run=server --show-only templates/deployment.yaml --set store.type=postgres \
        --set store.postgres.existingSecret=db "$@" | sed -n 's/^  replicas: //p')
  grep -q "GET /apis/apps/v1/namespaces/users/deployments/release-user-service" "$WORK/fakeapi.log" \
    || [ "$live" = off ] || { echo "helm never looked the Deployment up"; return 1; }
  [ "$got" = "$want" ] || { echo "replicas: $got, expected $want"; return 1; }
}
hpa=(--set autoscaling.enabled=true --set autoscaling.minReplicas=2 --set autoscaling.maxReplicas=10)
check "autoscaling on: keeps the live Deployment's replicas (7), not 1" live_replicas 7 7 "${hpa[@]}"
check "autoscaling on: first install starts at minReplicas" live_replicas none 2 "${hpa[@]}"
check "autoscaling on: live replicas below minReplicas are raised to it" live_replicas 1 2 "${hpa[@]}"
check "autoscaling on: live replicas above maxReplicas are capped" live_replicas 50 10 "${hpa[@]}"
check "autoscaling off: replicaCount, whatever runs now" live_replicas off 4 --set replicaCount=4

# ---- summary ----------------------------------------------------------------
echo
if [ "${#failures[@]}" -gt 0 ]; then
  echo "Failed checks:"
  printf '  - %s\n' "${failures[@]}"
fi
echo "deploy: $passed passed, ${#failures[@]} failed"
[ "${#failures[@]}" = 0 ]
