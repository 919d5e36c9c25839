//! The agentcell guest agent: PID 1 of a micro-VM. It serves the host's container operations
//! ([`agentcell_vmproto`]) over one virtio-serial port. The container, exec and stdio machinery
//! is this library so a test can drive it on an ordinary host through a socketpair; `main.rs`
//! adds what only PID 1 of a VM does (`boot`).

pub mod agent;
pub mod boot;
pub mod confine;
pub mod container;
pub mod paths;
pub mod sys;

pub use agent::{Config, Ending, serve};
