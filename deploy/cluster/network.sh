# Addresses and ports of the local cluster (sourced). Everything listens on
# 127.0.0.1 except CoreDNS, which pods reach on the bridge's own address.
# shellcheck shell=bash
APISERVER_PORT="${USER_SERVICE_CLUSTER_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${USER_SERVICE_CLUSTER_ETCD_PORT:-2379}"
ETCD_PEER_PORT=$((ETCD_CLIENT_PORT + 1))
KUBELET_PORT="${USER_SERVICE_CLUSTER_KUBELET_PORT:-10250}"
# The pods' bridge, created by start.sh so that CoreDNS (and a PostgreSQL
# for the tests) can listen on its address before the first pod exists.
BRIDGE=usvc0
POD_CIDR=10.244.0.0/24
BRIDGE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
CLUSTER_DOMAIN=cluster.local

# The node is named after the hostname: it resolves to 127.0.0.1 here, so
# the apiserver reaches the kubelet on loopback.
node_name() { hostname | tr '[:upper:]' '[:lower:]'; }
