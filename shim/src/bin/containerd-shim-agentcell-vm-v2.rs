//! containerd's runtime v2 shim for `io.containerd.agentcell-vm.v2`: the micro-VM tier.

fn main() {
    agentcell::containerd::main_vm();
}
