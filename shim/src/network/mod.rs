//! Where egress and ingress are enforced: the sandbox's network namespace (`link`), its nftables
//! ruleset (`nft`) installing it (`fence`), and programming a namespace with a plan (`program`).

pub mod fence;
pub mod link;
pub mod nft;
pub mod program;
