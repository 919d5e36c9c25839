//! Where the micro-VM tier's assets live and how they get there.
//!
//! ```text
//! <vm-dir>/                     /var/lib/agentcell/vm, --vm-dir, or AGENTCELL_VM_DIR
//!   agentcell-guest             the static guest agent (or AGENTCELL_GUEST_AGENT)
//!   kernel/vmlinuz              the guest kernel as packaged (bzImage)
//!   kernel/vmlinux              the same kernel decompressed (ELF, booted through its PVH entry)
//!   kernel/manifest.json        release, package, version, sha256 of the .deb and of vmlinuz
//!   kernel/modules/             modules.dep, modules.builtin and the .ko files the guest loads
//!   cache/initramfs-<digest>.cpio
//! ```
//!
//! `install-kernel` takes Debian's **generic** `linux-image-*-amd64`, not `-cloud-amd64`: the
//! cloud flavour is built without `CONFIG_NET_9P`, so it cannot mount the 9p shares that carry
//! the workload's files (both flavours build `virtio_mmio`, `virtio_console` and `virtio_net` as
//! modules). Only the modules the guest needs are kept (a few hundred KiB of 390 MiB). The
//! package ships no `modules.dep` (its postinst runs depmod), so the dependencies are read from
//! each module's own `.modinfo` section.
//!
//! Debian's bzImage is xz-compressed; decompressing 8 MiB of xz inside an emulated CPU costs
//! about 3 s per boot under TCG. `install-kernel` therefore also keeps the decompressed ELF
//! (`vmlinux`, ~65 MiB, `xz --single-stream` of the payload), which qemu boots directly through
//! the kernel's PVH entry point (`CONFIG_PVH=y`); vmlinuz is used when there is no vmlinux.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const DEFAULT_DIR: &str = "/var/lib/agentcell/vm";
pub const ENV_DIR: &str = "AGENTCELL_VM_DIR";
pub const ENV_AGENT: &str = "AGENTCELL_GUEST_AGENT";
pub const AGENT_NAME: &str = "agentcell-guest";

/// The modules the guest agent needs: the virtio-mmio transport of qemu's `microvm`, the agent
/// channel, the 9p shares, the NIC.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "virtio_net",
];

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error(
        "no guest kernel in {0} (run `agentcell vm install-kernel`, or point --vm-dir / AGENTCELL_VM_DIR at one)"
    )]
    NoKernel(PathBuf),
    #[error(
        "no guest agent at {0} (build it with `cargo build --release -p agentcell-guest --target x86_64-unknown-linux-musl` and run `agentcell vm install-agent PATH`, or set AGENTCELL_GUEST_AGENT)"
    )]
    NoAgent(PathBuf),
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AssetsError {
    let path = path.to_path_buf();
    move |source| AssetsError::Io { step, path, source }
}

/// What `install-kernel` installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `uname -r` of the guest kernel.
    pub release: String,
    pub package: String,
    pub version: String,
    /// sha256 of the downloaded .deb.
    pub deb_sha256: String,
    pub vmlinuz_sha256: String,
    /// The module files kept, relative to `kernel/modules`.
    pub modules: Vec<String>,
}

/// The installed assets, checked present.
#[derive(Debug, Clone)]
pub struct Assets {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub modules_dir: PathBuf,
    pub manifest: Manifest,
    pub agent: PathBuf,
}

/// `--vm-dir`, else `AGENTCELL_VM_DIR`, else [`DEFAULT_DIR`].
pub fn vm_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(ENV_DIR).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// `AGENTCELL_GUEST_AGENT`, else `<dir>/agentcell-guest`.
pub fn agent_path(dir: &Path) -> PathBuf {
    std::env::var_os(ENV_AGENT)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(AGENT_NAME))
}

/// The installed kernel's manifest, if any.
pub fn manifest(dir: &Path) -> Result<Option<Manifest>, AssetsError> {
    let path = dir.join("kernel/manifest.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| AssetsError::Manifest { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", &path)(e)),
    }
}

