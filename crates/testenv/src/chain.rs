//! Certificate chains and service-principal certificates made with the workspace's `pki` crate,
//! for tests that need real X.509 bytes.

use std::path::Path;
use std::sync::OnceLock;

use pki::{CertRequest, Curve, KeyKind, PrivateKey};

/// Keys and DER certificates of a chain, leaf first (`keys[i]` belongs to `certs[i]`).
pub struct Chain {
    pub keys: Vec<PrivateKey>,
    pub certs: Vec<Vec<u8>>,
}

/// A request for `CN=<cn>`, valid 30 days; a leaf also names `<cn>.example`.
pub fn request(cn: &str, ca: bool) -> CertRequest {
    CertRequest {
        subject: format!("CN={cn}"),
        dns_names: if ca {
            vec![]
        } else {
            vec![format!("{cn}.example")]
        },
        ip_addresses: vec![],
        is_ca: ca,
        validity_days: 30,
    }
}

fn key(kind: KeyKind) -> PrivateKey {
    pki::generate_key(kind).unwrap_or_else(|e| panic!("generating a {kind:?} key: {e}"))
}

/// A chain of `len` (1..=3) certificates, leaf first: a self-signed leaf; leaf + root; leaf +
/// intermediate + root. Subjects are `<tag>-leaf`, `<tag>-inter`, `<tag>-root`.
pub fn chain(kind: KeyKind, len: usize, tag: &str) -> Chain {
    assert!((1..=3).contains(&len), "a chain has 1 to 3 certificates");
    let fail = |what: &str, e: pki::PkiError| -> ! { panic!("{what} for {tag}: {e}") };
    let first = key(kind);
    if len == 1 {
        let leaf = pki::self_signed(&request(&format!("{tag}-leaf"), false), &first)
            .unwrap_or_else(|e| fail("self-signing the leaf", e));
        return Chain {
            keys: vec![first],
            certs: vec![leaf],
        };
    }
    let root = pki::self_signed(&request(&format!("{tag}-root"), true), &first)
        .unwrap_or_else(|e| fail("self-signing the root", e));
    let mut keys = vec![first];
    let mut certs = vec![root];
    if len == 3 {
        let k = key(kind);
        let c = pki::issue(
            &request(&format!("{tag}-inter"), true),
            &k,
            &certs[0],
            &keys[0],
        )
        .unwrap_or_else(|e| fail("issuing the intermediate", e));
        keys.insert(0, k);
        certs.insert(0, c);
    }
    let k = key(kind);
    let leaf = pki::issue(
        &request(&format!("{tag}-leaf"), false),
        &k,
        &certs[0],
        &keys[0],
    )
    .unwrap_or_else(|e| fail("issuing the leaf", e));
    keys.insert(0, k);
    certs.insert(0, leaf);
    Chain { keys, certs }
}

/// A three-certificate RSA-2048 chain (tag `rsa`), made once per test binary.
pub fn rsa_chain3() -> &'static Chain {
    static C: OnceLock<Chain> = OnceLock::new();
    C.get_or_init(|| chain(KeyKind::Rsa { bits: 2048 }, 3, "rsa"))
}

/// A three-certificate EC P-256 chain (tag `ec`), made once per test binary.
pub fn ec_chain3() -> &'static Chain {
    static C: OnceLock<Chain> = OnceLock::new();
    C.get_or_init(|| chain(KeyKind::Ec(Curve::P256), 3, "ec"))
}

/// A service principal's certificate credential (RSA-2048, `CN=sp-cert`, for RS256/PS256
/// assertions) written into `dir`: `sp.pem` (the certificate, for a dev-vault seed),
/// `sp-key-and-cert.pem` and `sp.pfx` (empty password) for the credential. Returns the key
/// and the DER certificate.
pub fn service_principal_certificate(dir: &Path) -> (PrivateKey, Vec<u8>) {
    let c = chain(KeyKind::Rsa { bits: 2048 }, 1, "sp");
    let sp_key = c.keys.into_iter().next().unwrap_or_else(|| unreachable!());
    let sp_cert = c.certs.into_iter().next().unwrap_or_else(|| unreachable!());
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    };
    write(
        "sp.pem",
        pki::pem_encode("CERTIFICATE", &sp_cert).as_bytes(),
    );
    write(
        "sp-key-and-cert.pem",
        pki::bundle_to_pem(Some(&sp_key), std::slice::from_ref(&sp_cert)).as_bytes(),
    );
    let pfx = pki::build_pfx(&sp_key, std::slice::from_ref(&sp_cert))
        .unwrap_or_else(|e| panic!("building sp.pfx: {e}"));
    write("sp.pfx", &pfx);
    (sp_key, sp_cert)
}
