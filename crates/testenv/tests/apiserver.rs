//! Smoke test of the real control plane through kube-rs: if this fails, every test that needs
//! Kubernetes would fail for the same reason, so .ci/run runs it first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kvbridge.test
spec:
  group: smoke.kvbridge.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1}
"#;

fn widget(name: &str, size: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "smoke.kvbridge.test/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }))
    .unwrap()
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_crds_watches_conflicts_and_rbac() {
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    eprintln!(
        "control plane start: {:.2} s ({})",
        cp.start_time().as_secs_f64(),
        cp.url()
    );
    let client = cp.client().await.expect("admin client");

    // The API server is the version tests/k8s/versions.env names (version ldflags applied).
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(
        version.git_version,
        testenv::version("K8S_VERSION"),
        "{version:?}"
    );

    // CRDs: our own, and the CSI driver's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("widget.yaml"), CRD).unwrap();
    let names = cp
        .install_crds(&client, dir.path())
        .await
        .expect("install CRD");
    assert_eq!(names, ["widgets.smoke.kvbridge.test"]);
    let csi = cp
        .install_csi_driver_crds(&client)
        .await
        .expect("install the CSI driver's CRDs");
    assert!(
        csi.contains(&"secretproviderclasses.secrets-store.csi.x-k8s.io".to_string())
            && csi
                .contains(&"secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io".to_string()),
        "{csi:?}"
    );
    // Applying again is harmless (tests of one binary share the control plane).
    cp.install_crds(&client, dir.path())
        .await
        .expect("re-apply");

    let ns = cp.namespace(&client, "smoke").await.expect("namespace");
    assert!(
        ns.starts_with("smoke-") && ns.len() > "smoke-".len(),
        "{ns}"
    );
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "smoke.kvbridge.test",
        "v1",
        "Widget",
    ));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);

    // Start a watch before writing, from the (empty) list's resourceVersion.
    let list = widgets.list(&Default::default()).await.expect("list");
    assert!(list.items.is_empty());
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = widgets
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();

    // create / get
    let created = widgets
        .create(&PostParams::default(), &widget("a", json!(3)))
        .await
        .expect("create");
    let got = widgets.get("a").await.expect("get");
    assert_eq!(got.data["spec"]["size"], 3);
    assert_eq!(got.metadata.uid, created.metadata.uid);

    // Real schema validation: size must be an integer >= 1.
    for bad in [json!(0), json!("three")] {
        let err = widgets
            .create(&PostParams::default(), &widget("bad", bad.clone()))
            .await
            .expect_err("schema rejects the widget");
        assert_eq!(status_code(&err), Some(422), "{bad}: {err}");
    }

    // Optimistic concurrency: an update with a stale resourceVersion is a 409 Conflict.
    let mut first = got.clone();
    first.data["spec"]["size"] = json!(4);
    let updated = widgets
        .replace("a", &PostParams::default(), &first)
        .await
        .expect("update");
    assert_ne!(
        updated.metadata.resource_version,
        got.metadata.resource_version
    );
    let mut stale = got.clone();
    stale.data["spec"]["size"] = json!(5);
    let err = widgets
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale write");
    assert_eq!(status_code(&err), Some(409), "{err}");

    // The watch saw exactly: Added(size 3), Modified(size 4).
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("watch event in time")
            .expect("watch stream open")
            .expect("watch event");
        match ev {
            WatchEvent::Added(o) => seen.push(("Added", o.data["spec"]["size"].clone())),
            WatchEvent::Modified(o) => seen.push(("Modified", o.data["spec"]["size"].clone())),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    assert_eq!(seen, [("Added", json!(3)), ("Modified", json!(4))]);

    // RBAC is enforced: an identity without bindings is forbidden.
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cp.kubeconfig()).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some("nobody".into());
    let nobody = kube::Client::try_from(config).unwrap();
    let err = Api::<ConfigMap>::namespaced(nobody, &ns)
        .list(&Default::default())
        .await
        .expect_err("RBAC denies");
    assert_eq!(status_code(&err), Some(403), "{err}");
}
