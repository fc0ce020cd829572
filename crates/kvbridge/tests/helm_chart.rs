//! The Helm chart `deploy/helm/kvbridge` (the one source of kvbridge's Kubernetes manifests):
//! `helm lint --strict` and `helm template` pass for the default values and for each component
//! alone; the values schema refuses what the chart does not read; the rendered DaemonSets run the
//! real binary with exactly their arguments (the provider serves its socket and health port, the
//! FlexVolume installer installs a driver kubelet can call); and every rendered object is accepted
//! by the real kube-apiserver (`kubectl apply --server-side`, CRDs Established).
//!
//! helm is built from its Go module by tests/k8s/build.sh, next to the control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml_ng::Value;

fn kvbridge() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/kvbridge")
}

/// helm from tests/k8s/build.sh, or `None` (test skipped, announced) when it is missing and
/// `KVBRIDGE_TESTENV=off`, as for the control plane.
fn helm() -> Option<PathBuf> {
    let path = testenv::Layout::locate().bin("helm");
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("KVBRIDGE_TESTENV").as_deref() == Ok("off") {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED (KVBRIDGE_TESTENV=off): {} is missing; run `bash tests/k8s/build.sh` ***\n",
            path.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run `bash tests/k8s/build.sh` (it builds helm from its Go module)",
        path.display()
    );
}

/// The component combinations the chart must support: `--set` values for each.
const SCENARIOS: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("provider", &["crds.install=false"]),
    (
        "flexvolume",
        &[
            "linux.enabled=false",
            "crds.install=false",
            "flexvolume.enabled=true",
        ],
    ),
    ("crds", &["linux.enabled=false"]),
    (
        "controller",
        &[
            "linux.enabled=false",
            "crds.install=false",
            "controller.enabled=true",
        ],
    ),
    (
        "webhook",
        &[
            "linux.enabled=false",
            "crds.install=false",
            "webhook.enabled=true",
            // Applied to the shared API server with no pod behind the Service: other tests'
            // pods must not be refused.
            "webhook.failurePolicy=Ignore",
        ],
    ),
    (
        "all",
        &[
            "flexvolume.enabled=true",
            "controller.enabled=true",
            "controller.syncSecretProviderClasses=true",
            "webhook.enabled=true",
            "webhook.failurePolicy=Ignore",
            "global.metrics.serviceMonitor.enabled=true",
            "writeCertAndKeyInSeparateFiles=true",
            "global.logLevel=debug",
        ],
    ),
];

/// (kind, name) of every object a scenario must render, for release `r`.
fn expected(scenario: &str) -> BTreeSet<(String, String)> {
    let provider = [
        ("ServiceAccount", "r-kvbridge-provider"),
        ("DaemonSet", "r-kvbridge-provider"),
    ];
    let flexvolume = [
        ("ServiceAccount", "r-kvbridge-flexvolume"),
        ("DaemonSet", "r-kvbridge-flexvolume"),
    ];
    let crds = [("CustomResourceDefinition", "azurekeyvaultsecrets.spv.no")];
    let controller = [
        ("ServiceAccount", "r-kvbridge-controller"),
        ("ClusterRole", "r-kvbridge-controller"),
        ("ClusterRoleBinding", "r-kvbridge-controller"),
        ("Role", "r-kvbridge-controller-lease"),
        ("RoleBinding", "r-kvbridge-controller-lease"),
        ("Deployment", "r-kvbridge-controller"),
    ];
    let controller_metrics = [
        ("Service", "r-kvbridge-controller-metrics"),
        ("ServiceMonitor", "r-kvbridge-controller"),
    ];
    let webhook = [
        ("ServiceAccount", "r-kvbridge-webhook"),
        ("ClusterRole", "r-kvbridge-webhook"),
        ("ClusterRoleBinding", "r-kvbridge-webhook"),
        ("Role", "r-kvbridge-webhook-tls"),
        ("RoleBinding", "r-kvbridge-webhook-tls"),
        ("Service", "r-kvbridge-webhook"),
        ("Deployment", "r-kvbridge-webhook"),
        ("PodDisruptionBudget", "r-kvbridge-webhook"),
        ("MutatingWebhookConfiguration", "r-kvbridge-webhook"),
    ];
    let metrics = [
        ("Service", "r-kvbridge-provider-metrics"),
        ("ServiceMonitor", "r-kvbridge-provider"),
    ];
    let parts: Vec<&[(&str, &str)]> = match scenario {
        "default" => vec![&provider, &crds],
        "provider" => vec![&provider],
        "flexvolume" => vec![&flexvolume],
        "crds" => vec![&crds],
        "controller" => vec![&controller],
        "webhook" => vec![&webhook],
        "all" => vec![
            &provider,
            &crds,
            &flexvolume,
            &metrics,
            &controller,
            &controller_metrics,
            &webhook,
        ],
        other => panic!("unknown scenario {other}"),
    };
    parts
        .into_iter()
        .flatten()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect()
}

fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect()
}

/// `helm template <release> <chart> -n <ns> --set ...`: the documents, or helm's error output.
fn template(helm: &Path, release: &str, ns: &str, sets: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", ns])
        .args(set_args(sets))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn render(helm: &Path, sets: &[&str]) -> Vec<Value> {
    docs(&template(helm, "r", "kube-system", sets).unwrap_or_else(|e| panic!("{sets:?}: {e}")))
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The workload `kind`/`name` of `all`: the document, its pod spec, its first container and
/// that container's args.
fn workload<'a>(
    all: &'a [Value],
    kind: &str,
    name: &str,
) -> (&'a Value, &'a Value, &'a Value, Vec<String>) {
    let doc = find(all, kind, name);
    let pod = &doc["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    (doc, pod, c, strings(&c["args"]))
}

/// The port of container `c` named `name`.
fn named_port<'a>(c: &'a Value, name: &Value) -> &'a Value {
    c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| &p["name"] == name)
        .unwrap()
}

/// The memory request and limit of container `c`, in MiB (`<n>Mi`).
fn memory_mib(c: &Value) -> (f64, f64) {
    let mib = |q: &Value| -> f64 { q.as_str().unwrap().trim_end_matches("Mi").parse().unwrap() };
    let resources = &c["resources"];
    (
        mib(&resources["requests"]["memory"]),
        mib(&resources["limits"]["memory"]),
    )
}

/// Every flag of `args` (after the subcommand) is one `kvbridge <subcommand>` accepts.
fn assert_flags_accepted(subcommand: &str, args: &[String]) {
    let help = Command::new(kvbridge())
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} is not a `kvbridge {subcommand}` flag"
        );
    }
}

#[test]
fn lint_and_template_pass_for_the_defaults_and_each_component_alone() {
    let Some(helm) = helm() else { return };
    for (name, sets) in SCENARIOS {
        let out = Command::new(&helm)
            .args(["lint", "--strict"])
            .arg(chart())
            .args(set_args(sets))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm lint --strict ({name}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let all = render(&helm, sets);
        let have: BTreeSet<(String, String)> = all
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(have, expected(name), "objects rendered for {name}");
        for d in &all {
            let labels = &d["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/part-of"], "kvbridge", "{d:?}");
            assert_eq!(labels["app.kubernetes.io/instance"], "r");
            if !matches!(
                d["kind"].as_str(),
                Some(
                    "CustomResourceDefinition"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "MutatingWebhookConfiguration"
                )
            ) {
                assert_eq!(d["metadata"]["namespace"], "kube-system");
            }
        }
    }
}