/// The assets in `dir`, or which one is missing.
pub fn load(dir: &Path) -> Result<Assets, AssetsError> {
    let packed = dir.join("kernel/vmlinuz");
    let elf = dir.join("kernel/vmlinux");
    let kernel = if elf.is_file() { elf } else { packed };
    let manifest = match manifest(dir)? {
        Some(m) if kernel.is_file() => m,
        _ => return Err(AssetsError::NoKernel(dir.to_path_buf())),
    };
    let agent = agent_path(dir);
    if !agent.is_file() {
        return Err(AssetsError::NoAgent(agent));
    }
    Ok(Assets {
        dir: dir.to_path_buf(),
        kernel,
        modules_dir: dir.join("kernel/modules"),
        manifest,
        agent,
    })
}

/// Kernel flavour of `install-kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// `linux-image-amd64` (has 9p: the default).
    Generic,
    /// `linux-image-cloud-amd64` (smaller, but without 9p: refused with the reason).
    Cloud,
}

fn run(cmd: &mut Command, step: &str) -> Result<String, AssetsError> {
    let out = cmd.output().map_err(|e| AssetsError::Step {
        step: step.to_string(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(AssetsError::Step {
            step: step.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The concrete package of a flavour's meta-package (`linux-image-amd64` depends on
/// `linux-image-6.1.0-N-amd64`).
fn concrete_package(flavour: Flavour) -> Result<String, AssetsError> {
    let meta = match flavour {
        Flavour::Generic => "linux-image-amd64",
        Flavour::Cloud => "linux-image-cloud-amd64",
    };
    let out = run(
        Command::new("apt-cache").args(["depends", meta]),
        &format!("apt-cache depends {meta}"),
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(String::from)
        .ok_or_else(|| AssetsError::Step {
            step: format!("apt-cache depends {meta}"),
            message: "no linux-image-* dependency (is the apt index up to date?)".into(),
        })
}

fn sha256_file(p: &Path) -> Result<String, AssetsError> {
    Ok(hex::encode(Sha256::digest(
        std::fs::read(p).map_err(io("reading", p))?,
    )))
}

/// The `depends=` of a kernel module, from its ELF `.modinfo` section.
pub fn modinfo_depends(elf: &[u8]) -> Option<Vec<String>> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(sh(shstrndx) + 0x18)? as usize;
    for i in 0..shnum {
        let name_off = u32_at(sh(i))? as usize;
        let name = elf.get(strtab + name_off..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        if name != b".modinfo" {
            continue;
        }
        let off = u64_at(sh(i) + 0x18)? as usize;
        let size = u64_at(sh(i) + 0x20)? as usize;
        let data = elf.get(off..off + size)?;
        for kv in data.split(|&b| b == 0) {
            if let Some(v) = kv.strip_prefix(b"depends=") {
                return Some(
                    String::from_utf8_lossy(v)
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                );
            }
        }
        return Some(Vec::new());
    }
    None
}

/// Every `.ko` under `dir`, by module name, as paths relative to `dir`.
fn index_modules(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && n.contains(".ko")
                && let Ok(rel) = p.strip_prefix(dir)
            {
                let name = n.split(".ko").next().unwrap_or(n).replace('-', "_");
                out.insert(name, rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Downloads the flavour's (or `package`'s) kernel with `apt-get download`, unpacks it with
/// `dpkg -x` in a temporary directory, and keeps vmlinuz, the guest's modules (with their
/// dependencies, as a generated `modules.dep`) and a manifest in `<dir>/kernel`. Returns the
/// manifest and whether anything changed (the same package and version already installed is
/// left alone).
pub fn install_kernel(
    dir: &Path,
    flavour: Flavour,
    package: Option<&str>,
) -> Result<(Manifest, bool), AssetsError> {
    let package = match package {
        Some(p) => p.to_string(),
        None => concrete_package(flavour)?,
    };
    let version = run(
        Command::new("apt-cache").args(["show", "--no-all-versions", &package]),
        &format!("apt-cache show {package}"),
    )?
    .lines()
    .find_map(|l| l.strip_prefix("Version: "))
    .map(str::to_string)
    .unwrap_or_default();
    if let Some(m) = manifest(dir)?
        && m.package == package
        && m.version == version
        && dir.join("kernel/vmlinuz").is_file()
        && sha256_file(&dir.join("kernel/vmlinuz"))? == m.vmlinuz_sha256
    {
        return Ok((m, false));
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let tmp = dir.join(format!(".install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    let result = (|| {
        run(
            Command::new("apt-get")
                .args(["download", "-q", &package])
                .current_dir(&tmp),
            &format!("apt-get download {package}"),
        )?;
        let deb = std::fs::read_dir(&tmp)
            .map_err(io("reading", &tmp))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| AssetsError::Step {
                step: format!("apt-get download {package}"),
                message: "no .deb was downloaded".into(),
            })?;
        let root = tmp.join("root");
        run(
            Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
            "dpkg -x",
        )?;
        let moddirs: Vec<PathBuf> = std::fs::read_dir(root.join("lib/modules"))
            .map_err(io("reading", &root.join("lib/modules")))?
            .flatten()
            .map(|e| e.path())
            .collect();
        let [moddir] = moddirs.as_slice() else {
            return Err(AssetsError::Step {
                step: "dpkg -x".into(),
                message: format!("expected one lib/modules/<release>, found {moddirs:?}"),
            });
        };
        let release = moddir
            .file_name()
            .expect("a directory entry")
            .to_string_lossy()
            .into_owned();
        let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
        let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
        let builtin_names: Vec<String> = builtin
            .lines()
            .map(|l| {
                let b = l.rsplit('/').next().unwrap_or(l);
                b.split(".ko").next().unwrap_or(b).replace('-', "_")
            })
            .collect();
        let index = index_modules(moddir);
        // The closure of GUEST_MODULES, as a modules.dep of just those modules.
        let mut dep_lines = BTreeMap::new();
        let mut todo: Vec<String> = GUEST_MODULES.iter().map(|s| s.to_string()).collect();
        while let Some(name) = todo.pop() {
            let name = name.replace('-', "_");
            if builtin_names.contains(&name) || dep_lines.contains_key(&name) {
                continue;
            }
            let rel = index.get(&name).ok_or_else(|| AssetsError::Step {
                step: format!("module {name}"),
                message: format!(
                    "{package} has no {name} (neither built in nor a module){}",
                    if flavour == Flavour::Cloud {
                        "; the cloud flavour lacks 9p, use --flavour generic"
                    } else {
                        ""
                    }
                ),
            })?;
            let bytes =
                std::fs::read(moddir.join(rel)).map_err(io("reading", &moddir.join(rel)))?;
            let deps = modinfo_depends(&bytes).ok_or_else(|| AssetsError::Step {
                step: format!("module {name}"),
                message: format!("{rel}: no .modinfo section (compressed or not a module?)"),
            })?;
            todo.extend(deps.iter().cloned());
            dep_lines.insert(name, (rel.clone(), deps));
        }
        let out = tmp.join("kernel");
        let mods = out.join("modules");
        std::fs::create_dir_all(&mods).map_err(io("creating", &mods))?;
        let mut dep_text = String::new();
        for (rel, deps) in dep_lines.values() {
            let dst = mods.join(rel);
            std::fs::create_dir_all(dst.parent().expect("has a parent"))
                .map_err(io("creating", &dst))?;
            std::fs::copy(moddir.join(rel), &dst).map_err(io("copying", &dst))?;
            let ds: Vec<&str> = deps
                .iter()
                .filter_map(|d| dep_lines.get(&d.replace('-', "_")).map(|(r, _)| r.as_str()))
                .collect();
            dep_text.push_str(&format!("{rel}: {}\n", ds.join(" ")));
        }
        std::fs::write(mods.join("modules.dep"), dep_text)
            .map_err(io("writing", &mods.join("modules.dep")))?;
        std::fs::write(mods.join("modules.builtin"), &builtin)
            .map_err(io("writing", &mods.join("modules.builtin")))?;
        std::fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(io("copying", &vmlinuz))?;
        match extract_vmlinux(&vmlinuz, &out.join("vmlinux")) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "no decompressed vmlinux (boots use the slower vmlinuz)")
            }
        }
        let m = Manifest {
            release,
            package: package.clone(),
            version: version.clone(),
            deb_sha256: sha256_file(&deb)?,
            vmlinuz_sha256: sha256_file(&vmlinuz)?,
            modules: dep_lines.values().map(|(r, _)| r.clone()).collect(),
        };
        std::fs::write(
            out.join("manifest.json"),
            serde_json::to_vec_pretty(&m).expect("manifest serializes"),
        )
        .map_err(io("writing", &out.join("manifest.json")))?;
        // Swap the new kernel directory in whole.
        let target = dir.join("kernel");
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&out, &target).map_err(io("renaming", &target))?;
        Ok(m)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|m| (m, true))
}

/// Decompresses the xz payload of a bzImage into an ELF `vmlinux`.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), AssetsError> {
    use std::io::Write as _;
    let bytes = std::fs::read(bzimage).map_err(io("reading", bzimage))?;
    let step = || "extracting vmlinux".to_string();
    let start = bytes
        .windows(6)
        .position(|w| w == b"\xfd7zXZ\0")
        .ok_or_else(|| AssetsError::Step {
            step: step(),
            message: "no xz payload in the bzImage".into(),
        })?;
    let file = std::fs::File::create(out).map_err(io("creating", out))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| AssetsError::Step {
            step: step(),
            message: format!("xz: {e}"),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let payload = bytes[start..].to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let outp = child.wait_with_output().map_err(|e| AssetsError::Step {
        step: step(),
        message: e.to_string(),
    })?;
    let _ = writer.join();
    let elf = std::fs::read(out)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false);
    if !outp.status.success() || !elf {
        let _ = std::fs::remove_file(out);
        return Err(AssetsError::Step {
            step: step(),
            message: format!(
                "xz: {} {}",
                outp.status,
                String::from_utf8_lossy(&outp.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Copies the guest agent binary to `<dir>/agentcell-guest` (mode 0755). It must be a static
/// ELF executable: the initramfs has no dynamic loader.
pub fn install_agent(dir: &Path, src: &Path) -> Result<PathBuf, AssetsError> {
    let bytes = std::fs::read(src).map_err(io("reading", src))?;
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err(AssetsError::Step {
            step: format!("install-agent {}", src.display()),
            message: "not an ELF executable".into(),
        });
    }
    if bytes.windows(14).any(|w| w == b"ld-linux-x86-6") {
        return Err(AssetsError::Step {
            step: format!("install-agent {}", src.display()),
            message: "dynamically linked (build it for x86_64-unknown-linux-musl)".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let dst = dir.join(AGENT_NAME);
    let tmp = dir.join(format!(".{AGENT_NAME}.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io("writing", &tmp))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, &dst).map_err(io("renaming", &dst))?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section-header string table and a `.modinfo` section.
    fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 64];
        f[..5].copy_from_slice(b"\x7fELF\x02");
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        let modinfo_off = f.len();
        f.extend_from_slice(modinfo);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut s = vec![0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&s);
        };
        sh(0, 0, 0);
        sh(1, shstr_off, shstr.len());
        sh(11, modinfo_off, modinfo.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn modinfo_depends_is_read_from_the_section() {
        let elf = elf_with_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0name=x\0");
        assert_eq!(
            modinfo_depends(&elf),
            Some(vec!["virtio".to_string(), "virtio_ring".to_string()])
        );
        let none = elf_with_modinfo(b"depends=\0");
        assert_eq!(modinfo_depends(&none), Some(vec![]));
        assert_eq!(modinfo_depends(b"not an elf"), None);
    }

    #[test]
    fn the_vm_dir_prefers_the_flag() {
        assert_eq!(vm_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }
}
