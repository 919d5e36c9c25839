//! Prints a CustomResourceDefinition of the operator:
//! `cargo run -p agentcell-operator --bin crdgen [agentsandbox|agentsandboxpool|agentsandboxclaim]
//! > crds/NAME.yaml` (default `agentsandbox`).

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let which = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "agentsandbox".into());
    match agentcell_operator::crd_yaml_of(&which) {
        Some(yaml) => print!("{yaml}"),
        None => bail!(
            "unknown CRD {which}: one of {}",
            agentcell_operator::CRD_FILES.join(", ")
        ),
    }
    Ok(())
}
