#!/usr/bin/env bash
# Network fence costs, measured in one run (root), cases interleaved in random order: start (until
# the workload's first output byte) and start-to-exit of `echo` with no uplink (deny all), with an
# uplink and no rule (allow all), 1 egress rule and 100 egress rules, back to back and isolated;
# and the median TCP connect() time
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
import json, random, statistics, subprocess, sys, time
n, ac, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
probe = f"{work}/connect.py"
open(probe, "w").write("""
import socket, statistics, time
t = []
for _ in range(200):
    a = time.perf_counter(); s = socket.create_connection(("198.18.99.2", 8080), timeout=2); t.append(time.perf_counter() - a); s.close()
print(statistics.median(t) * 1e6)
""")
def policy(name, rules, default="deny"):
    allow = [{"to": [{"cidr": f"198.18.{100 + i // 250}.{i % 250 + 1}/32"}], "ports": [{"protocol": "tcp", "port": 9000 + i}]} for i in range(rules - 1)]
    if rules:
        allow.append({"to": [{"cidr": "198.18.99.2/32"}], "ports": [{"protocol": "tcp", "port": 8080}]})
    doc = {"version": "1.0.0", "filesystem": {"readonlyPaths": [probe]}, "network": {"egress": {"default": default, "allow": allow}}}
    path = f"{work}/{name}.json"
    json.dump(doc, open(path, "w"))
    return path
# "no uplink": egress default deny, no rule (no link: nothing can leave). "no rules": egress
# default allow, no rule (uplink and fence, an empty allow-list).
cases = {"no uplink": policy("none", 0), "no rules": policy("zero", 0, "allow"), "1 rule": policy("one", 1), "100 rules": policy("hundred", 100)}
def tmean(v):
    v = sorted(v)
    k = len(v) // 10
    return statistics.mean(v[k:len(v) - k])
# A sandbox with a link leaves the kernel work of tearing its namespace down (RCU grace
# periods) to run after it exits, slowing whatever starts next: cases run in a new random order
# each round, and twice: back to back, and isolated (50 ms pause before each start).
random.seed(int(time.time()))
for mode, pause in (("back to back", 0.0), ("isolated", 0.05)):
    start = {k: [] for k in cases}
    total = {k: [] for k in cases}
    for _ in range(n):
        order = list(cases.items())
        random.shuffle(order)
        for k, p in order:
            time.sleep(pause)
            a = time.perf_counter()
            proc = subprocess.Popen([ac, "run", "--policy", p, "--", "/bin/echo", "x"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout.read(1) == b"x"
            start[k].append(time.perf_counter() - a)
            proc.stdout.read()
            assert proc.wait() == 0
            total[k].append(time.perf_counter() - a)
    for name, data in (("start (to the workload's first byte)", start), ("start-to-exit", total)):
        for stat, f in (("median", statistics.median), ("10%-trimmed mean", tmean)):
            m = {k: f(v) * 1000 for k, v in data.items()}
            print(f"{mode}, {name}, {stat} of {n} (ms): " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()))
            print(f"  100 rules vs no uplink: {m['100 rules'] - m['no uplink']:.2f} ms; vs no rules: {m['100 rules'] - m['no rules']:.2f} ms; 1 rule vs no uplink: {m['1 rule'] - m['no uplink']:.2f} ms")
for k in ("1 rule", "100 rules"):
    out = subprocess.run([ac, "run", "--policy", cases[k], "--", "python3", probe], check=True, capture_output=True, text=True).stdout
    print(f"connect() median, {k:9}: {float(out):8.1f} us")
PY
