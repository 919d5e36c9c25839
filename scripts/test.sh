#!/usr/bin/env bash
# Runs every check and test of the repository: formatting, clippy, then the whole workspace's
# tests (unit, conformance against ../shared/mxc-conformance, property tests, root-only suites).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
