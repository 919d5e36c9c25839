//! containerd's runtime v2 shim for `io.containerd.agentcell.v2`.

fn main() {
    agentcell::containerd::main();
}
