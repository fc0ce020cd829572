//! The per-node cache, proven with the dev vault's request counters.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

fn ten_secrets() -> String {
    (0..10)
        .map(|i| format!("      - {{name: shared-{i}, value: \"value-{i}\"}}\n"))
        .collect()
}

fn ten_objects() -> String {
    let items: Vec<String> = (0..10)
        .map(|i| format!("objectName: shared-{i}\nobjectType: secret"))
        .collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    objects(&refs)
}

async fn gets(env: &Env) -> u64 {
    let mut n = 0;
    for i in 0..10 {
        n += env.count("GetSecret", &format!("shared-{i}")).await;
    }
    n
}

async fn concurrent_mounts(env: &Env, n: usize, secrets: &str) {
    let a = attrs(&ten_objects(), &[]);
    let mut tasks = Vec::new();
    for i in 0..n {
        let socket = env.socket.clone();
        let mut a = a.clone();
        a.insert("csi.storage.k8s.io/pod.name".into(), format!("app-{i}"));
        let req = request(&a, secrets, "420");
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&socket).await;
            mount(&mut client, req).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.files.len(), 10);
        assert_eq!(r.object_version.len(), 10);
        for i in 0..10 {
            assert_eq!(
                file(&r, &format!("shared-{i}")).contents,
                format!("value-{i}").as_bytes()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_mounts_one_identity_ten_gets() {
    let env = start_with(&ten_secrets(), |c| {
        c.cache.latest_ttl = Duration::from_secs(3);
    })
    .await;
    env.admin("POST", "/admin/counters/reset", None).await;

    concurrent_mounts(&env, 50, &sp_secrets("app", "app-secret")).await;
    assert_eq!(gets(&env).await, 10, "50 mounts x 10 objects, one identity");

    // A second identity never reads the first one's entries: its own 10.
    concurrent_mounts(&env, 50, &sp_secrets("app2", "app2-secret")).await;
    assert_eq!(gets(&env).await, 20, "second identity");

    // Within the TTL, more mounts are served from the cache.
    concurrent_mounts(&env, 10, &sp_secrets("app", "app-secret")).await;
    assert_eq!(gets(&env).await, 20, "within the latest TTL");

    // After the TTL `latest` is read again (rotation sees new versions).
    tokio::time::sleep(Duration::from_millis(3200)).await;
    concurrent_mounts(&env, 10, &sp_secrets("app", "app-secret")).await;
    assert_eq!(gets(&env).await, 30, "after the latest TTL");

    let stats = &env.provider.as_ref().unwrap().service.cache().stats;
    assert_eq!(
        stats.upstream.load(std::sync::atomic::Ordering::Relaxed),
        30
    );
    env.stop().await;
}
