//! `containerd-shim-agentcell-v2`: containerd's runtime v2 shim (task API v2, so one binary
//! serves containerd 1.6, 1.7 and 2.x). containerd starts it for pods whose RuntimeClass handler
//! is `agentcell` (`runtime_type = "io.containerd.agentcell.v2"`); it reads the MXC policy from
//! the pod's annotations (`annotations`), rebuilds each container's spec around the plan
//! (`confine`), fences the pod's network namespace, and runs the containers with libcontainer
//! (`service`).

pub mod annotations;
pub mod build;
pub mod config;
pub mod confine;
pub mod io;
pub mod oom;
pub mod podview;
pub mod reaper;
pub mod service;
pub mod stats;
pub mod vmspec;

use std::path::Path;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

/// containerd's runtime type for this shim.
pub const RUNTIME_TYPE: &str = "io.containerd.agentcell.v2";
/// containerd's runtime type for the micro-VM tier (`containerd-shim-agentcell-vm-v2`).
pub const RUNTIME_TYPE_VM: &str = "io.containerd.agentcell-vm.v2";

static VM_TIER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this shim process serves the micro-VM tier (set once, at start, by its binary).
pub fn vm_tier() -> bool {
    VM_TIER.load(std::sync::atomic::Ordering::Relaxed)
}

pub struct Shim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: String,
    address: String,
    socket: String,
}

impl containerd_shim::Shim for Shim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        init_logging(&args.action, &args.namespace, &args.id, args.debug);
        Shim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // One shim per pod: containers of a CRI pod group under their sandbox's id.
        let grouping = grouping(Path::new("config.json")).unwrap_or_else(|| opts.id.clone());
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            Path::new(&self.bundle).to_path_buf()
        };
        let response = service::delete_orphan(&self.namespace, &self.id, &bundle);
        // The socket of a shim that died (SIGKILL) stays behind: remove it when nothing
        // listens on it any more.
        let grouping = grouping(&bundle.join("config.json")).unwrap_or_else(|| self.id.clone());
        let address = containerd_shim::socket_address(&self.address, &self.namespace, &grouping);
        let path = address.trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        Ok(response)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::Service::new(&self.namespace, &self.socket, publisher, self.exit.clone())
    }
}

/// The pod sandbox id in a bundle's spec (CRI containers), which groups a pod under one shim.
fn grouping(config: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
    v.get("annotations")?
        .get(annotations::CRI_SANDBOX_ID)?
        .as_str()
        .map(String::from)
}

/// Logs go to containerd's log FIFO (`log` in the bundle) when serving; every line carries the
/// namespace and the id the shim was started for. `start` and `delete` log nothing: containerd
/// reads their combined output as the answer.
fn init_logging(action: &str, namespace: &str, id: &str, debug: bool) {
    use tracing_subscriber::EnvFilter;
    if !action.is_empty() {
        return;
    }
    let filter = EnvFilter::try_from_env("AGENTCELL_LOG").unwrap_or_else(|_| {
        EnvFilter::new(if debug {
            "debug,libcgroups=error,libcontainer=info"
        } else {
            "info,libcgroups=error,libcontainer=warn"
        })
    });
    let path = std::env::current_dir().unwrap_or_default().join("log");
    let fifo = FifoLog::open(&path).map(|f| FifoLog {
        path,
        file: Some(f),
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let _ = match fifo {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    tracing::info!(namespace, id, action, "agentcell shim");
}

use std::sync::Mutex;

/// containerd's log FIFO. When containerd is gone, a write raises SIGPIPE, which
/// containerd-shim's signal thread logs, which writes again: the shim would spin. A write that
/// finds no reader closes the FIFO and drops the line; the next line reopens it without
/// blocking (`ENXIO`, no signal, while nobody reads), so logging resumes when containerd is back.
struct FifoLog {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl FifoLog {
    /// The FIFO at `path`, opened at the first line written.
    fn new(path: std::path::PathBuf) -> Self {
        Self { path, file: None }
    }

    fn open(path: &std::path::Path) -> Option<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags_nonblock()
            .open(path)
            .ok()
    }
}

impl std::io::Write for FifoLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            self.file = Self::open(&self.path);
        }
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.write_all(buf)
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.file = None;
        }
        // Anything else (a full FIFO) loses this line only.
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// The shim binary's entry point.
pub fn main() {
    run(RUNTIME_TYPE)
}

/// The micro-VM tier's entry point: the same shim, every container in its own VM.
pub fn main_vm() {
    VM_TIER.store(true, std::sync::atomic::Ordering::Relaxed);
    run(RUNTIME_TYPE_VM)
}

fn run(runtime_type: &str) {
    // The container builder (`build`): the same binary, started by the shim itself.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(build::ARG) {
        build::helper_main(&args[2..]);
    }
    containerd_shim::run::<Shim>(
        runtime_type,
        Some(Config {
            // Our reaper (`reaper`) takes the exits; libcontainer reaps its own helpers.
            no_reaper: true,
            no_setup_logger: true,
            ..Default::default()
        }),
    );
}
