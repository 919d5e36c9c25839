//! Where egress and ingress are enforced: the sandbox's network namespace and its nftables fence.
//! The ruleset and its installation are built and tested; wiring them into the runner (veth,
//! masquerade, names resolved at start) is the network-enforcement issue.
#![cfg_attr(not(test), allow(dead_code))]

pub mod fence;
pub mod nft;
