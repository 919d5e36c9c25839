//! Generic walks over the raw JSON tree, for rules that serde's derived readers cannot express.

use serde_json::Value;

use crate::error::Violation;
use crate::path::JsonPath;

/// Keys whose value is a JSON array in every MXC version. Everything else that is a container
/// is an object.
const LIST_KEYS: &[&str] = &[
    "readwritePaths",
    "readonlyPaths",
    "deniedPaths",
    "env",
    "capabilities",
    "allowedHosts",
    "blockedHosts",
    "allow",
    "deny",
    "to",
    "except",
    "ports",
    "extraMachLookups",
    "portMappings",
];

/// Experimental keys MXC knows; the rest of `experimental` is opaque at run time.
const KNOWN_EXPERIMENTAL: &[&str] = &[
    "test",
    "windows_sandbox",
    "wslc",
    "isolation_session",
    "seatbelt",
    "macos_sandbox",
    "telemetry",
];

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The published contracts refuse an explicit `null` for every field except `_comment`.
pub fn check_no_null_outside_comment(v: &Value, path: &JsonPath, errs: &mut Vec<Violation>) {
    match v {
        Value::Null => errs.push(Violation::new(
            path.clone(),
            "null is not allowed; omit the field",
        )),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                check_no_null_outside_comment(x, &path.index(i), errs);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                if !(path.is_root() && k == "_comment") {
                    check_no_null_outside_comment(x, &path.key(k), errs);
                }
            }
        }
        _ => {}
    }
}

/// MXC's serde-derived readers also accept a JSON array positionally in place of any object (a
/// quirk MXC's own tests call out of scope). agentcell refuses it: an object is spelled as one.
pub fn check_objects_not_arrays(v: &Value, path: &JsonPath, errs: &mut Vec<Violation>) {
    let mut stack = path.clone();
    walk(v, &mut stack, false, errs);
}

/// `path` is a stack (pushed and popped around children) so no path is built unless reported.
fn walk(v: &Value, path: &mut JsonPath, is_list: bool, errs: &mut Vec<Violation>) {
    match v {
        Value::Array(_) if !is_list => {
            errs.push(Violation::new(
                path.clone(),
                "expected an object, found an array",
            ));
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push_index(i);
                walk(x, path, false, errs);
                path.pop();
            }
        }
        Value::Object(o) => {
            let in_experimental =
                path.depth() == 1 && path.last_key().as_deref() == Some("experimental");
            for (k, x) in o {
                if path.is_root() && k == "_comment" {
                    continue;
                }
                if in_experimental && !KNOWN_EXPERIMENTAL.contains(&k.as_str()) {
                    continue;
                }
                path.push_key(k);
                walk(x, path, LIST_KEYS.contains(&k.as_str()), errs);
                path.pop();
            }
        }
        _ => {}
    }
}
