//! Pure text transforms of containerd's configuration: which section a containerd version takes,
//! the `agentcell` (and, with `--microvm`, `agentcell-vm`) runtime block, drop-in detection from
//! `imports`, and the marked, reversible inline edit. No file system access here, so every case
//! is a unit test.

use std::path::{Path, PathBuf};

use crate::containerd::{RUNTIME_TYPE, RUNTIME_TYPE_VM};

/// The CRI runtime (and RuntimeClass handler) name the installer writes.
pub const RUNTIME_NAME: &str = "agentcell";
/// The micro-VM tier's CRI runtime (and RuntimeClass handler) name.
pub const VM_RUNTIME_NAME: &str = "agentcell-vm";
/// First line of the inline block: `uninstall` and a second `install` find the block by it.
pub const BEGIN: &str =
    "# BEGIN agentcell: written by `agentcell node install`, removed by `agentcell node uninstall`";
pub const END: &str = "# END agentcell";
/// Name of the drop-in file in containerd's imported directory.
pub const DROP_IN_NAME: &str = "agentcell.toml";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeConfigError {
    #[error("containerd version: cannot find a version number in {0:?}")]
    NoVersion(String),
    #[error("containerd version {0}: unsupported (agentcell needs containerd 1.6 or newer)")]
    Unsupported(String),
    #[error("{path}: not valid TOML: {message}")]
    Toml { path: String, message: String },
    #[error("{path}: version: configuration version {version} is not supported (2 or 3)")]
    FileVersion { path: String, version: i64 },
    #[error(
        "{path}: version: the file has settings but no `version` key (containerd reads it as version 1, which agentcell does not edit); add `version = 2` (containerd 1.x) or `version = 3` (2.x)"
    )]
    NoFileVersion { path: String },
    #[error(
        "{path}: {section}: a runtime named {name} is already configured outside agentcell's marked block; remove it (or the block's markers were edited)"
    )]
    Foreign {
        path: String,
        section: String,
        name: &'static str,
    },
    #[error("{path}: {BEGIN:?} without a matching {END:?}: the marked block was edited by hand")]
    Unterminated { path: String },
    #[error("{path}: the edited file does not define {section}: {message}")]
    Verify {
        path: String,
        section: String,
        message: String,
    },
}

/// containerd's configuration format: version 2 (containerd 1.6, 1.7) or version 3 (2.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigVersion {
    V2,
    V3,
}

impl ConfigVersion {
    /// The CRI plugin holding `containerd.runtimes` in this format.
    pub fn plugin(self) -> &'static str {
        match self {
            ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
            ConfigVersion::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }

    /// The TOML table of the agentcell runtime.
    pub fn section(self) -> String {
        self.section_of(RUNTIME_NAME)
    }

    /// The TOML table of the runtime `name`.
    pub fn section_of(self, name: &str) -> String {
        format!("plugins.\"{}\".containerd.runtimes.{name}", self.plugin())
    }

    /// The format a containerd release writes by default (`containerd config default`).
    pub fn for_containerd(version: &str) -> Result<Self, NodeConfigError> {
        let mut parts = version.split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        match (major, minor) {
            (1, m) if m >= 6 => Ok(ConfigVersion::V2),
            (m, _) if m >= 2 => Ok(ConfigVersion::V3),
            _ => Err(NodeConfigError::Unsupported(version.to_owned())),
        }
    }
}

/// The version number in `containerd --version` output, e.g. `containerd
/// github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3` → `1.6.20`, or
/// `containerd containerd.io v2.0.4 1a43cb6` → `2.0.4`.
pub fn parse_containerd_version(output: &str) -> Result<String, NodeConfigError> {
    for word in output.split_whitespace() {
        let w = word.strip_prefix('v').unwrap_or(word);
        let end = w
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(w.len());
        let num = &w[..end];
        let dots = num.matches('.').count();
        if dots >= 1 && num.split('.').all(|p| !p.is_empty()) {
            return Ok(num.to_owned());
        }
    }
    Err(NodeConfigError::NoVersion(output.trim().to_owned()))
}

/// Which runtimes the installer writes: the container tier always, the micro-VM tier on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtimes {
    pub microvm: bool,
}

impl Runtimes {
    pub const CONTAINER: Runtimes = Runtimes { microvm: false };
    pub const BOTH: Runtimes = Runtimes { microvm: true };