#[test]
fn the_values_schema_refuses_what_the_chart_does_not_read() {
    let Some(helm) = helm() else { return };
    for (sets, mentions) in [
        // The Azure chart's per-OS image: kvbridge has one image (`image.*`).
        (
            &["linux.image.repository=mcr.example/provider-azure"][..],
            "image",
        ),
        // Azure chart values kvbridge has no equivalent for.
        (&["linux.customUserAgent=x"][..], "customUserAgent"),
        (&["logFormatJSON=true"][..], "logFormatJSON"),
        (&["linux.healthzPort=0"][..], "healthzPort"),
        (&["image.digest=latest"][..], "digest"),
        (&["linux.cacheTTL=soon"][..], "cacheTTL"),
        (&["flexvolume.pluginDir=relative/dir"][..], "pluginDir"),
        (&["nonsense=1"][..], "nonsense"),
    ] {
        let err = template(&helm, "r", "kube-system", sets)
            .expect_err(&format!("{sets:?} must be refused"));
        assert!(
            err.contains("schema") && err.contains(mentions),
            "{sets:?}: {err}"
        );
    }
    // The image: a digest pins it, else the tag, else the chart's appVersion.
    let image = |sets: &[&str]| {
        let all = render(&helm, sets);
        find(&all, "DaemonSet", "r-kvbridge-provider")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(image(&[]), format!("ghcr.io/kvbridge/kvbridge:{version}"));
    assert_eq!(
        image(&["image.repository=127.0.0.1:5000/kvbridge", "image.tag=dev"]),
        "127.0.0.1:5000/kvbridge:dev"
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        image(&["image.tag=dev", &format!("image.digest={digest}")]),
        format!("ghcr.io/kvbridge/kvbridge@{digest}")
    );
}

/// Asks the health port until it answers 200 (or the process exits or time runs out).
fn healthz_ok(port: u16, child: &mut std::process::Child) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The provider DaemonSet runs `kvbridge provider` with exactly its rendered arguments (only
/// the container paths and ports moved into a temporary directory / free ports): the process
/// starts, serves the socket where the driver looks, answers the probes' health port; the
/// resources cover the measured peak and no API access is granted.
#[test]
fn provider_daemonset_runs_the_binary_with_its_arguments() {
    let Some(helm) = helm() else { return };
    for sets in [
        &[][..],
        &[
            "writeCertAndKeyInSeparateFiles=true",
            "constructPEMChain=false",
            "linux.cacheTTL=0s",
            "linux.rateLimit=0",
            "linux.extraArgs={--max-concurrent-mounts=8}",
        ][..],
    ] {
        let all = render(&helm, sets);
        let (_, spec, c, args) = workload(&all, "DaemonSet", "r-kvbridge-provider");
        assert_eq!(args[0], "provider");

        // The socket directory is the host path the driver scans, named <provider>.sock.
        let endpoint = args
            .iter()
            .find_map(|a| a.strip_prefix("--endpoint=unix://"))
            .unwrap()
            .to_string();
        assert!(endpoint.ends_with("/azure.sock"), "{endpoint}");
        let sock_dir = Path::new(&endpoint).parent().unwrap().to_str().unwrap();
        let mount = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == sock_dir)
            .expect("socket dir mounted");
        let vol = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(
            vol["hostPath"]["path"],
            "/var/run/secrets-store-csi-providers"
        );

        // Probes hit the health port given on the command line.
        let healthz: u16 = args
            .iter()
            .find_map(|a| a.strip_prefix("--healthz-port="))
            .unwrap()
            .parse()
            .unwrap();
        let probe_port = c["livenessProbe"]["httpGet"]["port"].as_str().unwrap();
        let port = named_port(c, &Value::from(probe_port));
        assert_eq!(port["containerPort"].as_u64(), Some(u64::from(healthz)));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");

        // Run it: the rendered arguments with the socket and cloud directory moved into a
        // temporary directory and the ports moved to free ones.
        let tmp = tempfile::tempdir().unwrap();
        let cloud_dir = tmp.path().join("etc-kubernetes");
        std::fs::create_dir(&cloud_dir).unwrap();
        let [hz, metrics] = testenv::process::free_ports::<2>().unwrap();
        let run_args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("--endpoint=") {
                    format!(
                        "--endpoint=unix://{}",
                        tmp.path().join("azure.sock").display()
                    )
                } else if a.starts_with("--healthz-port=") {
                    format!("--healthz-port={hz}")
                } else if a.starts_with("--metrics-port=") {
                    format!("--metrics-port={metrics}")
                } else if a.starts_with("--cloud-env-dir=") {
                    format!("--cloud-env-dir={}", cloud_dir.display())
                } else {
                    a.clone()
                }
            })
            .collect();
        let mut child = Command::new(kvbridge())
            .args(&run_args)
            .env("KVBRIDGE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ok = healthz_ok(hz, &mut child);
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            ok,
            "kvbridge {run_args:?} did not serve /healthz: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(tmp.path().join("azure.sock").exists(), "socket created");

        // Sized from the benchmark: 17.3 MiB peak under 100 concurrent 100-object mounts.
        let (req, lim) = memory_mib(c);
        for q in ["requests", "limits"] {
            let q = c["resources"][q]["memory"].as_str().unwrap();
            assert!(q.ends_with("Mi"), "{q}");
        }
        assert!(
            req >= 20.0 && lim >= 2.0 * req,
            "request {req} Mi, limit {lim} Mi"
        );

        // No API access is needed: no token, no roles.
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert!(!all.iter().any(|d| matches!(
            d["kind"].as_str(),
            Some("ClusterRole" | "Role" | "ClusterRoleBinding" | "RoleBinding")
        )));
    }
}

