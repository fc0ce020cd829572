//! `kvbridge webhook`: the mutating admission webhook that runs containers with
//! `@azurekeyvault` placeholders through `kvbridge env`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use injector::lookup::OnLookupFailure;
use injector::mutate::MutateConfig;
use injector::registry::{Platform, Resolver, ResolverOptions};
use injector::tls::{self, CertFiles, SelfManaged, ServingCert, Validity};
use injector::webhook::{self, Webhook};
use keyvault::Cloud;
use mount::cloud_env::CloudEnvFiles;
use mount::target::CloudConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM), e.g. from cert-manager; re-read every
    /// --cert-check-interval. Without it the webhook manages its own CA and certificate.
    #[arg(long, requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Self-managed certificate: the Secret (in --namespace) holding the CA and serving pair that
    /// every replica serves.
    #[arg(long, default_value = "kvbridge-webhook-tls")]
    cert_secret: String,
    /// Self-managed certificate: the Service whose DNS names the certificate covers.
    #[arg(long, default_value = "kvbridge-webhook")]
    service: String,
    /// Self-managed certificate: another DNS name or IP address it covers (repeatable).
    #[arg(long = "cert-san", value_name = "NAME")]
    cert_sans: Vec<String>,
    /// Self-managed certificate: the MutatingWebhookConfiguration whose webhooks get the CA
    /// bundle as caBundle.
    #[arg(long)]
    webhook_configuration: Option<String>,
    /// Self-managed certificate: validity of serving certificates (renewed with a third left).
    #[arg(long, default_value = "365days", value_parser = crate::cmd::parse_duration)]
    cert_validity: Duration,
    /// Self-managed certificate: validity of the CA (at least 4 x --cert-validity).
    #[arg(long, default_value = "3650days", value_parser = crate::cmd::parse_duration)]
    ca_validity: Duration,
    /// How often the certificate files are re-read, or the Secret and caBundle checked.
    #[arg(long, default_value = "1m", value_parser = crate::cmd::parse_duration)]
    cert_check_interval: Duration,
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
    /// Do not read entrypoints from registries: containers with placeholders need `command:`.
    #[arg(long)]
    no_registry_lookup: bool,
    /// Extra CA certificates (PEM) trusted for registries, besides the system's.
    #[arg(long)]
    registry_ca_file: Option<PathBuf>,
    /// Registry (`host[:port]` as images name it) reached over plain HTTP (repeatable).
    #[arg(long = "plain-http-registry", value_name = "HOST")]
    plain_http_registries: Vec<String>,
    /// Bound on one image's entrypoint lookup (all its registry requests).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    registry_timeout: Duration,
    /// Platform read from multi-platform images when the pod's nodeSelector names no
    /// `kubernetes.io/arch`.
    #[arg(long, default_value = "linux/amd64", value_parser = parse_platform)]
    default_platform: Platform,
    /// When an entrypoint cannot be read: deny the pod (naming the image and the fix), or admit
    /// it unmodified (its placeholders stay literal).
    #[arg(long, value_enum, default_value_t = LookupFailure::Deny)]
    on_lookup_failure: LookupFailure,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LookupFailure {
    Deny,
    Allow,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    Platform::parse(s).ok_or_else(|| format!("{s:?} is not os/arch[/variant]"))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
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
    let registry = if args.no_registry_lookup {
        None
    } else {
        Some(Arc::new(
            Resolver::new(ResolverOptions {
                timeout: args.registry_timeout,
                ca_file: args.registry_ca_file,
                platform: args.default_platform,
                plain_http: args.plain_http_registries,
                ..ResolverOptions::default()
            })
            .context("registry client")?,
        ))
    };
    let interval = args.cert_check_interval.max(Duration::from_secs(1));
    let serving = match (args.tls_cert_file, args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let files = CertFiles { cert, key };
            let (pair, contents) = files.load().await?;
            let serving = ServingCert::new(pair);
            tokio::spawn(files.watch(serving.clone(), contents, interval));
            serving
        }
        _ => {
            let namespace = args.namespace.clone().context(
                "a self-managed serving certificate needs --namespace (or POD_NAMESPACE) for its Secret",
            )?;
            let mut sans = tls::service_names(&args.service, &namespace);
            sans.extend(args.cert_sans);
            let manager = SelfManaged {
                client: client.clone(),
                namespace,
                secret: args.cert_secret,
                webhook_configuration: args.webhook_configuration,
                sans,
                validity: Validity::new(args.cert_validity, args.ca_validity)?,
            };
            // The first round is retried until it succeeds: nothing can be served before.
            let mut delay = Duration::from_millis(500);
            let pair = loop {
                match manager.round().await {
                    Ok(pair) => break pair,
                    Err(e) => {
                        tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "serving certificate not ready; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            };
            let serving = ServingCert::new(pair);
            tokio::spawn(manager.run(serving.clone(), interval));
            serving
        }
    };
    let tls = tls::server_config(serving)?;
    let hook = Arc::new(Webhook {
        client,
        mutate: MutateConfig {
            image: args.image,
            env_args: args.env_args,
            default_tenant: args.tenant_id,
        },
        cloud,
        own_namespace: args.namespace,
        registry,
        namespaces: Default::default(),
        on_lookup_failure: match args.on_lookup_failure {
            LookupFailure::Deny => OnLookupFailure::Deny,
            LookupFailure::Allow => OnLookupFailure::Allow,
        },
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
