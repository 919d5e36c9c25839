#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, built from upstream sources, for the cluster
# suite (e2e/tests/cluster.rs), the benchmarks (benches/pod.sh, benches/claim.sh) and anyone who
# wants to try the chart. No Docker, no kind, nothing downloaded at run time except Go modules
# at build time (the Go module proxy).
#
#   scripts/cluster.sh build    build (once) what is missing into /opt/agentcell-tools/k8s/VERSION
#   scripts/cluster.sh up       build, then start the cluster (twice is harmless)
#   scripts/cluster.sh images   (re)build and import the agentcell images into the cluster
#   scripts/cluster.sh env      print `export KUBECONFIG=... PATH=...` for the cluster's kubectl
#   scripts/cluster.sh status   what runs, and whether the node is Ready
#   scripts/cluster.sh down     stop everything and remove all it created
#
# What runs (all listening on 127.0.0.1 only; each process under daemontools' `supervise`):
# etcd, kube-apiserver (RBAC + Node authorization, NodeRestriction and PodSecurity admission,
# ServiceAccount token signer), kube-controller-manager, kube-scheduler, a containerd of the
# cluster's own (Debian's 1.6, CRI on, private root/state/socket, bridge CNI from
# containernetworking-plugins) and the kubelet (cgroupfs driver, its own cgroup root). The five
# Kubernetes components and etcd are one multi-call binary (scripts/k8s/: a Go module requiring
# k8s.io/kubernetes with its staging modules pinned to the same release), linked once.
#
# Names are the cluster's own, disjoint from the e2e suite's private containerds and from other
# tests: state in /var/lib/agentcell-cluster, bridge acclu0 with pods in 198.19.240.0/24,
# services in 198.19.248.0/24, the node's address 198.19.241.1/32 on lo, nft table `ip acclu`, cgroups under
# /agentcell-cluster in each hierarchy, containerd socket under the state directory.
#
# Pods reach the API server at its ClusterIP (198.19.248.1:443) through one DNAT rule to
# 127.0.0.1 (route_localnet on the bridge): there is no kube-proxy, and the API server listens on
# loopback only (the kubelet on the node address, the other components on 127.0.0.1). Pods may
# send traffic only to each other, to the API server and to test hosts (198.18.0.0/15);
# everything else from the bridge is dropped, so nothing a pod does leaves the machine, and no
# pod reaches the kubelet or anything else listening on the host.
#
# Environment: AGENTCELL_CLUSTER_BIN_DIR (where the agentcell binaries for the images are;
# default: cargo build --release into target/release), AGENTCELL_VM_DIR (the micro-VM assets for
# the node image; default /var/lib/agentcell/vm).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
K8S_VERSION=v1.34.4
TOOLS=/opt/agentcell-tools/k8s/$K8S_VERSION
BIN=$TOOLS/bin
S=/var/lib/agentcell-cluster
NODE=agentcell-node
BRIDGE=acclu0
POD_CIDR=198.19.240.0/24
POD_GW=198.19.240.1
SVC_CIDR=198.19.248.0/24
API_SVC_IP=198.19.248.1
# The node's address: a /32 on the loopback link (the kubelet refuses a 127/8 node IP, and the
# API server reaches the kubelet at it; this kernel has no dummy links); host-local, and pods
# cannot reach it.
NODE_IP=198.19.241.1
API_PORT=16443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
KUBELET_PORT=10250
NFT_TABLE=acclu
CGROUP_ROOT=agentcell-cluster
CONTAINERD_SOCK=$S/containerd/containerd.sock

