#!/usr/bin/env bash
# The containerd shim against runc and crun, measured in one run (root): start-to-exit wall time
# of `ctr run --rm <image> <id> /bin/true` with the runtimes agentcell
# (io.containerd.agentcell.v2, a deny-all MXC policy in the agentcell.dev/mxc-policy annotation),
# runc (io.containerd.runc.v2) and crun (the runc shim with BinaryName=/usr/bin/crun),
# interleaved round-robin; then the resident memory of one idle shim (a task running `sleep`)
# of agentcell vs containerd-shim-runc-v2. It starts a containerd of its own (root, state,
# socket and config under /var/tmp/agentcell-bench-PID, CRI plugin off), imports a busybox
# image it builds from Debian's busybox-static, and removes everything it created on exit.
# N=measured runs per runtime (default 30), WARMUP=warm-up runs per runtime (default 3).
# ROOTFS=1 runs every runtime on the image's root filesystem as a directory (`ctr run --rootfs`)
# instead of the imported image (no snapshot mount). BIN_DIR=DIR uses the shim in DIR instead
# of building one (to compare builds). VM=1 (the default when the micro-VM assets are installed:
# `agentcell vm install-kernel`, `agentcell vm install-agent`) adds the micro-VM tier
# (io.containerd.agentcell-vm.v2) to the same interleaved rounds; VM=0 leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-30}
WARMUP=${WARMUP:-3}
for tool in containerd ctr runc crun python3 sha256sum tar; do
  command -v "$tool" >/dev/null || { echo "benches/start.sh: $tool not found (bash scripts/setup.sh installs it)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "benches/start.sh: /bin/busybox not found (apt-get install busybox-static)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "benches/start.sh: run as root (it starts containerd)" >&2; exit 1; }
ROOTFS=${ROOTFS:-0}
if [ -n "${BIN_DIR:-}" ]; then
  BIN=$(cd "$BIN_DIR" && pwd)
else
  cargo build --release -q -p agentcell --bins
  BIN=$PWD/target/release
fi
[ -x "$BIN/containerd-shim-agentcell-v2" ] || { echo "benches/start.sh: $BIN/containerd-shim-agentcell-v2 was not built" >&2; exit 1; }

dir=/var/tmp/agentcell-bench-$$
sock=$dir/containerd.sock
ns=acbench-$$
image=bench.local/busybox:1
policy='{"version":"1.0.0","network":{"egress":{"default":"deny"}}}'
cd_pid=
c() { ctr -a "$sock" -n "$ns" "$@"; }

# Pids of the shim processes (not their short-lived `start`/`delete` runs) serving our socket.
shim_pids() { # $1: binary name, or "any"
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    case "$cmd" in *"$sock"*) ;; *) continue ;; esac
    case "$cmd" in *" start"*|*" delete"*) continue ;; esac
    case "${cmd%% *}" in
      */containerd-shim-*-v2|containerd-shim-*-v2)
        if [ "$1" = any ] || [ "$(basename "${cmd%% *}")" = "$1" ]; then echo "${p#/proc/}"; fi ;;
    esac
  done
}

