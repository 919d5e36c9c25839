//! agentcell: run Microsoft MXC policies confined on Linux: the `agentcell` CLI and the
//! containerd shim share this library.

pub mod cli;
pub mod containerd;
pub mod host;
pub mod network;
pub mod node;
pub mod sandbox;
pub mod vm;
pub mod wsl;
