//! JSON paths as they appear in error messages: `network.egress.allow[0].to[1].except[0]`.

use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JsonPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Segment {
    Key(String),
    Index(usize),
}

impl JsonPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Key(k.to_owned()));
        Self(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Segment::Index(i));
        Self(v)
    }
    pub(crate) fn push_key(&mut self, k: &str) {
        self.0.push(Segment::Key(k.to_owned()));
    }
    pub(crate) fn push_index(&mut self, i: usize) {
        self.0.push(Segment::Index(i));
    }
    pub(crate) fn pop(&mut self) {
        self.0.pop();
    }
    pub fn depth(&self) -> usize {
        self.0.len()
    }
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    pub fn last_key(&self) -> Option<String> {
        self.0.iter().rev().find_map(|s| match s {
            Segment::Key(k) => Some(k.clone()),
            Segment::Index(_) => None,
        })
    }
    /// Parses the dotted form produced by `Display` (used for serde_path_to_error output).
    pub fn parse(s: &str) -> Self {
        let mut out = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty() && *p != "?") {
            let (name, rest) = match part.find('[') {
                Some(i) => part.split_at(i),
                None => (part, ""),
            };
            if !name.is_empty() {
                out.push(Segment::Key(name.to_owned()));
            }
            for idx in rest.split('[').filter(|x| !x.is_empty()) {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    out.push(Segment::Index(i));
                }
            }
        }
        Self(out)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) if plain(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{}]", serde_json::Value::String(k.clone()))?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn plain(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let p = JsonPath::root()
            .key("network")
            .key("egress")
            .key("allow")
            .index(0)
            .key("to")
            .index(1);
        assert_eq!(p.to_string(), "network.egress.allow[0].to[1]");
        assert_eq!(JsonPath::parse(&p.to_string()), p);
        assert_eq!(JsonPath::root().key("a b").to_string(), "[\"a b\"]");
        assert_eq!(JsonPath::root().to_string(), "(document)");
    }
}