/// The FlexVolume DaemonSet's container, run with its rendered arguments against a temporary
/// plugin directory, installs `azure~kv/kv`; kubelet's calls of that file (which read stdout
/// and stderr together as one JSON document) get exactly one JSON status.
#[test]
fn flexvolume_installer_installs_a_driver_kubelet_can_call() {
    let Some(helm) = helm() else { return };
    let all = render(
        &helm,
        &[
            "flexvolume.enabled=true",
            "flexvolume.pluginDir=/etc/kubernetes/volumeplugins",
        ],
    );
    let (_, spec, c, args) = workload(&all, "DaemonSet", "r-kvbridge-flexvolume");
    assert_eq!(args, ["flexvolume", "--install=/flexmnt", "--wait"]);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/flexmnt");
    assert_eq!(
        spec["volumes"][0]["hostPath"]["path"],
        "/etc/kubernetes/volumeplugins"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);

    let tmp = tempfile::tempdir().unwrap();
    let run_args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--wait")
        .map(|a| a.replace("/flexmnt", tmp.path().to_str().unwrap()))
        .collect();
    // An older driver is replaced (kubelet may be running it: rename, never overwrite in place).
    std::fs::create_dir(tmp.path().join("azure~kv")).unwrap();
    std::fs::write(tmp.path().join("azure~kv/kv"), b"old").unwrap();
    let out = Command::new(kvbridge()).args(&run_args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let driver = tmp.path().join("azure~kv/kv");
    let meta = std::fs::metadata(&driver).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&driver).unwrap(),
        std::fs::read(kvbridge()).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("azure~kv"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["kv"], "no temporary file left");

    // kubelet: `kv init`, and a failing `kv mount` (bad JSON) with stderr merged into stdout.
    let combined = |args: &[&str]| -> (bool, serde_json::Value) {
        let out = Command::new(&driver)
            .args(args)
            .env("KVBRIDGE_LOG", "trace")
            .output()
            .unwrap();
        let mut all = out.stdout.clone();
        all.extend_from_slice(&out.stderr);
        let text = String::from_utf8(all).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kubelet could not parse {text:?}: {e}"));
        (out.status.success(), v)
    };
    let (ok, init) = combined(&["init"]);
    assert!(ok);
    assert_eq!(init["status"], "Success");
    assert_eq!(init["capabilities"]["attach"], false);
    let target = tmp.path().join("pod-volume");
    let (ok, failed) = combined(&["mount", target.to_str().unwrap(), "{not json"]);
    assert!(!ok);
    assert_eq!(failed["status"], "Failure");
    let (ok, unsupported) = combined(&["getvolumename", "{}"]);
    assert!(!ok);
    assert_eq!(unsupported["status"], "Not supported");
}

