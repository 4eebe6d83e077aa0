#!/usr/bin/env bash
# Generates the cluster's certificates and kubeconfigs into
# $CLUSTER_STATE/pki (once per cluster; cluster-up wipes the state of a
# cluster that is not running). One CA signs everything: it is a throwaway
# cluster on 127.0.0.1, and nothing outside trusts this CA.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"
# shellcheck source=deploy/cluster/network.sh
source "$here/network.sh"

pki="$CLUSTER_STATE/pki"
[ -e "$pki/.done" ] && exit 0
command -v openssl >/dev/null 2>&1 || die "openssl is needed for the cluster certificates"
mkdir -p "$pki"
chmod 700 "$pki"
cd "$pki"

openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=user-service-local-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null

# cert NAME SUBJECT [SAN] : a key and a CA-signed certificate
cert() {
  local name=$1 subj=$2 san=${3:-}
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

node=$(node_name)
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
# The apiserver reaches the kubelet (logs, exec, port-forward) as a member
# of system:masters.
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
# The kubelet's serving certificate: the apiserver dials the node by its
# hostname, which resolves to 127.0.0.1.
cert kubelet "/CN=$node" "IP:127.0.0.1,DNS:$node,DNS:localhost"
cert kubelet-client "/O=system:nodes/CN=system:node:$node"
cert admin "/O=system:masters/CN=user-service-local-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"
# CoreDNS watches Services and EndpointSlices; bound to the ClusterRole in
# coredns-rbac.yaml.
cert coredns "/CN=user-service-local:coredns"
# Service-account tokens (the controller manager signs, the apiserver
# verifies).
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

# kubeconfig NAME : a kubeconfig for the client certificate NAME
kubeconfig() {
  local name=$1
  cat >"$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: user-service-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $pki/$name.crt
    client-key: $pki/$name.key
contexts:
- name: user-service-local
  context:
    cluster: user-service-local
    user: $name
current-context: user-service-local
KC
}
for n in admin controller-manager scheduler kubelet-client kube-proxy coredns; do kubeconfig "$n"; done
chmod 600 ./*.key
touch .done
log "certificates and kubeconfigs in $pki"
