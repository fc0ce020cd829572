//! The FlexVolume driver as kubelet runs it: a real process, real JSON arguments (the options of
//! the old driver's documented nginx example, pointed at the dev vault through the node
//! environment), against the dev vault.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

fn driver(env: &Env, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_kv"))
        .args(args)
        .env("KVBRIDGE_CLOUD_ENV_FILE", &env.dv.info.cloud_env_file)
        .env("KVBRIDGE_CA_FILE", &env.dv.info.ca)
        .env("KVBRIDGE_IMDS_ENDPOINT", &env.dv.info.url)
        .env(
            "KVBRIDGE_NMI_ENDPOINT",
            format!("{}/host/token/", env.dv.info.url),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let status: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON status ({e}): {stdout:?}"));
    (out.status.code().unwrap_or(-1), status)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_calls_init_mount_unmount() {
    let env = start().await;
    let (code, s) = driver(&env, &["init"]);
    assert_eq!(code, 0);
    assert_eq!(
        s,
        json!({"status": "Success", "capabilities": {"attach": false}})
    );

    // The documented example's options (names adapted to the dev vault's objects), as kubelet
    // passes them: options + pod info + base64 secretRef data.
    let target = env
        .dir
        .path()
        .join("pods/nginx-flex-kv/volumes/azure~kv/test");
    std::fs::create_dir_all(&target).unwrap();
    let options = json!({
        "usepodidentity": "false",
        "keyvaultname": VAULT,
        "keyvaultobjectnames": "plain;rsa;tls",
        "keyvaultobjectaliases": "secret.json;;tls.crt",
        "keyvaultobjecttypes": "secret;key;cert",
        "keyvaultobjectversions": "",
        "resourcegroup": "testresourcegroup",
        "subscriptionid": "testsub",
        "tenantid": TENANT,
        "kubernetes.io/fsType": "",
        "kubernetes.io/pod.name": "nginx-flex-kv",
        "kubernetes.io/pod.namespace": "default",
        "kubernetes.io/pod.uid": "9f3a1c2e-1111-2222-3333-444455556666",
        "kubernetes.io/pvOrVolumeName": "test",
        "kubernetes.io/readwrite": "ro",
        "kubernetes.io/serviceAccount.name": "default",
        "kubernetes.io/secret/clientid": b64("app"),
        "kubernetes.io/secret/clientsecret": b64("app-secret"),
    })
    .to_string();
    let (code, s) = driver(&env, &["mount", target.to_str().unwrap(), &options]);
    assert_eq!((code, &s), (0, &json!({"status": "Success"})));
    assert_eq!(
        std::fs::read(target.join("secret.json")).unwrap(),
        b"hello world"
    );
    assert!(std::fs::read_to_string(target.join("rsa"))
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(std::fs::read_to_string(target.join("tls.crt"))
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));

    // usepodidentity (the seed users' main path): NMI serves the pod kubelet names; the pod
    // app-0 is bound to an identity with access, nginx-flex-kv is not.
    let pi_target = env.dir.path().join("pods/app-0/volumes/azure~kv/test");
    std::fs::create_dir_all(&pi_target).unwrap();
    let mut pi: Value = serde_json::from_str(&options).unwrap();
    pi["usepodidentity"] = json!("true");
    pi["kubernetes.io/pod.name"] = json!("app-0");
    for k in [
        "kubernetes.io/secret/clientid",
        "kubernetes.io/secret/clientsecret",
    ] {
        pi.as_object_mut().unwrap().remove(k);
    }
    let (code, s) = driver(
        &env,
        &["mount", pi_target.to_str().unwrap(), &pi.to_string()],
    );
    assert_eq!((code, &s), (0, &json!({"status": "Success"})));
    assert_eq!(
        std::fs::read(pi_target.join("secret.json")).unwrap(),
        b"hello world"
    );
    pi["kubernetes.io/pod.name"] = json!("nginx-flex-kv");
    let unbound = env
        .dir
        .path()
        .join("pods/nginx-flex-kv-2/volumes/azure~kv/test");
    let (code, s) = driver(&env, &["mount", unbound.to_str().unwrap(), &pi.to_string()]);
    assert_eq!(code, 1, "{s}");
    assert!(
        s["message"].as_str().unwrap().contains("nginx-flex-kv"),
        "{s}"
    );
    let (code, _) = driver(&env, &["unmount", pi_target.to_str().unwrap()]);
    assert_eq!(code, 0);

    // A missing object: Failure with the object named, nothing written.
    let bad_target = env.dir.path().join("pods/other/volumes/azure~kv/test");
    let bad = options
        .replace("plain;rsa;tls", "plain;rsa;nope")
        .replace("cert\"", "secret\"");
    let (code, s) = driver(&env, &["mount", bad_target.to_str().unwrap(), &bad]);
    assert_eq!(code, 1);
    assert_eq!(s["status"], "Failure");
    assert!(s["message"].as_str().unwrap().contains("nope"), "{s}");
    assert!(!bad_target.exists());

    // Validation as the old driver words it.
    let (code, s) = driver(
        &env,
        &[
            "mount",
            bad_target.to_str().unwrap(),
            &json!({"tenantid": "t"}).to_string(),
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(s["message"], "validation failed, keyvaultname is empty");

    let (code, s) = driver(&env, &["unmount", target.to_str().unwrap()]);
    assert_eq!((code, &s), (0, &json!({"status": "Success"})));
    assert!(!target.exists());
    let (code, _) = driver(&env, &["unmount", target.to_str().unwrap()]);
    assert_eq!(code, 0, "unmount is idempotent");

    let (code, s) = driver(&env, &["getvolumename", "{}"]);
    assert_eq!(code, 1);
    assert_eq!(s["status"], "Not supported");
    env.stop().await;
}