/// `kubectl apply --server-side` of `yaml` (field manager `helm-chart-test`).
fn server_side_apply(kubeconfig: &Path, yaml: &str) -> (bool, String) {
    let apply = [
        "apply",
        "--server-side",
        "--field-manager=helm-chart-test",
        "-f",
        "-",
    ];
    kubectl(kubeconfig, &apply, Some(yaml))
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl (Debian package kubectl) is installed");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every object of every scenario is accepted by the real kube-apiserver: server-side apply
/// (strict field validation: an unknown or misplaced field is an error), the CRDs become
/// Established, and a second apply changes nothing (the manifests are stable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_are_accepted_by_the_real_api_server() {
    let Some(helm) = helm() else { return };
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let client = cp.client().await.unwrap();
    // ServiceMonitor (Prometheus Operator), from tests/k8s/build.sh.
    cp.install_crds(&client, &cp.layout().root.join("crds-monitoring"))
        .await
        .unwrap();
    for (name, sets) in SCENARIOS {
        let ns = cp
            .namespace(&client, &format!("helm-{name}"))
            .await
            .unwrap();
        let release = format!("{name}-{}", &ns[ns.len() - 5..]);
        let yaml = template(&helm, &release, &ns, sets).unwrap();
        let n = docs(&yaml).len();
        for round in 0..2 {
            let (ok, out) = server_side_apply(cp.kubeconfig(), &yaml);
            assert!(ok, "{name}: kubectl apply --server-side: {out}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), n, "{name}: one line per object: {out}");
            if round == 1 {
                assert!(
                    lines.iter().all(|l| l.ends_with("serverside-applied")),
                    "{name}: {out}"
                );
            }
        }
        // The webhook configurations point at Services with no pod here: removed again.
        let (ok, out) = kubectl(
            cp.kubeconfig(),
            &[
                "delete",
                "mutatingwebhookconfiguration",
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
                "--ignore-not-found",
            ],
            None,
        );
        assert!(ok, "{out}");
        if expected(name)
            .iter()
            .any(|(kind, _)| kind == "CustomResourceDefinition")
        {
            let (ok, out) = kubectl(
                cp.kubeconfig(),
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    "crd/azurekeyvaultsecrets.spv.no",
                ],
                None,
            );
            assert!(ok, "{out}");
        }
    }
}

