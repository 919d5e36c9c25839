//! Images for the tests, from Debian's `busybox-static`: a root filesystem directory (for
//! `ctr run --rootfs`) and an OCI image archive (for `ctr images import`, the CRI path and the
//! benchmark), built by the test, never downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";
/// The application image and the pod sandbox ("pause") image of the CRI tests.
pub const APP: &str = "e2e.local/busybox:1";
pub const PAUSE: &str = "e2e.local/pause:1";

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "sleep", "true", "false", "nc", "mkdir", "touch", "ps", "wc",
    "head", "test", "env", "pwd", "kill", "stat", "grep", "tty", "stty",
];

/// A busybox root filesystem at `dir`: /bin with the applets, empty /etc, /work, /data, /tmp.
pub fn rootfs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("busybox-static");
    for a in APPLETS {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(a));
    }
    for d in ["etc", "work", "data", "tmp", "proc", "dev"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/secret"), "image-secret\n").unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    dir.to_path_buf()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Writes an OCI image layout archive holding `name` (cmd `cmd`) and returns its path.
pub fn oci_archive(work: &Path, name: &str, cmd: &[&str]) -> PathBuf {
    let root = work.join("img-rootfs");
    if !root.exists() {
        rootfs(&root);
    }
    let layout = work.join(format!("layout-{}", sha(name.as_bytes())));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer_path = work.join("layer.tar");
    let ok = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&layer_path)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar of the image layer");
    let layer = std::fs::read(&layer_path).unwrap();
    let layer_digest = sha(&layer);
    std::fs::write(blobs.join(&layer_digest), &layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    })
    .to_string();
    let config_digest = sha(config.as_bytes());
    std::fs::write(blobs.join(&config_digest), &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len()}]
    })
    .to_string();
    let manifest_digest = sha(manifest.as_bytes());
    std::fs::write(blobs.join(&manifest_digest), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()}}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = work.join(format!("{}.tar", sha(name.as_bytes())));
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["index.json", "oci-layout", "blobs"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar of the image archive");
    archive
}

/// Imports `name` into the containerd of `c`.
pub fn import(c: &crate::Containerd, name: &str, cmd: &[&str]) {
    let archive = oci_archive(&c.dir, name, cmd);
    let r = c.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert_eq!(r.code, 0, "import {name}: {}", r.stderr);
    let r = c.ctr(&["images", "ls", "-q"]);
    assert!(
        r.stdout.lines().any(|l| l == name),
        "{name} not imported: {}",
        r.stdout
    );
}