    /// (name, runtime_type) of each runtime written, in block order.
    pub fn list(self) -> Vec<(&'static str, &'static str)> {
        let mut out = vec![(RUNTIME_NAME, RUNTIME_TYPE)];
        if self.microvm {
            out.push((VM_RUNTIME_NAME, RUNTIME_TYPE_VM));
        }
        out
    }
}

/// One runtime's TOML, in the quoting of the format's own documentation. Both tiers read the
/// same shim.toml (`ConfigPath`), so one set of node settings covers both.
fn one_runtime(v: ConfigVersion, name: &str, runtime_type: &str, shim_config: &str) -> String {
    let section = v.section_of(name);
    format!(
        "[{section}]\n  runtime_type = \"{runtime_type}\"\n  pod_annotations = [\"agentcell.dev/*\"]\n[{section}.options]\n  ConfigPath = \"{shim_config}\"\n"
    )
}

/// The runtimes' TOML, the container tier's first.
pub fn runtime_block(v: ConfigVersion, shim_config: &str, runtimes: Runtimes) -> String {
    runtimes
        .list()
        .into_iter()
        .map(|(name, ty)| one_runtime(v, name, ty, shim_config))
        .collect()
}

/// A drop-in file: the same format version as the main file, then the runtimes.
pub fn drop_in_text(v: ConfigVersion, shim_config: &str, runtimes: Runtimes) -> String {
    format!(
        "# Written by `agentcell node install`; removed by `agentcell node uninstall`.\nversion = {}\n\n{}",
        v.number(),
        runtime_block(v, shim_config, runtimes)
    )
}

fn parse(path: &str, text: &str) -> Result<toml::Table, NodeConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| NodeConfigError::Toml {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
}

/// The format to write into `text`: its own `version` when it has one (containerd 2.x reads a
/// version 2 file and migrates it, so the file decides, not the binary), else the default of the
/// detected containerd release when the file has no settings at all.
pub fn file_version(
    path: &str,
    text: &str,
    detected: ConfigVersion,
) -> Result<ConfigVersion, NodeConfigError> {
    let table = parse(path, text)?;
    match table.get("version").and_then(toml::Value::as_integer) {
        Some(2) => Ok(ConfigVersion::V2),
        Some(3) => Ok(ConfigVersion::V3),
        Some(version) => Err(NodeConfigError::FileVersion {
            path: path.to_owned(),
            version,
        }),
        None if table.is_empty() => Ok(detected),
        None => Err(NodeConfigError::NoFileVersion {
            path: path.to_owned(),
        }),
    }
}

/// The directory containerd imports `*.toml` drop-ins from, when `imports` names one
/// (`/etc/containerd/conf.d/*.toml`; relative entries are relative to the file's directory).
pub fn drop_in_dir(
    path: &str,
    text: &str,
    config_dir: &Path,
) -> Result<Option<PathBuf>, NodeConfigError> {
    let table = parse(path, text)?;
    let Some(imports) = table.get("imports").and_then(toml::Value::as_array) else {
        return Ok(None);
    };
    for entry in imports.iter().filter_map(toml::Value::as_str) {
        let dir = entry
            .strip_suffix("/*.toml")
            .or_else(|| entry.strip_suffix("/*"));
        if let Some(dir) = dir.filter(|d| !d.contains('*')) {
            let dir = Path::new(dir);
            return Ok(Some(if dir.is_absolute() {
                dir.to_path_buf()
            } else {
                config_dir.join(dir)
            }));
        }
    }
    Ok(None)
}

/// `text` without agentcell's marked block (and whether there was one).
pub fn strip_block(path: &str, text: &str) -> Result<(String, bool), NodeConfigError> {
    let Some(start) = find_line(text, BEGIN) else {
        return Ok((text.to_owned(), false));
    };
    let rest = &text[start..];
    let Some(end_rel) = find_line(rest, END) else {
        return Err(NodeConfigError::Unterminated {
            path: path.to_owned(),
        });
    };
    let mut end = start + end_rel + END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    // The blank line `edit_inline` put before the block goes with it.
    let mut head = &text[..start];
    if head.ends_with("\n\n") {
        head = &head[..head.len() - 1];
    }
    Ok((format!("{head}{}", &text[end..]), true))
}

/// Byte offset of a line equal to `line`.
fn find_line(text: &str, line: &str) -> Option<usize> {
    let mut offset = 0;
    for l in text.split_inclusive('\n') {
        if l.trim_end_matches('\n') == line {
            return Some(offset);
        }
        offset += l.len();
    }
    None
}

