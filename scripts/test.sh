#!/usr/bin/env bash
# Runs every check and test of the repository: formatting, clippy, then the whole workspace's
# tests (unit, conformance against ../shared/mxc-conformance, property, CLI, and root-only suites,
# the cluster suite on a real single-node Kubernetes among them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== micro-VM assets (guest agent, guest kernel)"
# shim/tests/microvm.rs boots real VMs: the static guest agent and Debian's kernel (one download,
# skipped when the same package is installed) go to AGENTCELL_VM_DIR before the tests run.
export AGENTCELL_VM_DIR="${AGENTCELL_VM_DIR:-/var/lib/agentcell/vm}"
cargo build --release --locked -p agentcell-guest --target x86_64-unknown-linux-musl
cargo build --locked -p agentcell --bin agentcell
target/debug/agentcell vm install-kernel
target/debug/agentcell vm install-agent target/x86_64-unknown-linux-musl/release/agentcell-guest
echo "== cargo test"
log=$(mktemp)
# The cluster suite (e2e/tests/cluster.rs) starts scripts/cluster.sh's cluster and stops it when
# it ends (AGENTCELL_CLUSTER_DOWN=1), so the suites after it find the machine as before; here
# again whatever the outcome.
export AGENTCELL_CLUSTER_DOWN=1
trap 'rm -f "$log"; bash scripts/cluster.sh down >&2 || true' EXIT
set +e
# A hung test must not eat CI's whole budget in silence: past the limit the run is stopped and
# fails, and cargo's "has been running for over 60 seconds" lines above name the test.
limit="${AGENTCELL_TEST_LIMIT:-3000}"
timeout --kill-after=30 "$limit" cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "test.sh: cargo test stopped after ${limit}s (AGENTCELL_TEST_LIMIT); a test hung: see the last 'running for over 60 seconds' line" >&2
fi
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
