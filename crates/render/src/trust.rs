//! CA trust bundles: a system bundle (the image's own, read by the caller) plus CA certificates
//! kept in Key Vault, as one PEM file (for OpenSSL, curl, Python, Node.js, Go) and one PKCS#12
//! trust store (Java: every entry a `trustedCertEntry`). Pure: the caller reads the system
//! bundle ([`SYSTEM_BUNDLE_PATHS`]) and fetches the vault objects.
//!
//! Hostile input is bounded before parsing ([`MAX_SYSTEM_BUNDLE_BYTES`], [`MAX_OBJECT_BYTES`],
//! [`MAX_CERTS`]). Key Vault certificates must parse as X.509 and at least one per object must
//! be a CA (basicConstraints cA); non-CA certificates of a chain (the leaf) are left out.
//! System bundle entries that do not parse are skipped and counted (a distribution's bundle is
//! the image's business). Duplicates (same DER) are written once.

use std::collections::HashSet;
use std::fmt::Write as _;

use pki::PkiError;

/// Where distributions keep their PEM bundle, in the order they are tried: Debian/Ubuntu,
/// Alpine and distroless (`ca-certificates.crt`); RHEL/Fedora/CentOS (`ca-bundle.crt`, and the
/// file it links to); Alpine's and OpenSSL's `cert.pem`; openSUSE.
pub const SYSTEM_BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The PEM bundle's file name.
pub const PEM_FILE: &str = "ca-certificates.crt";
/// The PKCS#12 trust store's file name.
pub const P12_FILE: &str = "truststore.p12";
/// The trust store's password (integrity only: a trust store holds no secret; Java's own
/// `cacerts` uses the same one).
pub const TRUSTSTORE_PASSWORD: &str = "changeit";

/// Largest system bundle read (Debian's is ~0.2 MiB).
pub const MAX_SYSTEM_BUNDLE_BYTES: usize = 8 * 1024 * 1024;
/// Largest Key Vault object taken as CA input.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;
/// Most certificates in one bundle (system and Key Vault together).
pub const MAX_CERTS: usize = 4096;

/// Why no bundle was built. Never quotes input bytes.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the system bundle is {bytes} bytes; at most {MAX_SYSTEM_BUNDLE_BYTES} are read")]
    SystemTooLarge { bytes: usize },
    #[error("{name}: {bytes} bytes; at most {MAX_OBJECT_BYTES} are accepted for a CA object")]
    ObjectTooLarge { name: String, bytes: usize },
    #[error("more than {MAX_CERTS} certificates")]
    TooManyCerts,
    #[error("{name}: certificate {index} is not valid X.509")]
    NotCertificate {
        name: String,
        index: usize,
        #[source]
        source: PkiError,
    },
    #[error("{name}: cannot read the PEM text")]
    Pem {
        name: String,
        #[source]
        source: PkiError,
    },
    #[error("{name}: holds no CA certificate (basicConstraints cA); a trust bundle takes CA certificates only (found: {subjects})")]
    NoCa { name: String, subjects: String },
    #[error("cannot build the PKCS#12 trust store")]
    Truststore(#[source] PkiError),
}

/// CA certificates from one Key Vault object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSet {
    /// The object (for error messages, comments and Java aliases).
    pub name: String,
    /// DER certificates, CA only.
    pub certs: Vec<Vec<u8>>,
}

impl CaSet {
    /// The CA certificates among `certs` (DER, e.g. a certificate's `cer` or the chain of a
    /// certificate-backed secret). Every certificate must parse; at least one must be a CA.
    pub fn from_der(name: &str, certs: &[Vec<u8>]) -> Result<CaSet, TrustError> {
        let total: usize = certs.iter().map(Vec::len).sum();
        if total > MAX_OBJECT_BYTES {
            return Err(TrustError::ObjectTooLarge {
                name: name.to_string(),
                bytes: total,
            });
        }
        if certs.len() > MAX_CERTS {
            return Err(TrustError::TooManyCerts);
        }
        let mut cas = Vec::new();
        let mut others = Vec::new();
        for (index, der) in certs.iter().enumerate() {
            let info = pki::cert_info(der).map_err(|source| TrustError::NotCertificate {
                name: name.to_string(),
                index,
                source,
            })?;
            if info.is_ca {
                cas.push(der.clone());
            } else {
                others.push(info.subject);
            }
        }
        if cas.is_empty() {
            return Err(TrustError::NoCa {
                name: name.to_string(),
                subjects: if others.is_empty() {
                    "no certificate".into()
                } else {
                    others.join("; ")
                },
            });
        }
        Ok(CaSet {
            name: name.to_string(),
            certs: cas,
        })
    }

