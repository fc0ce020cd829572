//! The generated CRD against the real kube-apiserver: it installs and becomes Established,
//! akv2k8s's manifests of every version apply with `kubectl` unchanged, and each object reads
//! back through every served version with no field lost (conversion: None over one schema).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use controller::crd::{AzureKeyVaultSecret, ObjectType, Transform, SERVED_VERSIONS};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams};

fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/kvbridge/files/crds")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/akv2k8s")
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl (Debian package kubectl) is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn ensure_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_installs_and_akv2k8s_manifests_of_every_version_apply_and_read_back() {
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let client = cp.client().await.expect("client");
    let names = cp
        .install_crds(&client, &crd_dir())
        .await
        .expect("CRD installs");
    assert_eq!(names, ["azurekeyvaultsecrets.spv.no"]);
    ensure_namespace(&client, "akv-test").await;

    // Every fixture applies unchanged with kubectl (client-side apply, as users do).
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    for f in &files {
        let (ok, out) = kubectl(cp.kubeconfig(), &["apply", "-f", f.to_str().unwrap()]);
        assert!(ok, "kubectl apply -f {}: {out}", f.display());
        assert!(out.contains("azurekeyvaultsecret.spv.no/"), "{out}");
    }
    // `kubectl get akvs` (short name, preferred version v1) lists them with the printer columns.
    let (ok, out) = kubectl(cp.kubeconfig(), &["-n", "akv-test", "get", "akvs"]);
    assert!(ok, "{out}");
    for col in ["VAULT", "VAULT OBJECT", "SECRET NAME", "READY"] {
        assert!(out.contains(col), "{out}");
    }
    assert!(
        out.contains("secret-sync") && out.contains("akv2k8s-test"),
        "{out}"
    );

    // The typed client (storage version v2beta1) reads every object; v1alpha1's `transforms`
    // survived storage.
    let api: Api<AzureKeyVaultSecret> = Api::namespaced(client.clone(), "akv-test");
    let a = api.get("v1alpha1-transforms").await.unwrap();
    let out = a.spec.output.clone().unwrap();
    assert_eq!(
        out.transforms_in_order(),
        [Transform::Trim, Transform::Base64Encode]
    );
    let b = api.get("v2alpha1-tls").await.unwrap();
    assert_eq!(b.spec.vault.azure_identity.unwrap().name, "my-identity");
    assert_eq!(b.spec.vault.object.object_type, ObjectType::Certificate);
    let c = api.get("db-config").await.unwrap();
    assert!(c.spec.output.unwrap().secret.unwrap().data_key.is_none());

    // Each object reads back identically through every served version (only apiVersion differs).
    for name in [
        "v1alpha1-transforms",
        "v2alpha1-tls",
        "secret-sync",
        "db-config",
    ] {
        let mut specs = Vec::new();
        for v in SERVED_VERSIONS {
            let ar =
                ApiResource::from_gvk(&GroupVersionKind::gvk("spv.no", v, "AzureKeyVaultSecret"));
            let dynapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), "akv-test", &ar);
            let obj = dynapi
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("{name} via {v}: {e}"));
            assert_eq!(
                obj.types.as_ref().unwrap().api_version,
                format!("spv.no/{v}")
            );
            specs.push(obj.data["spec"].clone());
        }
        assert!(specs.windows(2).all(|w| w[0] == w[1]), "{name}: {specs:?}");
    }

    // Schema validation is real: an unknown object type and an unknown transform are refused.
    let head = "apiVersion: spv.no/v1\nkind: AzureKeyVaultSecret\nmetadata: {name: bad, namespace: akv-test}\nspec:\n";
    for (body, field) in [
        (
            "  vault: {name: kv, object: {name: o, type: vault-thing}}\n",
            "spec.vault.object.type",
        ),
        (
            "  vault: {name: kv, object: {name: o, type: secret}}\n  output: {secret: {name: x, dataKey: k}, transform: [rot13]}\n",
            "spec.output.transform",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, format!("{head}{body}")).unwrap();
        let (ok, out) = kubectl(cp.kubeconfig(), &["apply", "-f", p.to_str().unwrap()]);
        assert!(!ok, "accepted an invalid manifest: {out}");
        assert!(out.contains(field), "{field}: {out}");
    }
}
