//! The micro-VM tier's container: the confined OCI spec the container tier would hand to
//! libcontainer (`confine`), translated into the guest agent's [`ContainerSpec`]. Building from
//! the same spec is what makes the two tiers mean the same thing for one policy. Bind sources
//! become 9p shares the VMM exports (read-only ones read-only on the host side too, so a
//! compromised guest kernel cannot write them); files become shares of nothing: their content
//! travels in the spec when read-only. Pure, apart from reading small bound files and stat'ing
//! bind sources.

use std::path::{Path, PathBuf};

use agentcell_vmproto::{ContainerSpec, LandlockSpec, Mount, MountSource, ProcessSpec, Root};
use serde_json::Value;

use crate::sandbox::landlock::LandlockRules;

/// Largest read-only file whose content is carried in the spec instead of being shared.
const MAX_INLINE_FILE: u64 = 256 * 1024;
/// The two 9p shares of a VM: the VMM exports `ro` read-only; every export is bound below
/// one of them (as `<tag>/<export name>`) in the VMM's own mount namespace.
pub const RO_TAG: &str = "ro";
pub const RW_TAG: &str = "rw";

#[derive(Debug, thiserror::Error)]
pub enum VmSpecError {
    #[error("the confined spec has no {0}")]
    Missing(&'static str),
    #[error("mount {target}: reading {source_path}: {error}")]
    Source {
        target: String,
        source_path: String,
        error: std::io::Error,
    },
    #[error(
        "mount {target}: {source_path} is a read-write file; the micro-VM tier shares directories only (grant its directory instead)"
    )]
    WritableFile { target: String, source_path: String },
}

/// A host directory the VMM exports to the guest, as `name` below the `ro` or `rw` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: String,
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug)]
pub struct VmContainer {
    pub spec: ContainerSpec,
    pub exports: Vec<Export>,
    /// What differs from the container tier, for the log.
    pub notes: Vec<String>,
}

pub struct Input<'a> {
    pub id: &'a str,
    /// The confined OCI spec (`confine::confine`'s output).
    pub spec: &'a Value,
    pub landlock: &'a LandlockRules,
    /// The plan's seccomp filter compiled for the guest (empty: none).
    pub seccomp_bpf: Vec<u64>,
    /// The pod's own profile compiled for the guest (empty: none).
    pub seccomp_pod_bpf: Vec<u64>,
    pub timeout_ms: Option<u64>,
    pub terminal: bool,
    pub stdin: bool,
}

fn opt(m: &Value, name: &str) -> bool {
    m.get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v.as_str() == Some(name)))
}

fn opt_value<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    m.get("options")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// `65536k`, `64m`, `1g` or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn paths(p: &[PathBuf]) -> Vec<String> {
    p.iter().map(|p| p.display().to_string()).collect()
}

