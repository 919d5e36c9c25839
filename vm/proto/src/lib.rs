//! The wire protocol between the host side of the micro-VM tier (the `agentcell` CLI or the
//! `containerd-shim-agentcell-vm-v2` shim) and the guest agent, PID 1 of the VM.
//!
//! One byte stream (a virtio-serial port named [`PORT_NAME`]; vsock later) carries frames:
//! `u32` big-endian length of what follows, one kind byte, then the body. Control frames carry
//! one JSON [`HostMessage`] or [`GuestMessage`]; data frames carry raw stdio bytes of one process,
//! so output is never re-encoded. The host decides everything (the plan is compiled on the host);
//! the guest executes [`ContainerSpec`]s literally and reports what it could not do.
//!
//! Boot-time facts reach the guest in `/agentcell/boot.json` ([`BootConfig`]), a second cpio
//! archive the host appends to the static initramfs.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Name of the virtio-serial port (`/sys/class/virtio-ports/*/name`) the agent serves.
pub const PORT_NAME: &str = "agentcell.0";
/// Where the host puts [`BootConfig`] in the initramfs.
pub const BOOT_CONFIG_PATH: &str = "/agentcell/boot.json";
/// Ordered list of kernel module files (one path per line, relative to `/`) the agent loads
/// with `finit_module` before anything else.
pub const MODULES_LIST_PATH: &str = "/agentcell/modules.load";
/// Where the guest mounts share `tag`: `SHARES_DIR/tag`.
pub const SHARES_DIR: &str = "/run/agentcell/shares";
/// Largest frame either side accepts (a frame larger than this is a protocol error).
pub const MAX_FRAME: usize = 4 << 20;
/// Protocol version, checked in [`GuestMessage::Ready`].
pub const VERSION: u32 = 1;

