//! A minimal rtnetlink client over a `NETLINK_ROUTE` socket: the few link, address and route
//! requests a sandbox's uplink needs, sent in process instead of spawning `ip` (each `ip` process
//! cost about 3 ms of a sandbox's start here). A socket is bound to the network namespace it was
//! opened in, so one opened inside the sandbox's namespace programs that namespace from any
//! thread.

use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("entering network namespace {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Request {
        step: String,
        source: std::io::Error,
    },
    #[error("{step}: malformed netlink reply")]
    Malformed { step: String },
}

const NLMSG_HDRLEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

/// A netlink message under construction: header, fixed part, attributes (nested ones by offset).
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(fixed);
        Self {
            buf,
            nests: Vec::new(),
        }
    }
    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        self.align();
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self
    }
    fn str_attr(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }
    fn begin(&mut self, ty: u16) -> &mut Self {
        self.align();
        self.nests.push(self.buf.len());
        self.attr(ty, &[])
    }
    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.align();
        self.buf.extend_from_slice(data);
        self
    }
    fn end(&mut self) -> &mut Self {
        let at = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
    fn finish(mut self, seq: u32) -> Vec<u8> {
        self.align();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn ip_bytes(ip: &IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

/// `(type, attributes)` of the attributes in `data`.
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((ty, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

/// A `NETLINK_ROUTE` socket in one network namespace.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, RtnlError> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(RtnlError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Self {
            // SAFETY: a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// A socket in the network namespace at `netns`, opened on a short-lived thread that entered
    /// it (namespaces are per thread; the socket keeps the namespace it was made in).
    pub fn open_in(netns: &Path) -> Result<Self, RtnlError> {
        let ns = std::fs::File::open(netns).map_err(|source| RtnlError::Netns {
            path: netns.display().to_string(),
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns acts on this thread only, which ends right after.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(RtnlError::Netns {
                        path: netns.display().to_string(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                Self::open()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(RtnlError::Socket(std::io::Error::other(
                    "the namespace thread panicked",
                )))
            })
        })
    }

    fn send(&mut self, step: &str, msg: Msg) -> Result<u32, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = msg.finish(seq);
        // SAFETY: a valid buffer of that length; the kernel is the destination (pid 0).
        let n = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(RtnlError::Request {
                step: step.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(seq)
    }

    /// Reads replies to `seq` until an acknowledgement (or error), or the end of a dump; calls
    /// `each` with the type and body of every other message.
    fn replies(
        &mut self,
        step: &str,
        seq: u32,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<(), RtnlError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads into a buffer of that length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RtnlError::Request {
                    step: step.to_string(),
                    source: e,
                });
            }
            let mut data = &buf[..n as usize];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes([data[4], data[5]]);
                let mseq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
                if len < NLMSG_HDRLEN || len > data.len() {
                    return Err(RtnlError::Malformed {
                        step: step.to_string(),
                    });
                }
                let body = &data[NLMSG_HDRLEN..len];
                data = &data[len.next_multiple_of(4).min(data.len())..];
                if mseq != seq {
                    continue;
                }
                match ty as i32 {
                    libc::NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .ok_or_else(|| RtnlError::Malformed {
                                step: step.to_string(),
                            })?;
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(RtnlError::Request {
                                step: step.to_string(),
                                source: std::io::Error::from_raw_os_error(-code),
                            })
                        };
                    }
                    libc::NLMSG_DONE => return Ok(()),
                    _ => each(ty, body),
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement.
    fn call(&mut self, step: &str, msg: Msg) -> Result<(), RtnlError> {
        let seq = self.send(step, msg)?;
        self.replies(step, seq, |_, _| {})
    }

    fn flags(extra: i32) -> u16 {
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | extra) as u16
    }

    /// A veth pair: `name` here, `peer` in the namespace open at `peer_netns`.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> Result<(), RtnlError> {
        let mut m = Msg::new(
            libc::RTM_NEWLINK,
            Self::flags(libc::NLM_F_CREATE | libc::NLM_F_EXCL),
            &ifinfomsg(0, 0, 0),
        );
        m.str_attr(IFLA_IFNAME, name)
            .begin(IFLA_LINKINFO)
            .str_attr(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0))
            .str_attr(IFLA_IFNAME, peer)
            .attr(IFLA_NET_NS_FD, &(peer_netns as u32).to_ne_bytes())
            .end()
            .end()
            .end();
        self.call(&format!("creating veth {name} (peer {peer})"), m)
    }

    /// The index of the link `name`.
    pub fn link_index(&mut self, name: &str) -> Result<i32, RtnlError> {
        let step = format!("looking up link {name}");
        let mut m = Msg::new(
            libc::RTM_GETLINK,
            libc::NLM_F_REQUEST as u16,
            &ifinfomsg(0, 0, 0),
        );
        m.str_attr(IFLA_IFNAME, name);
        let seq = self.send(&step, m)?;
        let mut index = None;
        let mut buf = vec![0u8; 64 * 1024];
        // A single reply (RTM_NEWLINK) or an error, not acknowledged separately.
        // SAFETY: reads into a buffer of that length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(RtnlError::Request {
                step,
                source: std::io::Error::last_os_error(),
            });
        }
        let data = &buf[..n as usize];
        if data.len() >= NLMSG_HDRLEN + 8 {
            let ty = u16::from_ne_bytes([data[4], data[5]]);
            let mseq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
            let body = &data[NLMSG_HDRLEN..];
            if mseq == seq && ty == libc::RTM_NEWLINK {
                index = Some(i32::from_ne_bytes(body[4..8].try_into().unwrap()));
            } else if mseq == seq && ty as i32 == libc::NLMSG_ERROR {
                let code = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                return Err(RtnlError::Request {
                    step,
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
        }
        index.ok_or(RtnlError::Malformed { step })
    }

    /// Sets the link up.
    pub fn set_up(&mut self, index: i32) -> Result<(), RtnlError> {
        let up = libc::IFF_UP as u32;
        let m = Msg::new(libc::RTM_NEWLINK, Self::flags(0), &ifinfomsg(index, up, up));
        self.call(&format!("setting link {index} up"), m)
    }

    /// `ip addr add IP/PREFIX dev INDEX [nodad]`.
    pub fn add_addr(
        &mut self,
        index: i32,
        ip: IpAddr,
        prefix: u8,
        nodad: bool,
    ) -> Result<(), RtnlError> {
        let (family, bytes) = ip_bytes(&ip);
        let mut fixed = [0u8; 8];
        fixed[0] = family;
        fixed[1] = prefix;
        fixed[2] = if nodad { IFA_F_NODAD } else { 0 };
        fixed[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        let mut m = Msg::new(
            libc::RTM_NEWADDR,
            Self::flags(libc::NLM_F_CREATE | libc::NLM_F_EXCL),
            &fixed,
        );
        m.attr(IFA_LOCAL, &bytes).attr(IFA_ADDRESS, &bytes);
        self.call(&format!("adding address {ip}/{prefix} to link {index}"), m)
    }

    /// `ip route add default via GATEWAY`.
    pub fn add_default_route(&mut self, gateway: IpAddr) -> Result<(), RtnlError> {
        let (family, bytes) = ip_bytes(&gateway);
        let fixed = [
            family,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            libc::RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut m = Msg::new(
            libc::RTM_NEWROUTE,
            Self::flags(libc::NLM_F_CREATE | libc::NLM_F_EXCL),
            &fixed,
        );
        m.attr(RTA_GATEWAY, &bytes);
        self.call(&format!("adding the default route via {gateway}"), m)
    }

    /// `ip link del NAME`.
    pub fn del_link(&mut self, name: &str) -> Result<(), RtnlError> {
        let mut m = Msg::new(libc::RTM_DELLINK, Self::flags(0), &ifinfomsg(0, 0, 0));
        m.str_attr(IFLA_IFNAME, name);
        self.call(&format!("deleting link {name}"), m)
    }

    /// Every address of every link in this namespace (the local address, as `ip addr` shows it).
    pub fn addresses(&mut self) -> Result<Vec<IpAddr>, RtnlError> {
        Ok(self.prefixes()?.into_iter().map(|(ip, _)| ip).collect())
    }

    /// [`Self::addresses`] with each one's prefix length.
    pub fn prefixes(&mut self) -> Result<Vec<(IpAddr, u8)>, RtnlError> {
        let step = "listing addresses";
        let m = Msg::new(
            libc::RTM_GETADDR,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            &[0u8; 8],
        );
        let seq = self.send(step, m)?;
        let mut out = Vec::new();
        self.replies(step, seq, |ty, body| {
            if ty != libc::RTM_NEWADDR || body.len() < 8 {
                return;
            }
            let (family, len) = (i32::from(body[0]), body[1]);
            let (mut local, mut address) = (None, None);
            for (aty, data) in attrs(&body[8..]) {
                let ip = match (family, data.len()) {
                    (libc::AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes")),
                    (libc::AF_INET6, 16) => {
                        IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes"))
                    }
                    _ => continue,
                };
                match aty {
                    IFA_LOCAL => local = Some(ip),
                    IFA_ADDRESS => address = Some(ip),
                    _ => {}
                }
            }
            out.extend(local.or(address).map(|ip| (ip, len)));
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_aligned_and_nests_sized() {
        let mut m = Msg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(0, 0, 0));
        m.str_attr(IFLA_IFNAME, "ab")
            .begin(IFLA_LINKINFO)
            .str_attr(IFLA_INFO_KIND, "veth")
            .end();
        let b = m.finish(7);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        let top = attrs(&b[NLMSG_HDRLEN + 16..]);
        assert_eq!(top[0], (IFLA_IFNAME, &b"ab\0"[..]));
        assert_eq!(top[1].0, IFLA_LINKINFO);
        assert_eq!(attrs(top[1].1), vec![(IFLA_INFO_KIND, &b"veth\0"[..])]);
    }
}