    /// The CA certificates of a PEM text (CERTIFICATE blocks; a private key, if any, is
    /// ignored).
    pub fn from_pem(name: &str, text: &str) -> Result<CaSet, TrustError> {
        if text.len() > MAX_OBJECT_BYTES {
            return Err(TrustError::ObjectTooLarge {
                name: name.to_string(),
                bytes: text.len(),
            });
        }
        let bundle = pki::parse_pem_bundle(text).map_err(|source| TrustError::Pem {
            name: name.to_string(),
            source,
        })?;
        Self::from_der(name, &bundle.certs)
    }
}

/// The certificates of a system bundle: every CERTIFICATE block that decodes and parses as
/// X.509, in order; the count of those skipped. Bounded by [`MAX_SYSTEM_BUNDLE_BYTES`] and
/// [`MAX_CERTS`].
pub fn system_certs(bundle: &[u8]) -> Result<(Vec<Vec<u8>>, usize), TrustError> {
    if bundle.len() > MAX_SYSTEM_BUNDLE_BYTES {
        return Err(TrustError::SystemTooLarge {
            bytes: bundle.len(),
        });
    }
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(bundle);
    let mut certs = Vec::new();
    let mut skipped = 0;
    let mut rest: &str = &text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else {
            skipped += 1;
            break;
        };
        let block = &after[..end + END.len()];
        rest = &after[end + END.len()..];
        // A block with a nested BEGIN is malformed: parse only from the last BEGIN.
        let block = match block.rfind(BEGIN) {
            Some(0) | None => block,
            Some(i) => {
                skipped += 1;
                &block[i..]
            }
        };
        match pki::parse_pem_bundle(block) {
            Ok(b) if b.certs.len() == 1 && pki::cert_info(&b.certs[0]).is_ok() => {
                certs.extend(b.certs);
            }
            _ => skipped += 1,
        }
        if certs.len() > MAX_CERTS {
            return Err(TrustError::TooManyCerts);
        }
    }
    Ok((certs, skipped))
}

/// A built bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// PEM: the system certificates, then the Key Vault CAs (each after a `# name: subject`
    /// comment line).
    pub pem: Vec<u8>,
    /// PKCS#12 trust store with the same certificates ([`TRUSTSTORE_PASSWORD`]).
    pub p12: Vec<u8>,
    /// System certificates written.
    pub system_certs: usize,
    /// System bundle entries that did not parse.
    pub system_skipped: usize,
    /// Key Vault CA certificates written (after removing duplicates).
    pub vault_cas: usize,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("pem_bytes", &self.pem.len())
            .field("p12_bytes", &self.p12.len())
            .field("system_certs", &self.system_certs)
            .field("system_skipped", &self.system_skipped)
            .field("vault_cas", &self.vault_cas)
            .finish()
    }
}

/// What to build: the PEM file, the trust store, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    pub pem: bool,
    pub p12: bool,
}

impl Outputs {
    pub const BOTH: Outputs = Outputs {
        pem: true,
        p12: true,
    };
}

/// Builds the bundle from the system bundle's bytes (if any) and the Key Vault CAs.
pub fn build(
    system: Option<&[u8]>,
    cas: &[CaSet],
    outputs: Outputs,
) -> Result<TrustBundle, TrustError> {
    let (system, system_skipped) = match system {
        Some(bytes) => system_certs(bytes)?,
        None => (Vec::new(), 0),
    };
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut pem = String::new();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut system_count = 0;
    for der in system {
        let Ok(info) = pki::cert_info(&der) else {
            continue;
        };
        if !seen.insert(info.sha256_thumbprint) {
            continue;
        }
        system_count += 1;
        if outputs.pem {
            pem.push_str(&pki::pem_encode("CERTIFICATE", &der));
        }
        entries.push((format!("system-{system_count}"), der));
    }
    let mut vault_count = 0;
    for set in cas {
        for (i, der) in set.certs.iter().enumerate() {
            let info = pki::cert_info(der).map_err(|source| TrustError::NotCertificate {
                name: set.name.clone(),
                index: i,
                source,
            })?;
            if !seen.insert(info.sha256_thumbprint) {
                continue;
            }
            vault_count += 1;
            if entries.len() >= MAX_CERTS {
                return Err(TrustError::TooManyCerts);
            }
            if outputs.pem {
                // Names and subjects are printable: strip line breaks so a comment stays one line.
                let comment: String = format!("# {}: {}", set.name, info.subject)
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let _ = writeln!(pem, "{comment}");
                pem.push_str(&pki::pem_encode("CERTIFICATE", der));
            }
            entries.push((
                format!("kvbridge-{}-{i}", alias_part(&set.name)),
                der.clone(),
            ));
        }
    }
    let p12 = if outputs.p12 {
        pki::build_truststore(&entries, TRUSTSTORE_PASSWORD).map_err(TrustError::Truststore)?
    } else {
        Vec::new()
    };
    Ok(TrustBundle {
        pem: pem.into_bytes(),
        p12,
        system_certs: system_count,
        system_skipped,
        vault_cas: vault_count,
    })
}

