//! Parse + validate + compile of MXC's own documents.
//!
//! - `largest_1_0`: the largest `1.0.0` document of `../shared/mxc-conformance-1.0` (configs and
//!   valid contract fixtures) that compiles to a full Linux plan (MXC 1.0's exact contract, its
//!   runtime rules, the bubblewrap/LXC admission, the plan). The README's < 50 µs target.
//! - `largest_1_0_contract`: `policy check --contract` of the largest 1.0.0 document of any root.
//! - `largest_example`, `largest_linux`: the retired corpus (`../shared/mxc-conformance`) under
//!   `--mxc-release 0.8`: the largest example (a Windows ProcessContainer document: the plan step
//!   ends in its refusal on Linux) and the largest example or config that compiles on Linux.
//! - `preset/coding-agent`: the shipped preset with egress rules.

use std::path::{Path, PathBuf};

use agentcell_policy::plan::{CompileOptions, Host, compile};
use agentcell_policy::{MxcRelease, ParseOptions, contract, parse_with, presets};
use criterion::{Criterion, criterion_group, criterion_main};

fn shared() -> PathBuf {
    std::env::var_os("AGENTCELL_MXC_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance")
        })
}

fn shared_1_0() -> PathBuf {
    std::env::var_os("AGENTCELL_MXC_CONFORMANCE_1_0")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mxc-conformance-1.0")
        })
}

fn opts() -> ParseOptions {
    ParseOptions {
        allow_testing_features: true,
        release: MxcRelease::V0_8,
        ..ParseOptions::executor()
    }
}

fn run_1_0(text: &str, host: &Host) -> bool {
    match parse_with(text, &ParseOptions::executor()) {
        Ok(doc) => compile(&doc, host, &CompileOptions::default()).is_ok(),
        Err(_) => false,
    }
}

/// Every `.json` file below `dir`.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let t = std::fs::read_to_string(&p).unwrap();
                out.push((p, t));
            }
        }
    }
    out.sort_by_key(|(_, t)| std::cmp::Reverse(t.len()));
    out
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
    let current: Vec<(PathBuf, String)> = tree(&shared_1_0())
        .into_iter()
        .filter(|(p, t)| {
            !p.to_string_lossy().contains("/invalid/") && t.contains("\"version\": \"1.0.0\"")
        })
        .collect();
    let (path, largest) = current
        .iter()
        .find(|(_, t)| run_1_0(t, &host))
        .expect("a 1.0.0 Linux document");
    eprintln!("largest_1_0: {} ({} bytes)", path.display(), largest.len());
    c.bench_function("largest_1_0", |b| {
        b.iter(|| assert!(run_1_0(std::hint::black_box(largest), &host)))
    });
    c.bench_function("largest_1_0/parse", |b| {
        b.iter(|| parse_with(std::hint::black_box(largest), &ParseOptions::executor()).unwrap())
    });
    let doc_1_0 = parse_with(largest, &ParseOptions::executor()).unwrap();
    c.bench_function("largest_1_0/compile", |b| {
        b.iter(|| {
            compile(
                std::hint::black_box(&doc_1_0),
                &host,
                &CompileOptions::default(),
            )
            .unwrap()
        })
    });
    let (path, any) = current
        .iter()
        .find(|(_, t)| contract::check(t).is_ok())
        .expect("a valid 1.0.0 document");
    eprintln!(
        "largest_1_0_contract: {} ({} bytes)",
        path.display(),
        any.len()
    );
    c.bench_function("largest_1_0_contract", |b| {
        b.iter(|| contract::check(std::hint::black_box(any)).unwrap())
    });
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