const KIND_CONTROL: u8 = 0;
const KIND_DATA: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("reading or writing the agent channel: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("control message is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Facts the guest needs before the channel is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BootConfig {
    /// 9p shares exported by the VMM (`mount_tag`), mounted at `SHARES_DIR/tag`.
    pub shares: Vec<Share>,
    /// The guest side of the VM's link; `None`: no network device (network-less policy).
    pub network: Option<GuestNetwork>,
    /// Hostname of the VM (the pod's, or the sandbox id).
    pub hostname: String,
    /// Log level for the agent's own messages sent as [`GuestMessage::Log`] (`info`, `debug`).
    #[serde(default)]
    pub log_level: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub tag: String,
    /// The VMM exports it read-only as well; the guest mounts it read-only too.
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// Interface name in the guest (`eth0`), found by MAC if the name differs.
    pub mac: String,
    /// `A.B.C.D/len`.
    pub ipv4: String,
    pub gateway4: String,
    /// `addr/len`, when the host side has IPv6.
    #[serde(default)]
    pub ipv6: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    /// Written to the guest's `/etc/resolv.conf` view when the spec mounts one.
    #[serde(default)]
    pub nameservers: Vec<String>,
    pub mtu: u32,
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostMessage {
    /// Build the container's namespaces and view, and hold its first process before `execve`
    /// until [`HostMessage::Start`]. Answered by `Created` or `Failed`.
    Create {
        handle: u32,
        spec: Box<ContainerSpec>,
    },
    /// Release the held process. Answered by `Started` or `Failed`.
    Start { handle: u32 },
    /// Run `process` inside the running container `container` (its namespaces, view, Landlock
    /// and seccomp), as a new handle. Answered by `Started` or `Failed`.
    Exec {
        handle: u32,
        container: u32,
        process: ProcessSpec,
    },
    /// Signal one process (`all`: every process of the container `handle` is the init of).
    Signal { handle: u32, signal: i32, all: bool },
    /// No more stdin for `handle`.
    CloseStdin { handle: u32 },
    /// Terminal size of a process that has one.
    Resize { handle: u32, rows: u16, cols: u16 },
    /// Forget an exited handle (its container's mounts go with the last handle).
    Delete { handle: u32 },
    /// Resource use of the VM. Answered by `Stats` with the same `id`.
    Stats { id: u64 },
    /// Kill everything, sync, power off.
    Shutdown,
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GuestMessage {
    /// The agent is serving. Sent once, first.
    Ready(GuestInfo),
    Created {
        handle: u32,
        pid: i32,
    },
    Started {
        handle: u32,
        pid: i32,
    },
    /// The process ended. `status` as a shell reports it: the code, or 128+N for signal N.
    Exited {
        handle: u32,
        status: i32,
        /// It was killed because its `timeout_ms` elapsed (the whole container was killed).
        timed_out: bool,
    },
    /// A request for `handle` could not be carried out; nothing of it is left running.
    Failed {
        handle: u32,
        /// The step that failed (`mount /tmp`, `landlock`, `seccomp`, `execve`, ...).
        step: String,
        message: String,
    },
    Stats {
        id: u64,
        stats: VmStats,
    },
    /// Something the host should log (context: which step, which container).
    Log {
        level: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub version: u32,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Landlock ABI the guest kernel offers (0: none).
    pub landlock_abi: i32,
    /// Milliseconds from kernel start to the agent serving (guest clock, `CLOCK_BOOTTIME`).
    pub boot_ms: u64,
    /// What the guest could not set up at boot (a share that did not mount, no IPv6, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VmStats {
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    /// CPU time spent by processes of containers, all of them (user + system), in nanoseconds.
    pub cpu_usage_ns: u64,
    pub pids: u64,
}

/// One container inside the VM: its own mount, PID, IPC and UTS namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    pub hostname: String,
    /// The new root: a directory of a share (an image rootfs), or an empty tmpfs that
    /// `mounts` fill (a host view made of bind mounts, as the CLI builds it).
    pub root: Root,
    /// Remount the root read-only after `mounts` are applied.
    pub root_readonly: bool,
    /// Applied in order (the host sorts them shallow-to-deep) below the new root.
    pub mounts: Vec<Mount>,
    /// Paths (inside the new root) the workload may reach; `None`: no Landlock.
    pub landlock: Option<LandlockSpec>,
    /// A classic BPF program (`struct sock_filter` as `code | jt << 16 | jf << 24 | k << 32`)
    /// installed with no_new_privs right before `execve`, after Landlock. Compiled on the host.
    pub seccomp_bpf: Vec<u64>,
    /// The pod's own seccomp profile (CRI's `RuntimeDefault`, say), compiled on the host the
    /// same way and installed before `seccomp_bpf`: both filters apply, the stricter verdict
    /// wins, as when the container tier stacks the plan's filter on the pod's.
    #[serde(default)]
    pub seccomp_pod_bpf: Vec<u64>,
    pub process: ProcessSpec,
    /// Kill the whole container after this long (its `Exited` then says `timed_out`).
    pub timeout_ms: Option<u64>,
    /// Memory and process limits for the container's cgroup inside the guest (0: none).
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub pids_max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Root {
    Share { tag: String, subpath: String },
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the new root.
    pub target: String,
    pub source: MountSource,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSource {
    /// A directory or file of a share (bind mount); `subpath` relative to the share.
    Share { tag: String, subpath: String },
    /// A fresh tmpfs capped at `size_bytes`.
    Tmpfs { size_bytes: u64, mode: u32 },
    /// A fresh procfs of the container's PID namespace.
    Proc,
    /// A minimal `/dev`: null, zero, full, random, urandom, tty, ptmx + devpts, shm, fd links.
    Dev,
    /// Hide a file: `/dev/null` bound over it.
    MaskFile,
    /// Hide a directory: an empty read-only tmpfs over it.
    MaskDir,
    /// A file with this content (resolv.conf, hosts, hostname), read-only.
    File { content: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockSpec {
    pub read: Vec<String>,
    pub write: Vec<String>,
    /// Device nodes: read, write, ioctl.
    pub devices: Vec<String>,
    /// Accept a partial result (reported in a `Log`); otherwise anything less than fully
    /// enforced fails the container with step `landlock`.
    pub best_effort: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=value`, exactly the environment (nothing inherited).
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Give it a pseudo-terminal (its output then arrives on fd 1 only).
    pub terminal: bool,
    /// Open a stdin stream (data frames with fd 0 from the host; `CloseStdin` ends it).
    pub stdin: bool,
}

/// One frame of the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<M> {
    Control(M),
    /// Stdio bytes of process `handle`: fd 0 host → guest; fd 1 and 2 guest → host. An empty
    /// payload on fd 1 or 2 means that stream reached end of file.
    Data {
        handle: u32,
        fd: u8,
        bytes: Vec<u8>,
    },
}

/// Writes one frame (a single `write_all` of a buffer, so frames never interleave when the
/// writer is shared behind a lock).
pub fn write_frame<M: Serialize, W: Write>(w: &mut W, frame: &Frame<M>) -> Result<(), ProtoError> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    match frame {
        Frame::Control(m) => {
            buf.push(KIND_CONTROL);
            serde_json::to_writer(&mut buf, m)?;
        }
        Frame::Data { handle, fd, bytes } => {
            buf.push(KIND_DATA);
            buf.extend_from_slice(&handle.to_be_bytes());
            buf.push(*fd);
            buf.extend_from_slice(bytes);
        }
    }
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read_frame<M: for<'de> Deserialize<'de>, R: Read>(
    r: &mut R,
) -> Result<Option<Frame<M>>, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ProtoError::Malformed(
                    "end of stream inside a header".into(),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    if len == 0 {
        return Err(ProtoError::Malformed("empty frame".into()));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    match body[0] {
        KIND_CONTROL => Ok(Some(Frame::Control(serde_json::from_slice(&body[1..])?))),
        KIND_DATA => {
            if body.len() < 6 {
                return Err(ProtoError::Malformed(
                    "data frame shorter than its header".into(),
                ));
            }
            let handle = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes"));
            let fd = body[5];
            Ok(Some(Frame::Data {
                handle,
                fd,
                bytes: body[6..].to_vec(),
            }))
        }
        k => Err(ProtoError::Kind(k)),
    }
}

/// `struct sock_filter` packed as [`ContainerSpec::seccomp_bpf`] carries it.
pub fn pack_sock_filter(code: u16, jt: u8, jf: u8, k: u32) -> u64 {
    u64::from(code) | (u64::from(jt) << 16) | (u64::from(jf) << 24) | (u64::from(k) << 32)
}

/// The inverse of [`pack_sock_filter`].
pub fn unpack_sock_filter(v: u64) -> (u16, u8, u8, u32) {
    (
        (v & 0xffff) as u16,
        ((v >> 16) & 0xff) as u8,
        ((v >> 24) & 0xff) as u8,
        (v >> 32) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<M>(f: Frame<M>) -> Frame<M>
    where
        M: Serialize + for<'de> Deserialize<'de>,
    {
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).unwrap();
        let mut r = &buf[..];
        let back = read_frame(&mut r).unwrap().unwrap();
        assert!(r.is_empty(), "one frame consumed exactly");
        back
    }

    #[test]
    fn control_and_data_frames_roundtrip() {
        let m = HostMessage::Signal {
            handle: 7,
            signal: 9,
            all: true,
        };
        assert_eq!(roundtrip(Frame::Control(m.clone())), Frame::Control(m));
        let d: Frame<HostMessage> = Frame::Data {
            handle: 3,
            fd: 0,
            bytes: b"\x00\xffbinary".to_vec(),
        };
        assert_eq!(roundtrip(d.clone()), d);
    }

    #[test]
    fn clean_end_between_frames_is_none_and_inside_is_an_error() {
        let mut empty: &[u8] = &[];
        assert!(read_frame::<GuestMessage, _>(&mut empty).unwrap().is_none());
        let mut cut: &[u8] = &[0, 0];
        assert!(read_frame::<GuestMessage, _>(&mut cut).is_err());
        let mut short: &[u8] = &[0, 0, 0, 9, 0, b'{'];
        assert!(read_frame::<GuestMessage, _>(&mut short).is_err());
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame::<GuestMessage, _>(&mut big),
            Err(ProtoError::TooLarge(_))
        ));
        let mut odd: &[u8] = &[0, 0, 0, 1, 7];
        assert!(matches!(
            read_frame::<GuestMessage, _>(&mut odd),
            Err(ProtoError::Kind(7))
        ));
    }

    #[test]
    fn messages_have_a_stable_json_shape() {
        let m = GuestMessage::Exited {
            handle: 1,
            status: 137,
            timed_out: true,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"event":"exited","handle":1,"status":137,"timed_out":true}"#
        );
        let src = MountSource::Tmpfs {
            size_bytes: 1 << 20,
            mode: 0o1777,
        };
        assert_eq!(
            serde_json::to_value(&src).unwrap(),
            serde_json::json!({"kind": "tmpfs", "size_bytes": 1048576, "mode": 1023})
        );
    }

    #[test]
    fn sock_filter_packing_roundtrips() {
        let v = pack_sock_filter(0x15, 1, 2, 0xc000_003e);
        assert_eq!(unpack_sock_filter(v), (0x15, 1, 2, 0xc000_003e));
    }
}
