//! Canonical form and digest of a document: two spellings of the same policy (key order,
//! whitespace, aliases, annotations, list order and duplicates of path lists, absent vs `null`)
//! produce the same bytes. The operator writes this digest into `agentcell.dev/policy-digest` and
//! the shim recomputes it, so the format is part of the contract: sorted keys, no whitespace,
//! serde_json string escaping.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::document::Document;

/// Prefix of every digest string, so the algorithm can change without ambiguity.
pub const DIGEST_PREFIX: &str = "sha256:";

/// The canonical JSON text of what `doc` means.
pub fn canonical_json(doc: &Document) -> String {
    let mut v = serde_json::to_value(&doc.config).expect("the model serializes");
    if let Some(fs) = v.get_mut("filesystem").and_then(Value::as_object_mut) {
        for list in fs.values_mut() {
            if let Value::Array(a) = list {
                let mut items: Vec<String> = a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect();
                items.sort();
                items.dedup();
                *a = items.into_iter().map(Value::String).collect();
            }
        }
    }
    let mut out = String::new();
    write_value(&v, &mut out);
    out
}

/// `sha256:<hex>` of [`canonical_json`].
pub fn digest(doc: &Document) -> String {
    digest_of(&canonical_json(doc))
}

pub fn digest_of(canonical: &str) -> String {
    let hash = Sha256::digest(canonical.as_bytes());
    format!("{DIGEST_PREFIX}{}", hex::encode(hash))
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("string"));
                out.push(':');
                write_value(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(x, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::parse;

    #[test]
    fn spelling_does_not_change_the_digest() {
        let a = parse(r#"{"version":"1.0.0","process":{"commandLine":"x"},"filesystem":{"readonlyPaths":["/b","/a"]}}"#).unwrap();
        let b = parse(
            r#"{ "filesystem": { "readonlyPaths": ["/a", "/b", "/a"] },
                 "$schema": "s", "_comment": {"any": 1},
                 "process": { "commandLine": "x" },
                 "version": "1.0.0" }"#,
        )
        .unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(digest(&a), digest(&b));
        assert!(digest(&a).starts_with("sha256:"));
    }

    /// MXC 0.8's reading (explicit `null` is absent) keeps its digests under --mxc-release 0.8.
    #[test]
    fn retired_spellings_keep_their_digest() {
        let opts = crate::ParseOptions {
            release: crate::MxcRelease::V0_8,
            ..crate::ParseOptions::executor()
        };
        let a = crate::parse_with(r#"{"version":"0.8.0-alpha","process":{"commandLine":"x"},"filesystem":{"readonlyPaths":["/b","/a"]}}"#, &opts).unwrap();
        let b = crate::parse_with(
            r#"{ "filesystem": { "readonlyPaths": ["/a", "/b", "/a"] },
                 "process": { "commandLine": "x", "cwd": null },
                 "version": "0.8.0-alpha" }"#,
            &opts,
        )
        .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"filesystem":{"readonlyPaths":["/a","/b"]},"process":{"commandLine":"x"},"version":"0.8.0-alpha"}"#
        );
    }

    #[test]
    fn meaning_changes_the_digest() {
        let a = parse(r#"{"version":"1.0.0","process":{"commandLine":"x"}}"#).unwrap();
        let b = parse(r#"{"version":"1.0.0","process":{"commandLine":"y"}}"#).unwrap();
        assert_ne!(digest(&a), digest(&b));
        let c = parse(r#"{"version":"1.0.0","process":{"commandLine":"x","env":[]}}"#).unwrap();
        assert_ne!(
            digest(&a),
            digest(&c),
            "env omitted and [] mean different things"
        );
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn aliases_canonicalize() {
        // 0.9.0-alpha is the last contract with the aliases.
        let a = parse(r#"{"version":"0.9.0-alpha","containment":"appcontainer","process":{"commandLine":"x"},"appContainer":{}}"#).unwrap();
        let b = parse(r#"{"version":"0.9.0-alpha","containment":"processcontainer","process":{"commandLine":"x"},"processContainer":{}}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }
}
