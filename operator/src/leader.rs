//! Leader election on a coordination.k8s.io Lease, so that of several operator replicas
//! exactly one reconciles. The others wait, ready to take over when the lease expires or
//! is released.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use pixel_common::{error::ErrorChain, ports};
use tokio::sync::watch;

/// Where the lease lives and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Elect a leader among replicas (turn off only for a single, unreplicated operator).
    #[arg(long, env = ports::ENV_LEADER_ELECT, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the Lease.
    #[arg(long, env = ports::ENV_LEASE_NAME, default_value = pixel_common::operator_contract::LEASE_NAME)]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "pixel-playground-system")]
    pub lease_namespace: String,

    /// Seconds a lease stays valid without renewal; a failed leader is replaced after this.
    #[arg(long, env = ports::ENV_LEASE_DURATION_SECONDS, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,

    /// This replica's identity in the lease (default: the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl LeaderArgs {
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

/// Leadership, as a channel that says whether we lead now.
#[derive(Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// For `sole`: the sender that keeps "leading" true for the life of the process.
    _always: Option<watch::Sender<bool>>,
    /// Keeps the lease manager running; dropping `leading` makes it release the lease.
    task: Option<
        tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    >,
}

impl Leadership {
    /// Leadership without an election: always the leader.
    pub fn sole() -> Self {
        let (always, leading) = watch::channel(true);
        Self {
            leading,
            _always: Some(always),
            task: None,
        }
    }

    /// Joins the election.
    pub async fn elect(client: Client, args: &LeaderArgs) -> Result<Self, LeaseManagerError> {
        let identity = args.identity();
        let manager = LeaseManagerBuilder::new(client, &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration_seconds)
            .with_grace(args.lease_duration_seconds.div_ceil(3).max(1))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        tracing::info!(%identity, lease = %args.lease_name, namespace = %args.lease_namespace, "joined leader election");
        Ok(Self {
            leading,
            _always: None,
            task: Some(task),
        })
    }

    /// Resolves once we lead.
    pub async fn acquired(&mut self) {
        let _ = self.leading.wait_for(|leading| *leading).await;
    }

    /// Resolves when we stop leading (a lost lease, or the election ending).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut leading = self.leading.clone();
        async move {
            let _ = leading.wait_for(|leading| !*leading).await;
        }
    }

    /// Leaves the election, releasing the lease so another replica takes over at once.
    pub async fn resign(mut self) {
        let task = self.task.take();
        drop(self);
        if let Some(task) = task {
            match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
                Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
                Ok(Ok(Err(error))) => {
                    tracing::warn!(error = %ErrorChain(&error), "could not release the leader lease")
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %ErrorChain(&error), "leader election task failed")
                }
                Err(_) => tracing::warn!("releasing the leader lease timed out; it will expire"),
            }
        }
    }
}