/// The controller Deployment agrees with `kvbridge controller`: every flag it passes is one the
/// binary accepts, the probes hit the health port, the Lease namespace comes from the downward
/// API and the Lease Role lives there, two replicas (leader election), memory sized from the
/// measured figure. (Its RBAC is tested by running the controller with the chart's
/// ServiceAccount token: controller_process.rs.)
#[test]
fn controller_deployment_matches_the_cli() {
    let Some(helm) = helm() else { return };
    let all = render(
        &helm,
        &[
            "controller.enabled=true",
            "controller.syncSecretProviderClasses=true",
        ],
    );
    let (d, pod, c, args) = workload(&all, "Deployment", "r-kvbridge-controller");
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(args[0], "controller");
    assert!(args.contains(&"--sync-secret-provider-classes".to_string()));
    assert_flags_accepted("controller", &args);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set"))
            .to_string()
    };
    let port_of = |name: &Value| {
        named_port(c, name)["containerPort"]
            .as_u64()
            .unwrap()
            .to_string()
    };
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            port_of(&c[probe]["httpGet"]["port"]),
            flag("--health-port"),
            "{probe}"
        );
    }
    assert_eq!(port_of(&Value::from("metrics")), flag("--metrics-port"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(flag("--lease-name"), "r-kvbridge-controller");
    let env = c["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    let role = find(&all, "Role", "r-kvbridge-controller-lease");
    assert_eq!(role["metadata"]["namespace"], d["metadata"]["namespace"]);
    let sa = pod["serviceAccountName"].as_str().unwrap();
    for binding in [
        find(&all, "RoleBinding", "r-kvbridge-controller-lease"),
        find(&all, "ClusterRoleBinding", "r-kvbridge-controller"),
    ] {
        assert_eq!(binding["subjects"][0]["name"], sa);
        assert_eq!(
            binding["subjects"][0]["namespace"],
            d["metadata"]["namespace"]
        );
    }
    // Sized from the measured RSS: 91 MiB at 10,000 resources (controller_scale bench).
    let (req, lim) = memory_mib(c);
    assert!(
        req >= 91.0 && lim >= 2.0 * req,
        "request {req} Mi, limit {lim} Mi"
    );
}

/// A kubeconfig for ServiceAccount `ns/name` of `cp` (a TokenRequest token): the chart's RBAC and
/// nothing else.
async fn service_account_kubeconfig(
    cp: &testenv::ControlPlane,
    client: &kube::Client,
    ns: &str,
    name: &str,
    path: &Path,
) {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: TokenRequest = kube::Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", name, &kube::api::PostParams::default(), &req)
        .await
        .unwrap();
    let token = token.status.unwrap().token.unwrap();
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: sa\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: sa\n  context: {{cluster: t, user: sa}}\ncurrent-context: sa\n",
            cp.url(),
            cp.ca_file().display()
        ),
    )
    .unwrap();
}

