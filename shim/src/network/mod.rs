//! Where egress and ingress are enforced: the sandbox's network namespace (`link`), its nftables
//! ruleset (`nft`) installing it (`fence`), and programming a namespace with a plan (`program`);
//! links, addresses and routes are set over rtnetlink (`rtnl`); the host's side of the fence, in
//! the host's own namespace (`hostguard`).

pub mod fence;
pub mod forward;
pub mod hostguard;
pub mod link;
pub mod nft;
pub mod program;
mod rtnl;