pub fn translate(input: &Input) -> Result<VmContainer, VmSpecError> {
    let spec = input.spec;
    let mut exports: Vec<Export> = Vec::new();
    let mut notes = Vec::new();
    // The share and the subpath in it where `path` appears in the guest.
    let mut share = |path: &Path, readonly: bool| -> (String, String) {
        let tag = if readonly { RO_TAG } else { RW_TAG }.to_string();
        if let Some(e) = exports
            .iter()
            .find(|e| e.path == path && e.readonly == readonly)
        {
            return (tag, e.name.clone());
        }
        let name = format!("s{}", exports.len());
        exports.push(Export {
            name: name.clone(),
            path: path.to_path_buf(),
            readonly,
        });
        (tag, name)
    };

    let root_path = spec
        .pointer("/root/path")
        .and_then(Value::as_str)
        .ok_or(VmSpecError::Missing("root.path"))?;
    let root_readonly = spec
        .pointer("/root/readonly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (root_tag, root_sub) = share(Path::new(root_path), root_readonly);

    let mut mounts = Vec::new();
    for m in spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let target = m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = m.get("type").and_then(Value::as_str).unwrap_or_default();
        let source = m.get("source").and_then(Value::as_str).unwrap_or_default();
        let readonly = opt(m, "ro");
        let mount = match (kind, target.as_str()) {
            ("proc", _) => Mount {
                target,
                source: MountSource::Proc,
                readonly: false,
            },
            ("tmpfs", "/dev") => Mount {
                target,
                source: MountSource::Dev,
                readonly: false,
            },
            // The guest's `/dev` brings its own devpts and shm.
            ("devpts" | "mqueue" | "sysfs" | "cgroup" | "cgroup2", _) => continue,
            ("tmpfs", "/dev/shm") => continue,
            ("tmpfs", _) => {
                let size = opt_value(m, "size")
                    .and_then(parse_size)
                    .unwrap_or(64 << 20);
                let mode = opt_value(m, "mode")
                    .and_then(|v| u32::from_str_radix(v, 8).ok())
                    .unwrap_or(0o755);
                if readonly && mode == 0 {
                    Mount {
                        target,
                        source: MountSource::MaskDir,
                        readonly: true,
                    }
                } else {
                    Mount {
                        target,
                        source: MountSource::Tmpfs {
                            size_bytes: size,
                            mode,
                        },
                        readonly,
                    }
                }
            }
            ("bind", _) | ("", _) if source == "/dev/null" => Mount {
                target,
                source: MountSource::MaskFile,
                readonly: true,
            },
            ("bind", _) | ("", _) => {
                let meta = std::fs::metadata(source).map_err(|error| VmSpecError::Source {
                    target: target.clone(),
                    source_path: source.to_string(),
                    error,
                })?;
                if meta.is_dir() {
                    let (tag, subpath) = share(Path::new(source), readonly);
                    Mount {
                        target,
                        source: MountSource::Share { tag, subpath },
                        readonly,
                    }
                } else if readonly && meta.len() <= MAX_INLINE_FILE {
                    let content = std::fs::read(source).map_err(|error| VmSpecError::Source {
                        target: target.clone(),
                        source_path: source.to_string(),
                        error,
                    })?;
                    Mount {
                        target,
                        source: MountSource::File {
                            content: String::from_utf8_lossy(&content).into_owned(),
                        },
                        readonly: true,
                    }
                } else if readonly {
                    // A large read-only file: its directory is exported read-only and only the
                    // file is bound; the guest kernel could read its siblings.
                    let p = Path::new(source);
                    let dir = p.parent().unwrap_or(Path::new("/"));
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    notes.push(format!(
                        "mount {target}: {source} is shared through its directory (read-only)"
                    ));
                    let (tag, sub) = share(dir, true);
                    Mount {
                        target,
                        source: MountSource::Share {
                            tag,
                            subpath: format!("{sub}/{name}"),
                        },
                        readonly: true,
                    }
                } else {
                    return Err(VmSpecError::WritableFile {
                        target,
                        source_path: source.to_string(),
                    });
                }
            }
            (other, _) => {
                notes.push(format!("mount {target} of type {other}: not in the guest"));
                continue;
            }
        };
        mounts.push(mount);
    }
    if spec
        .pointer("/linux/maskedPaths")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        notes.push(
            "linux.maskedPaths/readonlyPaths (host /proc and /sys entries): not applied, the guest's /proc shows the guest kernel and no /sys is mounted"
                .into(),
        );
    }

    let process = spec.get("process").ok_or(VmSpecError::Missing("process"))?;
    let uid = process
        .pointer("/user/uid")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let gid = process
        .pointer("/user/gid")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let additional_gids = process
        .pointer("/user/additionalGids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|g| g as u32))
                .collect()
        })
        .unwrap_or_default();
    let resources = spec.pointer("/linux/resources");
    let limit = |ptr: &str| {
        resources
            .and_then(|r| r.pointer(ptr))
            .and_then(Value::as_i64)
            .filter(|l| *l > 0)
            .unwrap_or(0) as u64
    };
    let container = ContainerSpec {
        id: input.id.to_string(),
        hostname: spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or("agentcell")
            .to_string(),
        root: Root::Share {
            tag: root_tag,
            subpath: root_sub,
        },
        root_readonly,
        mounts,
        landlock: Some(LandlockSpec {
            read: paths(&input.landlock.read),
            write: paths(&input.landlock.write),
            devices: paths(&input.landlock.devices),
            best_effort: input.landlock.best_effort,
        }),
        seccomp_bpf: input.seccomp_bpf.clone(),
        seccomp_pod_bpf: input.seccomp_pod_bpf.clone(),
        process: ProcessSpec {
            args: strings(process.get("args")),
            env: strings(process.get("env")),
            cwd: process
                .get("cwd")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string(),
            uid,
            gid,
            additional_gids,
            terminal: input.terminal,
            stdin: input.stdin,
        },
        timeout_ms: input.timeout_ms,
        memory_bytes: limit("/memory/limit"),
        pids_max: limit("/pids/limit"),
    };
    Ok(VmContainer {
        spec: container,
        exports,
        notes,
    })
}

