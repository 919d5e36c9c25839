//! Subcommands of the `agentcell` CLI.

pub mod doctor;
pub mod explain;
pub mod node;
pub mod policy;
pub mod run;
pub mod vm;
