//! A small JSON Schema (draft 7) validator for exactly the keywords MXC's published schemas use,
//! so tests can hold agentcell's contract shapes to MXC's schemas. Written for the test only; it
//! panics on a keyword or pattern it does not know (a new schema must be looked at, not skipped).

use serde_json::Value;

pub struct Schema {
    root: Value,
}

impl Schema {
    pub fn new(root: Value) -> Self {
        Self { root }
    }

    /// Whether `instance` is valid against the whole schema.
    pub fn accepts(&self, instance: &Value) -> bool {
        self.valid(instance, &self.root)
    }

    fn resolve<'a>(&'a self, r: &str) -> &'a Value {
        let name = r
            .strip_prefix("#/definitions/")
            .unwrap_or_else(|| panic!("unsupported $ref {r}"));
        self.root
            .get("definitions")
            .and_then(|d| d.get(name))
            .unwrap_or_else(|| panic!("no definition {name}"))
    }

    fn valid(&self, v: &Value, s: &Value) -> bool {
        let o = match s {
            Value::Bool(b) => return *b,
            Value::Object(o) => o,
            other => panic!("schema is not an object: {other}"),
        };
        for (k, kw) in o {
            let ok = match k.as_str() {
                "$schema" | "$id" | "$comment" | "title" | "description" | "definitions" => true,
                // Handled by `if`.
                "then" | "else" => true,
                // Handled with `properties`.
                "additionalProperties" if o.contains_key("properties") => true,
                "$ref" => self.valid(v, self.resolve(kw.as_str().expect("string $ref"))),
                "type" => match kw.as_str().expect("single type") {
                    "string" => v.is_string(),
                    "object" => v.is_object(),
                    "array" => v.is_array(),
                    "boolean" => v.is_boolean(),
                    // MXC's reader is serde's: an integer is a JSON integer (1.0 is refused there,
                    // though draft 7 would take it). The generated documents hold no such number.
                    "integer" => v.is_u64() || v.is_i64(),
                    other => panic!("unsupported type {other}"),
                },
                "enum" => kw.as_array().expect("enum array").contains(v),
                "const" => kw == v,
                "properties" => {
                    let Some(inst) = v.as_object() else {
                        continue;
                    };
                    let props = kw.as_object().expect("properties object");
                    let additional = o.get("additionalProperties");
                    inst.iter().all(|(ik, iv)| match props.get(ik) {
                        Some(ps) => self.valid(iv, ps),
                        None => match additional {
                            None | Some(Value::Bool(true)) => true,
                            Some(Value::Bool(false)) => false,
                            Some(other) => self.valid(iv, other),
                        },
                    })
                }
                "additionalProperties" => match (v.as_object(), kw) {
                    (Some(inst), Value::Bool(false)) => inst.is_empty(),
                    _ => true,
                },
                "required" => match v.as_object() {
                    Some(inst) => kw
                        .as_array()
                        .expect("required array")
                        .iter()
                        .all(|r| inst.contains_key(r.as_str().expect("string"))),
                    None => true,
                },
                "items" => match v.as_array() {
                    Some(a) => a.iter().all(|x| self.valid(x, kw)),
                    None => true,
                },
                "minItems" => v
                    .as_array()
                    .is_none_or(|a| a.len() as u64 >= kw.as_u64().expect("number")),
                "minLength" => v
                    .as_str()
                    .is_none_or(|s| s.chars().count() as u64 >= kw.as_u64().expect("number")),
                "minimum" => v.as_f64().is_none_or(|n| n >= kw.as_f64().expect("number")),
                "maximum" => v.as_f64().is_none_or(|n| n <= kw.as_f64().expect("number")),
                "pattern" => match v.as_str() {
                    Some(s) => pattern(kw.as_str().expect("pattern string"), s),
                    None => true,
                },
                "allOf" => kw
                    .as_array()
                    .expect("array")
                    .iter()
                    .all(|x| self.valid(v, x)),
                "oneOf" => {
                    kw.as_array()
                        .expect("array")
                        .iter()
                        .filter(|x| self.valid(v, x))
                        .count()
                        == 1
                }
                "not" => !self.valid(v, kw),
                "if" => {
                    if self.valid(v, kw) {
                        o.get("then").is_none_or(|t| self.valid(v, t))
                    } else {
                        o.get("else").is_none_or(|e| self.valid(v, e))
                    }
                }
                other => panic!("unsupported schema keyword {other}"),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// The one pattern MXC's schemas use: a ProcessContainer capability (no comma, not one of the
/// two reserved learning-mode names in any ASCII case).
fn pattern(p: &str, s: &str) -> bool {
    const CAPABILITY: &str = r"^(?![\s\S]*,)(?!(?:[lL][eE][aA][rR][nN][iI][nN][gG][mM][oO][dD][eE][lL][oO][gG][gG][iI][nN][gG]|[pP][eE][rR][mM][iI][sS][sS][iI][vV][eE][lL][eE][aA][rR][nN][iI][nN][gG][mM][oO][dD][eE])$)[\s\S]*$";
    assert_eq!(p, CAPABILITY, "unknown pattern in MXC's schema");
    !s.contains(',')
        && !s.eq_ignore_ascii_case("learningModeLogging")
        && !s.eq_ignore_ascii_case("permissiveLearningMode")
}
