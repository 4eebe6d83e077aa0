#!/usr/bin/env bash
# Starts the single-node cluster from the cached binaries: etcd, the
# control plane and kube-proxy on 127.0.0.1, containerd + runc with a CNI
# bridge, a real kubelet, and CoreDNS on the bridge address. Waits until the
# node is Ready. Every daemon's PID is recorded (proc.sh) for stop.sh.
# Idempotent: a running cluster is left as it is.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"
# shellcheck source=deploy/cluster/network.sh
source "$here/network.sh"
# shellcheck source=deploy/cluster/proc.sh
source "$here/proc.sh"

S="$CLUSTER_STATE"
PKI="$S/pki"
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$PKI/admin.kubeconfig")
NODE=$(node_name)
CONTAINERD_SOCK="$S/containerd/containerd.sock"
# The sandbox image; image.sh builds and imports it.
PAUSE_IMAGE=localhost/user-service-pause:1

fail() { # message: show the tail of a log before giving up
  local name=$1; shift
  printf 'ERROR: %s\n' "$*" >&2
  [ -f "$LOGS/$name.log" ] && tail -n 20 "$LOGS/$name.log" >&2
  exit 1
}

if alive kubelet && alive kube-apiserver && "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1; then
  log "cluster already running"
  exit 0
fi
# Half a cluster (a crash, a killed make) is stopped before a fresh start.
[ -d "$PIDS" ] && "$here/stop.sh"

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns; do
  [ -x "$K8S_BIN/$b" ] || die "$K8S_BIN/$b is missing: run deploy/cluster/build.sh (make cluster-up does)"
done
for b in containerd runc ctr iptables conntrack ip /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
  command -v "$b" >/dev/null 2>&1 || [ -x "$b" ] || die "$b is missing: run deploy/cluster/install-deps.sh (make cluster-up does)"
done
[ "$(id -u)" = 0 ] || die "the cluster needs root (a kubelet, containerd, iptables)"
# Another kubelet or runtime on this machine would share the same cgroups
# and ports; refuse rather than fight over them.
for port in "$APISERVER_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KUBELET_PORT" 10248 10249 10256 10257 10259; do
  if ss -Hltn "sport = :$port" | grep . >/dev/null; then
    die "port $port on this machine is in use; stop what listens there (or set USER_SERVICE_CLUSTER_*_PORT)"
  fi
done
[ -e /sys/fs/cgroup/memory/kubepods ] || [ -e /sys/fs/cgroup/kubepods ] &&
  die "a kubepods cgroup exists already: another kubelet runs (or ran) on this machine"

# Every KUBE-* iptables chain from now on is this cluster's (stop.sh
# removes them all), so none may exist before.
for ipt in iptables ip6tables; do
  if "$ipt-save" 2>/dev/null | grep '^:KUBE-' >/dev/null; then
    die "$ipt has KUBE-* chains already: another Kubernetes runs (or ran) on this machine"
  fi
done

# A fresh state for every start: data, certificates, logs.
rm -rf "$S"
mkdir -p "$S"/{etcd,containerd,cni/net.d,cni/ipam,kubelet,pod-logs,logs,pids,coredns}
"$here/certs.sh"

# ---- host settings, recorded so stop.sh puts them back --------------------
# ip_forward: pod -> Service traffic is routed (DNAT) by the host;
# route_localnet: kube-proxy sets it for NodePorts on 127.0.0.1; the kubelet
# sets the vm./kernel. ones (protectKernelDefaults would refuse instead).
sysctls=(net/ipv4/ip_forward net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables
  vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
for k in "${sysctls[@]}"; do
  [ -e "/proc/sys/$k" ] && printf '%s %s\n' "$k" "$(cat "/proc/sys/$k")"
done >"$S/sysctls.saved"
echo 1 >/proc/sys/net/ipv4/ip_forward
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] ||
  die "br_netfilter is not loaded (modprobe br_netfilter): Services between pods on one bridge need it"
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables

# ---- the bridge ---------------------------------------------------------------
# Created here (not by the CNI plugin at the first pod) so CoreDNS can bind
# its address now. The pods get routes to the bridge and to Services only:
# no default route, so nothing from a pod leaves this machine.
ip link show "$BRIDGE" >/dev/null 2>&1 && die "a network interface $BRIDGE exists already"
ip link add "$BRIDGE" type bridge
echo "$BRIDGE" >"$S/bridge.created"
touch "$S/iptables.ours"
ip addr add "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