log() { echo "cluster: $*" >&2; }
die() {
  log "$*"
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "run as root (it starts containerd and the kubelet)"

kubectl() { "$BIN/kubectl" --kubeconfig "$S/admin.kubeconfig" "$@"; }
ctr_k8s() { ctr -a "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------
# Build

# What the build depends on: the tool's module files and the Go toolchain.
build_inputs() {
  (
    cd "$REPO/scripts/k8s"
    sha256sum go.mod go.sum main.go
    go version
  ) | sha256sum | cut -d' ' -f1
}

built_ok() {
  [ -x "$BIN/agentcell-k8s" ] && [ -f "$TOOLS/SHA256SUMS" ] &&
    [ "$(cat "$TOOLS/inputs" 2>/dev/null)" = "$(build_inputs)" ] &&
    (cd "$BIN" && sha256sum -c --quiet "$TOOLS/SHA256SUMS" >/dev/null 2>&1)
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed (Go 1.24 or newer)"
  if built_ok; then
    return 0
  fi
  log "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl) and etcd: one binary, $TOOLS"
  mkdir -p "$BIN" "$TOOLS/gocache"
  local start=$SECONDS minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  # The version stamps the components report (kubectl version, the node's kubeletVersion);
  # upstream's build sets the same variables from git.
  local vpkg=k8s.io/component-base/version
  local ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  (
    cd "$REPO/scripts/k8s"
    # -mod=readonly: go.sum is the record of every module's checksum; a module that does not
    # match fails the build. CGO off: static binaries, as upstream builds its servers.
    GOCACHE=$TOOLS/gocache CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
      go build -trimpath -ldflags="$ldflags" -o "$BIN/agentcell-k8s.new" .
  ) 2>&1 | tee "$TOOLS/build.log" >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "go build failed (see $TOOLS/build.log)"
  mv "$BIN/agentcell-k8s.new" "$BIN/agentcell-k8s"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd; do
    ln -sfn agentcell-k8s "$BIN/$c"
  done
  (cd "$BIN" && sha256sum agentcell-k8s) >"$TOOLS/SHA256SUMS"
  cp "$REPO/scripts/k8s/go.sum" "$TOOLS/go.sum"
  build_inputs >"$TOOLS/inputs"
  # The build cache (over 3 GB) only speeds up a rebuild of the same inputs, which built_ok
  # skips anyway: the binary is the cache. Kept with AGENTCELL_KEEP_GOCACHE=1.
  [ "${AGENTCELL_KEEP_GOCACHE:-0}" = 1 ] || rm -rf "$TOOLS/gocache"
  local took=$((SECONDS - start))
  echo "built in ${took}s on $(nproc) cores: $(go version)" >>"$TOOLS/build.log"
  log "built in ${took}s: $BIN/agentcell-k8s ($(du -h "$BIN/agentcell-k8s" | cut -f1)), sha256 in $TOOLS/SHA256SUMS"
}

# ---------------------------------------------------------------------------------------------
# Certificates

pki() {
  local p=$S/pki
  mkdir -p "$p"
  chmod 0700 "$p"
  [ -f "$p/ca.crt" ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" \
    -days 3650 -subj "/CN=agentcell-cluster-ca" 2>/dev/null
  [ -f "$p/sa.key" ] || {
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  }
  # name CN O SANs usage
  cert apiserver kube-apiserver "" "IP:127.0.0.1,IP:$API_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" serverAuth
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" clientAuth
  cert admin admin system:masters "" clientAuth
  cert controller-manager system:kube-controller-manager "" "" clientAuth
  cert scheduler system:kube-scheduler "" "" clientAuth
  cert kubelet "system:node:$NODE" system:nodes "" clientAuth
  cert kubelet-serving "system:node:$NODE" system:nodes "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE" serverAuth
}

cert() {
  local name=$1 cn=$2 o=$3 sans=$4 usage=$5 p=$S/pki
  [ -f "$p/$name.crt" ] && return 0
  local subj="/CN=$cn"
  [ -n "$o" ] && subj="/O=$o$subj"
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$p/$name.key" -out "$p/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
    -out "$p/$name.crt" -days 3650 -extfile "$ext" 2>/dev/null
  rm -f "$ext" "$p/$name.csr"
}

kubeconfig() {
  local name=$1 user=$2 p=$S/pki
  cat >"$S/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentcell
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $p/ca.crt
users:
- name: $user
  user:
    client-certificate: $p/$name.crt
    client-key: $p/$name.key
contexts:
- name: agentcell
  context: {cluster: agentcell, user: $user}
current-context: agentcell
EOF
  chmod 0600 "$S/$name.kubeconfig"
}

# ---------------------------------------------------------------------------------------------
# Services (daemontools: `supervise DIR` runs DIR/run and restarts it when it exits; the node
# installer restarts containerd with `svc -t`, since this host has no systemd)

service() {
  local name=$1
  shift
  local d=$S/sv/$name
  mkdir -p "$d" "$S/log"
  {
    echo "#!/bin/sh"
    echo "exec >>$S/log/$name.log 2>&1"
    printf '%s\n' "$@"
  } >"$d/run.new"
  chmod 0755 "$d/run.new"
  mv "$d/run.new" "$d/run"
  if ! svok "$d" 2>/dev/null; then
    setsid supervise "$d" </dev/null >/dev/null 2>&1 &
    local i
    for i in $(seq 50); do svok "$d" 2>/dev/null && break; sleep 0.1; done
  fi
}

service_up() { svstat "$S/sv/$1" 2>/dev/null | grep -q ': up '; }

wait_for() {
  local what=$1 secs=$2
  shift 2
  local t=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $t ] || die "$what did not come up in ${secs}s (logs in $S/log)"
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------------------------
# Network: the pods' bridge (made here, so route_localnet is set before any pod), the API DNAT
# and the fence keeping pod traffic on this machine.

network_up() {
  [ -f "$S/ip_forward.orig" ] || cat /proc/sys/net/ipv4/ip_forward >"$S/ip_forward.orig"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$POD_GW/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # (Read whole first: `grep -q` closing the pipe early would fail it under pipefail.)
  local lo
  lo=$(ip -o addr show dev lo)
  case "$lo" in *" $NODE_IP/32 "*) ;; *) ip addr add "$NODE_IP/32" dev lo ;; esac
  sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
  sysctl -qw net.ipv4.ip_forward=1
  nft -f - <<EOF
table ip $NFT_TABLE
delete table ip $NFT_TABLE
table ip $NFT_TABLE {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "$BRIDGE" ip daddr $API_SVC_IP tcp dport 443 dnat to 127.0.0.1:$API_PORT
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$BRIDGE" ip daddr { $POD_CIDR, 198.18.0.0/15 } accept
    iifname "$BRIDGE" drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "$BRIDGE" ct state established,related accept
    iifname "$BRIDGE" ip daddr 127.0.0.1 tcp dport $API_PORT accept
    iifname "$BRIDGE" drop
  }
}
EOF
  mkdir -p "$S/cni/net.d" "$S/cni/ipam"
  cat >"$S/cni/net.d/10-agentcell-cluster.conflist" <<EOF
{"cniVersion":"0.4.0","name":"agentcell-cluster","plugins":[
 {"type":"bridge","bridge":"$BRIDGE","isGateway":true,"ipMasq":false,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"$POD_CIDR","gateway":"$POD_GW"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$S/cni/ipam"}},
 {"type":"loopback"}]}
EOF
  # Pods resolve nothing (no cluster DNS; no query may leave the machine).
  echo "nameserver 127.0.0.1" >"$S/resolv.conf"
}

# ---------------------------------------------------------------------------------------------
# containerd

containerd_config() {
  mkdir -p "$S/containerd" "$S/bin" "$S/vm"
  # The node installer edits this file (the chart's node.containerdConfig); write it only once
  # so an install survives `up` twice.
  [ -f "$S/containerd/config.toml" ] && return 0
  cat >"$S/containerd/config.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$S/containerd/ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/agentcell/pause:dev"
  # This machine's root lacks CAP_SYS_RESOURCE (it runs in a sandbox of its own): no process
  # may lower its oom_score_adj, which the kubelet asks for the pod sandbox (-998). Clamp to
  # containerd's own, as for rootless containerd.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
EOF
}

containerd_up() {
  containerd_config
  # The shim directory the node installer copies into (the chart's node.shimDir) comes first
  # on containerd's PATH; the VM shim reads its assets from the installer's VM directory.
  service containerd \
    "export PATH=$S/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "export AGENTCELL_VM_DIR=$S/vm AGENTCELL_LOG=info" \
    "exec containerd --config $S/containerd/config.toml"
  wait_for containerd 30 ctr -a "$CONTAINERD_SOCK" version
}

# ---------------------------------------------------------------------------------------------
# Images: OCI archives made here (no registry), imported into containerd's k8s.io namespace.
# charts/images/rootfs.sh lays out each image's root file system; the Containerfiles run the
# same script, so both give the same content.

oci_import() {
  local name=$1 rootfs=$2 config=$3 work
  work=$(mktemp -d)
  python3 - "$work" "$name" "$rootfs" "$config" <<'EOF'
import hashlib, json, os, subprocess, sys
work, name, rootfs, config = sys.argv[1:]
blobs = os.path.join(work, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return d, len(data)
# Reproducible layer: sorted names, fixed owner and times.
layer = subprocess.run(["tar", "--sort=name", "--numeric-owner", "--owner=0", "--group=0",
                        "--mtime=@0", "-C", rootfs, "-cf", "-", "."], check=True,
                       stdout=subprocess.PIPE).stdout
ld, ll = put(layer)
cfg = json.loads(config)
cfg.update({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + ld]}})
cd, cl = put(json.dumps(cfg, sort_keys=True).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": cl},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + ld, "size": ll}]}
md, ml = put(json.dumps(manifest, sort_keys=True).encode())
index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:" + md, "size": ml,
         "annotations": {"org.opencontainers.image.ref.name": name}}]}
