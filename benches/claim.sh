#!/usr/bin/env bash
# Claim -> Bound on the real cluster of scripts/cluster.sh (root): CLAIMS claims (default 100),
# one at a time, against a pool of POOL Ready members (default 4), each created only while the
# pool has a Ready, current member (so no claim waits for a pod to start). Two measures:
#   at the operator: each claim's status.claimToBoundMillis, and the operator's histogram
#     agentcell_operator_claim_to_bound_seconds read from its /metrics (through the API server's
#     pod proxy), both from the leader;
#   end to end: from the watch event that shows the claim created to the one that shows it
#     Bound=True, both seen by one `kubectl get -w` (no process start in the interval).
# Prints p50/p99/max. Installs the chart like benches/pod.sh; deletes its namespace at the end.
# Run it under the global test lock.
set -euo pipefail
cd "$(dirname "$0")/.."
CLAIMS=${CLAIMS:-100}
POOL=${POOL:-4}
[ "$(id -u)" = 0 ] || { echo "benches/claim.sh: run as root" >&2; exit 1; }
bash scripts/cluster.sh up >&2
eval "$(bash scripts/cluster.sh env)"
HELM=${AGENTCELL_HELM:-/opt/agentcell-tools/bin/helm}
if ! "$HELM" status agentcell -n agentcell-system >/dev/null 2>&1; then
  "$HELM" install agentcell charts/agentcell -n agentcell-system --create-namespace \
    -f charts/agentcell/ci/local-values.yaml --wait --timeout 10m >&2
fi
ns=bench-claim
kubectl delete ns "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create ns "$ns" >/dev/null
work=$(mktemp -d)
watcher=
trap '[ -n "$watcher" ] && kill "$watcher" 2>/dev/null; kubectl delete ns "$ns" --wait=false >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
kubectl apply -f - >/dev/null <<Y
apiVersion: agentcell.dev/v1alpha1
kind: AgentSandboxPool
metadata: {name: bench, namespace: $ns}
spec:
  replicas: $POOL
  template:
    policy: {preset: offline}
    podTemplate:
      spec:
        terminationGracePeriodSeconds: 0
        containers:
          - {name: a, image: localhost/agentcell/busybox:dev, imagePullPolicy: Never, command: ["/bin/sleep", "infinity"],
             volumeMounts: [{name: s, mountPath: /workspace}]}
        volumes: [{name: s, emptyDir: {}}]
Y
ready() { kubectl get asbpool -n "$ns" bench -o 'jsonpath={.status.updatedReadyReplicas}'; }
t=$((SECONDS + 600))
until [ "$(ready)" = "$POOL" ]; do [ $SECONDS -lt $t ] || { echo "pool not ready" >&2; exit 1; }; sleep 1; done

# One watch for every claim event, each line stamped when it arrives.
kubectl get asbclaim -n "$ns" -w --output-watch-events \
  -o 'jsonpath={.type} {.object.metadata.name} {.object.status.conditions[?(@.type=="Bound")].status}{"\n"}' |
  while read -r line; do echo "$(date +%s.%N) $line"; done >"$work/watch" &
watcher=$!
sleep 2
for i in $(seq "$CLAIMS"); do
  until [ "${r:=$(ready)}" -ge 1 ] 2>/dev/null; do sleep 0.2; r=$(ready); done
  unset r
  printf 'apiVersion: agentcell.dev/v1alpha1\nkind: AgentSandboxClaim\nmetadata: {name: c%s, namespace: %s}\nspec:\n  poolRef: {name: bench}\n' "$i" "$ns" |
    kubectl create -f - >/dev/null
  t=$((SECONDS + 120))
  until [ "$(kubectl get asbclaim -n "$ns" "c$i" -o 'jsonpath={.status.conditions[?(@.type=="Bound")].status}')" = True ]; do
    [ $SECONDS -lt $t ] || { echo "claim c$i not bound" >&2; exit 1; }
    sleep 0.05
  done
  kubectl get asbclaim -n "$ns" "c$i" -o 'jsonpath={.status.claimToBoundMillis}{"\n"}' >>"$work/operator"
  # Release it: the member is deleted and the pool makes a new one.
  kubectl delete asbclaim -n "$ns" "c$i" --wait=false >/dev/null
done
sleep 1
leader=$(kubectl get lease -n agentcell-system agentcell-operator -o 'jsonpath={.spec.holderIdentity}')
kubectl get --raw "/api/v1/namespaces/agentcell-system/pods/$leader:8080/proxy/metrics" >"$work/metrics"
python3 - "$work" "$CLAIMS" <<'P'
import math, sys
work, n = sys.argv[1], int(sys.argv[2])
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, math.ceil(p / 100 * len(v)) - 1)]
created, bound = {}, {}
for line in open(f"{work}/watch"):
    f = line.split()
    if len(f) < 3:
        continue
    t, kind, name = float(f[0]), f[1], f[2]
    if kind == "ADDED":
        created.setdefault(name, t)
    if len(f) > 3 and f[3] == "True":
        bound.setdefault(name, t)
e2e = [1000 * (bound[c] - created[c]) for c in created if c in bound]
op = [float(l) for l in open(f"{work}/operator") if l.strip()]
print(f"claim -> Bound, {n} claims one at a time, a Ready member always available (milliseconds)")
print(f"  end to end (watch: created -> Bound), {len(e2e)} claims: p50 {pct(e2e, 50):.1f}  p99 {pct(e2e, 99):.1f}  max {max(e2e):.1f}")
print(f"  at the operator (status.claimToBoundMillis), {len(op)} claims: p50 {pct(op, 50):.1f}  p99 {pct(op, 99):.1f}  max {max(op):.1f}")
# The operator's histogram: cumulative buckets -> the bucket bound holding each quantile.
buckets = []
for line in open(f"{work}/metrics"):
    if line.startswith("agentcell_operator_claim_to_bound_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((math.inf if le == "+Inf" else float(le), float(line.split()[-1])))
if buckets:
    total = buckets[-1][1]
    def hq(q):
        for le, c in buckets:
            if c >= q * total:
                return le * 1000
    print(f"  operator histogram (leader, {int(total)} observations): p50 <= {hq(0.5):.0f}  p99 <= {hq(0.99):.0f} (bucket upper bounds)")
P
