//! Parse + validate + compile of MXC's own documents (read from ../shared/mxc-conformance).
//!
//! - `largest_example`: the largest file in `examples/` (a Windows ProcessContainer document:
//!   the plan step ends in its refusal on Linux).
//! - `largest_linux`: the largest example or config that compiles to a full Linux plan.
//! - `preset/coding-agent`: the shipped preset with egress rules.

use std::path::{Path, PathBuf};

use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{ParseOptions, parse_with, presets};
use criterion::{Criterion, criterion_group, criterion_main};

fn shared() -> PathBuf {
    std::env::var_os("AGENTCELL_MXC_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance")
        })
}

fn opts() -> ParseOptions {
    ParseOptions {
        allow_testing_features: true,
        ..ParseOptions::executor()
    }
}

fn run(text: &str, host: &Host) -> bool {
    match parse_with(text, &opts()) {
        Ok(doc) => compile(&doc, host, &CompileOptions::default()).is_ok(),
        Err(_) => false,
    }
}

fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    v.sort_by_key(|(_, t)| std::cmp::Reverse(t.len()));
    v
}

fn bench(c: &mut Criterion) {
    let host = Host::reference();
    let examples = files(&shared().join("examples"));
    let (path, largest) = &examples[0];
    eprintln!(
        "largest_example: {} ({} bytes)",
        path.display(),
        largest.len()
    );
    c.bench_function("largest_example", |b| {
        b.iter(|| run(std::hint::black_box(largest), &host))
    });

    let mut all = examples.clone();
    all.extend(files(&shared().join("configs")));
    all.sort_by_key(|(_, t)| std::cmp::Reverse(t.len()));
    let (path, linux) = all
        .iter()
        .find(|(_, t)| run(t, &host))
        .expect("a Linux document");
    eprintln!("largest_linux: {} ({} bytes)", path.display(), linux.len());
    c.bench_function("largest_linux", |b| {
        b.iter(|| assert!(run(std::hint::black_box(linux), &host)))
    });

    let preset = presets::get("coding-agent").unwrap();
    c.bench_function("preset/coding-agent/parse", |b| {
        b.iter(|| parse_with(std::hint::black_box(preset), &ParseOptions::default()).unwrap())
    });
    let doc = parse_with(preset, &ParseOptions::default()).unwrap();
    c.bench_function("preset/coding-agent/compile", |b| {
        b.iter(|| {
            compile(
                std::hint::black_box(&doc),
                &host,
                &CompileOptions::default(),
            )
            .unwrap()
        })
    });
    c.bench_function("preset/coding-agent/digest", |b| {
        b.iter(|| agentcell_policy::canonical::digest(std::hint::black_box(&doc)))
    });
    c.bench_function("preset/coding-agent", |b| {
        b.iter(|| {
            let doc = parse_with(std::hint::black_box(preset), &ParseOptions::default()).unwrap();
            compile(&doc, &host, &CompileOptions::default()).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