open(os.path.join(work, "index.json"), "w").write(json.dumps(index))
open(os.path.join(work, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
EOF
  tar -C "$work" -cf "$work.tar" .
  ctr_k8s images import --no-unpack=false "$work.tar" >/dev/null
  rm -rf "$work" "$work.tar"
}

cmd_images() {
  local bins=${AGENTCELL_CLUSTER_BIN_DIR:-}
  if [ -z "$bins" ]; then
    log "building the agentcell binaries (release)"
    (cd "$REPO" && cargo build --release --locked -p agentcell -p agentcell-operator \
      --bin agentcell --bin containerd-shim-agentcell-v2 --bin containerd-shim-agentcell-vm-v2 \
      --bin agentcell-operator) >&2
    bins=$REPO/target/release
  fi
  local vm=${AGENTCELL_VM_DIR:-/var/lib/agentcell/vm}
  # The node image carries the micro-VM tier's kernel and guest agent: without them its copy
  # fails with a bare `cp: cannot stat`, so say what is missing and how to install it.
  [ -e "$vm/kernel/vmlinuz" ] && [ -e "$vm/agentcell-guest" ] ||
    die "the micro-VM assets are missing in $vm (AGENTCELL_VM_DIR): run \`agentcell vm install-kernel\` and \`agentcell vm install-agent <agentcell-guest>\` (scripts/test.sh does both)"
  local work
  work=$(mktemp -d)
  bash "$REPO/charts/images/rootfs.sh" operator "$bins" "$work/operator"
  bash "$REPO/charts/images/rootfs.sh" node "$bins" "$work/node" "$vm"
  bash "$REPO/charts/images/rootfs.sh" busybox "" "$work/busybox"
  oci_import localhost/agentcell/operator:dev "$work/operator" \
    '{"config":{"Entrypoint":["/usr/local/bin/agentcell-operator"],"User":"65532:65532","ExposedPorts":{"8080/tcp":{}}}}'
  oci_import localhost/agentcell/node:dev "$work/node" \
    '{"config":{"Entrypoint":["/usr/local/bin/agentcell"],"Cmd":["node","status"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]}}'
  oci_import localhost/agentcell/busybox:dev "$work/busybox" \
    '{"config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]}}'
  # The pod sandbox image: busybox sleeping as PID 1 (containerd kills it with SIGKILL).
  oci_import localhost/agentcell/pause:dev "$work/busybox" \
    '{"config":{"Entrypoint":["/bin/sleep","infinity"],"Env":["PATH=/bin"]}}'
  rm -rf "$work"
  log "images imported: localhost/agentcell/{operator,node,busybox,pause}:dev"
}

# ---------------------------------------------------------------------------------------------
# The control plane and the kubelet

control_plane_up() {
  local p=$S/pki
  mkdir -p "$S/etcd"
  chmod 0700 "$S/etcd"
  service etcd "exec $BIN/etcd --name agentcell --data-dir $S/etcd \
--listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
--listen-peer-urls http://127.0.0.1:$ETCD_PEER_PORT --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER_PORT \
--initial-cluster agentcell=http://127.0.0.1:$ETCD_PEER_PORT --listen-metrics-urls '' \
--quota-backend-bytes 2147483648 --log-level warn"
  # PodSecurity's cluster default stays `privileged` (Kubernetes' own); namespaces choose
  # stricter levels with labels (the suite's sandbox namespace enforces `baseline`).
  service kube-apiserver "exec $BIN/kube-apiserver --bind-address=127.0.0.1 --secure-port=$API_PORT \
--advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
--etcd-servers=http://127.0.0.1:$ETCD_PORT \
--service-cluster-ip-range=$SVC_CIDR \
--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction,PodSecurity \
--allow-privileged=true --anonymous-auth=false --profiling=false \
--client-ca-file=$p/ca.crt --tls-cert-file=$p/apiserver.crt --tls-private-key-file=$p/apiserver.key \
--kubelet-client-certificate=$p/apiserver-kubelet-client.crt --kubelet-client-key=$p/apiserver-kubelet-client.key \
--kubelet-certificate-authority=$p/ca.crt --kubelet-preferred-address-types=InternalIP \
--service-account-issuer=https://kubernetes.default.svc.cluster.local \
--service-account-key-file=$p/sa.pub --service-account-signing-key-file=$p/sa.key"
  wait_for kube-apiserver 120 kubectl get --raw /readyz
  kubeconfig controller-manager system:kube-controller-manager
  kubeconfig scheduler system:kube-scheduler
  service kube-controller-manager "exec $BIN/kube-controller-manager --bind-address=127.0.0.1 \
--kubeconfig=$S/controller-manager.kubeconfig --authentication-kubeconfig=$S/controller-manager.kubeconfig \
--authorization-kubeconfig=$S/controller-manager.kubeconfig --leader-elect=false \
--use-service-account-credentials=true --root-ca-file=$p/ca.crt \
--service-account-private-key-file=$p/sa.key --cluster-signing-cert-file=$p/ca.crt \
--cluster-signing-key-file=$p/ca.key --service-cluster-ip-range=$SVC_CIDR \
--horizontal-pod-autoscaler-sync-period=5s --profiling=false"
  service kube-scheduler "exec $BIN/kube-scheduler --bind-address=127.0.0.1 \
--kubeconfig=$S/scheduler.kubeconfig --authentication-kubeconfig=$S/scheduler.kubeconfig \
--authorization-kubeconfig=$S/scheduler.kubeconfig --leader-elect=false --profiling=false"
}

kubelet_up() {
  local p=$S/pki
  kubeconfig kubelet "system:node:$NODE"
  mkdir -p "$S/kubelet" "$S/pods-log"
  # cgroup v1 hybrid host: v1.34's kubelet still runs on cgroup v1 (failCgroupV1 defaults to
  # false until 1.35; it is set explicitly so the intent survives a version bump). cgroupfs
  # driver (no systemd), its own cgroup root so nothing mixes with other cgroups here.
  cat >"$S/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
# See restrict_oom_score_adj in containerd's configuration.
oomScoreAdj: 0
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $p/kubelet-serving.crt
tlsPrivateKeyFile: $p/kubelet-serving.key
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
resolvConf: $S/resolv.conf
podLogsDir: $S/pods-log
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
maxPods: 110
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
EOF
  # The kubelet wants its cgroup root to exist in every hierarchy (a v1 cpuset needs its CPUs
  # and memory nodes before anything can join it).
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [ -d "$h" ] && mkdir -p "$h$CGROUP_ROOT"
  done
  if [ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems"
  fi
  service kubelet "exec $BIN/kubelet --config=$S/kubelet/config.yaml --kubeconfig=$S/kubelet.kubeconfig \
--root-dir=$S/kubelet --cert-dir=$S/kubelet/pki --hostname-override=$NODE --node-ip=$NODE_IP -v=1"
  wait_for "node $NODE" 120 node_ready
  kubectl label node "$NODE" agentcell.dev/node=true --overwrite >/dev/null
}

node_ready() {
  kubectl get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

cmd_up() {
  cmd_build
  for t in openssl supervise svc python3 containerd ctr nft ip; do
    command -v "$t" >/dev/null || die "$t is missing (bash scripts/setup.sh installs it)"
  done
  mkdir -p "$S"
  pki
  kubeconfig admin admin
  network_up
  control_plane_up
  containerd_up
  cmd_images
  kubelet_up
  log "up: $(kubectl get node "$NODE" --no-headers 2>/dev/null)"
  log "use it: eval \"\$($0 env)\""
}

cmd_env() {
  echo "export KUBECONFIG=$S/admin.kubeconfig"
  echo "export PATH=$BIN:\$PATH"
}

cmd_status() {
  local s rc=0
  for s in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet; do
    if [ -d "$S/sv/$s" ]; then
      echo "$s: $(svstat "$S/sv/$s" 2>&1 | cut -d: -f2-)"
      service_up "$s" || rc=1
    else
      echo "$s: not started"
      rc=1
    fi
  done
  if [ -f "$S/admin.kubeconfig" ] && kubectl get --raw /readyz >/dev/null 2>&1; then
    kubectl get nodes -o wide
  else
    echo "api: not reachable"
    rc=1
  fi
  return $rc
}

# ---------------------------------------------------------------------------------------------
# down: everything `up` and the pods created, in reverse.

stop_service() {
  local d=$S/sv/$1
  [ -d "$d" ] || return 0
  svc -dx "$d" 2>/dev/null || true
  local i
  for i in $(seq 100); do svok "$d" 2>/dev/null || return 0; sleep 0.1; done
  log "$1 did not stop in 10 s; killing its supervisor"
  pkill_exact_supervise "$d"
}

# The supervise process of one service directory (by its exact command line, not a pattern).
pkill_exact_supervise() {
  local pid
  for pid in $(pgrep -x supervise); do
    [ "$(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null)" = "supervise $1 " ] && kill -KILL "$pid"
  done
  return 0
}

# Processes whose command line names our containerd's socket (shims, and what they run).
our_shims() {
  local pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    tr '\0' ' ' 2>/dev/null </proc/"$pid"/cmdline | grep -q -- "-address $CONTAINERD_SOCK " && echo "$pid"
  done
  return 0
}

cmd_down() {
  [ -d "$S" ] || {
    log "down: nothing to do"
    return 0
  }
  stop_service kubelet
  for s in kube-scheduler kube-controller-manager; do stop_service "$s"; done
  # Pod network namespaces, from the bundles of our containerd (CNI names them cni-UUID, like
  # those of the e2e suite's containerds: only ours are removed).
  local netns
  netns=$(cat "$S"/containerd/state/io.containerd.runtime.v2.task/k8s.io/*/config.json 2>/dev/null |
    grep -o '"/var/run/netns/cni-[0-9a-f-]*"' | tr -d '"' | sort -u || true)
  if [ -S "$CONTAINERD_SOCK" ]; then
    for t in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  fi
  stop_service containerd
  for pid in $(our_shims); do kill -KILL "$pid" 2>/dev/null || true; done
  sleep 0.5
  for n in $netns; do
    ip netns delete "$(basename "$n")" 2>/dev/null || { umount "$n" 2>/dev/null; rm -f "$n"; }
  done
  for s in kube-apiserver etcd; do stop_service "$s"; done
  # Mounts under the state directory (snapshots, pod volumes), innermost first.
  local m
  for m in $(awk -v s="$S" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # cgroups: the kubelet's root in every hierarchy, innermost first.
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
    [ -d "$h$CGROUP_ROOT" ] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  nft delete table ip "$NFT_TABLE" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  # The kubelet's iptables chains: its canaries (to notice a flush of its rules) and the hint
  # naming the iptables backend it used.
  for ipt in iptables ip6tables; do
    for t in mangle nat filter; do
      for chain in KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$t" -F "$chain" 2>/dev/null && "$ipt" -t "$t" -X "$chain" 2>/dev/null
      done
    done
  done
  [ -f "$S/ip_forward.orig" ] && sysctl -qw "net.ipv4.ip_forward=$(cat "$S/ip_forward.orig")"
  rm -rf "$S"
  log "down: stopped and removed $S"
}

case "${1:-}" in
build) cmd_build ;;
up) cmd_up ;;
images) cmd_images ;;
env) cmd_env ;;
status) cmd_status ;;
down) cmd_down ;;
*)
  echo "usage: $0 build|up|images|env|status|down" >&2
  exit 2
  ;;
esac
