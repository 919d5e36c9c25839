//! Prints the `AgentSandbox` CustomResourceDefinition:
//! `cargo run -p agentcell-operator --bin crdgen > crds/agentsandbox.yaml`.

fn main() {
    print!("{}", agentcell_operator::crd_yaml());
}
