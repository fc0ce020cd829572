//! The provider as the Secrets Store CSI Driver sees it: a gRPC client (generated from the same
//! proto) over the provider's unix socket, against the dev vault over HTTPS. The provider is
//! pointed at the dev vault only by its default cloud environment file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine as _;
use common::*;
use tonic::Code;

fn pem_labels(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_health_and_metrics() {
    let env = start().await;
    let mut client = env.client().await;
    let v = client
        .version(provider::proto::VersionRequest {
            version: "v1alpha1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "kvbridge");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.version, "v1alpha1");

    // Standard gRPC health service on the same socket.
    let path = env.socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "v1alpha1.CSIDriverProvider"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    // /healthz and /metrics over HTTP.
    let plain = reqwest::Client::new();
    let h = plain
        .get(format!("http://{}/healthz", env.healthz()))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.text().await.unwrap(), "ok");

    let a = attrs(&objects(&["objectName: plain\nobjectType: secret"]), &[]);
    mount(
        &mut client,
        request(&a, &sp_secrets("app", "app-secret"), "420"),
    )
    .await
    .unwrap();
    let missing = attrs(&objects(&["objectName: nope\nobjectType: secret"]), &[]);
    let _ = mount(
        &mut client,
        request(&missing, &sp_secrets("app", "app-secret"), "420"),
    )
    .await;
    let m = env.metrics().await;
    // The Prometheus text format 0.0.4 (what the hand-rolled exposition served).
    let served = plain
        .get(format!("http://{}/metrics", env.metrics_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        served.headers()[reqwest::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        m.contains("kvbridge_grpc_request_duration_seconds_count{method=\"Mount\",code=\"OK\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "kvbridge_grpc_request_duration_seconds_count{method=\"Mount\",code=\"NotFound\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "kvbridge_grpc_request_duration_seconds_count{method=\"Version\",code=\"OK\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("kvbridge_keyvault_request_duration_seconds_count{object_type=\"secret\",outcome=\"success\"} 1"), "{m}");
    assert!(m.contains("kvbridge_keyvault_request_duration_seconds_count{object_type=\"secret\",outcome=\"not_found\"} 1"), "{m}");
    // Never object names, vault names or values in metrics.
    for needle in ["plain", "nope", VAULT, "hello", "app-secret"] {
        assert!(!m.contains(needle), "metrics mention {needle:?}");
    }

    // A stopped provider: /healthz says so.
    let healthz = env.healthz();
    let socket = env.socket.clone();
    std::fs::remove_file(&socket).unwrap();
    let h = plain
        .get(format!("http://{healthz}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 503);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_every_type_format_encoding_alias_history_and_permission() {
    let env = start().await;
    let mut client = env.client().await;
    let objs = objects(&[
        "objectName: plain\nobjectType: secret",
        "objectName: plain\nobjectType: secret\nobjectAlias: plain-0600.txt\nfilePermission: \"0600\"",
        "objectName: b64\nobjectType: secret\nobjectEncoding: base64",
        "objectName: hexval\nobjectType: secret\nobjectEncoding: hex",
        "objectName: rotated\nobjectType: secret\nobjectVersionHistory: 3",
        "objectName: rsa\nobjectType: key",
        "objectName: ec\nobjectType: key\nobjectAlias: ec.pub",
        "objectName: tls\nobjectType: cert\nobjectAlias: tls.crt",
        "objectName: tls\nobjectType: secret\nobjectAlias: tls.pem",
        "objectName: tls\nobjectType: secret\nobjectFormat: pfx\nobjectEncoding: base64\nobjectAlias: tls.pfx",
        "objectName: tls-pem\nobjectType: secret",
    ]);
    let a = attrs(&objs, &[]);
    // nodePublishSecretRef keys are case-insensitive.
    let secrets = serde_json::json!({"ClientID": "app", "ClientSecret": "app-secret"}).to_string();
    let resp = mount(&mut client, request(&a, &secrets, "420"))
        .await
        .unwrap();

    assert_eq!(file(&resp, "plain").contents, b"hello world");
    assert_eq!(file(&resp, "plain").mode, 420);
    assert_eq!(file(&resp, "plain-0600.txt").contents, b"hello world");
    assert_eq!(file(&resp, "plain-0600.txt").mode, 0o600);
    assert_eq!(file(&resp, "b64").contents, b"hello world");
    assert_eq!(file(&resp, "hexval").contents, b"hello");
    // History: newest first, the disabled v2 skipped.
    assert_eq!(file(&resp, "rotated/0").contents, b"v3");
    assert_eq!(file(&resp, "rotated/1").contents, b"v1");
    assert!(resp.files.iter().all(|f| f.path != "rotated/2"));
    assert!(!version_of(&resp, "secret/rotated/0").is_empty());
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "rsa").contents)),
        ["PUBLIC KEY"]
    );
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "ec.pub").contents)),
        ["PUBLIC KEY"]
    );
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "tls.crt").contents)),
        ["CERTIFICATE"]
    );
    // PFX-backed certificate secret as PEM: key first, then leaf -> CA.
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "tls.pem").contents)),
        ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"]
    );
    // objectFormat pfx + objectEncoding base64: the vault's base64 value decoded to PFX DER.
    let pfx = &file(&resp, "tls.pfx").contents;
    assert_eq!(pfx[0], 0x30, "PFX DER");
    assert!(base64::engine::general_purpose::STANDARD
        .decode(pfx)
        .is_err());
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "tls-pem").contents))[0],
        "PRIVATE KEY"
    );
    // One ObjectVersion per object (history: one per version written).
    for id in [
        "secret/plain",
        "secret/b64",
        "secret/hexval",
        "key/rsa",
        "key/ec",
        "cert/tls",
        "secret/tls",
        "secret/tls-pem",
        "secret/rotated/0",
        "secret/rotated/1",
    ] {
        assert_eq!(version_of(&resp, id).len(), 32, "{id}");
    }
    // Same objects with permission 0400 from the driver.
    let resp = mount(&mut client, request(&a, &secrets, "256"))
        .await
        .unwrap();
    assert_eq!(file(&resp, "plain").mode, 0o400);
    assert_eq!(file(&resp, "plain-0600.txt").mode, 0o600);

    // Pinned version.
    let v = version_of(&resp, "secret/plain").to_string();
    let pinned = attrs(
        &objects(&[&format!(
            "objectName: plain\nobjectType: secret\nobjectVersion: {v}"
        )]),
        &[],
    );
    let r = mount(&mut client, request(&pinned, &secrets, "420"))
        .await
        .unwrap();
    assert_eq!(version_of(&r, "secret/plain"), v);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_cert_and_key_in_separate_files() {
    let env = start_with("", |c| c.write_cert_and_key_in_separate_files = true).await;
    let mut client = env.client().await;
    let a = attrs(&objects(&["objectName: tls\nobjectType: secret"]), &[]);
    let resp = mount(
        &mut client,
        request(&a, &sp_secrets("app", "app-secret"), "420"),
    )
    .await
    .unwrap();
    let paths: Vec<&str> = resp.files.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"tls"), "{paths:?}");
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "tls.key").contents)),
        ["PRIVATE KEY"]
    );
    assert_eq!(
        pem_labels(&String::from_utf8_lossy(&file(&resp, "tls.crt").contents))[0],
        "CERTIFICATE"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_modes() {
    let env = start().await;
    let mut client = env.client().await;
    let objs = objects(&["objectName: plain\nobjectType: secret"]);

    // Workload identity: clientID + the pod's token for api://AzureADTokenExchange.
    let token = sa_token(
        &env.issuer_key,
        "system:serviceaccount:default:app",
        "api://AzureADTokenExchange",
    );
    let a = attrs(
        &objs,
        &[
            ("clientID", "wi-app"),
            (
                "csi.storage.k8s.io/serviceAccount.tokens",
                &tokens_attr(&token),
            ),
        ],
    );
    let r = mount(&mut client, request(&a, "{}", "420")).await.unwrap();
    assert_eq!(file(&r, "plain").contents, b"hello world");
    // A token for another service account is refused by Entra (and not served from the cache).
    let other = sa_token(
        &env.issuer_key,
        "system:serviceaccount:default:other",
        "api://AzureADTokenExchange",
    );
    let mut a2 = attrs(
        &objs,
        &[
            ("clientID", "wi-app"),
            (
                "csi.storage.k8s.io/serviceAccount.tokens",
                &tokens_attr(&other),
            ),
        ],
    );
    a2.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        "other".into(),
    );
    let e = mount(&mut client, request(&a2, "{}", "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(!e.message().contains(&other), "token leaked");
    // clientID without a token for the audience.
    let a3 = attrs(&objs, &[("clientID", "wi-app")]);
    let e = mount(&mut client, request(&a3, "{}", "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("api://AzureADTokenExchange"),
        "{}",
        e.message()
    );

    // Managed identity: system-assigned, then user-assigned by client id.
    let a = attrs(&objs, &[("useVMManagedIdentity", "true")]);
    let r = mount(&mut client, request(&a, "", "420")).await.unwrap();
    assert_eq!(file(&r, "plain").contents, b"hello world");
    let a = attrs(
        &objs,
        &[
            ("useVMManagedIdentity", "true"),
            ("userAssignedIdentityID", "user-msi"),
        ],
    );
    let r = mount(&mut client, request(&a, "", "420")).await.unwrap();
    assert_eq!(file(&r, "plain").contents, b"hello world");

    // Service principal from nodePublishSecretRef; wrong secret is refused.
    let a = attrs(&objs, &[]);
    let r = mount(
        &mut client,
        request(&a, &sp_secrets("app", "app-secret"), "420"),
    )
    .await
    .unwrap();
    assert_eq!(file(&r, "plain").contents, b"hello world");
    let e = mount(
        &mut client,
        request(&a, &sp_secrets("app", "wrong-secret"), "420"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(!e.message().contains("wrong-secret"));
    let e = mount(&mut client, request(&a, "{}", "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("clientid"), "{}", e.message());

    // AAD Pod Identity (retired, still the seed FlexVolume users' main path): NMI issues the
    // token of the identity bound to the pod the driver names (app-0 -> node-msi).
    let a = attrs(&objs, &[("usePodIdentity", "true")]);
    let r = mount(&mut client, request(&a, "", "420")).await.unwrap();
    assert_eq!(file(&r, "plain").contents, b"hello world");
    // A pod without a binding gets NMI's refusal, not another pod's identity.
    let mut a = attrs(&objs, &[("usePodIdentity", "true")]);
    a.insert("csi.storage.k8s.io/pod.name".into(), "unbound-0".into());
    let e = mount(&mut client, request(&a, "", "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("unbound-0"), "{}", e.message());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_object_and_return_no_files() {
    let env = start().await;
    let mut client = env.client().await;
    let sp = sp_secrets("app", "app-secret");

    // Missing object: the whole mount fails (no partial files), naming the object.
    let a = attrs(
        &objects(&[
            "objectName: plain\nobjectType: secret",
            "objectName: missing-one\nobjectType: secret",
        ]),
        &[],
    );
    let e = mount(&mut client, request(&a, &sp, "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().starts_with("failed to mount objects, error: "),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("missing-one") && e.message().contains("SecretNotFound"),
        "{}",
        e.message()
    );

    // Disabled version.
    let transport = keyvault::Transport::new(&keyvault::ClientOptions {
        ca_file: Some(env.dv.info.ca.clone()),
        use_system_roots: false,
        ..Default::default()
    })
    .unwrap();
    let kv = keyvault::KeyVaultClient::with_transport(
        std::sync::Arc::new(
            keyvault::ClientSecretCredential::new(&env.origin, TENANT, "app", "app-secret")
                .with_transport(transport.clone()),
        ),
        transport,
    );
    let vault_url = format!("https://{VAULT}.localhost:{}", env.dv.info.port);
    let versions = kv
        .list_versions(&vault_url, keyvault::ObjectKind::Secret, "rotated")
        .await
        .unwrap();
    let disabled = versions
        .iter()
        .find(|v| !v.enabled)
        .expect("a disabled version")
        .version
        .clone();
    let a = attrs(
        &objects(&[&format!(
            "objectName: rotated\nobjectType: secret\nobjectVersion: {disabled}"
        )]),
        &[],
    );
    let e = mount(&mut client, request(&a, &sp, "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("rotated") && e.message().contains(&disabled),
        "{}",
        e.message()
    );

    // 403: an identity without get permission.
    let a = attrs(&objects(&["objectName: plain\nobjectType: secret"]), &[]);
    let e = mount(
        &mut client,
        request(&a, &sp_secrets("noaccess", "noaccess-secret"), "420"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("plain") && e.message().contains("403"),
        "{}",
        e.message()
    );

    // Bad requests: attributes, parameters, permission.
    let mut r = request(&a, &sp, "420");
    r.attributes = "{not json".into();
    let e = mount(&mut client, r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("failed to unmarshal attributes"),
        "{}",
        e.message()
    );
    let e = mount(&mut client, request(&a, &sp, "rw"))
        .await
        .unwrap_err();
    assert!(e.message().contains("file permission"), "{}", e.message());
    let bad = attrs(&objects(&["objectName: plain\nobjectType: Secret"]), &[]);
    let e = mount(&mut client, request(&bad, &sp, "420"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("objectType"), "{}", e.message());
    let mut no_tenant = a.clone();
    no_tenant.remove("tenantID");
    let e = mount(&mut client, request(&no_tenant, &sp, "420"))
        .await
        .unwrap_err();
    assert!(e.message().contains("tenantID"), "{}", e.message());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_storm_gives_resource_exhausted() {
    let env = start().await;
    let mut client = env.client().await;
    env.admin(
        "PUT",
        "/admin/faults",
        Some(serde_json::json!({"rate_429": 1.0, "retry_after_secs": 1})),
    )
    .await;
    let a = attrs(&objects(&["objectName: plain\nobjectType: secret"]), &[]);
    let started = std::time::Instant::now();
    let e = mount(
        &mut client,
        request(&a, &sp_secrets("app", "app-secret"), "420"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("throttled") && e.message().contains("plain"),
        "{}",
        e.message()
    );
    // Retry-After (1 s) was honoured between the attempts (2 retries).
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The failure is not cached: once the storm ends the same mount works.
    env.admin("PUT", "/admin/faults", Some(serde_json::json!({})))
        .await;
    let r = mount(
        &mut client,
        request(&a, &sp_secrets("app", "app-secret"), "420"),
    )
    .await
    .unwrap();
    assert_eq!(file(&r, "plain").contents, b"hello world");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_not_answering_times_out() {
    let env = start_with("", |c| {
        c.client.timeout = std::time::Duration::from_millis(400);
        c.client.max_retries = 1;
        c.client.deadline = std::time::Duration::from_secs(2);
    })
    .await;
    let mut client = env.client().await;
    // Get the token first so only the vault is slow.
    let a = attrs(&objects(&["objectName: plain\nobjectType: secret"]), &[]);
    env.admin(
        "PUT",
        "/admin/faults",
        Some(serde_json::json!({"latency_ms": 5000})),
    )
    .await;
    let started = std::time::Instant::now();
    let e = mount(
        &mut client,
        request(&a, &sp_secrets("app", "app-secret"), "420"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{e:?}"
    );
    assert!(e.message().contains("plain"), "{}", e.message());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    env.admin("PUT", "/admin/faults", Some(serde_json::json!({})))
        .await;
    env.stop().await;
}
