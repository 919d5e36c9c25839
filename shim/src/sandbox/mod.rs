//! The enforcement core: one plan becomes one confined process (namespaces, the filesystem view,
//! seccomp, Landlock, cgroup limits, the deadline). The shim reuses it for every container.

pub mod aliases;
pub mod attach_warm;
pub mod audit;
pub mod init;
pub mod landlock;
pub mod memory;
pub mod prepare;
pub mod resolve;
pub mod resolver;
pub mod runner;
pub mod spec;
pub mod tty;