cat >"$S/cni/net.d/10-user-service.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "user-service-local",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    }
  ]
}
JSON

# ---- etcd ---------------------------------------------------------------------
t0=$SECONDS
# One member on loopback, plain HTTP; no fsync: the data is thrown away.
spawn etcd "$K8S_BIN/etcd" --name default --data-dir "$S/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" || fail etcd "etcd did not become healthy"

# ---- control plane --------------------------------------------------------------
# --endpoint-reconciler-type=none: the reconciler refuses a loopback
# advertise address (the "kubernetes" Service then has no endpoints; no pod
# here talks to the API).
spawn kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC \
  --endpoint-reconciler-type none \
  --profiling=false
wait_for kube-apiserver 60 "${KUBECTL[@]}" get --raw /readyz || fail kube-apiserver "kube-apiserver did not become ready"
log "apiserver ready $((SECONDS - t0)) s after etcd started"

spawn kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$PKI/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$PKI/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false
spawn kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$PKI/scheduler.kubeconfig" \
  --authentication-kubeconfig "$PKI/scheduler.kubeconfig" \
  --authorization-kubeconfig "$PKI/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false

# ---- containerd -------------------------------------------------------------------
# Its own root, state, socket and runc root: nothing shared with another
# containerd on the machine. restrict_oom_score_adj: this machine lacks
# CAP_SYS_RESOURCE, so runc may not lower oom_score_adj (every sandbox would
# fail). Network namespaces live under the state directory, so stop.sh
# finds them all.
cat >"$S/containerd/config.toml" <<TOML
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$S/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
TOML
spawn containerd "$(command -v containerd)" --config "$S/containerd/config.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version || fail containerd "containerd did not start"
# The sandbox image must be there before the kubelet asks for a pod.
"$here/image.sh" pause

# ---- kubelet ------------------------------------------------------------------------
# cgroup v1 on this machine: failCgroupV1 false and the cgroupfs driver.
cat >"$S/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
rotateCertificates: false
serverTLSBootstrap: false
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$BRIDGE_IP]
clusterDomain: $CLUSTER_DOMAIN
# No host resolv.conf in pods: cluster names only.
resolvConf: ""
podLogsDir: $S/pod-logs
staticPodPath: ""
serializeImagePulls: false
maxPods: 50
# A shared build machine: do not evict test pods for a full-ish disk.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
YAML
spawn kubelet "$K8S_BIN/kubelet" --config "$S/kubelet/config.yaml" \
  --kubeconfig "$PKI/kubelet-client.kubeconfig" --root-dir "$S/kubelet" --cert-dir "$S/kubelet/pki" \
  --hostname-override "$NODE" --v 1

# ---- kube-proxy and CoreDNS ------------------------------------------------------------
# Pod -> Service through iptables DNAT. NodePorts open on 127.0.0.1 only;
# conntrack sysctls left as they are (maxPerCore 0, timeouts 0).
cat >"$S/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [127.0.0.1/32]
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
spawn kube-proxy "$K8S_BIN/kube-proxy" --config "$S/kube-proxy.yaml"

"${KUBECTL[@]}" apply -f "$here/coredns-rbac.yaml" >/dev/null
# Cluster names only: no forward plugin, so nothing is resolved (or sent)
# beyond this cluster.
cat >"$S/coredns/Corefile" <<COREFILE
.:53 {
    bind $BRIDGE_IP
    errors
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $PKI/coredns.kubeconfig user-service-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
COREFILE
spawn coredns "$K8S_BIN/coredns" -conf "$S/coredns/Corefile"

node_ready() {
  [ "$("${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for kubelet 90 node_ready || fail kubelet "node $NODE did not become Ready"
for d in kube-controller-manager kube-scheduler kube-proxy coredns containerd etcd kube-apiserver; do
  alive "$d" || fail "$d" "$d exited"
done
# The default ServiceAccount (controller manager) must exist before pods.
wait_for serviceaccount 60 "${KUBECTL[@]}" -n default get serviceaccount default ||
  fail kube-controller-manager "no default ServiceAccount"
log "node $NODE Ready $((SECONDS - t0)) s after etcd started"
