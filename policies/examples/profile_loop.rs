//! A loop for profilers (`perf record`, `valgrind --tool=callgrind`): parse + compile a preset.
use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{ParseOptions, parse_with, presets};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let text = presets::get("coding-agent").unwrap();
    let host = Host::reference();
    for _ in 0..n {
        let doc = parse_with(std::hint::black_box(text), &ParseOptions::default()).unwrap();
        std::hint::black_box(compile(&doc, &host, &CompileOptions::default()).unwrap());
    }
}