/// An exec's process (OCI `process` of `ctr task exec` / CRI ExecSync) for the guest.
pub fn exec_process(process: &Value, terminal: bool, stdin: bool) -> ProcessSpec {
    ProcessSpec {
        args: strings(process.get("args")),
        env: strings(process.get("env")),
        cwd: process
            .get("cwd")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string(),
        uid: process
            .pointer("/user/uid")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32,
        gid: process
            .pointer("/user/gid")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32,
        additional_gids: Vec::new(),
        terminal,
        stdin,
    }
}

/// Creates, in the image's root directory on the host, the mount points the container's mounts
/// need and the image lacks (`/etc/hostname` in a minimal image): the guest sees the root
/// read-only, so it cannot, while runc and libcontainer make them in the same directory. Never
/// follows a symlink of the image (it could lead out of the root): such a target is left for
/// the guest to refuse by name.
pub fn make_mount_points(root: &Path, mounts: &[Mount]) -> std::io::Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    // Below these the guest mounts fresh file systems it can write to.
    let fresh: Vec<&str> = mounts
        .iter()
        .filter(|m| {
            matches!(
                m.source,
                MountSource::Proc | MountSource::Dev | MountSource::Tmpfs { .. }
            )
        })
        .map(|m| m.target.as_str())
        .collect();
    'mounts: for m in mounts {
        let rel = m.target.trim_start_matches('/');
        if rel.is_empty()
            || fresh
                .iter()
                .any(|f| *f != m.target && Path::new(&m.target).starts_with(f))
        {
            continue;
        }
        let want_dir = !matches!(m.source, MountSource::File { .. } | MountSource::MaskFile)
            && !matches!(&m.source, MountSource::Share { subpath, .. } if subpath.contains('/'));
        let comps: Vec<_> = Path::new(rel).components().collect();
        let mut at = root.to_path_buf();
        for (i, c) in comps.iter().enumerate() {
            let std::path::Component::Normal(c) = c else {
                continue 'mounts;
            };
            at.push(c);
            let last = i + 1 == comps.len();
            match std::fs::symlink_metadata(&at) {
                Ok(md) if md.file_type().is_symlink() => continue 'mounts,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if last && !want_dir {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&at)?;
                    } else {
                        std::fs::create_dir(&at)?;
                    }
                    made.push(at.clone());
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> LandlockRules {
        LandlockRules {
            read: vec!["/".into()],
            write: vec!["/work".into(), "/tmp".into()],
            devices: vec!["/dev/null".into()],
            abi: landlock::ABI::V1,
            best_effort: false,
            log_denials: false,
        }
    }

    #[test]
    fn the_container_tier_spec_translates_mount_by_mount() {
        let tmp = std::env::temp_dir().join(format!("vmspec-{}", std::process::id()));
        let vol = tmp.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(tmp.join("resolv.conf"), "nameserver 198.18.0.1\n").unwrap();
        let spec = json!({
            "root": {"path": tmp.join("rootfs"), "readonly": true},
            "hostname": "pod-a",
            "process": {"args": ["/bin/sh", "-c", "true"], "env": ["A=1"], "cwd": "/work",
                        "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777", "size=65536k"]},
                {"destination": "/work", "type": "bind", "source": vol, "options": ["rbind"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": tmp.join("resolv.conf"), "options": ["rbind", "ro"]},
                {"destination": "/etc/secret", "type": "bind", "source": "/dev/null", "options": ["rbind", "ro"]},
                {"destination": "/work/deny", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "mode=000", "size=4k"]}
            ],
            "linux": {"resources": {"memory": {"limit": 1048576}, "pids": {"limit": 64}}}
        });
        let out = translate(&Input {
            id: "c1",
            spec: &spec,
            landlock: &rules(),
            seccomp_bpf: vec![1, 2],
            seccomp_pod_bpf: vec![3],
            timeout_ms: Some(5),
            terminal: false,
            stdin: true,
        })
        .unwrap();
        let s = &out.spec;
        assert_eq!(s.hostname, "pod-a");
        assert!(s.root_readonly);
        assert_eq!(
            s.root,
            Root::Share {
                tag: "ro".into(),
                subpath: "s0".into()
            }
        );
        assert_eq!(
            out.exports,
            vec![
                Export {
                    name: "s0".into(),
                    path: tmp.join("rootfs"),
                    readonly: true
                },
                Export {
                    name: "s1".into(),
                    path: vol.clone(),
                    readonly: false
                }
            ]
        );
        let kinds: Vec<(&str, &MountSource)> = s
            .mounts
            .iter()
            .map(|m| (m.target.as_str(), &m.source))
            .collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
        assert_eq!(kinds[0], ("/proc", &MountSource::Proc));
        assert_eq!(kinds[1], ("/dev", &MountSource::Dev));
        assert_eq!(
            kinds[2],
            (
                "/tmp",
                &MountSource::Tmpfs {
                    size_bytes: 64 << 20,
                    mode: 0o1777
                }
            )
        );
        assert_eq!(
            kinds[3],
            (
                "/work",
                &MountSource::Share {
                    tag: "rw".into(),
                    subpath: "s1".into()
                }
            )
        );
        assert_eq!(
            kinds[4],
            (
                "/etc/resolv.conf",
                &MountSource::File {
                    content: "nameserver 198.18.0.1\n".into()
                }
            )
        );
        assert_eq!(kinds[5], ("/etc/secret", &MountSource::MaskFile));
        assert_eq!(kinds[6], ("/work/deny", &MountSource::MaskDir));
        assert!(!s.mounts[3].readonly);
        assert_eq!(s.process.uid, 1000);
        assert_eq!(s.process.additional_gids, vec![5]);
        assert_eq!(s.process.cwd, "/work");
        assert!(s.process.stdin);
        assert_eq!((s.memory_bytes, s.pids_max), (1048576, 64));
        assert_eq!(s.timeout_ms, Some(5));
        assert_eq!(s.seccomp_bpf, vec![1, 2]);
        assert_eq!(s.seccomp_pod_bpf, vec![3]);
        let l = s.landlock.as_ref().unwrap();
        assert_eq!(l.write, vec!["/work".to_string(), "/tmp".to_string()]);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_writable_file_bind_is_refused_by_name() {
        let tmp = std::env::temp_dir().join(format!("vmspec-rw-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("f"), "x").unwrap();
        let spec = json!({
            "root": {"path": "/nonexistent-root", "readonly": true},
            "process": {"args": ["true"], "cwd": "/"},
            "mounts": [{"destination": "/f", "type": "bind", "source": tmp.join("f"), "options": ["rbind"]}]
        });
        let e = translate(&Input {
            id: "c",
            spec: &spec,
            landlock: &rules(),
            seccomp_bpf: vec![],
            seccomp_pod_bpf: vec![],
            timeout_ms: None,
            terminal: false,
            stdin: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("mount /f"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn missing_mount_points_are_made_in_the_root_without_following_symlinks() {
        let root = std::env::temp_dir().join(format!("vmspec-mp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
        let file = |t: &str| Mount {
            target: t.into(),
            source: MountSource::File {
                content: String::new(),
            },
            readonly: true,
        };
        let dir = |t: &str| Mount {
            target: t.into(),
            source: MountSource::Share {
                tag: "rw".into(),
                subpath: "s1".into(),
            },
            readonly: false,
        };
        let mounts = vec![
            Mount {
                target: "/dev".into(),
                source: MountSource::Dev,
                readonly: false,
            },
            file("/etc/hostname"),
            dir("/work/deep"),
            file("/escape/agentcell-test-must-not-exist"),
            file("/dev/termination-log"),
        ];
        let made = make_mount_points(&root, &mounts).unwrap();
        assert!(root.join("etc/hostname").is_file());
        assert!(root.join("work/deep").is_dir());
        assert!(root.join("dev").is_dir());
        assert!(!Path::new("/agentcell-test-must-not-exist").exists());
        assert!(
            !root.join("dev/termination-log").exists(),
            "inside a fresh /dev"
        );
        assert_eq!(made.len(), 4, "{made:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("65536k"), Some(64 << 20));
        assert_eq!(parse_size("2m"), Some(2 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
    }
}
