//! `agentcell-operator`: the controller binary. Serves `/metrics`, `/healthz` and `/readyz`,
//! takes the leader Lease, reconciles `AgentSandbox`es, `AgentSandboxPool`s and
//! `AgentSandboxClaim`s while it holds it, and stops cleanly on
//! SIGTERM (in-flight reconciles finish, the lease is released for a fast handover).

use std::net::SocketAddr;
use std::sync::Arc;

use agentcell_operator::leader::{self, LeaderConfig};
use agentcell_operator::metrics::Metrics;
use agentcell_operator::server::{self, Health};
use agentcell_operator::{Context, OperatorConfig, controller};
use anyhow::Context as _;
use clap::Parser;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reconciles AgentSandbox resources into pods confined by MXC policies"
)]
struct Args {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// RuntimeClass of `isolation: container`.
    #[arg(long, default_value = "agentcell")]
    container_runtime_class: String,
    /// RuntimeClass of `isolation: microvm`.
    #[arg(long, default_value = "agentcell-vm")]
    microvm_runtime_class: String,
    /// Cluster DNS domain (for status.serviceFQDN).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Whose verdicts policies get: MXC 1.0 (the default), or `0.8` to accept retired 0.6-0.8
    /// documents as MXC 0.8 read them (set `mxc_release = "0.8"` on the nodes too).
    #[arg(long, value_name = "RELEASE", default_value = "1.0")]
    mxc_release: agentcell_policy::MxcRelease,
    /// Run without leader election (a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "agentcell-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (defaults to the pod's, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "agentcell-system")]
    lease_namespace: String,
    /// Identity in the Lease (defaults to the pod name, from POD_NAME).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal: finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    });

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the metrics server to {}", args.http_addr))?;
    let http = tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        health.clone(),
        stopped(stop_rx.clone()),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or kubeconfig)")?;
    client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    let config = OperatorConfig {
        container_runtime_class: args.container_runtime_class,
        microvm_runtime_class: args.microvm_runtime_class,
        cluster_domain: args.cluster_domain,
        mxc_release: args.mxc_release,
    };
    info!(mxc_release = %config.mxc_release, "policy verdicts");
    let ctx = Arc::new(Context::new(client.clone(), config, metrics));

    if args.no_leader_election {
        health.set_ready(true);
        controller::run_all(ctx, stopped(stop_rx.clone())).await;
    } else {
        let cfg = LeaderConfig {
            lease_name: args.lease_name,
            namespace: args.lease_namespace,
            identity: args
                .identity
                .unwrap_or_else(|| format!("agentcell-operator-{}", std::process::id())),
            lease_seconds: 15,
            grace_seconds: 5,
        };
        let manager = leader::manager(client, &cfg)
            .await
            .context("setting up leader election")?;
        health.set_ready(true);
        let (mut is_leader, lease_task) = manager.watch().await;
        let mut stop = stop_rx.clone();
        loop {
            info!(identity = %cfg.identity, "waiting for the leader lease");
            tokio::select! {
                r = is_leader.wait_for(|l| *l) => { r.context("lease manager stopped")?; }
                _ = stop.wait_for(|s| *s) => break,
            }
            info!(identity = %cfg.identity, "leader: reconciling");
            let (lost_tx, lost_rx) = watch::channel(false);
            let mut watch_lease = is_leader.clone();
            let mut watch_stop = stop_rx.clone();
            let watcher = tokio::spawn(async move {
                tokio::select! {
                    _ = watch_lease.wait_for(|l| !*l) => warn!("leader lease lost: stopping the controller"),
                    _ = watch_stop.wait_for(|s| *s) => {}
                }
                let _ = lost_tx.send(true);
            });
            controller::run_all(ctx.clone(), stopped(lost_rx)).await;
            watcher.abort();
            if *stop_rx.borrow() {
                break;
            }
        }
        // Closing the channel makes the lease task release the lease: the next replica takes
        // over at once instead of after the lease lapses.
        drop(is_leader);
        match lease_task.await {
            Ok(Ok(_)) => info!("leader lease released"),
            Ok(Err(e)) => warn!(error = %e, "releasing the leader lease"),
            Err(e) => warn!(error = %e, "lease manager task"),
        }
    }
    health.set_ready(false);
    http.await
        .context("metrics server task")?
        .context("metrics server")?;
    info!("stopped");
    Ok(())
}

/// Resolves once the flag turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
