#!/usr/bin/env bash
# Network fence costs, measured in one run (root), cases interleaved: start (until the workload's
# first output byte) and start-to-exit of `echo` with no uplink, with an uplink and 1 egress
# rule, and with 100 egress rules; and the median TCP connect() time
# from inside a sandbox to a test host (a namespace this script creates, 198.18.99.2) with 1 and
# with 100 rules in front of the allowed one. Traffic goes only to that test host. N=runs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-30}
cargo build --release -q -p agentcell
AC=$PWD/target/release/agentcell
work=$(mktemp -d /var/tmp/agentcell-netbench.XXXXXX)
ns=acth-bench-$$
link=acthb$$
cleanup() {
  [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$link" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$link" type veth peer name eth0 netns "$ns"
ip addr add 198.18.99.1/24 dev "$link"; ip link set "$link" up
ip -n "$ns" addr add 198.18.99.2/24 dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
ip -n "$ns" route add default via 198.18.99.1
ip netns exec "$ns" python3 -c '
import socket
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("0.0.0.0",8080));s.listen(128)
while True:
    c,_=s.accept();c.close()' &
srv=$!
sleep 0.3
python3 - "$N" "$AC" "$work" <<'PY'
import json, statistics, subprocess, sys, time
n, ac, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
probe = f"{work}/connect.py"
open(probe, "w").write("""
import socket, statistics, time
t = []
for _ in range(200):
    a = time.perf_counter(); s = socket.create_connection(("198.18.99.2", 8080), timeout=2); t.append(time.perf_counter() - a); s.close()
print(statistics.median(t) * 1e6)
""")
def policy(name, rules):
    allow = [{"to": [{"cidr": f"198.18.{100 + i // 250}.{i % 250 + 1}/32"}], "ports": [{"protocol": "tcp", "port": 9000 + i}]} for i in range(rules - 1)]
    allow.append({"to": [{"cidr": "198.18.99.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]})
    doc = {"version": "0.8.0-alpha", "filesystem": {"readonlyPaths": [probe]}, "network": {"egress": {"default": "deny", "allow": allow if rules else []}}}
    path = f"{work}/{name}.json"
    json.dump(doc, open(path, "w"))
    return path
cases = {"no uplink": policy("none", 0), "1 rule": policy("one", 1), "100 rules": policy("hundred", 100)}
start = {k: [] for k in cases}
total = {k: [] for k in cases}
for _ in range(n):
    for k, p in cases.items():
        a = time.perf_counter()
        proc = subprocess.Popen([ac, "run", "--policy", p, "--", "/bin/echo", "x"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout.read(1) == b"x"
        start[k].append(time.perf_counter() - a)
        proc.stdout.read()
        assert proc.wait() == 0
        total[k].append(time.perf_counter() - a)
for name, data in (("start (to the workload's first byte)", start), ("start-to-exit", total)):
    med = {k: statistics.median(v) * 1000 for k, v in data.items()}
    print(f"{name}, median of {n} (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()))
    print(f"  added by the uplink and fence: {med['1 rule'] - med['no uplink']:.2f} ms; by 99 more rules: {med['100 rules'] - med['1 rule']:.2f} ms; 100 rules vs none: {med['100 rules'] - med['no uplink']:.2f} ms")
for k in ("1 rule", "100 rules"):
    out = subprocess.run([ac, "run", "--policy", cases[k], "--", "python3", probe], check=True, capture_output=True, text=True).stdout
    print(f"connect() median, {k:9}: {float(out):8.1f} us")
PY
