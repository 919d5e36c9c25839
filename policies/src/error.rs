//! Validation errors: each names the JSON path of the offending field and says why.

use std::fmt;

use crate::path::JsonPath;

/// One rule violation in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: JsonPath,
    pub message: String,
}

impl Violation {
    pub fn new(path: JsonPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a document was rejected. Parsing stops at the first structural error (as MXC's serde
/// parser does); semantic rules report every violation they find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: invalid JSON at line {line} column {column}: {message}", path)]
    Syntax {
        path: JsonPath,
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{}", join(.0))]
    Invalid(Vec<Violation>),
}

impl PolicyError {
    pub fn one(path: JsonPath, message: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(path, message)])
    }

    /// Every violation, with syntax errors as one violation at their path.
    pub fn violations(&self) -> Vec<Violation> {
        match self {
            Self::Syntax {
                path,
                message,
                line,
                column,
            } => vec![Violation::new(
                path.clone(),
                format!("invalid JSON at line {line} column {column}: {message}"),
            )],
            Self::Invalid(v) => v.clone(),
        }
    }
}

impl From<crate::json::SyntaxError> for PolicyError {
    fn from(e: crate::json::SyntaxError) -> Self {
        Self::Syntax {
            path: e.path,
            message: e.message,
            line: e.line,
            column: e.column,
        }
    }
}

fn join(v: &[Violation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