/// The chart's webhook, run as the rendered Deployment runs it (its arguments; a token of its
/// ServiceAccount) against the real API server, with the rendered MutatingWebhookConfiguration
/// (pointed at the process by URL: no Service routing here) and its empty caBundle: the webhook
/// creates its certificate Secret, patches the caBundle, renews the certificate, and the API
/// server has pods mutated through it. Then its RBAC is exact: every request it made was allowed,
/// and each rule atom of the chart (group x resource x verb) was the only one allowing some
/// request (audit log of the API server; testenv::rbac).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_runs_with_the_charts_service_account_and_its_rbac_is_exact() {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::api::{Api, PostParams};
    use serde_json::json;

    let Some(helm) = helm() else { return };
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let client = cp.client().await.unwrap();
    cp.install_crds(&client, &chart().join("files/crds"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ns = cp.namespace(&client, "kvbridge-system").await.unwrap();
    let release = "wh";
    let name = "wh-kvbridge-webhook";
    let yaml = template(
        &helm,
        release,
        &ns,
        &[
            "linux.enabled=false",
            "crds.install=false",
            "webhook.enabled=true",
        ],
    )
    .unwrap();
    let all = docs(&yaml);
    let (ok, out) = server_side_apply(cp.kubeconfig(), &yaml);
    assert!(ok, "{out}");
    let [port] = testenv::process::free_ports::<1>().unwrap();
    let url = format!("https://127.0.0.1:{port}/mutate");
    let patch = json!([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": url},
        {"op": "remove", "path": "/webhooks/1/clientConfig/service"},
        {"op": "add", "path": "/webhooks/1/clientConfig/url", "value": url},
    ]);
    let (ok, out) = kubectl(
        cp.kubeconfig(),
        &[
            "patch",
            "mutatingwebhookconfiguration",
            name,
            "--type=json",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    assert!(ok, "{out}");
    let mwc = find(&all, "MutatingWebhookConfiguration", name);
    for w in mwc["webhooks"].as_sequence().unwrap() {
        assert_eq!(w["failurePolicy"], "Fail");
        assert!(
            w["clientConfig"]["caBundle"].is_null(),
            "patched by the webhook"
        );
        let excluded = w["namespaceSelector"]["matchExpressions"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .unwrap();
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(strings(&excluded["values"]), ["kube-system", ns.as_str()]);
    }
    let pdb = find(&all, "PodDisruptionBudget", name);
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    let kubeconfig = dir.path().join("sa.kubeconfig");
    service_account_kubeconfig(cp, &client, &ns, name, &kubeconfig).await;

    // The rendered arguments, with the listen address on loopback, the certificate also for
    // 127.0.0.1, short validities (a renewal within the test) and a tenant for the identities.
    let (d, _, _, rendered) = workload(&all, "Deployment", name);
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(2));
    let mut args: Vec<String> = rendered
        .clone()
        .into_iter()
        .filter(|a| {
            !a.starts_with("--listen=")
                && !a.starts_with("--cert-validity=")
                && !a.starts_with("--ca-validity=")
                && !a.starts_with("--cert-check-interval=")
        })
        .collect();
    assert_eq!(args.len(), rendered.len() - 4, "{args:?}");
    args.extend([
        format!("--listen=127.0.0.1:{port}"),
        "--cert-san=127.0.0.1".into(),
        "--cert-validity=6s".into(),
        "--ca-validity=24s".into(),
        "--cert-check-interval=500ms".into(),
        "--tenant-id=00000000-0000-0000-0000-000000000001".into(),
    ]);
    let mut child = Command::new(kvbridge())
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", &ns)
        .env("KVBRIDGE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut webhook = Kill(child);
    let mut banner = [0u8; 30];
    stdout.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"kvbridge webhook listening on ");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let tls = secrets.get(&format!("{name}-tls")).await.unwrap();
    let first = tls.data.as_ref().unwrap()["tls.crt"].clone();
    let configs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let config = configs.get(name).await.unwrap();
    for w in config.webhooks.unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.as_ref().map(|b| &b.0),
            Some(&tls.data.as_ref().unwrap()["ca.crt"].0),
            "{}: caBundle patched by the webhook",
            w.name
        );
    }

    // An opted-in namespace with an AzureKeyVaultSecret, a pull secret for a registry that is
    // not there, and a namespace that is not opted in.
    let apps = cp.namespace(&client, "apps").await.unwrap();
    let (ok, out) = kubectl(
        cp.kubeconfig(),
        &[
            "label",
            "namespace",
            &apps,
            "azure-key-vault-env-injection=enabled",
        ],
        None,
    );
    assert!(ok, "{out}");
    let other = cp.namespace(&client, "other").await.unwrap();
    for n in [&apps, &other] {
        testenv::webhook::service_principal_akvs(
            &client,
            n,
            "db",
            "kvbridge-demo",
            json!({"name": "db-password", "type": "secret"}),
        )
        .await
        .unwrap();
    }
    Api::<Secret>::namespaced(client.clone(), &apps)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "pull"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": r#"{"auths":{"127.0.0.1:9":{"auth":"dTpw"}}}"#}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let pod = |command: bool, label: bool| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "app", "labels": if label { json!({"kvbridge.io/inject": "true"}) } else { json!({}) }},
            "spec": {
                "imagePullSecrets": [{"name": "pull"}],
                "containers": [{"name": "app", "image": "127.0.0.1:9/app:1",
                "command": if command { json!(["true"]) } else { json!(null) },
                "env": [{"name": "DB", "value": "db@azurekeyvault"}]}]},
        }))
        .unwrap()
    };
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let apps_pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let t0 = Instant::now();
    loop {
        match apps_pods.create(&dry, &pod(true, false)).await {
            Ok(p) if p.spec.as_ref().unwrap().init_containers.is_some() => break,
            other => assert!(
                t0.elapsed() < Duration::from_secs(30),
                "never mutated: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // kvbridge's own pod label in a namespace that is not opted in.
    let p = Api::<Pod>::namespaced(client.clone(), &other)
        .create(&dry, &pod(true, true))
        .await
        .unwrap();
    assert!(p.spec.unwrap().init_containers.is_some());
    // No command: the entrypoint is looked up with the pull secret (registry absent: refused).
    let e = apps_pods
        .create(&dry, &pod(false, false))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9/app:1"), "{e}");
    // The release namespace is never sent, even when labelled.
    let (ok, out) = kubectl(
        cp.kubeconfig(),
        &[
            "label",
            "namespace",
            &ns,
            "azure-key-vault-env-injection=enabled",
        ],
        None,
    );
    assert!(ok, "{out}");
    let p = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&dry, &pod(true, true))
        .await
        .unwrap();
    assert!(p.spec.unwrap().init_containers.is_none());
    // The certificate is renewed (Secret updated) and still trusted.
    let t0 = Instant::now();
    loop {
        let tls = secrets.get(&format!("{name}-tls")).await.unwrap();
        if tls.data.as_ref().unwrap()["tls.crt"] != first {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never renewed");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let p = apps_pods.create(&dry, &pod(true, false)).await.unwrap();
    assert!(p.spec.unwrap().init_containers.is_some());
    let rss = std::fs::read_to_string(format!("/proc/{}/status", webhook.0.id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or_default()
        .to_string();
    let _ = webhook.0.kill();
    let _ = webhook.0.wait();
    eprintln!("webhook peak RSS in the chart scenario: {rss}");

    // RBAC exactly.
    let manifests: Vec<serde_json::Value> = all
        .iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    let atoms = testenv::rbac::atoms_for(&manifests, &ns, name);
    assert!(!atoms.is_empty());
    let requests = testenv::rbac::requests_by(
        &cp.audit_log(),
        &format!("system:serviceaccount:{ns}:{name}"),
    )
    .unwrap();
    let findings = testenv::rbac::check(&atoms, &requests);
    eprintln!("webhook RBAC:\n{findings}");
    assert!(findings.exact(), "webhook RBAC is not exact:\n{findings}");
}

/// webhook.tls.secretName (e.g. cert-manager's): the Secret mounted and passed as files (every
/// flag one `kvbridge webhook` accepts), the caBundle from values, and no access to Secrets or
/// to the configuration (nothing to create or patch); registry lookups off: no Secret read at all.
#[test]
fn webhook_with_a_certificate_secret_uses_files_and_less_rbac() {
    let Some(helm) = helm() else { return };
    let all = render(
        &helm,
        &[
            "linux.enabled=false",
            "crds.install=false",
            "webhook.enabled=true",
            "webhook.tls.secretName=webhook-cert",
            "webhook.tls.caBundle=PEM",
            "webhook.registryLookup.enabled=false",
        ],
    );
    let name = "r-kvbridge-webhook";
    let (_, pod, c, args) = workload(&all, "Deployment", name);
    assert!(args.contains(&"--tls-cert-file=/tls/tls.crt".to_string()));
    assert!(args.contains(&"--tls-key-file=/tls/tls.key".to_string()));
    assert!(args.contains(&"--no-registry-lookup".to_string()));
    assert!(!args
        .iter()
        .any(|a| a.starts_with("--webhook-configuration")));
    assert_eq!(args[0], "webhook");
    assert_flags_accepted("webhook", &args);
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "webhook-cert");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/tls");
    let mwc = find(&all, "MutatingWebhookConfiguration", name);
    for w in mwc["webhooks"].as_sequence().unwrap() {
        assert_eq!(w["clientConfig"]["caBundle"], "UEVN");
    }
    assert!(!all.iter().any(|d| d["kind"] == "Role"));
    let rules = find(&all, "ClusterRole", name)["rules"]
        .as_sequence()
        .unwrap();
    for r in rules {
        let resources = strings(&r["resources"]);
        assert!(
            !resources.contains(&"secrets".to_string())
                && !resources.contains(&"mutatingwebhookconfigurations".to_string()),
            "{r:?}"
        );
    }
}