fn lookup<'a>(table: &'a toml::Table, v: ConfigVersion, name: &str) -> Option<&'a toml::Table> {
    table
        .get("plugins")?
        .as_table()?
        .get(v.plugin())?
        .as_table()?
        .get("containerd")?
        .as_table()?
        .get("runtimes")?
        .as_table()?
        .get(name)?
        .as_table()
}

/// `text` with the runtime block appended (an earlier block replaced): the same input always
/// gives the same output, so a second install changes nothing. The result is parsed back to
/// prove containerd will see the runtimes.
pub fn edit_inline(
    path: &str,
    text: &str,
    v: ConfigVersion,
    shim_config: &str,
    runtimes: Runtimes,
) -> Result<String, NodeConfigError> {
    let (base, _) = strip_block(path, text)?;
    let table = parse(path, &base)?;
    // A runtime of the same name outside the block would make containerd refuse the file
    // (a table defined twice); one the install does not write (agentcell-vm, without
    // --microvm) is the administrator's and is left alone.
    for (name, _) in runtimes.list() {
        if lookup(&table, v, name).is_some() {
            return Err(NodeConfigError::Foreign {
                path: path.to_owned(),
                section: v.section_of(name),
                name,
            });
        }
    }
    let mut out = base;
    if out.is_empty() {
        out.push_str(&format!("version = {}\n", v.number()));
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(BEGIN);
    out.push('\n');
    out.push_str(&runtime_block(v, shim_config, runtimes));
    out.push_str(END);
    out.push('\n');
    verify(path, &out, v, shim_config, runtimes)?;
    Ok(out)
}

/// The runtimes as containerd will read them from `text`.
pub fn verify(
    path: &str,
    text: &str,
    v: ConfigVersion,
    shim_config: &str,
    runtimes: Runtimes,
) -> Result<(), NodeConfigError> {
    for (name, runtime_type) in runtimes.list() {
        verify_one(path, text, v, shim_config, name, runtime_type)?;
    }
    Ok(())
}

fn verify_one(
    path: &str,
    text: &str,
    v: ConfigVersion,
    shim_config: &str,
    name: &str,
    runtime_type: &str,
) -> Result<(), NodeConfigError> {
    let fail = |message: &str| NodeConfigError::Verify {
        path: path.to_owned(),
        section: v.section_of(name),
        message: message.to_owned(),
    };
    let table = parse(path, text).map_err(|e| fail(&e.to_string()))?;
    let rt = lookup(&table, v, name).ok_or_else(|| fail("the table is missing"))?;
    if rt.get("runtime_type").and_then(toml::Value::as_str) != Some(runtime_type) {
        return Err(fail("runtime_type"));
    }
    let annotations = rt.get("pod_annotations").and_then(toml::Value::as_array);
    if !annotations.is_some_and(|a| a.iter().any(|x| x.as_str() == Some("agentcell.dev/*"))) {
        return Err(fail("pod_annotations"));
    }
    let cfg = rt
        .get("options")
        .and_then(toml::Value::as_table)
        .and_then(|o| o.get("ConfigPath"))
        .and_then(toml::Value::as_str);
    if cfg != Some(shim_config) {
        return Err(fail("options.ConfigPath"));
    }
    Ok(())
}

/// Whether `text` configures the runtime `name` (anywhere: block, hand edit or drop-in) in the
/// section of either format version (`status` does not know which containerd reads it).
pub fn has_runtime(text: &str, name: &str) -> bool {
    text.parse::<toml::Table>().ok().is_some_and(|t| {
        [ConfigVersion::V2, ConfigVersion::V3]
            .into_iter()
            .any(|v| lookup(&t, v, name).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIM: &str = "/etc/agentcell/shim.toml";
    const C: Runtimes = Runtimes::CONTAINER;
    const B: Runtimes = Runtimes::BOTH;
    const DEBIAN: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";

    #[test]
    fn versions_choose_the_section() {
        assert_eq!(
            ConfigVersion::for_containerd("1.6.20").unwrap(),
            ConfigVersion::V2
        );
        assert_eq!(
            ConfigVersion::for_containerd("1.7.27").unwrap(),
            ConfigVersion::V2
        );
        assert_eq!(
            ConfigVersion::for_containerd("2.1.0").unwrap(),
            ConfigVersion::V3
        );
        assert!(ConfigVersion::for_containerd("1.5.9").is_err());
        assert!(ConfigVersion::for_containerd("garbage").is_err());
        assert_eq!(
            ConfigVersion::V2.section(),
            "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell"
        );
        assert_eq!(
            ConfigVersion::V3.section(),
            "plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.agentcell"
        );
    }

    #[test]
    fn version_output_is_parsed() {
        let deb = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n";
        assert_eq!(parse_containerd_version(deb).unwrap(), "1.6.20");
        let io = "containerd containerd.io v2.0.4 1a43cb6a1035441f9aca8f5666a9b3ef9e70ab20";
        assert_eq!(parse_containerd_version(io).unwrap(), "2.0.4");
        assert!(parse_containerd_version("containerd: not found").is_err());
    }

    #[test]
    fn inline_edit_on_debian_config_is_idempotent_and_strips_back() {
        let v = file_version("c", DEBIAN, ConfigVersion::V3).unwrap();
        assert_eq!(v, ConfigVersion::V2, "the file's version wins");
        let once = edit_inline("c", DEBIAN, v, SHIM, C).unwrap();
        assert!(once.starts_with(DEBIAN));
        assert!(once.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell]\n  runtime_type = \"io.containerd.agentcell.v2\"\n  pod_annotations = [\"agentcell.dev/*\"]"
        ));
        assert!(has_runtime(&once, RUNTIME_NAME));
        assert!(!has_runtime(&once, VM_RUNTIME_NAME));
        assert_eq!(edit_inline("c", &once, v, SHIM, C).unwrap(), once);
        assert_eq!(strip_block("c", &once).unwrap(), (DEBIAN.to_owned(), true));
        assert!(!has_runtime(DEBIAN, RUNTIME_NAME));
    }

    #[test]
    fn v3_config_gets_the_v3_section() {
        let text = "version = 3\nroot = \"/var/lib/containerd\"\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n";
        let v = file_version("c", text, ConfigVersion::V2).unwrap();
        assert_eq!(v, ConfigVersion::V3);
        let out = edit_inline("c", text, v, SHIM, C).unwrap();
        verify("c", &out, ConfigVersion::V3, SHIM, C).unwrap();
        assert!(verify("c", &out, ConfigVersion::V2, SHIM, C).is_err());
    }

    #[test]
    fn empty_or_missing_file_takes_the_detected_version() {
        assert_eq!(
            file_version("c", "", ConfigVersion::V3).unwrap(),
            ConfigVersion::V3
        );
        let out = edit_inline("c", "", ConfigVersion::V3, SHIM, C).unwrap();
        assert!(out.starts_with("version = 3\n"));
        verify("c", &out, ConfigVersion::V3, SHIM, C).unwrap();
    }

    #[test]
    fn unsupported_files_are_refused_with_the_path() {
        let e = file_version(
            "/etc/containerd/config.toml",
            "root = \"/x\"\n",
            ConfigVersion::V2,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/containerd/config.toml: version")
        );
        assert!(file_version("c", "version = 1\n", ConfigVersion::V2).is_err());
        assert!(file_version("c", "version = [", ConfigVersion::V2).is_err());
    }

    #[test]
    fn a_hand_written_runtime_is_not_duplicated() {
        let text = format!("{DEBIAN}\n{}", runtime_block(ConfigVersion::V2, SHIM, C));
        let e = edit_inline("c", &text, ConfigVersion::V2, SHIM, C).unwrap_err();
        assert!(matches!(e, NodeConfigError::Foreign { .. }), "{e}");
    }

    #[test]
    fn a_file_without_final_newline_round_trips_through_the_block() {
        let text = "version = 2\nroot = \"/x\"";
        let out = edit_inline("c", text, ConfigVersion::V2, SHIM, C).unwrap();
        assert_eq!(
            edit_inline("c", &out, ConfigVersion::V2, SHIM, C).unwrap(),
            out
        );
        // Stripping gives the text plus the newline the edit added; the installer's backup
        // restores the exact bytes.
        assert_eq!(strip_block("c", &out).unwrap().0, format!("{text}\n"));
    }

    #[test]
    fn an_edited_block_is_reported() {
        let out = edit_inline("c", DEBIAN, ConfigVersion::V2, SHIM, C).unwrap();
        let broken = out.replace(END, "# the end");
        assert!(matches!(
            strip_block("c", &broken),
            Err(NodeConfigError::Unterminated { .. })
        ));
    }

    #[test]
    fn imports_choose_the_drop_in_directory() {
        let dir = Path::new("/etc/containerd");
        let text = "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n";
        assert_eq!(
            drop_in_dir("c", text, dir).unwrap(),
            Some(PathBuf::from("/etc/containerd/conf.d"))
        );
        let rel = "version = 3\nimports = [\"/x/one.toml\", \"conf.d/*\"]\n";
        assert_eq!(
            drop_in_dir("c", rel, dir).unwrap(),
            Some(PathBuf::from("/etc/containerd/conf.d"))
        );
        assert_eq!(drop_in_dir("c", DEBIAN, dir).unwrap(), None);
        let d = drop_in_text(ConfigVersion::V3, SHIM, C);
        assert!(d.contains("version = 3\n"));
        verify("d", &d, ConfigVersion::V3, SHIM, C).unwrap();
    }

    #[test]
    fn microvm_adds_the_vm_runtime_in_the_same_block_in_both_versions() {
        for (text, v) in [
            (DEBIAN, ConfigVersion::V2),
            (
                "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n",
                ConfigVersion::V3,
            ),
        ] {
            assert_eq!(file_version("c", text, ConfigVersion::V2).unwrap(), v);
            let once = edit_inline("c", text, v, SHIM, B).unwrap();
            let plugin = v.plugin();
            let expected = format!(
                "{BEGIN}\n[plugins.\"{plugin}\".containerd.runtimes.agentcell]\n  runtime_type = \"io.containerd.agentcell.v2\"\n  pod_annotations = [\"agentcell.dev/*\"]\n[plugins.\"{plugin}\".containerd.runtimes.agentcell.options]\n  ConfigPath = \"{SHIM}\"\n[plugins.\"{plugin}\".containerd.runtimes.agentcell-vm]\n  runtime_type = \"io.containerd.agentcell-vm.v2\"\n  pod_annotations = [\"agentcell.dev/*\"]\n[plugins.\"{plugin}\".containerd.runtimes.agentcell-vm.options]\n  ConfigPath = \"{SHIM}\"\n{END}\n"
            );
            assert!(once.starts_with(text), "{once}");
            assert!(once.ends_with(&expected), "{once}");
            // One marked block holds both: the markers appear once.
            assert_eq!(once.matches(BEGIN).count(), 1);
            verify("c", &once, v, SHIM, B).unwrap();
            assert!(has_runtime(&once, VM_RUNTIME_NAME));
            // Idempotent, and stripping gives the original bytes back.
            assert_eq!(edit_inline("c", &once, v, SHIM, B).unwrap(), once);
            assert_eq!(strip_block("c", &once).unwrap(), (text.to_owned(), true));
            // Installing without --microvm afterwards drops the VM runtime from the block.
            let container = edit_inline("c", &once, v, SHIM, C).unwrap();
            assert_eq!(container, edit_inline("c", text, v, SHIM, C).unwrap());
            assert!(!has_runtime(&container, VM_RUNTIME_NAME));
            assert!(verify("c", &container, v, SHIM, B).is_err());
        }
    }

    #[test]
    fn the_microvm_drop_in_has_both_runtimes() {
        for v in [ConfigVersion::V2, ConfigVersion::V3] {
            let d = drop_in_text(v, SHIM, B);
            assert!(d.contains(&format!("version = {}\n", v.number())), "{d}");
            verify("d", &d, v, SHIM, B).unwrap();
            let other = match v {
                ConfigVersion::V2 => ConfigVersion::V3,
                ConfigVersion::V3 => ConfigVersion::V2,
            };
            assert!(verify("d", &d, other, SHIM, B).is_err());
            assert!(verify("d", &drop_in_text(v, SHIM, C), v, SHIM, B).is_err());
        }
    }

    #[test]
    fn a_hand_written_vm_runtime_is_refused_only_with_microvm() {
        // The README used to tell administrators to add this section by hand.
        let hand = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentcell-vm]\n  runtime_type = \"io.containerd.agentcell-vm.v2\"\n";
        let text = format!("{DEBIAN}\n{hand}");
        let e = edit_inline(
            "/etc/containerd/config.toml",
            &text,
            ConfigVersion::V2,
            SHIM,
            B,
        )
        .unwrap_err();
        assert_eq!(
            e,
            NodeConfigError::Foreign {
                path: "/etc/containerd/config.toml".into(),
                section: ConfigVersion::V2.section_of(VM_RUNTIME_NAME),
                name: VM_RUNTIME_NAME,
            }
        );
        assert!(
            e.to_string().contains("a runtime named agentcell-vm"),
            "{e}"
        );
        // Without --microvm it is the administrator's runtime: kept as it is.
        let out = edit_inline("c", &text, ConfigVersion::V2, SHIM, C).unwrap();
        assert!(out.starts_with(&text));
        assert_eq!(strip_block("c", &out).unwrap().0, text);
    }
}
