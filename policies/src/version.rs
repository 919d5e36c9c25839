//! The `version` field as MXC's runtime reads it.

use std::fmt;

/// A document's schema version. Absent, `null` and `""` mean "legacy" (pre-0.8 semantics), as
/// in MXC's runtime parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaVersion {
    Legacy,
    Semver { major: u64, minor: u64, raw: String },
}

pub const MIN: (u64, u64) = (0, 6);
pub const MAX: (u64, u64) = (0, 9);

impl SchemaVersion {
    /// Parses a version string: strict SemVer 2.0, compared on major.minor only (pre-release,
    /// build metadata and patch are ignored), accepted when within [0.6, 0.9].
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let raw = match raw {
            None | Some("") => return Ok(Self::Legacy),
            Some(r) => r,
        };
        let v = semver::Version::parse(raw)
            .map_err(|_| format!("\"{raw}\" is not semver (e.g. \"0.8.0-alpha\" or \"0.8.0\")"))?;
        let mm = (v.major, v.minor);
        if mm < MIN {
            return Err(format!(
                "schema version \"{raw}\" is older than supported (0.6 to 0.9); update the document"
            ));
        }
        if mm > MAX {
            return Err(format!(
                "schema version \"{raw}\" is newer than supported (0.6 to 0.9); upgrade agentcell"
            ));
        }
        Ok(Self::Semver {
            major: v.major,
            minor: v.minor,
            raw: raw.to_owned(),
        })
    }

    /// Whether schema-0.8 features (directional network, `runtimeConfig`) are available.
    pub fn supports_directional(&self) -> bool {
        match self {
            Self::Legacy => false,
            Self::Semver { major, minor, .. } => *major > 0 || *minor >= 8,
        }
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Legacy => f.write_str("(none: pre-0.8 semantics)"),
            Self::Semver { raw, .. } => f.write_str(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_runtime_range() {
        for ok in [
            "0.6.0-alpha",
            "0.7.0",
            "0.8.0-alpha.1",
            "0.8.0+build",
            "0.9.0-dev",
            "0.9.99",
        ] {
            assert!(SchemaVersion::parse(Some(ok)).is_ok(), "{ok}");
        }
        assert_eq!(SchemaVersion::parse(None), Ok(SchemaVersion::Legacy));
        assert_eq!(SchemaVersion::parse(Some("")), Ok(SchemaVersion::Legacy));
    }

    #[test]
    fn rejects_out_of_range_and_non_semver() {
        for bad in [
            "0.8",
            "v0.8.0",
            " 0.8.0",
            "0.5.9",
            "0.3.0-alpha",
            "0.10.0",
            "1.0.0",
        ] {
            assert!(SchemaVersion::parse(Some(bad)).is_err(), "{bad}");
        }
        assert!(
            SchemaVersion::parse(Some("0.5.0"))
                .unwrap_err()
                .contains("older")
        );
        assert!(
            SchemaVersion::parse(Some("1.0.0"))
                .unwrap_err()
                .contains("newer")
        );
    }

    #[test]
    fn directional_from_0_8() {
        assert!(
            !SchemaVersion::parse(Some("0.7.9"))
                .unwrap()
                .supports_directional()
        );
        assert!(
            SchemaVersion::parse(Some("0.8.0-alpha"))
                .unwrap()
                .supports_directional()
        );
        assert!(!SchemaVersion::Legacy.supports_directional());
    }
}
