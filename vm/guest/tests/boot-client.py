#!/usr/bin/env python3
"""Host side for boot-by-hand.sh: waits for Ready, runs `uname -r` and a network check in a
container of the 9p rootfs share, shuts the VM down. Prints what it got and the wall times."""
import json, socket, struct, sys, time

t0 = time.monotonic()
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
while True:
    try:
        s.connect(path)
        break
    except OSError:
        time.sleep(0.01)
t_conn = time.monotonic()

def send(msg):
    body = b"\x00" + json.dumps(msg).encode()
    s.sendall(struct.pack(">I", len(body)) + body)

def read_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("channel closed")
        b += c
    return b

out = {}
def frame():
    n = struct.unpack(">I", read_exact(4))[0]
    body = read_exact(n)
    if body[0] == 0:
        return json.loads(body[1:])
    h, fd = struct.unpack(">IB", body[1:6])
    out.setdefault((h, fd), b"")
    out[(h, fd)] += body[6:]
    return None

def wait(pred):
    while True:
        m = frame()
        if m is None:
            continue
        if m.get("event") == "log":
            print("guest log:", m)
            continue
        if pred(m):
            return m
        print("other:", m)

ready = wait(lambda m: m["event"] == "ready")
t_ready = time.monotonic()
print(f"READY after {t_ready-t0:.3f}s", json.dumps(ready), flush=True)
proc = {"args": ["sh", "-c", "uname -r; hostname; ip -4 addr show dev eth0 | grep inet; ip route"],
        "env": ["PATH=/bin"], "cwd": "/", "uid": 0, "gid": 0,
        "terminal": False, "stdin": False}
spec = {"id": "c1", "hostname": "c1", "root": {"kind": "share", "tag": "rootfs", "subpath": ""},
        "root_readonly": True,
        "mounts": [{"target": "/proc", "source": {"kind": "proc"}, "readonly": False},
                   {"target": "/dev", "source": {"kind": "dev"}, "readonly": False},
                   {"target": "/tmp", "source": {"kind": "tmpfs", "size_bytes": 1048576, "mode": 1023}, "readonly": False}],
        "landlock": {"read": ["/bin", "/proc"], "write": ["/tmp"], "devices": ["/dev/null"], "best_effort": False},
        "seccomp_bpf": [], "process": proc, "timeout_ms": 20000}
send({"op": "create", "handle": 1, "spec": spec})
print(wait(lambda m: m.get("handle") == 1))
send({"op": "start", "handle": 1})
print(wait(lambda m: m.get("handle") == 1))
ex = wait(lambda m: m["event"] == "exited")
t_done = time.monotonic()
print("EXITED", ex)
print("STDOUT", out.get((1, 1), b"").decode())
print("STDERR", out.get((1, 2), b"").decode())
send({"op": "stats", "id": 1})
print(wait(lambda m: m["event"] == "stats"))
send({"op": "shutdown"})
try:
    while frame() is not None or True:
        pass
except EOFError:
    pass
t_end = time.monotonic()
print(f"WALL connect={t_conn-t0:.3f}s ready={t_ready-t0:.3f}s first-exit={t_done-t0:.3f}s poweroff={t_end-t0:.3f}s")