# What the shims may leave behind, for the before/after check.
leftovers() {
  local m n s g
  m=$(awk -v d="$dir/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)
  n=0; [ -s "$dir/ids" ] && n=$(python3 - "$ns" "$dir/ids" <<'PY'
import os, sys
ns = sys.argv[1]
def name(i):  # the shim's netns_name()
    h = 0xcbf29ce484222325
    for b in (ns + "/" + i).encode():
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    return f"acs-{h & 0xffffffffffff:012x}"
print(sum(os.path.exists(f"/run/netns/{name(l.strip())}") for l in open(sys.argv[2]) if l.strip()))
PY
)
  s=$(find "/run/agentcell/shim/$ns" -mindepth 1 -not -type d 2>/dev/null | wc -l)
  [ "$s" = 0 ] || s="$s ($(find "/run/agentcell/shim/$ns" -mindepth 1 -not -type d -printf '%P ' 2>/dev/null | cut -c1-200))"
  g=$(find /sys/fs/cgroup/ -maxdepth 3 -type d -path "*/$ns/*" 2>/dev/null | wc -l)
  echo "mounts=$m netns=$n shim-state=$s cgroups=$g shims=$(shim_pids any | wc -l)"
}

cleanup() {
  set +e
  if [ -n "$cd_pid" ] && kill -0 "$cd_pid" 2>/dev/null; then
    for t in $(c tasks ls -q 2>/dev/null); do
      c tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1
      c tasks delete -f "$t" >/dev/null 2>&1
    done
    for k in $(c containers ls -q 2>/dev/null); do c containers delete "$k" >/dev/null 2>&1; done
    kill "$cd_pid" 2>/dev/null; wait "$cd_pid" 2>/dev/null
  fi
  for p in $(shim_pids any); do kill -9 "$p" 2>/dev/null; done
  awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' |
    sort -rn | cut -d' ' -f2- | while read -r m; do umount -l "$m" 2>/dev/null; done
  if [ -s "$dir/ids" ]; then
    python3 - "$ns" "$dir/ids" <<'PY' | while read -r n; do ip netns del "$n" 2>/dev/null; done
import os, sys
ns = sys.argv[1]
for l in open(sys.argv[2]):
    h = 0xcbf29ce484222325
    for b in (ns + "/" + l.strip()).encode():
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    n = f"acs-{h & 0xffffffffffff:012x}"
    if l.strip() and os.path.exists(f"/run/netns/{n}"):
        print(n)
PY
  fi
  rm -rf "/run/agentcell/shim/$ns"
  find /sys/fs/cgroup/ -maxdepth 2 -type d -name "$ns" 2>/dev/null | while read -r g; do
    find "$g" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# crun on a hybrid cgroup host needs hugetlb mounted as a v1 hierarchy.
if [ -d /sys/fs/cgroup/unified ] && [ ! -e /sys/fs/cgroup/hugetlb/tasks ]; then
  mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb 2>/dev/null || true
fi

mkdir -p "$dir"
: >"$dir/ids"
cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$dir/ttrpc.sock"
EOF
PATH="$BIN:$PATH" containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
cd_pid=$!
for _ in $(seq 200); do c version >/dev/null 2>&1 && break; sleep 0.1; done
c version >/dev/null || { echo "containerd did not come up:" >&2; tail -20 "$dir/containerd.log" >&2; exit 1; }

# The image: an OCI layout archive (one layer: busybox and its applets), built here.
img=$dir/img
mkdir -p "$img/rootfs/bin" "$img/layout/blobs/sha256"
cp /bin/busybox "$img/rootfs/bin/busybox"
for a in sh true sleep echo cat ls; do ln -s busybox "$img/rootfs/bin/$a"; done
mkdir -p "$img/rootfs/"{etc,tmp,proc,dev}
echo 'root:x:0:0:root:/root:/bin/sh' >"$img/rootfs/etc/passwd"
blob() { # $1: file → prints "digest size", stores it as a blob
  local d; d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$img/layout/blobs/sha256/$d"
  echo "$d $(stat -c %s "$1")"
}
tar --numeric-owner --owner=0 --group=0 -C "$img/rootfs" -cf "$img/layer.tar" .
read -r layer layer_size < <(blob "$img/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$layer" >"$img/config.json"
read -r config config_size < <(blob "$img/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$img/manifest.json"
read -r manifest manifest_size < <(blob "$img/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"1"}}]}' \
  "$manifest" "$manifest_size" "$image" >"$img/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$img/layout/oci-layout"
tar -C "$img/layout" -cf "$img/busybox.tar" index.json oci-layout blobs
c images import "$img/busybox.tar" >/dev/null
c images ls -q | grep -qx "$image" || { echo "image import failed" >&2; exit 1; }

VM_DIR=${AGENTCELL_VM_DIR:-/var/lib/agentcell/vm}
if [ -z "${VM:-}" ]; then
  VM=0; [ -d "$VM_DIR/kernel" ] && [ -x "${AGENTCELL_GUEST_AGENT:-$VM_DIR/agentcell-guest}" ] && VM=1
fi
if [ "$VM" = 1 ] && [ ! -x "$BIN/containerd-shim-agentcell-vm-v2" ]; then
  echo "benches/start.sh: $BIN/containerd-shim-agentcell-vm-v2 was not built" >&2; exit 1
fi
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
cgmode=v2; [ -d /sys/fs/cgroup/unified ] && cgmode="v1 hybrid"
echo "== benches/start.sh: containerd shim start-up and memory"
echo "kernel      $(uname -r) ($(nproc) CPUs, cgroup $cgmode, load average $loadavg)"
echo "containerd  $(containerd --version | cut -d' ' -f3-)"
echo "runc        $(runc --version | head -1 | cut -d' ' -f3)"
echo "crun        $(crun --version | head -1 | cut -d' ' -f3)"
echo "agentcell   $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($(stat -c %s "$BIN/containerd-shim-agentcell-v2") byte shim)"
echo "runs        $N measured + $WARMUP warm-up per runtime, interleaved"
if [ "$VM" = 1 ]; then
  accel=tcg; [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && accel=kvm
  echo "micro-VM    io.containerd.agentcell-vm.v2, qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), accel ${AGENTCELL_VM_ACCEL:-$accel}"
fi
if [ "$ROOTFS" = 1 ]; then target=(--rootfs "$img/rootfs"); echo "root        directory $img/rootfs (ctr run --rootfs)"
else target=("$image"); echo "root        image $image (overlayfs snapshot)"; fi
echo "leftovers before: $(leftovers)"

VM="$VM" python3 - "$N" "$WARMUP" "$sock" "$ns" "$policy" "$dir/ids" "${target[@]}" <<'PY' || { echo "containerd log (tail):" >&2; tail -15 "$dir/containerd.log" | cut -c1-300 >&2; exit 1; }
import os, statistics, subprocess, sys, time
n, warmup, sock, ns, policy, ids = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7]
target = sys.argv[7:]                  # [image] or [--rootfs, dir]
ctr = ["ctr", "-a", sock, "-n", ns, "run", "--rm"] + target[:-1]
runtimes = {
    "agentcell": ["--runtime", "io.containerd.agentcell.v2", "--annotation", f"agentcell.dev/mxc-policy={policy}"],
    "runc": ["--runtime", "io.containerd.runc.v2"],
    "crun": ["--runtime", "io.containerd.runc.v2", "--runc-binary", "/usr/bin/crun"],
}
if os.environ.get("VM") == "1":
    runtimes["agentcell-vm"] = ["--runtime", "io.containerd.agentcell-vm.v2", "--annotation",
                                f"agentcell.dev/mxc-policy={policy}"]
times = {k: [] for k in runtimes}
idlog = open(ids, "a")
for i in range(warmup + n):             # interleaved, so drift hits every runtime alike
    for name, flags in runtimes.items():
        cid = f"{name}-{i}"
        idlog.write(cid + "\n"); idlog.flush()
        t = time.perf_counter()
        try:
            r = subprocess.run(ctr + flags + [target[-1], cid, "/bin/true"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        except subprocess.TimeoutExpired:
            sys.exit(f"{name} run {i}: ctr run did not return within 60 s")
        dt = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"{name} run {i} failed ({r.returncode}): {r.stderr.decode()[-600:]}")
        if i >= warmup:
            times[name].append(dt * 1000)
def p90(v):
    return statistics.quantiles(v, n=10, method="inclusive")[8]
med = {k: statistics.median(v) for k, v in times.items()}
what = "--rootfs <dir>" if target[0] == "--rootfs" else "<image>"
print(f"\nctr run --rm {what} <id> /bin/true, start to exit, {n} runs each (ms):")
print(f"  {'runtime':10} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}")
for k, v in times.items():
    print(f"  {k:10} {med[k]:8.1f} {p90(v):8.1f} {min(v):8.1f} {max(v):8.1f}")
print(f"ratio agentcell/runc  {med['agentcell'] / med['runc']:.2f}  (goal <= 0.80)")
print(f"ratio agentcell/crun  {med['agentcell'] / med['crun']:.2f}  (goal <= 1.00)")
if "agentcell-vm" in med:
    print(f"ratio agentcell-vm/agentcell  {med['agentcell-vm'] / med['agentcell']:.1f}  (micro-VM vs container tier;"
          " under TCG every guest instruction is emulated: the KVM target is Firecracker's <= 125 ms to guest init)")
PY
echo "leftovers after the runs: $(leftovers)"

# Memory of one idle shim: a task sleeping, its shim read after it settles.
mem() { # $1: pid → "VmRSS_kB PSS_kB"
  local rss pss=-
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status")
  [ -r "/proc/$1/smaps_rollup" ] && pss=$(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup")
  echo "$rss $pss"
}
echo mem-agentcell >>"$dir/ids"; echo mem-runc >>"$dir/ids"
timeout 60 ctr -a "$sock" -n "$ns" run -d --runtime io.containerd.agentcell.v2 --annotation "agentcell.dev/mxc-policy=$policy" "${target[@]}" mem-agentcell /bin/sleep 1000 >/dev/null
timeout 60 ctr -a "$sock" -n "$ns" run -d --runtime io.containerd.runc.v2 "${target[@]}" mem-runc /bin/sleep 1000 >/dev/null
sleep 3
# The shim is the one in our PID namespace; agentcell's container PID 1 (forked from the shim,
# not exec'd, so it carries the shim's command line) is in the container's.
in_our_ns() { local p; for p in "$@"; do [ "$(readlink "/proc/$p/ns/pid")" = "$(readlink /proc/self/ns/pid)" ] && echo "$p"; done; true; }
not_in_our_ns() { local p; for p in "$@"; do [ "$(readlink "/proc/$p/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] && echo "$p"; done; true; }
a_all=$(shim_pids containerd-shim-agentcell-v2)
# shellcheck disable=SC2086
a_pid=$(in_our_ns $a_all); a_init=$(not_in_our_ns $a_all | head -1)
r_pid=$(shim_pids containerd-shim-runc-v2)
[ "$(echo "$a_pid" | wc -w)" = 1 ] && [ "$(echo "$r_pid" | wc -w)" = 1 ] ||
  { echo "expected one shim of each kind, found agentcell: [$a_pid] runc: [$r_pid]" >&2; exit 1; }
read -r a_rss a_pss < <(mem "$a_pid"); read -r r_rss r_pss < <(mem "$r_pid")
echo
echo "idle shim of one sleeping task (kB):"
printf '  %-30s %8s %8s %8s\n' shim VmRSS Pss threads
printf '  %-30s %8s %8s %8s\n' containerd-shim-agentcell-v2 "$a_rss" "$a_pss" "$(awk '/^Threads:/ {print $2}' "/proc/$a_pid/status")"
printf '  %-30s %8s %8s %8s\n' containerd-shim-runc-v2 "$r_rss" "$r_pss" "$(awk '/^Threads:/ {print $2}' "/proc/$r_pid/status")"
if [ -n "$a_init" ]; then
  read -r i_rss i_pss < <(mem "$a_init")
  printf '  %-30s %8s %8s %8s  (not a shim: per container, runc has none)\n' "agentcell container PID 1" "$i_rss" "$i_pss" 1
fi
python3 -c "import sys; a, r = map(int, sys.argv[1:3]); print(f'ratio agentcell/runc RSS {a / r:.2f}  (goal <= 0.50)')" "$a_rss" "$r_rss"
[ "$a_pss" != - ] && python3 -c "import sys; a, r = map(int, sys.argv[1:3]); print(f'ratio agentcell/runc PSS {a / r:.2f}')" "$a_pss" "$r_pss"
for t in mem-agentcell mem-runc; do
  c tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  for _ in $(seq 50); do c tasks ls -q | grep -qx "$t" || break; c tasks delete "$t" >/dev/null 2>&1 && break; sleep 0.1; done
  c containers delete "$t" >/dev/null 2>&1 || true
done
sleep 1
echo "leftovers after the memory tasks: $(leftovers)"
# Warnings and errors after start-up (plugin loading excluded), ids and times folded.
grep -E 'level=(warning|error|fatal)|^[0-9T:.-]+Z +(WARN|ERROR) ' "$dir/containerd.log" | grep -v 'plugin' |
  sed -E 's/^time="[^"]*" //; s/^[0-9T:.-]+Z +//; s/\b(agentcell|runc|crun)-[0-9]+\b/<\1 id>/g; s/mem-(agentcell|runc)/<\1 id>/g; s/acbench-[0-9]+/<ns>/g; s/time=\\"[^\\]*\\" //g; s/pid=[0-9]+/pid=N/g; s/[0-9a-f]{64}/<hash>/g' |
  sort | uniq -c | sort -rn | cut -c1-240 >"$dir/log-summary" || true
echo "containerd log: $(awk '{n += $1} END {print n + 0}' "$dir/log-summary") warning/error lines after start-up"
head -8 "$dir/log-summary"
