//! Property tests of the planner and the canonical form.

use std::collections::BTreeMap;

use agentcell_policy::document::FsLists;
use agentcell_policy::plan::fs::{self, Access, RootSource};
use agentcell_policy::{ParseOptions, canonical, parse_with};
use proptest::prelude::*;

/// Paths over a tiny alphabet so that random sets nest and collide often.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", ".", "..", ""]),
        1..5,
    )
    .prop_map(|parts| format!("/{}", parts.join("/")))
}

fn lists() -> impl Strategy<Value = FsLists> {
    (
        prop::collection::vec(path(), 0..6),
        prop::collection::vec(path(), 0..6),
        prop::collection::vec(path(), 0..6),
    )
        .prop_map(|(readwrite, readonly, denied)| FsLists {
            readwrite,
            readonly,
            denied,
        })
}

/// The reference answer, computed independently: among the normalised entries that contain the
/// query, the deepest one decides; at equal paths the strictest list wins.
fn expected(l: &FsLists, query: &str) -> Option<Access> {
    let mut best: BTreeMap<String, Access> = BTreeMap::new();
    for (list, a) in [
        (&l.readwrite, Access::ReadWrite),
        (&l.readonly, Access::ReadOnly),
        (&l.denied, Access::Denied),
    ] {
        for p in list {
            let n = fs::normalize(p).unwrap();
            let e = best.entry(n).or_insert(a);
            *e = (*e).max(a);
        }
    }
    let q = fs::normalize(query).unwrap();
    best.iter()
        .filter(|(p, _)| fs::is_within(&q, p))
        .max_by_key(|(p, _)| fs::depth(p))
        .map(|(_, a)| *a)
}

proptest! {
    /// The most-specific-path rule holds for random path sets.
    #[test]
    fn deepest_path_wins(l in lists(), q in path()) {
        let mut errs = vec![];
        let view = fs::build(&l, RootSource::Rootfs { path: "/r".into() }, &mut errs);
        prop_assert!(errs.is_empty());
        let want = expected(&l, &q).unwrap_or(if fs::is_within(&fs::normalize(&q).unwrap(), "/tmp") { Access::ReadWrite } else { Access::ReadOnly });
        prop_assert_eq!(view.access_of(&q), Some(want));
    }

    /// Applying the view's mounts in order (each mount replaces its subtree) gives the same
    /// answer as the rule: the order is shallow to deep.
    #[test]
    fn mount_order_realises_the_rule(l in lists(), q in path()) {
        let mut errs = vec![];
        let view = fs::build(&l, RootSource::Rootfs { path: "/r".into() }, &mut errs);
        let qn = fs::normalize(&q).unwrap();
        let mut state = None;
        for e in &view.entries {
            if fs::is_within(&qn, &e.path) {
                state = Some(e.access);
            }
        }
        prop_assert_eq!(state, expected(&l, &q));
        for w in view.entries.windows(2) {
            prop_assert!(fs::depth(&w[0].path) <= fs::depth(&w[1].path));
        }
    }

    /// Canonical form is idempotent, and neither key order nor whitespace changes the digest.
    #[test]
    fn canonical_is_stable(ro in prop::collection::vec("/[a-z]{1,6}", 0..4), rw in prop::collection::vec("/[a-z]{1,6}", 0..4),
                           timeout in 0u32..100_000, pad in "[ \n\t]{0,3}", reverse in any::<bool>()) {
        let fsobj = serde_json::json!({"readonlyPaths": ro, "readwritePaths": rw});
        let mut fields = [
            ("version".to_string(), serde_json::json!("1.0.0")),
            ("process".to_string(), serde_json::json!({"commandLine": "true", "timeout": timeout})),
            ("filesystem".to_string(), fsobj),
        ];
        if reverse {
            fields.reverse();
        }
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{pad}\"{k}\"{pad}:{pad}{v}")).collect();
        let text = format!("{{{}{pad}}}", body.join(","));
        let doc = parse_with(&text, &ParseOptions::default()).unwrap();
        let c1 = canonical::canonical_json(&doc);
        let again = parse_with(&c1, &ParseOptions::default()).unwrap();
        prop_assert_eq!(&canonical::canonical_json(&again), &c1);
        let plain = format!("{{\"filesystem\":{},\"process\":{{\"commandLine\":\"true\",\"timeout\":{timeout}}},\"version\":\"1.0.0\"}}",
            serde_json::json!({"readwritePaths": rw, "readonlyPaths": ro}));
        let other = parse_with(&plain, &ParseOptions::default()).unwrap();
        prop_assert_eq!(canonical::digest(&doc), canonical::digest(&other));
    }
}
