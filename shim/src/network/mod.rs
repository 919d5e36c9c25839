//! Where egress and ingress are enforced: the sandbox's network namespace (`link`), its nftables
//! ruleset (`nft`) and installing it (`fence`).

pub mod fence;
pub mod link;
pub mod nft;
