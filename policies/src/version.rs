//! The `version` field: MXC's published contract versions, MXC 1.0's exact version gate, and
//! the range MXC 0.8's runtime read (kept for `--mxc-release 0.8`).

use std::fmt;

use serde_json::Value;

/// A published MXC contract version (exact spelling). 0.6–0.8 are retired by MXC 1.0; 0.9.0-alpha
/// (the floor), 1.0.0 (stable) and 1.1.0-alpha (development) are the registered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContractVersion {
    V0_6,
    V0_7,
    V0_8,
    V0_9Alpha,
    V1_0,
    V1_1Alpha,
}

impl ContractVersion {
    pub const ALL: [(&'static str, ContractVersion); 6] = [
        ("0.6.0-alpha", Self::V0_6),
        ("0.7.0-alpha", Self::V0_7),
        ("0.8.0-alpha", Self::V0_8),
        ("0.9.0-alpha", Self::V0_9Alpha),
        ("1.0.0", Self::V1_0),
        ("1.1.0-alpha", Self::V1_1Alpha),
    ];
    /// What MXC 1.0's parser accepts.
    pub const REGISTERED: [ContractVersion; 3] = [Self::V0_9Alpha, Self::V1_0, Self::V1_1Alpha];
    /// The current stable contract (what `policy migrate` writes, what agentcell ships).
    pub const STABLE: ContractVersion = Self::V1_0;

    pub fn parse_exact(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }
    /// One of MXC 1.0's registered contracts.
    pub fn is_registered(self) -> bool {
        self >= Self::V0_9Alpha
    }
}

impl fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `0.9.0-alpha, 1.0.0 and 1.1.0-alpha`, for messages.
pub fn registered_list() -> String {
    "0.9.0-alpha, 1.0.0 and 1.1.0-alpha".to_string()
}

/// The hint every retired-version refusal carries.
pub const MIGRATE_HINT: &str = "rewrite it with `agentcell policy migrate FILE` (it prints the 1.0.0 document), or keep reading it as MXC 0.8 did with --mxc-release 0.8";

/// Why a version declaration does not reach MXC 1.0's exact contracts (stage 1 of its parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRefusal {
    /// A retired contract (0.4–0.8, or no version: pre-0.8 semantics), which migrate can rewrite.
    pub retired: bool,
    pub message: String,
}

/// MXC 1.0's stage 1: the version declaration alone. Only an exact registered version passes.
pub fn check_registered(raw: Option<&Value>) -> Result<ContractVersion, VersionRefusal> {
    let s = match raw {
        None => {
            return Err(VersionRefusal {
                retired: true,
                message: format!(
                    "missing: MXC 1.0 requires an exact contract version ({}; a document without one had MXC 0.8's pre-0.8 semantics, which MXC 1.0 retired); {MIGRATE_HINT}",
                    registered_list()
                ),
            });
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(VersionRefusal {
                retired: false,
                message: format!(
                    "malformed version declaration: expected a string, found {}",
                    crate::shape::kind(other)
                ),
            });
        }
    };
    if let Some(v) = ContractVersion::parse_exact(s)
        && v.is_registered()
    {
        return Ok(v);
    }
    let parsed = semver::Version::parse(s).ok();
    let floor = semver::Version::parse("0.9.0-alpha").expect("constant");
    let ceiling = semver::Version::parse("1.1.0-alpha").expect("constant");
    let message = match &parsed {
        Some(v) if v.major == 0 && (4..=8).contains(&v.minor) => {
            return Err(VersionRefusal {
                retired: true,
                message: format!(
                    "\"{s}\" is a retired MXC contract version: unsupported contract version, the registered versions are {}; {MIGRATE_HINT}",
                    registered_list()
                ),
            });
        }
        Some(v) if *v < floor => format!(
            "\"{s}\" is older than supported: unsupported contract version, the registered versions are {}",
            registered_list()
        ),
        Some(v) if *v > ceiling => format!(
            "\"{s}\" is newer than supported: unsupported contract version, the registered versions are {}; upgrade agentcell",
            registered_list()
        ),
        _ => format!(
            "\"{s}\" is not a registered schema contract: unsupported contract version, the registered versions are {} (matched exactly)",
            registered_list()
        ),
    };
    Err(VersionRefusal {
        retired: false,
        message,
    })
}

/// A document's schema version. `Current` is one of MXC 1.0's registered contracts, read with
/// MXC 1.0's rules. The others are MXC 0.8's runtime reading (`--mxc-release 0.8` only): absent,
/// `null` and `""` mean "legacy" (pre-0.8 semantics), a semver in [0.6, 0.9] its major.minor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaVersion {
    Legacy,
    Semver { major: u64, minor: u64, raw: String },
    Current(ContractVersion),
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
            Self::Current(_) => true,
        }
    }

    /// Read with MXC 1.0's rules (a registered contract).
    pub fn is_current(&self) -> bool {
        matches!(self, Self::Current(_))
    }

    pub fn contract(&self) -> Option<ContractVersion> {
        match self {
            Self::Current(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Legacy => f.write_str("(none: pre-0.8 semantics)"),
            Self::Semver { raw, .. } => f.write_str(raw),
            Self::Current(v) => f.write_str(v.as_str()),
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
    fn mxc_1_0_gate() {
        let j = |s: &str| Value::String(s.into());
        for ok in ["0.9.0-alpha", "1.0.0", "1.1.0-alpha"] {
            assert!(check_registered(Some(&j(ok))).is_ok(), "{ok}");
        }
        for (bad, retired, fragment) in [
            ("0.8.0-alpha", true, "retired"),
            ("0.6.1-alpha", true, "retired"),
            ("0.4.0-alpha", true, "retired"),
            ("0.3.0-alpha", false, "older"),
            ("0.8.0-dev", true, "retired"),
            ("0.10.0-alpha", false, "not a registered"),
            ("0.9.0-dev", false, "not a registered"),
            ("1.0.1", false, "not a registered"),
            ("1.0", false, "not a registered"),
            ("1.1.0", false, "newer"),
            ("2.0.0", false, "newer"),
        ] {
            let e = check_registered(Some(&j(bad))).unwrap_err();
            assert_eq!(e.retired, retired, "{bad}: {e:?}");
            assert!(e.message.contains(fragment), "{bad}: {e:?}");
            assert!(
                e.message.contains("1.0.0"),
                "{bad}: names the supported ones"
            );
            if retired {
                assert!(e.message.contains("agentcell policy migrate"), "{bad}");
            }
        }
        let e = check_registered(None).unwrap_err();
        assert!(e.retired && e.message.contains("migrate"));
        let e = check_registered(Some(&Value::from(1))).unwrap_err();
        assert!(!e.retired && e.message.contains("malformed"));
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
