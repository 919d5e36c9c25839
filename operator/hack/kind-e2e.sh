#!/usr/bin/env bash
# End-to-end check of the operator on a real cluster: kind (default) or any cluster kubectl
# points at (USE_EXISTING=1, e.g. k3d). Not run by scripts/test.sh: the development machine has
# no API server. Needs kind (or a cluster), kubectl and cargo.
#
# The nodes of a kind cluster run plain containerd: the RuntimeClass `agentcell` is pointed at
# the `runc` handler here, so this exercises the operator (objects, annotations, conditions,
# lifecycle), not the enforcement by agentcell's shim.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-agentcell-e2e}
NS=agentcell-e2e
PORT=${PORT:-18080}
OP_PID=""

cleanup() {
  [ -n "$OP_PID" ] && kill "$OP_PID" 2>/dev/null || true
  if [ "${USE_EXISTING:-0}" != 1 ] && [ "${KEEP:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  else
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
cond() { kubectl -n "$NS" get asb "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].$3}"; }
wait_cond() { # NAME TYPE STATUS [SECONDS]
  for _ in $(seq 1 "${4:-90}"); do
    [ "$(cond "$1" "$2" status 2>/dev/null)" = "$3" ] && return 0
    sleep 1
  done
  kubectl -n "$NS" get asb "$1" -o yaml >&2 || true
  fail "$1: $2 never became $3"
}

if [ "${USE_EXISTING:-0}" != 1 ]; then
  kind create cluster --name "$CLUSTER" --wait 120s
fi

kubectl apply -f crds/
kubectl wait --for=condition=Established crd/agentsandboxes.agentcell.dev --timeout=60s
kubectl apply -f - <<'YAML'
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: agentcell
handler: runc
YAML
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -

cargo build -p agentcell-operator -p agentcell
RUST_LOG=info ./target/debug/agentcell-operator --no-leader-election --http-addr "127.0.0.1:$PORT" \
  >"${TMPDIR:-/tmp}/agentcell-operator-e2e.log" 2>&1 &
OP_PID=$!

sandbox() { # NAME POLICY-YAML [EXTRA-SPEC-YAML]
  kubectl -n "$NS" apply -f - <<YAML
apiVersion: agentcell.dev/v1alpha1
kind: AgentSandbox
metadata:
  name: $1
spec:
  policy:
$2
${3:-}
  podTemplate:
    spec:
      containers:
        - name: agent
          image: busybox:1.36
          command: ["sleep", "3600"]
YAML
}

# 1. A sandbox from a preset: pod with the runtime class, policy annotations, owner; Service and
#    NetworkPolicy; Ready=True with the pod's IP.
sandbox basic "    preset: coding-agent"
wait_cond basic Ready True 120
[ "$(kubectl -n "$NS" get pod basic -o jsonpath='{.spec.runtimeClassName}')" = agentcell ] || fail "runtimeClassName"
want=$(./target/debug/agentcell policy digest --no-command preset:coding-agent)
got=$(kubectl -n "$NS" get pod basic -o jsonpath='{.metadata.annotations.agentcell\.dev/policy-digest}')
[ "$got" = "$want" ] || fail "digest $got, want $want"
[ "$(kubectl -n "$NS" get pod basic -o jsonpath='{.metadata.ownerReferences[0].kind}')" = AgentSandbox ] || fail "owner"
kubectl -n "$NS" get service basic >/dev/null || fail "service"
kubectl -n "$NS" get networkpolicy basic >/dev/null || fail "networkpolicy"
[ -n "$(kubectl -n "$NS" get asb basic -o jsonpath='{.status.podIP}')" ] || fail "podIP"
pass "create: pod, service, networkpolicy, Ready=True"
kubectl -n "$NS" get asb basic

# 2. CEL: two policy sources are refused by the API server.
if sandbox two "    preset: offline
    configMapRef: {name: x, key: y}" 2>/dev/null; then fail "CEL accepted two policy sources"; fi
pass "CEL rejects two policy sources"

# 3. An invalid inline policy: PolicyValid=False naming the JSON path, no pod.
sandbox invalid "    inline:
      version: "1.0.0"
      network:
        egress:
          allow:
            - to: [{cidr: 10.0.0.0/16, except: [10.1.0.0/16]}]"
wait_cond invalid PolicyValid False
cond invalid PolicyValid message | grep -q 'network.egress.allow\[0\].to\[0\].except\[0\]' || fail "path"
kubectl -n "$NS" get pod invalid >/dev/null 2>&1 && fail "pod made for an invalid policy"
kubectl -n "$NS" get events --field-selector reason=InvalidPolicy | grep -q invalid || fail "event"
pass "invalid policy: condition with path, event, no pod"

# 4. microvm without its RuntimeClass: RuntimeClassResolved=False, no pod.
sandbox vm "    preset: offline" "  isolation: microvm"
wait_cond vm RuntimeClassResolved False
kubectl -n "$NS" get pod vm >/dev/null 2>&1 && fail "pod without runtime class"
pass "missing runtime class"

# 5. Suspend and resume.
kubectl -n "$NS" patch asb basic --type merge -p '{"spec":{"operatingMode":"Suspended"}}'
wait_cond basic Suspended True
kubectl -n "$NS" wait --for=delete pod/basic --timeout=90s
kubectl -n "$NS" patch asb basic --type merge -p '{"spec":{"operatingMode":"Running"}}'
wait_cond basic Ready True 120
pass "suspend deletes the pod, resume recreates it"

# 6. Expiry with Delete.
sandbox short "    preset: offline" "  lifetime: {shutdownAfter: 20s}"
for _ in $(seq 1 90); do kubectl -n "$NS" get asb short >/dev/null 2>&1 || break; sleep 1; done
kubectl -n "$NS" get asb short >/dev/null 2>&1 && fail "expired sandbox not deleted"
pass "expiry deletes the sandbox"

curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^agentcell_operator_(sandboxes|time_to_ready)' || fail "metrics"
echo "e2e: all passed"
