//! Hostile classes and clients against a real provider on a unix socket (issue 13): none may
//! stall the node's provider, read node files outside the allowed directory, or take the
//! socket down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Far longer than any of these calls takes when nothing blocks; only reached on a regression.
const BOUND: Duration = Duration::from_secs(20);

#[allow(unsafe_code)]
fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn one_secret() -> String {
    objects(&["objectName: plain\nobjectType: secret"])
}

/// A normal one-secret Mount on `client` is answered (within [`BOUND`]) with the secret.
async fn serves_a_normal_mount(
    client: &mut provider::proto::csi_driver_provider_client::CsiDriverProviderClient<
        tonic::transport::Channel,
    >,
    sp: &str,
) {
    let req = request(&attrs(&one_secret(), &[]), sp, "420");
    let resp = timeout(BOUND, mount(client, req))
        .await
        .expect("normal mount answers")
        .unwrap();
    assert_eq!(file(&resp, "plain").contents, b"hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_env_file_name_is_confined_bounded_and_never_blocks() {
    let envs = tempfile::tempdir().unwrap();
    let envs_path = envs.path().to_path_buf();
    let env = start_with("", |c| c.cloud_env_dir = Some(envs_path.clone())).await;
    // The dev vault's environment file, placed where the node keeps them.
    std::fs::copy(&env.dv.info.cloud_env_file, envs.path().join("dv.json")).unwrap();
    mkfifo(&envs.path().join("fifo"));
    let outside_fifo = env.dir.path().join("outside-fifo");
    mkfifo(&outside_fifo);
    std::fs::write(envs.path().join("huge.json"), vec![b' '; 1 << 20]).unwrap();
    let mut client = env.client().await;
    let sp = sp_secrets("app", "app-secret");

    let outside_fifo = outside_fifo.to_str().unwrap().to_string();
    let cases: [(&str, &str); 6] = [
        ("fifo", "not a regular file"),
        (&outside_fifo, "--cloud-env-dir"),
        ("/dev/zero", "--cloud-env-dir"),
        ("/proc/self/fd/2", "--cloud-env-dir"),
        ("../../etc/passwd", "--cloud-env-dir"),
        ("huge.json", "more than the limit of 65536"),
    ];
    // All hostile mounts at once, plus Version calls: every call answers.
    let mut calls = Vec::new();
    for (name, want) in cases {
        let (name, want) = (name.to_string(), want.to_string());
        let mut c = client.clone();
        let req = request(
            &attrs(&one_secret(), &[("cloudEnvFileName", &name)]),
            &sp,
            "420",
        );
        calls.push(tokio::spawn(async move {
            let status = timeout(BOUND, mount(&mut c, req))
                .await
                .unwrap_or_else(|_| panic!("mount with cloudEnvFileName {name:?} did not answer"))
                .unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{name}: {status:?}"
            );
            assert!(
                status.message().contains(&want),
                "{name}: {}",
                status.message()
            );
            assert!(
                status.message().contains("cloudEnvFileName"),
                "{}",
                status.message()
            );
        }));
    }
    for _ in 0..4 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            timeout(BOUND, c.version(provider::proto::VersionRequest::default()))
                .await
                .expect("Version answers while hostile mounts run")
                .unwrap();
        }));
    }
    for c in calls {
        c.await.unwrap();
    }

    // A real environment file in the directory works, by relative and absolute name.
    for name in [
        "dv.json".to_string(),
        envs.path().join("dv.json").display().to_string(),
    ] {
        let req = request(
            &attrs(&one_secret(), &[("cloudEnvFileName", &name)]),
            &sp,
            "420",
        );
        let resp = mount(&mut client, req).await.unwrap();
        assert_eq!(file(&resp, "plain").contents, b"hello world");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_nested_or_typo_objects_are_refused_and_others_keep_being_served() {
    let env = start().await;
    let mut client = env.client().await;
    let sp = sp_secrets("app", "app-secret");
    let deep = format!(
        "array:\n  - |\n    objectName: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let many: String = {
        let items: Vec<String> = (0..80_000)
            .map(|i| format!("objectName: s{i}\nobjectType: secret"))
            .collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        objects(&refs)
    };
    let cases = [
        (deep, "nested too deeply"),
        (many, "more than the limit"),
        (
            "arrray:\n  - |\n    objectName: plain\n    objectType: secret\n".to_string(),
            "did you mean array?",
        ),
        ("array: []".to_string(), "array is empty"),
    ];
    let mut calls = Vec::new();
    for (objs, want) in cases {
        let mut c = client.clone();
        let req = request(&attrs(&objs, &[]), &sp, "420");
        calls.push(tokio::spawn(async move {
            let status = timeout(BOUND, mount(&mut c, req))
                .await
                .expect("hostile mount answers")
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(want), "{}", status.message());
        }));
    }
    // A normal mount meanwhile.
    serves_a_normal_mount(&mut client, &sp).await;
    for c in calls {
        c.await.unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused_from_its_length_and_the_connection_keeps_serving() {
    let env = start_with("", |c| c.refusal_delay = Duration::from_millis(300)).await;
    let mut client = env.client().await;
    let sp = sp_secrets("app", "app-secret");
    let mut req = request(&attrs(&one_secret(), &[]), &sp, "420");
    req.target_path = "x".repeat(provider::server::MAX_REQUEST_SIZE + 1);
    let started = std::time::Instant::now();
    let status = timeout(BOUND, mount(&mut client, req))
        .await
        .expect("oversized mount answers")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let limit = format!(
        "more than the limit of {} bytes",
        provider::server::MAX_REQUEST_SIZE
    );
    for want in [
        limit.as_str(),
        "refused without reading it",
        "nodePublishSecretRef",
    ] {
        assert!(status.message().contains(want), "{}", status.message());
    }
    // Refused like any other invalid class: after the refusal delay.
    assert!(started.elapsed() >= Duration::from_millis(300));
    let refused = env.metrics().await;
    assert!(
        refused.contains(
            "kvbridge_grpc_request_duration_seconds_count{method=\"Mount\",code=\"InvalidArgument\"} 1"
        ),
        "{refused}"
    );
    serves_a_normal_mount(&mut client, &sp).await;
    // Fields over their own limits are refused before any JSON parsing, naming the source.
    let secrets = format!(
        "{{\"clientid\":\"app\",\"clientsecret\":\"{}\"}}",
        "s".repeat(provider::service::MAX_SECRETS_BYTES)
    );
    let status = mount(
        &mut client,
        request(&attrs(&one_secret(), &[]), &secrets, "420"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("nodePublishSecretRef Secret is too large"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("sss"), "{}", status.message());
    let padding = "p".repeat(provider::service::MAX_ATTRIBUTES_BYTES);
    let big = attrs(&one_secret(), &[("padding", padding.as_str())]);
    let status = mount(&mut client, request(&big, &sp, "420"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("parameters are too large"),
        "{}",
        status.message()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_take_turns_at_a_bounded_rate_and_small_ones_never_wait() {
    let rate = 512 * 1024;
    let env = start_with("", |c| {
        c.large_read_rate = rate;
        c.refusal_delay = Duration::ZERO;
    })
    .await;
    let client = env.client().await;
    let sp = sp_secrets("app", "app-secret");
    // 600 KiB classes (far over the large-request size, under every limit) whose objects have a
    // typo: each is read and parsed, then refused.
    let padding = "p".repeat(600 * 1024);
    let typo = "arrray:\n  - |\n    objectName: plain\n    objectType: secret\n";
    let big = request(&attrs(typo, &[("padding", padding.as_str())]), &sp, "420");
    let pace = Duration::from_secs_f64(big.attributes.len() as f64 / rate as f64);
    let started = std::time::Instant::now();
    let mut large = Vec::new();
    for _ in 0..3 {
        let (mut c, req) = (client.clone(), big.clone());
        large.push(tokio::spawn(async move {
            let status = timeout(BOUND, mount(&mut c, req))
                .await
                .expect("large mount answers")
                .unwrap_err();
            assert!(
                status.message().contains("did you mean array?"),
                "{status:?}"
            );
            started.elapsed()
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A normal mount meanwhile is served at once, not after the large ones.
    serves_a_normal_mount(&mut client.clone(), &sp).await;
    let normal_done = started.elapsed();
    let mut done = Vec::new();
    for t in large {
        done.push(t.await.unwrap());
    }
    done.sort();
    // One at a time, each holding the lane for its size at the configured rate.
    assert!(done[1] >= pace, "{done:?} pace {pace:?}");
    assert!(done[2] >= pace * 2, "{done:?} pace {pace:?}");
    assert!(
        normal_done < done[1],
        "normal {normal_done:?}, large {done:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_and_silent_connections_are_closed() {
    let env = start_with("", |c| {
        c.connections.max_connections = 3;
        c.connections.first_byte_timeout = Duration::from_millis(300);
        c.connections.idle_timeout = Duration::from_millis(600);
    })
    .await;
    let meta = std::fs::metadata(&env.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temporary socket names are left beside it.
    let names: Vec<_> = std::fs::read_dir(env.socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("azure.sock")]);

    // Three silent connections take every slot ...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::UnixStream::connect(&env.socket).await.unwrap());
    }
    // ... so a real client waits until the provider closes them, then is served.
    let mut client = env.client().await;
    let v = timeout(
        BOUND,
        client.version(provider::proto::VersionRequest::default()),
    )
    .await
    .expect("served once the silent connections are closed")
    .unwrap();
    assert_eq!(v.into_inner().runtime_name, provider::RUNTIME_NAME);
    for mut s in silent {
        // The server speaks first (its SETTINGS); then, the client being silent, it closes.
        let mut buf = Vec::new();
        timeout(BOUND, s.read_to_end(&mut buf))
            .await
            .expect("silent connection closed by the provider")
            .ok();
    }

    // A connection that sent the HTTP/2 preface and then stays idle is closed too.
    let mut idle = tokio::net::UnixStream::connect(&env.socket).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = timeout(BOUND, idle.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "idle HTTP/2 connection was not closed");
    assert!(
        buf.len() >= 9 && buf[3] == 4,
        "server SETTINGS first: {buf:?}"
    );

    // A Mount that outlasts the idle timeout is not cut (a call is in flight).
    env.admin(
        "PUT",
        "/admin/faults",
        Some(serde_json::json!({"latency_ms": 1000})),
    )
    .await;
    let mut client = env.client().await;
    let req = request(
        &attrs(&one_secret(), &[]),
        &sp_secrets("app", "app-secret"),
        "420",
    );
    let resp = timeout(BOUND, mount(&mut client, req))
        .await
        .expect("slow mount answers")
        .expect("slow mount is not cut by the idle timeout");
    assert_eq!(file(&resp, "plain").contents, b"hello world");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mounts_answer_after_the_refusal_delay_without_holding_up_others() {
    let delay = Duration::from_millis(600);
    let env = start_with("", |c| c.refusal_delay = delay).await;
    let client = env.client().await;
    let sp = sp_secrets("app", "app-secret");
    let typo = "arrray:\n  - |\n    objectName: plain\n    objectType: secret\n";
    // Eight refused mounts in flight on the connection a normal mount also uses.
    let t0 = std::time::Instant::now();
    let refused: Vec<_> = (0..8)
        .map(|_| {
            let mut c = client.clone();
            let req = request(&attrs(typo, &[]), &sp, "420");
            tokio::spawn(async move {
                let status = mount(&mut c, req).await.unwrap_err();
                (status, t0.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = client.clone();
    let resp = mount(&mut c, request(&attrs(&one_secret(), &[]), &sp, "420"))
        .await
        .unwrap();
    let normal_done = t0.elapsed();
    assert_eq!(file(&resp, "plain").contents, b"hello world");
    for r in refused {
        let (status, at) = r.await.unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("did you mean array?"),
            "{}",
            status.message()
        );
        // The refusal waited at least the delay; the normal mount did not wait for it.
        assert!(at >= delay, "refused after {at:?}, delay {delay:?}");
        assert!(
            normal_done < at,
            "normal mount at {normal_done:?}, refusal at {at:?}"
        );
    }
    // Vault errors are not delayed: they are not the caller's input.
    let missing = objects(&["objectName: does-not-exist\nobjectType: secret"]);
    let t = std::time::Instant::now();
    let status = mount(&mut c, request(&attrs(&missing, &[]), &sp, "420"))
        .await
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(t.elapsed() < delay, "{:?}", t.elapsed());
    env.stop().await;
}
