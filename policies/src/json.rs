//! Strict JSON reading: MXC's runtime parser rejects duplicate keys and trailing content, which
//! `serde_json::Value` silently accepts (last key wins). We read into a `Value` through a seed that
//! tracks the JSON path so the error can name where the duplicate is.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::path::JsonPath;

/// Error from reading the raw document, before any MXC rule is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub path: JsonPath,
    pub message: String,
    pub line: usize,
    pub column: usize,
}

/// Parses `text` as exactly one JSON value, rejecting duplicate object keys and trailing content.
pub fn parse_strict(text: &str) -> Result<Value, SyntaxError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut ctx = Ctx {
        path: JsonPath::root(),
        dup: None,
    };
    let value = StrictSeed { ctx: &mut ctx }
        .deserialize(&mut de)
        .map_err(|e| syntax(e, ctx.dup.clone()))?;
    de.end().map_err(|e| syntax(e, None))?;
    Ok(value)
}

/// The path being read (a stack, so no path is built unless a duplicate is found).
struct Ctx {
    path: JsonPath,
    dup: Option<JsonPath>,
}

fn syntax(e: serde_json::Error, dup: Option<JsonPath>) -> SyntaxError {
    let (line, column) = (e.line(), e.column());
    match dup {
        Some(path) => SyntaxError {
            message: format!("duplicate key \"{}\"", path.last_key().unwrap_or_default()),
            path,
            line,
            column,
        },
        None => {
            // serde_json appends " at line L column C"; we report position separately.
            let mut message = e.to_string();
            if let Some(i) = message.rfind(" at line ") {
                message.truncate(i);
            }
            let message = match e.classify() {
                serde_json::error::Category::Syntax if message == "trailing characters" => {
                    "trailing content after the JSON document".to_string()
                }
                _ => message,
            };
            SyntaxError {
                path: JsonPath::root(),
                message,
                line,
                column,
            }
        }
    }
}

struct StrictSeed<'a> {
    ctx: &'a mut Ctx,
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            self.ctx.path.push_index(out.len());
            let next = seq.next_element_seed(StrictSeed {
                ctx: &mut *self.ctx,
            });
            self.ctx.path.pop();
            match next? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.ctx.path.push_key(&key);
            if out.contains_key(&key) {
                self.ctx.dup = Some(self.ctx.path.clone());
                return Err(de::Error::custom("duplicate key"));
            }
            let v = map.next_value_seed(StrictSeed {
                ctx: &mut *self.ctx,
            });
            self.ctx.path.pop();
            out.insert(key, v?);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_duplicate_keys_with_path() {
        let e = parse_strict(r#"{"a":{"b":[{"c":1,"c":2}]}}"#).unwrap_err();
        assert_eq!(e.path.to_string(), "a.b[0].c");
        assert_eq!(e.message, "duplicate key \"c\"");
    }

    #[test]
    fn rejects_trailing_content() {
        let e = parse_strict("{} {}").unwrap_err();
        assert!(e.message.contains("trailing"), "{e:?}");
        assert!(parse_strict("{}  \n").is_ok());
    }

    #[test]
    fn keeps_values() {
        let v = parse_strict(r#"{"n":[1,-2,3.5,null,true,"s"]}"#).unwrap();
        assert_eq!(v["n"][2], 3.5);
        assert!(v["n"][3].is_null());
    }
}
