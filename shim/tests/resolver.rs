//! The resolver part of the host baseline (root): a deny-all workload reads the files a name
//! lookup needs and reaches no socket that lives beside them (systemd-resolved's varlink socket
//! in `/run/systemd/resolve` would be DNS, and so a channel out, through the host).

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use common::{Fixture, require_root, sh};
use serde_json::json;

/// Removes on drop what the test added to the host's `/run`, deepest first.
struct Planted(Vec<PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
}

#[test]
fn a_socket_beside_the_resolver_files_is_not_in_a_deny_all_view() {
    require_root();
    let f = Fixture::new("resolver");
    let dir = Path::new("/run/systemd/resolve");
    let mut planted = Planted(Vec::new());
    // This host may have no systemd-resolved: make its directory, as it would be, for the test.
    for d in [Path::new("/run/systemd"), dir] {
        if !d.exists() {
            std::fs::create_dir(d).unwrap();
            planted.0.push(d.to_path_buf());
        }
    }
    let stub = dir.join("stub-resolv.conf");
    let stub_text = if stub.exists() {
        std::fs::read_to_string(&stub).unwrap()
    } else {
        std::fs::write(&stub, "nameserver 198.18.0.53\n# agentcell-test\n").unwrap();
        planted.0.push(stub.clone());
        std::fs::read_to_string(&stub).unwrap()
    };
    // resolved's own socket name when it is absent; a name of the test's own beside it otherwise.
    let sock = if dir.join("io.systemd.Resolve").exists() {
        dir.join(format!("agentcell-test-{}.sock", std::process::id()))
    } else {
        dir.join("io.systemd.Resolve")
    };
    let listener = UnixListener::bind(&sock).unwrap();
    planted.0.push(sock.clone());
    listener.set_nonblocking(true).unwrap();

    let p = f.policy(&json!({"version": "1.0.0"}));
    let r = sh(
        &p,
        &format!(
            "/usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(\"CONNECTED\")' {sock}; \
             ls {dir} 2>/dev/null | grep -v '[.]conf$' | grep . && echo LISTED_MORE; \
             cat {stub}; echo; cat /etc/resolv.conf; cat /etc/nsswitch.conf >/dev/null && echo NSS_OK; \
             cat /etc/hosts >/dev/null && echo HOSTS_OK; echo DONE",
            sock = sock.display(),
            dir = dir.display(),
            stub = stub.display(),
        ),
    );
    assert!(r.stdout.contains("DONE"), "{} {}", r.stdout, r.stderr);
    // The attack: connecting to the socket beside the resolver files.
    assert!(
        !r.stdout.contains("CONNECTED") && !r.stdout.contains("LISTED_MORE"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr.contains("FileNotFoundError") || r.stderr.contains("PermissionError"),
        "{}",
        r.stderr
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the sandbox reached the socket: {other:?}"),
    }
    // The lookup files are still there.
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    assert!(
        r.stdout.contains(stub_text.trim()) && r.stdout.contains(resolv.trim()),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("NSS_OK") && r.stdout.contains("HOSTS_OK"),
        "{}",
        r.stdout
    );
}
