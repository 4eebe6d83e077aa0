# Pinned versions and locations shared by the cluster scripts (sourced).
# Everything built or downloaded lives outside the repository, keyed by
# version, so a second run (or a second checkout) reuses it.
# shellcheck shell=bash
K8S_VERSION=v1.37.2
# The staging modules (k8s.io/api, client-go, ...) published for v1.37.2.
K8S_STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.6.16
COREDNS_VERSION=v1.12.4
GRPC_HEALTH_PROBE_VERSION=v0.4.61
# Prometheus Operator and Gateway API modules that carry the CRD YAML.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
GATEWAY_API_VERSION=v1.6.3

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/user-service"
K8S_CACHE="$CACHE_ROOT/k8s-$K8S_VERSION"
K8S_BIN="$K8S_CACHE/bin"
# The Go caches live beside the binaries, not in the repository or in a
# GOPATH inside it; a build needs ~8 GB of them.
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$CACHE_ROOT/go/mod}"
export GOCACHE="${GOCACHE_OVERRIDE:-$CACHE_ROOT/go/build}"
export GOPATH="$CACHE_ROOT/go/path"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"

# Runtime state of a running cluster (certificates, data, logs, PIDs).
CLUSTER_STATE="${USER_SERVICE_CLUSTER_STATE:-$CACHE_ROOT/cluster}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
