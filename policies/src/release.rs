//! Which MXC release's verdicts apply: the current one (1.0, the default) or, for teams with
//! retired policies in production, MXC 0.8's (`--mxc-release 0.8`, `mxc_release = "0.8"` in the
//! shim's configuration, the operator's `--mxc-release`).
//!
//! Under `1.0` a document must declare one of MXC's registered contract versions (`0.9.0-alpha`,
//! `1.0.0`, `1.1.0-alpha`); a retired one (0.4–0.8, or no version at all) is refused with the
//! migration command. Under `0.8` those registered versions still mean what MXC 1.0 says, and every
//! other document is read exactly as agentcell read it before MXC 1.0 (MXC 0.8's runtime verdicts).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MxcRelease {
    /// MXC 0.8's verdicts for retired documents (compatibility setting).
    V0_8,
    /// MXC 1.0's verdicts (the current release).
    #[default]
    V1_0,
}

impl MxcRelease {
    pub const ALL: [MxcRelease; 2] = [Self::V0_8, Self::V1_0];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_8 => "0.8",
            Self::V1_0 => "1.0",
        }
    }

    /// Whether documents MXC 1.0 retired are read (as MXC 0.8 read them).
    pub fn reads_retired(self) -> bool {
        self == Self::V0_8
    }
}

impl fmt::Display for MxcRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an MXC release agentcell knows (1.0, the default, or 0.8 for retired documents)"
)]
pub struct UnknownRelease(pub String);

impl FromStr for MxcRelease {
    type Err = UnknownRelease;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "1.0" | "1.0.0" => Ok(Self::V1_0),
            "0.8" | "0.8.0" => Ok(Self::V0_8),
            other => Err(UnknownRelease(other.to_string())),
        }
    }
}

impl Serialize for MxcRelease {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MxcRelease {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!("1.0".parse::<MxcRelease>().unwrap(), MxcRelease::V1_0);
        assert_eq!("0.8".parse::<MxcRelease>().unwrap(), MxcRelease::V0_8);
        assert_eq!(MxcRelease::default(), MxcRelease::V1_0);
        let e = "0.9".parse::<MxcRelease>().unwrap_err();
        assert!(e.to_string().contains("0.8 for retired"), "{e}");
        assert_eq!(serde_json::to_string(&MxcRelease::V0_8).unwrap(), "\"0.8\"");
    }
}
