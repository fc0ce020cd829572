//! `kvbridge webhook`: the mutating admission webhook that runs containers with
//! `@azurekeyvault` placeholders through `kvbridge env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use injector::mutate::MutateConfig;
use injector::webhook::{self, Webhook};
use keyvault::Cloud;
use mount::cloud_env::CloudEnvFiles;
use mount::target::CloudConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM), e.g. from cert-manager.
    #[arg(long)]
    tls_cert_file: PathBuf,
    /// Serving private key (PEM).
    #[arg(long)]
    tls_key_file: PathBuf,
    /// Image holding kvbridge, run as the init container that copies the binary into the pod.
    #[arg(long, env = "KVBRIDGE_IMAGE")]
    image: String,
    /// Extra argument of `kvbridge env` in mutated containers (repeatable), e.g. --ca-file=PATH.
    #[arg(long = "env-arg", value_name = "ARG", allow_hyphen_values = true)]
    env_args: Vec<String>,
    /// Tenant of service-principal and workload identities that name none.
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant_id: Option<String>,
    /// Cloud of every vault (Azure SDK environment JSON); default: Azure public cloud.
    #[arg(long)]
    cloud_env_file: Option<PathBuf>,
    /// The webhook's own namespace: never mutated.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tls = webhook::tls_config(&args.tls_cert_file, &args.tls_key_file)?;
    let mut cloud = CloudConfig::new(CloudEnvFiles::anywhere());
    if let Some(f) = &args.cloud_env_file {
        cloud.default_cloud = Some(
            Cloud::from_env_file(f)
                .with_context(|| format!("reading --cloud-env-file {}", f.display()))?,
        );
    }
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let hook = Arc::new(Webhook {
        client,
        mutate: MutateConfig {
            image: args.image,
            env_args: args.env_args,
            default_tenant: args.tenant_id,
        },
        cloud,
        own_namespace: args.namespace,
    });
    let listener = webhook::bind(args.listen).await?;
    let addr = listener.local_addr().context("local address")?;
    println!("kvbridge webhook listening on https://{addr}/mutate");
    webhook::serve(listener, tls, hook, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
