//! Ready policies shipped with agentcell (`policies/presets/*.json`), embedded at build time.

/// `(name, one-line description, document)`.
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "coding-agent",
        "Workspace read-write, .git read-only, .env/.ssh denied; egress only to TCP 443 on listed CIDRs.",
        include_str!("../presets/coding-agent.json"),
    ),
    (
        "offline",
        "No network at all; only the workspace (and a private /tmp) writable.",
        include_str!("../presets/offline.json"),
    ),
    (
        "ml-toolchain",
        "Toolchains read-only, data dir read-write, no network; the GPU with --gpu (WSL2 or NVIDIA).",
        include_str!("../presets/ml-toolchain.json"),
    ),
    (
        "untrusted-code",
        "Tightest: one scratch dir, no network, 60 s limit, account and SSH secrets in /etc denied.",
        include_str!("../presets/untrusted-code.json"),
    ),
];

pub fn get(name: &str) -> Option<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, d)| *d)
}
