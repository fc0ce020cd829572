//! `cargo bench -p kvbridge-render --bench trust`: building a CA trust bundle
//! (`render::trust::build`) from this machine's system bundle (or 150 generated CA certificates
//! when it has none) plus the CAs of a 3-certificate chain: PEM only, PKCS#12 only, both. Prints figures;
//! asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::time::{Duration, Instant};

use render::trust::{build, CaSet, Outputs, SYSTEM_BUNDLE_PATHS};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let system = SYSTEM_BUNDLE_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_else(|| {
            let certs: Vec<Vec<u8>> = (0..150)
                .map(|i| {
                    testenv::chain::chain(pki::KeyKind::Ec(pki::Curve::P256), 2, &format!("s{i}"))
                        .certs[1]
                        .clone()
                })
                .collect();
            pki::bundle_to_pem(None, &certs).into_bytes()
        });
    let c = testenv::chain::ec_chain3();
    let cas = vec![CaSet::from_der("corp", &c.certs).unwrap()];
    let (system_certs, _) = render::trust::system_certs(&system).unwrap();
    println!(
        "system bundle: {} bytes, {} certificates; + {} Key Vault CA certificates",
        system.len(),
        system_certs.len(),
        cas[0].certs.len()
    );
    for (name, outputs) in [
        (
            "PEM only",
            Outputs {
                pem: true,
                p12: false,
            },
        ),
        (
            "PKCS#12 only",
            Outputs {
                pem: false,
                p12: true,
            },
        ),
        ("PEM + PKCS#12", Outputs::BOTH),
    ] {
        let mut times = Vec::new();
        let mut sizes = (0, 0);
        for _ in 0..30 {
            let t0 = Instant::now();
            let b = build(Some(&system), &cas, outputs).unwrap();
            times.push(t0.elapsed());
            sizes = (b.pem.len(), b.p12.len());
        }
        times.sort();
        println!(
            "{name:>14}: p50 {:?} p99 {:?} (PEM {} bytes, PKCS#12 {} bytes)",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            sizes.0,
            sizes.1
        );
    }
}
