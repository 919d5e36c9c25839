#!/usr/bin/env bash
# Pod start on the real cluster of scripts/cluster.sh (root): wall time from `kubectl apply` of a
# Pod to its Ready condition (as `kubectl wait` sees it through a watch) for the RuntimeClass
# `agentcell` (a deny-all MXC policy in the agentcell.dev/mxc-policy annotation), the default
# handler (runc) and `agentcell-vm` (micro-VM, TCG on this host), interleaved in a random order
# per round, one pod at a time; medians and ratios against runc. The same pod otherwise (busybox
# image imported into the node, `sleep`, a readiness that is the container running). Brings the
# cluster up and installs the chart with ci/local-values.yaml (release binaries) if they are not;
# deletes its namespace at the end. N=runs per runtime (default 20), VM=0 leaves the micro-VM
# tier out. Run it under the global test lock.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20}
VM=${VM:-1}
[ "$(id -u)" = 0 ] || { echo "benches/pod.sh: run as root" >&2; exit 1; }
bash scripts/cluster.sh up >&2
eval "$(bash scripts/cluster.sh env)"
HELM=${AGENTCELL_HELM:-/opt/agentcell-tools/bin/helm}
if ! "$HELM" status agentcell -n agentcell-system >/dev/null 2>&1; then
  "$HELM" install agentcell charts/agentcell -n agentcell-system --create-namespace \
    -f charts/agentcell/ci/local-values.yaml --wait --timeout 10m >&2
fi
ns=bench-pod
kubectl delete ns "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create ns "$ns" >/dev/null
trap 'kubectl delete ns "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
policy='{"version":"1.0.0","filesystem":{"readwritePaths":["/tmp"]},"network":{"egress":{"default":"deny"}}}'

pod() { # name runtime-class-or-empty
  local rc=""
  [ -n "$2" ] && rc="  runtimeClassName: $2"
  cat <<Y
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $ns
  annotations:
    agentcell.dev/mxc-policy: '$policy'
spec:
$rc
  terminationGracePeriodSeconds: 0
  containers:
    - name: c
      image: localhost/agentcell/busybox:dev
      imagePullPolicy: Never
      command: ["/bin/sleep", "infinity"]
Y
}

runtimes=(agentcell runc)
[ "$VM" = 1 ] && runtimes+=(agentcell-vm)
results=$(mktemp)
once() { # runtime index
  local rc=$1 name=p-$1-$2 t0 t1
  [ "$rc" = runc ] && rc=""
  t0=$(date +%s.%N)
  pod "$name" "$rc" | kubectl apply -f - >/dev/null
  kubectl wait -n "$ns" --for=condition=Ready "pod/$name" --timeout=600s >/dev/null
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v r="$1" 'BEGIN { printf "%s %.4f\n", r, b - a }' >>"$results"
  kubectl delete pod -n "$ns" "$name" --wait=true >/dev/null
}
# One warm-up pod per runtime (first use of the image snapshot, the VM assets' page cache).
for rc in "${runtimes[@]}"; do once "$rc" warm; done
: >"$results"
for i in $(seq "$N"); do
  for rc in $(printf '%s\n' "${runtimes[@]}" | shuf); do once "$rc" "$i"; done
done
python3 - "$results" "$N" <<'P'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for rc, t in rows:
    by.setdefault(rc, []).append(float(t))
med = {rc: statistics.median(v) for rc, v in by.items()}
print(f"pod apply -> Ready, N={sys.argv[2]} per runtime, interleaved (seconds)")
for rc in ("runc", "agentcell", "agentcell-vm"):
    if rc in by:
        v = sorted(by[rc])
        print(f"  {rc:13s} median {med[rc]:.3f}  min {v[0]:.3f}  max {v[-1]:.3f}")
for rc in ("agentcell", "agentcell-vm"):
    if rc in med:
        print(f"  ratio {rc}/runc: {med[rc] / med['runc']:.2f}x")
P
rm -f "$results"
