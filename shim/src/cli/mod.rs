//! Subcommands of the `agentcell` CLI.

pub mod explain;
pub mod policy;
pub mod run;
