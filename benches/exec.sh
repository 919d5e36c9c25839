#!/usr/bin/env bash
# Start-up cost of a confined /bin/true, measured in one run: `agentcell run` under
# policies/presets/offline.json, bwrap with equivalent options, and `runc run` / `crun run` on a
# bundle whose config.json is agentcell's own spec for the same policy (so the same mounts,
# namespaces, seccomp profile and cgroup limits; they do not apply Landlock, agentcell does).
# Prints the median wall time of each and the ratios. Needs root; N=runs (default 40).
# `ac-nowarm` is agentcell with AGENTCELL_CGROUP_WARM=0 (its `env` adds ~1 ms).
# AC_BASE=PATH adds `ac-base`, another agentcell binary (a build of an earlier commit) run the
# same way in the same interleaved loop, and the ratio agentcell/ac-base.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-40}
for tool in bwrap runc crun python3; do
  command -v "$tool" >/dev/null || { echo "benches/exec.sh: $tool not found (bash scripts/setup.sh installs it)" >&2; exit 1; }
done
cargo build --release -q -p agentcell
AC=$PWD/target/release/agentcell
POLICY=$PWD/policies/presets/offline.json
work=$(mktemp -d /var/tmp/agentcell-bench.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# crun on a hybrid cgroup host needs hugetlb mounted as a v1 hierarchy.
if [ -d /sys/fs/cgroup/unified ] && [ ! -e /sys/fs/cgroup/hugetlb/tasks ]; then
  mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null || true
fi

mkdir -p "$work/bundle/rootfs"
"$AC" run --print-spec --policy "$POLICY" -- /bin/true > "$work/spec.json"
python3 - "$work/spec.json" "$work/bundle/config.json" <<'PY'
import json, sys
import os
spec = json.load(open(sys.argv[1]))
spec["linux"].pop("cgroupsPath", None)   # each runtime names its own cgroup per container
json.dump(spec, open(sys.argv[2], "w"), indent=1)
# The root's symlinks agentcell makes instead of binds (/bin -> /usr/bin on usr-merged hosts).
links = json.loads(spec.get("annotations", {}).get("org.agentcell.root.symlinks", "{}"))
rootfs = os.path.join(os.path.dirname(sys.argv[2]), "rootfs")
for link, target in links.items():
    os.symlink(target, os.path.join(rootfs, link.lstrip("/")))
PY

bwrap_args=(--unshare-all --die-with-parent --new-session --clearenv --setenv PATH /usr/bin:/bin)
for p in /bin /sbin /lib /lib32 /lib64 /libx32 /usr/bin /usr/sbin /usr/lib /usr/lib32 /usr/lib64 /usr/libexec /usr/share /etc; do
  [ -e "$p" ] && bwrap_args+=(--ro-bind "$p" "$p")
done
bwrap_args+=(--dev /dev --proc /proc --tmpfs /tmp -- /bin/true)

python3 - "$N" "$AC" "$POLICY" "$work/bundle" "${AC_BASE:-}" "${bwrap_args[@]}" <<'PY'
import statistics, subprocess, sys, time
n, ac, policy, bundle, base = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
bwrap = ["bwrap"] + sys.argv[6:]
cmds = {
    "agentcell": lambda i: [ac, "run", "--policy", policy, "--", "/bin/true"],
    # The same without paying the cgroup attach's grace period early (sandbox/attach_warm.rs).
    "ac-nowarm": lambda i: ["env", "AGENTCELL_CGROUP_WARM=0", ac, "run", "--policy", policy, "--", "/bin/true"],
    "bwrap": lambda i: bwrap,
    "runc": lambda i: ["runc", "run", "--bundle", bundle, f"acbench-runc-{i}"],
    "crun": lambda i: ["crun", "run", "--bundle", bundle, f"acbench-crun-{i}"],
}
if base:
    cmds["ac-base"] = lambda i: [base, "run", "--policy", policy, "--", "/bin/true"]
times = {k: [] for k in cmds}
for i in range(n):                      # interleaved, so drift hits every runtime alike
    for name, cmd in cmds.items():
        t = time.perf_counter()
        r = subprocess.run(cmd(i), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times[name].append(time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"{name} failed ({r.returncode}): {r.stderr.decode()[-400:]}")
med = {k: statistics.median(v) * 1000 for k, v in times.items()}
print(f"start-to-exit of /bin/true, median of {n} runs (ms):")
for k, v in med.items():
    print(f"  {k:10} {v:8.2f}")
print(f"ratio agentcell/bwrap {med['agentcell'] / med['bwrap']:.2f}")
print(f"ratio agentcell/runc  {med['agentcell'] / med['runc']:.2f}")
print(f"ratio agentcell/crun  {med['agentcell'] / med['crun']:.2f}")
if base:
    print(f"ratio agentcell/ac-base {med['agentcell'] / med['ac-base']:.2f}")
    for k in ("bwrap", "runc", "crun"):
        print(f"ratio ac-base/{k:5} {med['ac-base'] / med[k]:.2f}")
PY
