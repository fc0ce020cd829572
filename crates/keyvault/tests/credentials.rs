//! Every credential mode gets a token from the dev vault's Entra stand-in (or IMDS) over real
//! HTTPS and reads a secret; the failure modes give clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use keyvault::*;

async fn read_open(env: &Env, cred: Arc<dyn TokenCredential>) -> Result<SecretBundle, Error> {
    env.client(cred)
        .get_secret(&env.vault(), "open", None)
        .await
}

fn vars(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_reads_every_object_kind() {
    let env = Env::start().await;
    let t = env.transport();
    // Tenant left empty: it is learned from the vault's challenge.
    let cred = ClientSecretCredential::new(&env.authority(), "", "full-app", "full-secret")
        .with_transport(t.clone());
    let client = KeyVaultClient::with_transport(Arc::new(cred), t);
    let v = env.vault();

    let s = client.get_secret(&v, "open", None).await.unwrap();
    assert_eq!(s.value.as_str(), "open-value");
    assert_eq!(s.name, "open");
    assert_eq!(s.version.len(), 32);
    assert!(s.id.starts_with(&format!("{v}/secrets/open/")), "{}", s.id);
    assert!(!format!("{s:?}").contains("open-value"));
    // Explicit version, "latest" and "".
    assert_eq!(
        client
            .get_secret(&v, "open", Some(&s.version))
            .await
            .unwrap()
            .value
            .as_str(),
        "open-value"
    );
    assert_eq!(
        client
            .get_secret(&v, "open", Some("latest"))
            .await
            .unwrap()
            .version,
        s.version
    );
    assert_eq!(
        client
            .get_secret(&v, "open", Some(""))
            .await
            .unwrap()
            .version,
        s.version
    );

    // Versions: newest first; the disabled one is reported and refused.
    let versions = client
        .list_versions(&v, ObjectKind::Secret, "rotated")
        .await
        .unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(
        client
            .get_secret(&v, "rotated", None)
            .await
            .unwrap()
            .value
            .as_str(),
        "v3"
    );
    assert_eq!(
        client
            .get_secret(&v, "rotated", Some(&versions[0].version))
            .await
            .unwrap()
            .value
            .as_str(),
        "v3"
    );
    assert!(!versions[1].enabled && versions[0].enabled && versions[2].enabled);
    assert_eq!(
        client
            .get_secret(&v, "rotated", Some(&versions[2].version))
            .await
            .unwrap()
            .value
            .as_str(),
        "v1"
    );
    let e = client
        .get_secret(&v, "rotated", Some(&versions[1].version))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains(&versions[1].version), "{e}");

    // Key: public JWK only.
    let k = client.get_key(&v, "ec-key", None).await.unwrap();
    assert_eq!(k.kty, "EC");
    assert_eq!(k.jwk.crv.as_deref(), Some("P-256"));
    assert!(k.id.contains("/keys/ec-key/"));
    assert_eq!(
        client
            .list_versions(&v, ObjectKind::Key, "ec-key")
            .await
            .unwrap()
            .len(),
        1
    );

    // Certificate: DER that parses, x5t = SHA-1 thumbprint; backing secret carries kid.
    let c = client.get_certificate(&v, "app-tls", None).await.unwrap();
    let info = pki::cert_info(&c.cer).unwrap();
    assert!(info.subject.contains("app.internal"));
    use base64::Engine;
    assert_eq!(
        c.x5t
            .as_deref()
            .map(|x| base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(x.trim_end_matches('='))
                .unwrap()),
        Some(info.sha1_thumbprint.to_vec())
    );
    assert_eq!(c.content_type.as_deref(), Some("application/x-pem-file"));
    let backing = client
        .get_secret(&v, "app-tls", Some(&c.version))
        .await
        .unwrap();
    assert!(backing.kid.is_some() && backing.managed);
    assert!(backing.value.contains("BEGIN"));
    assert_eq!(
        client
            .list_versions(&v, ObjectKind::Certificate, "app-tls")
            .await
            .unwrap()
            .len(),
        1
    );

    // Not found names the vault, kind, name, version and Azure code.
    let e = client.get_secret(&v, "missing", None).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
    assert_eq!(e.code(), Some("SecretNotFound"));
    let msg = e.to_string();
    assert!(
        msg.contains("secret 'missing' (latest)") && msg.contains(&v) && msg.contains("404"),
        "{msg}"
    );
    let e = client
        .get_key(&v, "missing", Some("0123456789abcdef0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("KeyNotFound"));
    assert!(
        e.to_string()
            .contains("version 0123456789abcdef0123456789abcdef"),
        "{e}"
    );
    assert!(matches!(
        client
            .list_versions(&v, ObjectKind::Secret, "missing")
            .await,
        Err(Error::NotFound { .. })
    ));

    // One challenge for the whole session, one token.
    assert_eq!(env.count("Challenge").await, 1);
    assert_eq!(env.count("Token").await, 1);

    // The same vault through https://localhost:PORT (what the dev vault prints as its default
    // vault) advertises resource https://localhost:PORT: verified and accepted (issue 12.6).
    assert_eq!(
        client
            .get_secret(&env.origin(), "open", None)
            .await
            .unwrap()
            .value
            .as_str(),
        "open-value"
    );
    // Through an IP literal it advertises https://vault.azure.net: refused by the SDK rule, and
    // the message names a flag that exists.
    let ip = format!("https://127.0.0.1:{}", env.port);
    let e = client.get_secret(&ip, "open", None).await.unwrap_err();
    assert!(
        matches!(e, Error::ChallengeResourceMismatch { .. })
            && e.kind() == ErrorKind::InvalidConfig
            && e.to_string().contains("kvbridge dev-vault --resource")
            && !e.to_string().contains("verify_challenge_resource"),
        "{e}"
    );
    let lax = KeyVaultClient::new(
        Arc::new(
            ClientSecretCredential::new(&env.authority(), TENANT, "full-app", "full-secret")
                .with_transport(env.transport()),
        ),
        ClientOptions {
            verify_challenge_resource: false,
            ..env.options()
        },
    )
    .unwrap();
    assert_eq!(
        lax.get_secret(&ip, "open", None)
            .await
            .unwrap()
            .value
            .as_str(),
        "open-value"
    );

    // Access policy: list-only may not get.
    let lo = env.client(Arc::new(
        ClientSecretCredential::new(&env.authority(), TENANT, "list-only", "list-secret")
            .with_transport(env.transport()),
    ));
    let e = lo.get_secret(&v, "open", None).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("does not have secrets get permission"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_errors_are_clear_and_secret_free() {
    let env = Env::start().await;
    let t = env.transport();
    let wrong =
        ClientSecretCredential::new(&env.authority(), TENANT, "full-app", "wrong-secret-value")
            .with_transport(t.clone());
    let e = wrong
        .get_token(&format!("{}/.default", env.origin()), None)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { status: 401, .. }), "{msg}");
    assert_eq!(e.code(), Some("AADSTS7000215"));
    assert!(
        msg.contains("client secret credential for app full-app"),
        "{msg}"
    );
    assert!(
        !msg.contains("wrong-secret-value") && !format!("{e:?}").contains("wrong-secret-value")
    );
    assert!(!format!("{wrong:?}").contains("wrong-secret-value"));
    // Through the client the same error surfaces.
    let e = read_open(&env, Arc::new(wrong)).await.unwrap_err();
    assert_eq!(e.code(), Some("AADSTS7000215"), "{e}");

    let ghost =
        ClientSecretCredential::new(&env.authority(), TENANT, "ghost-app", "x").with_transport(t);
    let e = read_open(&env, Arc::new(ghost)).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { status: 400, .. }), "{msg}");
    assert!(e.code().unwrap().starts_with("AADSTS"), "{msg}");
    assert!(msg.contains("ghost-app"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_pem_and_pfx() {
    let env = Env::start().await;
    let t = env.transport();
    for alg in [AssertionAlgorithm::Rs256, AssertionAlgorithm::Ps256] {
        let pem = ClientCertificateCredential::from_pem(
            &env.authority(),
            TENANT,
            "full-app",
            &env.path("sp-key-and-cert.pem"),
        )
        .unwrap()
        .with_algorithm(alg)
        .with_transport(t.clone());
        assert!(pem.describe().contains("sp-key-and-cert.pem"));
        assert!(!format!("{pem:?}").contains("PRIVATE"));
        assert_eq!(
            read_open(&env, Arc::new(pem)).await.unwrap().value.as_str(),
            "open-value",
            "{alg:?}"
        );
        let pfx = ClientCertificateCredential::from_pfx(
            &env.authority(),
            TENANT,
            "full-app",
            &env.path("sp.pfx"),
            "",
        )
        .unwrap()
        .with_algorithm(alg)
        .with_x5c(true)
        .with_transport(t.clone());
        assert_eq!(
            read_open(&env, Arc::new(pfx)).await.unwrap().value.as_str(),
            "open-value",
            "{alg:?}"
        );
    }
    // A certificate not registered for the app: refused with an AADSTS code.
    let other_key = pki::generate_key(pki::KeyKind::Rsa { bits: 2048 }).unwrap();
    let req = pki::CertRequest {
        subject: "CN=other".into(),
        dns_names: vec![],
        ip_addresses: vec![],
        is_ca: false,
        validity_days: 1,
    };
    let other = pki::self_signed(&req, &other_key).unwrap();
    write(
        &env.path("other.pem"),
        &pki::bundle_to_pem(Some(&other_key), &[other]),
    );
    let cred = ClientCertificateCredential::from_pem(
        &env.authority(),
        TENANT,
        "full-app",
        &env.path("other.pem"),
    )
    .unwrap()
    .with_transport(t.clone());
    let e = read_open(&env, Arc::new(cred)).await.unwrap_err();
    assert!(
        matches!(e, Error::Auth { .. }) && e.code().unwrap().starts_with("AADSTS"),
        "{e}"
    );
    // Wrong PFX password and a missing file are configuration errors naming the file.
    let e = ClientCertificateCredential::from_pfx(
        &env.authority(),
        TENANT,
        "full-app",
        &env.path("sp.pfx"),
        "nope",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("sp.pfx") && !e.to_string().contains("nope"),
        "{e}"
    );
    assert!(ClientCertificateCredential::from_pem(
        &env.authority(),
        TENANT,
        "a",
        Path::new("/nonexistent.pem")
    )
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_from_file_and_handed_in_token() {
    let env = Env::start().await;
    let t = env.transport();
    let sa = "system:serviceaccount:default:app";
    let file = env.path("azure-identity-token");
    write(&file, &env.federated_token(sa, now() + 3600));
    let cred =
        WorkloadIdentityCredential::from_token_file(&env.authority(), TENANT, "full-app", &file)
            .with_transport(t.clone());
    assert!(cred.describe().contains("token file"));
    assert_eq!(
        read_open(&env, Arc::new(cred))
            .await
            .unwrap()
            .value
            .as_str(),
        "open-value"
    );

    let handed = env.federated_token(sa, now() + 3600);
    let cred = WorkloadIdentityCredential::from_token(
        &env.authority(),
        TENANT,
        "full-app",
        handed.clone(),
    )
    .with_transport(t.clone());
    assert!(!format!("{cred:?}").contains(&handed));
    assert_eq!(
        read_open(&env, Arc::new(cred))
            .await
            .unwrap()
            .value
            .as_str(),
        "open-value"
    );

    // Expired federated token: AADSTS700024, naming the credential, without the token.
    let expired = env.federated_token(sa, now() - 3600);
    let cred = WorkloadIdentityCredential::from_token(
        &env.authority(),
        TENANT,
        "full-app",
        expired.clone(),
    )
    .with_transport(t.clone());
    let e = read_open(&env, Arc::new(cred)).await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.code(), Some("AADSTS700024"), "{msg}");
    assert!(
        msg.contains("workload identity credential for app full-app"),
        "{msg}"
    );
    assert!(!msg.contains(&expired) && !format!("{e:?}").contains(&expired));

    // The file is re-read when it changes (kubelet rotation): expired -> fresh.
    let rotating = env.path("rotating-token");
    write(&rotating, &expired);
    let cred = WorkloadIdentityCredential::from_token_file(
        &env.authority(),
        TENANT,
        "full-app",
        &rotating,
    )
    .with_transport(t.clone());
    let scope = format!("{}/.default", env.origin());
    assert_eq!(
        cred.get_token(&scope, None).await.unwrap_err().code(),
        Some("AADSTS700024")
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&rotating, &env.federated_token(sa, now() + 3600));
    cred.get_token(&scope, None)
        .await
        .expect("rotated token file is picked up");
    // Missing file: unavailable, naming the path.
    let cred = WorkloadIdentityCredential::from_token_file(
        &env.authority(),
        TENANT,
        "full-app",
        &env.path("nope"),
    )
    .with_transport(t);
    let e = cred.get_token(&scope, None).await.unwrap_err();
    assert!(
        matches!(e, Error::CredentialUnavailable { .. }) && e.to_string().contains("nope"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_system_and_user_assigned() {
    let env = Env::start().await;
    let t = env.transport();
    let origin = env.origin();
    for id in [
        ManagedIdentityId::System,
        ManagedIdentityId::ClientId("user-msi".into()),
        ManagedIdentityId::ObjectId("00000000-0000-0000-0000-0000000000aa".into()),
        ManagedIdentityId::ResourceId("/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u".into()),
    ] {
        let cred = ManagedIdentityCredential::new(Some(&origin), id.clone()).unwrap().with_transport(t.clone());
        assert_eq!(read_open(&env, Arc::new(cred)).await.unwrap().value.as_str(), "open-value", "{id:?}");
    }
    assert!(env.count("ManagedIdentityToken").await >= 4);

    let unknown = ManagedIdentityCredential::new(
        Some(&origin),
        ManagedIdentityId::ClientId("missing-msi".into()),
    )
    .unwrap()
    .with_transport(t.clone());
    let e = read_open(&env, Arc::new(unknown)).await.unwrap_err();
    assert!(matches!(e, Error::Auth { status: 400, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("managed identity credential (client id missing-msi)"),
        "{e}"
    );

    // The credential always sends `Metadata: true`; without it IMDS refuses, and the error says so.
    let no_header = ManagedIdentityCredential::new(Some(&origin), ManagedIdentityId::System)
        .unwrap()
        .without_metadata_header_for_tests()
        .with_transport(t);
    let e = no_header
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { status: 400, .. }), "{msg}");
    assert!(
        msg.to_ascii_lowercase().contains("metadata header"),
        "{msg}"
    );
    assert!(
        msg.contains("managed identity credential (system-assigned)"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_azure_json_cloud_file_and_default_chain() {
    let env = Env::start().await;
    let opts = CredentialOptions::new(env.transport());
    let sa_token = env.path("fed-token");
    write(
        &sa_token,
        &env.federated_token("system:serviceaccount:default:app", now() + 3600),
    );
    let base = vec![
        ("AZURE_CLIENT_ID", "full-app".to_string()),
        ("AZURE_TENANT_ID", TENANT.to_string()),
        ("AZURE_AUTHORITY_HOST", env.authority()),
    ];
    let modes: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "client secret",
            vec![("AZURE_CLIENT_SECRET", "full-secret".into())],
        ),
        (
            "client certificate",
            vec![(
                "AZURE_CLIENT_CERTIFICATE_PATH",
                env.path("sp-key-and-cert.pem").display().to_string(),
            )],
        ),
        (
            "client certificate",
            vec![
                (
                    "AZURE_CLIENT_CERTIFICATE_PATH",
                    env.path("sp.pfx").display().to_string(),
                ),
                ("AZURE_CLIENT_CERTIFICATE_PASSWORD", String::new()),
            ],
        ),
        (
            "workload identity",
            vec![("AZURE_FEDERATED_TOKEN_FILE", sa_token.display().to_string())],
        ),
    ];
    for (mode, extra) in modes {
        let mut all = base.clone();
        all.extend(extra);
        let cred = EnvironmentCredential::from_vars(vars(&all), &opts).unwrap();
        assert!(cred.describe().contains(mode), "{}", cred.describe());
        assert_eq!(
            read_open(&env, Arc::new(cred))
                .await
                .unwrap()
                .value
                .as_str(),
            "open-value",
            "{mode}"
        );
    }

    // A cloud environment file (cloudEnvFileName) pointing everything at the dev vault.
    let cloud_file = env.path("cloud.json");
    write(
        &cloud_file,
        &format!(
            r#"{{"name": "AzureStackCloud", "activeDirectoryEndpoint": "https://localhost:{p}/", "keyVaultDNSSuffix": "localhost:{p}",
                "keyVaultEndpoint": "https://localhost:{p}/", "resourceIdentifiers": {{"keyVault": "https://localhost:{p}"}}}}"#,
            p = env.port
        ),
    );
    let cloud = Cloud::from_env_file(&cloud_file).unwrap();
    let vault_url = cloud.vault_url("kvtest");
    assert_eq!(vault_url, env.vault());

    // azure.json: client secret with the cloud override, certificate, managed identity.
    let cloud_opts = CredentialOptions {
        cloud: Some(cloud.clone()),
        imds_endpoint: Some(env.origin()),
        ..opts.clone()
    };
    let json_secret = env.path("azure-secret.json");
    write(
        &json_secret,
        &format!(
            r#"{{"cloud": "AzurePublicCloud", "tenantId": "{TENANT}", "aadClientId": "full-app", "aadClientSecret": "full-secret", "useManagedIdentityExtension": false}}"#
        ),
    );
    let json_cert = env.path("azure-cert.json");
    write(
        &json_cert,
        &format!(
            r#"{{"tenantId": "{TENANT}", "aadClientId": "full-app", "aadClientCertPath": "{}", "aadClientCertPassword": ""}}"#,
            env.path("sp.pfx").display()
        ),
    );
    let json_msi = env.path("azure-msi.json");
    write(
        &json_msi,
        &format!(
            r#"{{"tenantId": "{TENANT}", "aadClientId": "msi", "aadClientSecret": "msi", "useManagedIdentityExtension": true, "userAssignedIdentityID": "user-msi"}}"#
        ),
    );
    for (file, mode) in [
        (&json_secret, "client secret"),
        (&json_cert, "client certificate"),
        (&json_msi, "client id user-msi"),
    ] {
        let cred = AzureJsonCredential::from_file_with(file, &cloud_opts).unwrap();
        assert!(cred.describe().contains(mode), "{}", cred.describe());
        let client = env.client(Arc::new(cred));
        assert_eq!(
            client
                .get_secret(&vault_url, "open", None)
                .await
                .unwrap()
                .value
                .as_str(),
            "open-value",
            "{mode}"
        );
    }
    // Without the override, azure.json's cloud decides the authority (public cloud here).
    let public = AzureJsonCredential::from_file_with(&json_secret, &opts).unwrap();
    assert!(format!("{public:?}").contains("login.microsoftonline.com"));
    assert!(!format!("{public:?}").contains("full-secret"));

    // Default chain: environment first...
    let mut all = base.clone();
    all.push(("AZURE_CLIENT_SECRET", "full-secret".into()));
    let d = DefaultCredential::from_sources(vars(&all), Some(&json_msi), &cloud_opts);
    assert_eq!(d.links().len(), 3, "{:?}", d.links());
    assert!(
        d.describe()
            .starts_with("default credential chain [environment: client secret"),
        "{}",
        d.describe()
    );
    assert_eq!(
        read_open(&env, Arc::new(d)).await.unwrap().value.as_str(),
        "open-value"
    );
    // ...then azure.json when the environment is not configured...
    let d = DefaultCredential::from_sources(vars(&[]), Some(&json_msi), &cloud_opts);
    assert!(d.links()[0].starts_with("azure.json"), "{:?}", d.links());
    assert_eq!(
        read_open(&env, Arc::new(d)).await.unwrap().value.as_str(),
        "open-value"
    );
    // ...then managed identity (system-assigned, dev vault IMDS).
    let d = DefaultCredential::from_sources(
        vars(&[]),
        Some(Path::new("/nonexistent/azure.json")),
        &cloud_opts,
    );
    assert_eq!(
        d.links(),
        vec!["managed identity credential (system-assigned)".to_string()]
    );
    assert_eq!(
        read_open(&env, Arc::new(d)).await.unwrap().value.as_str(),
        "open-value"
    );
    // A configured but wrong environment credential is reported, not masked by later links.
    let mut bad = base.clone();
    bad.push(("AZURE_CLIENT_SECRET", "wrong".into()));
    let d = DefaultCredential::from_sources(vars(&bad), None, &cloud_opts);
    let e = read_open(&env, Arc::new(d)).await.unwrap_err();
    assert_eq!(e.code(), Some("AADSTS7000215"), "{e}");
}

/// AAD Pod Identity end to end over real HTTPS: the dev vault's NMI stand-in issues a token for
/// the identity bound to the pod, and the vault accepts it (issue 12.7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_through_the_dev_vault_nmi() {
    let env = Env::start().await;
    let endpoint = format!("{}/host/token/", env.origin());
    let cred = PodIdentityCredential::new(Some(&endpoint), "default", "app-0")
        .unwrap()
        .with_transport(env.transport());
    assert!(cred.describe().contains("default/app-0"));
    let client = env.client(Arc::new(cred));
    let s = client.get_secret(&env.vault(), "open", None).await.unwrap();
    assert_eq!(s.value.as_str(), "open-value");
    assert_eq!(env.count("PodIdentityToken").await, 1);

    // The binding's identity decides the access: list-only may not get.
    let other = PodIdentityCredential::new(Some(&endpoint), "other", "app-1")
        .unwrap()
        .with_transport(env.transport());
    let e = env
        .client(Arc::new(other))
        .get_secret(&env.vault(), "open", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e}");

    // No binding for the pod: NMI's 404, as an authentication failure naming the pod.
    let nobody = PodIdentityCredential::new(Some(&endpoint), "default", "unbound")
        .unwrap()
        .with_transport(env.transport());
    let e = env
        .client(Arc::new(nobody))
        .get_secret(&env.vault(), "open", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Auth { status: 404, .. })
            && e.to_string().contains("pod:default/unbound"),
        "{e}"
    );
    // A client id the pod is not bound to.
    let wrong = PodIdentityCredential::new(Some(&endpoint), "default", "app-0")
        .unwrap()
        .with_client_id(Some("full-app"))
        .with_transport(env.transport());
    let e = wrong
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth { status: 404, .. }), "{e}");
}

/// A federated token "file" that is a FIFO or is huge is refused, never read without end or
/// waited on (the read runs on the blocking pool; a single-threaded runtime keeps working).
#[tokio::test(flavor = "current_thread")]
async fn workload_identity_token_file_must_be_a_small_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; MAX_TOKEN_FILE as usize + 1]).unwrap();
    for path in [&fifo, &big, &dir.path().join("missing")] {
        let cred = WorkloadIdentityCredential::from_token_file(
            "https://127.0.0.1:9/",
            TENANT,
            "full-app",
            path,
        );
        let e = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            cred.get_token("https://vault.azure.net/.default", None),
        )
        .await
        .expect("does not hang")
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::CredentialUnavailable {
                    source: Some(_),
                    ..
                }
            ),
            "{}: {e}",
            path.display()
        );
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    }
}
