#!/usr/bin/env bash
# The micro-VM tier beside the container tier, measured in one run (root): for each round, one
# `agentcell run --isolation microvm --policy P -- /bin/true` and one `agentcell run --policy P
# -- /bin/true`, interleaved. Reports medians of: the VM's boot-to-Ready (the guest's own boot_ms,
# kernel start to the agent serving; and the host's wall clock from spawning qemu to Ready),
# and run-to-exit wall time of both tiers, with their ratio.
# N=measured rounds (default 10), WARMUP=warm-up rounds (default 1). Needs the micro-VM assets
# (agentcell vm install-kernel / install-agent; AGENTCELL_VM_DIR to use another directory).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}
WARMUP=${WARMUP:-1}
[ "$(id -u)" = 0 ] || { echo "benches/vm.sh: run as root" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "benches/vm.sh: qemu-system-x86_64 not found (bash scripts/setup.sh installs it)" >&2; exit 1; }
cargo build --release -q -p agentcell --bin agentcell
BIN=$PWD/target/release/agentcell
dir=$(mktemp -d /var/tmp/agentcell-bench-vm-XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo '{"version":"1.0.0","network":{"egress":{"default":"deny"}}}' >"$dir/policy.json"

now_ns() { date +%s%N; }
vm_round() { # appends "boot_ms wall_ms run_ms" to $dir/vm
  local t0 t1 line
  t0=$(now_ns)
  AGENTCELL_LOG=agentcell::vm::vmm=info "$BIN" run --isolation microvm --policy "$dir/policy.json" -- /bin/true 2>"$dir/log" ||
    { cat "$dir/log" >&2; exit 1; }
  t1=$(now_ns)
  line=$(grep 'micro-VM ready' "$dir/log")
  echo "$(sed -E 's/.*guest_boot_ms=([0-9]+).*/\1/' <<<"$line") $(sed -E 's/.*wall_ms=([0-9]+).*/\1/' <<<"$line") $(( (t1 - t0) / 1000000 ))" >>"$1"
}
ct_round() {
  local t0 t1
  t0=$(now_ns)
  "$BIN" run --policy "$dir/policy.json" -- /bin/true
  t1=$(now_ns)
  echo $(( (t1 - t0) / 1000000 )) >>"$1"
}
for _ in $(seq "$WARMUP"); do vm_round "$dir/warm"; ct_round "$dir/warm"; done
for _ in $(seq "$N"); do vm_round "$dir/vm"; ct_round "$dir/ct"; done
accel=$("$BIN" doctor --json | python3 -c 'import json,sys; m=json.load(sys.stdin)["microvm"]; print(m["accel"], "-", m["accelWhy"])')
python3 - "$dir/vm" "$dir/ct" "$N" "$accel" <<'PY'
import statistics as st, sys
vm = [list(map(int, l.split())) for l in open(sys.argv[1])]
ct = [int(l) for l in open(sys.argv[2])]
boot, wall, run = (st.median(c) for c in zip(*vm))
ctm = st.median(ct)
print(f"rounds: {sys.argv[3]}   accelerator: {sys.argv[4]}")
print(f"micro-VM boot-to-Ready, guest clock (kernel start -> agent serving): {boot:8.0f} ms")
print(f"micro-VM boot-to-Ready, host wall clock (qemu spawn -> Ready):      {wall:8.0f} ms")
print(f"micro-VM run-to-exit of /bin/true:                                   {run:8.0f} ms")
print(f"container run-to-exit of /bin/true:                                  {ctm:8.0f} ms")
print(f"ratio micro-VM / container:                                          {run / ctm:8.1f} x")
if "tcg" in sys.argv[4]:
    print("caveat: qemu TCG emulates every guest instruction; with real KVM the same boot is "
          "expected near the published microVM figures (Firecracker: <=125 ms to guest init).")
PY