/// An alias fragment: lower-case ASCII letters, digits and `-` (Java lower-cases PKCS#12
/// aliases; keep them plain).
fn alias_part(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::{Curve, KeyKind};
    use proptest::prelude::*;
    use testenv::chain;

    fn pem_of(certs: &[Vec<u8>]) -> String {
        pki::bundle_to_pem(None, certs)
    }

    #[test]
    fn system_plus_vault_cas_deduplicated() {
        let a = chain::ec_chain3();
        let b = chain::chain(KeyKind::Ec(Curve::P256), 2, "b");
        let b_root = b.certs[1].clone();
        // The system bundle: comments, one garbage block, one truncated block, a's root.
        let system = format!(
            "# comment\n{}-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n{}\n-----BEGIN CERTIFICATE-----\nAAAA",
            pem_of(std::slice::from_ref(&b_root)),
            "junk between blocks",
        );
        let set = CaSet::from_der("corp-ca", &a.certs).unwrap();
        // The leaf is not a CA: only the intermediate and the root are kept.
        assert_eq!(set.certs.len(), 2);
        let dup = CaSet::from_pem("corp-ca-again", &pem_of(std::slice::from_ref(&b_root))).unwrap();
        let bundle = build(Some(system.as_bytes()), &[set, dup], Outputs::BOTH).unwrap();
        assert_eq!(bundle.system_certs, 1);
        assert_eq!(bundle.system_skipped, 2);
        assert_eq!(
            bundle.vault_cas, 2,
            "b's root was already in the system bundle"
        );
        let parsed = pki::parse_pem_bundle(std::str::from_utf8(&bundle.pem).unwrap()).unwrap();
        assert_eq!(
            parsed.certs,
            vec![b_root.clone(), a.certs[1].clone(), a.certs[2].clone()]
        );
        let text = String::from_utf8(bundle.pem.clone()).unwrap();
        assert!(text.contains("# corp-ca: "), "{text}");
        let store = pki::parse_pfx(&bundle.p12, TRUSTSTORE_PASSWORD).unwrap();
        assert!(store.key.is_none());
        assert_eq!(store.certs.len(), 3);
    }

    #[test]
    fn non_ca_objects_and_garbage_are_refused() {
        let a = chain::ec_chain3();
        let e = CaSet::from_der("leaf-only", &a.certs[..1]).unwrap_err();
        assert!(matches!(e, TrustError::NoCa { .. }), "{e}");
        assert!(e.to_string().contains("leaf-only"), "{e}");
        let e = CaSet::from_der("junk", &[vec![0x30, 0x03, 1, 2, 3]]).unwrap_err();
        assert!(
            matches!(e, TrustError::NotCertificate { index: 0, .. }),
            "{e}"
        );
        let e = CaSet::from_pem("empty", "no pem here").unwrap_err();
        assert!(matches!(e, TrustError::NoCa { .. }), "{e}");
        let big = "A".repeat(MAX_OBJECT_BYTES + 1);
        assert!(matches!(
            CaSet::from_pem("big", &big),
            Err(TrustError::ObjectTooLarge { .. })
        ));
        let big = vec![b'A'; MAX_SYSTEM_BUNDLE_BYTES + 1];
        assert!(matches!(
            system_certs(&big),
            Err(TrustError::SystemTooLarge { .. })
        ));
    }

    #[test]
    fn no_system_bundle_and_outputs() {
        let root = chain::ec_chain3().certs[2].clone();
        let set = CaSet::from_der("root", std::slice::from_ref(&root)).unwrap();
        let only_pem = build(
            None,
            std::slice::from_ref(&set),
            Outputs {
                pem: true,
                p12: false,
            },
        )
        .unwrap();
        assert!(only_pem.p12.is_empty());
        assert_eq!(only_pem.vault_cas, 1);
        assert_eq!(only_pem.system_certs, 0);
        let only_p12 = build(
            None,
            &[set],
            Outputs {
                pem: false,
                p12: true,
            },
        )
        .unwrap();
        assert!(only_p12.pem.is_empty());
        assert_eq!(
            pki::parse_pfx(&only_p12.p12, TRUSTSTORE_PASSWORD)
                .unwrap()
                .certs,
            vec![root]
        );
    }

    fn objects(yaml_items: &[&str]) -> Vec<crate::params::ObjectSpec> {
        let mut text = String::from("array:\n");
        for item in yaml_items {
            text.push_str("  - |\n");
            for line in item.lines() {
                text.push_str("    ");
                text.push_str(line);
                text.push('\n');
            }
        }
        crate::params::parse_objects(&text).unwrap()
    }

    #[test]
    fn object_formats_parse_and_render() {
        use crate::params::ObjectFormat;
        use crate::render::{render_object, Fetched, FetchedCert, FetchedSecret, RenderOptions};
        let specs = objects(&[
            "objectName: root\nobjectType: cert\nobjectFormat: Trust-Bundle",
            "objectName: root-pem\nobjectType: secret\nobjectFormat: truststore",
            "objectName: tls\nobjectType: secret\nobjectFormat: trust-bundle",
        ]);
        assert_eq!(specs[0].format, ObjectFormat::TrustBundle);
        assert_eq!(specs[1].format, ObjectFormat::TrustStore);
        let e = crate::params::parse_objects(
            "array:\n  - |\n    objectName: k\n    objectType: key\n    objectFormat: truststore\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not key"), "{e}");

        let c = chain::ec_chain3();
        let system_root = chain::chain(KeyKind::Ec(Curve::P256), 2, "sys").certs[1].clone();
        let opts = RenderOptions {
            system_trust: Some(std::sync::Arc::new(
                pem_of(std::slice::from_ref(&system_root)).into_bytes(),
            )),
            ..RenderOptions::default()
        };
        // A certificate: its cer (the root) after the system bundle.
        let cert = Fetched::Cert(FetchedCert {
            version: "v1".into(),
            cer_der: c.certs[2].clone(),
        });
        let files = render_object(&specs[0], &cert, "root", &opts).unwrap();
        let parsed =
            pki::parse_pem_bundle(std::str::from_utf8(&files[0].contents).unwrap()).unwrap();
        assert_eq!(parsed.certs, vec![system_root.clone(), c.certs[2].clone()]);
        // A PEM secret: the trust store.
        let secret = Fetched::Secret(FetchedSecret {
            version: "v1".into(),
            value: zeroize::Zeroizing::new(pem_of(&c.certs[1..])),
            content_type: None,
            kid: None,
        });
        let files = render_object(&specs[1], &secret, "root-pem", &opts).unwrap();
        let store = pki::parse_pfx(&files[0].contents, TRUSTSTORE_PASSWORD).unwrap();
        assert_eq!(store.certs.len(), 3);
        // A certificate-backed secret (key + chain, PEM): the CAs of its chain, not the leaf
        // nor the key.
        let bundle = pki::bundle_to_pem(Some(&c.keys[0]), &c.certs);
        let backed = Fetched::Secret(FetchedSecret {
            version: "v1".into(),
            value: zeroize::Zeroizing::new(bundle),
            content_type: Some(crate::render::CONTENT_TYPE_PEM.into()),
            kid: Some("https://kv/keys/tls/v1".into()),
        });
        let files = render_object(&specs[2], &backed, "tls", &RenderOptions::default()).unwrap();
        let text = std::str::from_utf8(&files[0].contents).unwrap();
        assert!(!text.contains("PRIVATE KEY"));
        assert_eq!(
            pki::parse_pem_bundle(text).unwrap().certs,
            c.certs[1..].to_vec()
        );
        // A leaf alone is refused, naming the object.
        let leaf = Fetched::Cert(FetchedCert {
            version: "v1".into(),
            cer_der: c.certs[0].clone(),
        });
        let e = render_object(&specs[0], &leaf, "root", &opts).unwrap_err();
        assert!(e.to_string().contains("no CA certificate"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn hostile_pem_never_panics(
            prefix in proptest::collection::vec(any::<u8>(), 0..256),
            body in "[A-Za-z0-9+/=\\-\n :]{0,512}",
        ) {
            let mut text = prefix.clone();
            text.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
            text.extend_from_slice(body.as_bytes());
            text.extend_from_slice(b"\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----");
            let _ = system_certs(&text);
            let s = String::from_utf8_lossy(&text);
            let _ = CaSet::from_pem("x", &s);
            let _ = CaSet::from_der("x", &[prefix]);
        }
    }
}
