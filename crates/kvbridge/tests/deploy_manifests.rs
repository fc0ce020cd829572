//! deploy/controller.yaml agrees with the binary: every flag the Deployment passes is one
//! `kvbridge controller` accepts, the probes hit the health port, the Lease Role is in the
//! Deployment's namespace, and the memory request covers the measured figure. (The provider and
//! FlexVolume manifests come from the Helm chart: tests/helm_chart.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

fn docs(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn mebibytes(q: &str) -> f64 {
    let (n, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let n: f64 = n.parse().unwrap();
    match unit {
        "Mi" => n,
        "Gi" => n * 1024.0,
        "Ki" => n / 1024.0,
        other => panic!("unexpected unit {other}"),
    }
}

#[test]
fn controller_deployment_matches_the_cli() {
    let all = docs("controller.yaml");
    let d = all
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "kvbridge-controller")
        .expect("Deployment kvbridge-controller");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "controller");
    let help = Command::new(env!("CARGO_BIN_EXE_kvbridge"))
        .args(["controller", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} is not a `kvbridge controller` flag"
        );
    }
    let flag_port = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("{flag} not set"))
            .to_string()
    };
    let port_of = |name: &Value| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| &p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
            .to_string()
    };
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            port_of(&c[probe]["httpGet"]["port"]),
            flag_port("--health-port"),
            "{probe}"
        );
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
            .as_str()
            .unwrap(),
        flag_port("--metrics-port")
    );
    // The Lease namespace comes from the downward API; the Lease Role lives there.
    let env = c["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    let role = all
        .iter()
        .find(|r| r["kind"] == "Role")
        .expect("Lease Role");
    assert_eq!(role["metadata"]["namespace"], d["metadata"]["namespace"]);
    // Sized from the measured RSS (about 27 MiB after a sync scenario).
    let req = mebibytes(c["resources"]["requests"]["memory"].as_str().unwrap());
    let lim = mebibytes(c["resources"]["limits"]["memory"].as_str().unwrap());
    assert!(
        req >= 32.0 && lim >= 2.0 * req,
        "request {req} Mi, limit {lim} Mi"
    );
}
