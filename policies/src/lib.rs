//! `agentcell-policy`: Microsoft MXC's configuration model with MXC-exact verdicts, and the planner
//! that turns an accepted document into one explicit enforcement plan.
//!
//! - [`document`]: read a document as MXC's runtime does (the verdict `agentcell` acts on).
//! - [`contract`]: MXC's exact per-version contracts (`policy check --contract`): 0.9.0-alpha,
//!   1.0.0 and 1.1.0-alpha, and the retired 0.6–0.8 under `--mxc-release 0.8`.
//! - [`request`]: every request root as one typed model, MXC's sandbox ids and error codes.
//! - [`release`]: whose verdicts apply (MXC 1.0 by default, MXC 0.8's for retired documents).
//! - [`plan`]: `compile(document, host)`, pure: filesystem view, Landlock, seccomp, network,
//!   process settings, and what is enforced by which mechanism.
//! - [`canonical`]: canonical JSON and the digest the operator and the shim compare.

pub mod admission;
pub mod canonical;
pub mod contract;
pub mod document;
pub mod error;
pub mod json;
pub mod migrate;
pub mod model;
pub mod netspec;
pub mod path;
pub mod plan;
pub mod presets;
pub mod release;
pub mod request;
pub mod sandbox_policy;
mod shape;
pub mod validate;
pub mod version;

pub use document::{Document, DocumentKind, ParseOptions, parse, parse_with};
pub use error::{PolicyError, Violation};
pub use path::JsonPath;
pub use plan::{Host, Plan, compile};
pub use release::MxcRelease;
pub use request::{ErrorCode, ParsedRequest, parse_request};
