//! Planning and rendering: vault data in, files out, byte-compatible with the Azure provider.
//!
//! 1. [`plan`] gives, per object, either the one fetch it needs or "list the versions first"
//!    (version history); [`history_fetches`] turns a version list into the fetches.
//!    [`needed_fetches`] collects everything still missing from a [`VaultData`], deduplicated,
//!    so the caller can fetch concurrently.
//! 2. [`render`] is pure: specs + [`VaultData`] + [`RenderOptions`] -> [`Rendered`].
//!
//! Decisions where the Azure provider is ambiguous or buggy:
//! - version history writes exactly `objectVersionHistory` files (the provider can write N+1);
//! - an `objectVersion` that is not among the enabled versions is an error (the provider
//!   silently writes nothing for that object);
//! - `objectEncoding` is applied last to every secret, including certificate-backed ones, as the
//!   provider does (so base64/hex on a PEM-rendered certificate is an error);
//! - `write_cert_and_key_in_separate_files` applies to certificate-backed secrets rendered as PEM
//!   (PFX decoded, or `application/x-pem-file`): `<file>.crt` holds the certificates, `<file>.key`
//!   the key (empty when there is none); with history the extra files are `<file>/<i>.crt|.key`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use pki::PublicJwk;
use zeroize::Zeroizing;

pub use crate::output::OutFile;
use crate::params::{first_path_clash, ObjectEncoding, ObjectFormat, ObjectKind, ObjectSpec};

pub const CONTENT_TYPE_PEM: &str = "application/x-pem-file";
pub const CONTENT_TYPE_PFX: &str = "application/x-pkcs12";

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// A secret as returned by Key Vault.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedSecret {
    pub version: String,
    pub value: Zeroizing<String>,
    pub content_type: Option<String>,
    /// Set when the secret backs a certificate.
    pub kid: Option<String>,
}

impl fmt::Debug for FetchedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedSecret")
            .field("version", &self.version)
            .field(
                "value",
                &format_args!("<{} bytes redacted>", self.value.len()),
            )
            .field("content_type", &self.content_type)
            .field("kid", &self.kid)
            .finish()
    }
}

/// A key as returned by Key Vault (public members only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedKey {
    pub version: String,
    pub jwk: PublicJwk,
}

/// A certificate as returned by Key Vault (`cer`: the DER leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedCert {
    pub version: String,
    pub cer_der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Secret(FetchedSecret),
    Key(FetchedKey),
    Cert(FetchedCert),
}

impl Fetched {
    pub fn version(&self) -> &str {
        match self {
            Fetched::Secret(s) => &s.version,
            Fetched::Key(k) => &k.version,
            Fetched::Cert(c) => &c.version,
        }
    }

    fn object_type(&self) -> ObjectKind {
        match self {
            Fetched::Secret(_) => ObjectKind::Secret,
            Fetched::Key(_) => ObjectKind::Key,
            Fetched::Cert(_) => ObjectKind::Certificate,
        }
    }
}

/// One Key Vault GET: type, name and version (`None` = latest).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchKey {
    pub object_type: ObjectKind,
    pub name: String,
    pub version: Option<String>,
}

/// One entry of a version listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: String,
    pub enabled: bool,
}

/// What an object needs from the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectPlan {
    /// Fetch exactly this.
    Fetch(FetchKey),
    /// List the versions (newest first) into [`VaultData::versions`], then
    /// [`history_fetches`] says what to fetch.
    ListVersions {
        object_type: ObjectKind,
        name: String,
    },
}

/// Everything fetched for a render.
#[derive(Debug, Clone, Default)]
pub struct VaultData {
    /// Version listings, newest first (by creation time), keyed by (type, name).
    pub versions: BTreeMap<(ObjectKind, String), Vec<VersionInfo>>,
    pub objects: BTreeMap<FetchKey, Fetched>,
}

/// Provider-level switches (flags of the Azure provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// `--construct-pem-chain` (default on): order PFX certificates leaf -> root.
    pub construct_pem_chain: bool,
    /// `--write-cert-and-key-in-separate-files` (default off).
    pub write_cert_and_key_in_separate_files: bool,
    /// The mount's permission, used when an object has no `filePermission`.
    pub default_file_mode: u32,
    /// The system CA bundle (PEM bytes) the trust formats (`objectFormat: trust-bundle`,
    /// `truststore`) start from; `None`: the Key Vault CAs alone.
    pub system_trust: Option<std::sync::Arc<Vec<u8>>>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            construct_pem_chain: true,
            write_cert_and_key_in_separate_files: false,
            default_file_mode: crate::params::DEFAULT_FILE_MODE,
            system_trust: None,
        }
    }
}

/// Object id and the version served (the driver's `ObjectVersion`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// `<type>/<name>` or, with history, `<type>/<name>/<i>`.
    pub id: String,
    pub version: String,
}

/// Output of [`render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<OutFile>,
    pub versions: Vec<ObjectVersion>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("objects[{index}] ({}/{name}): {field}: {reason}", object_type.object_type())]
    Object {
        index: usize,
        name: String,
        object_type: ObjectKind,
        field: &'static str,
        reason: String,
    },
    #[error("objects[{index}] ({}/{name}) and objects[{other_index}] ({other_name}) both write {path:?}", object_type.object_type())]
    DuplicatePath {
        index: usize,
        name: String,
        object_type: ObjectKind,
        other_index: usize,
        other_name: String,
        path: String,
    },
}

fn obj_err(spec: &ObjectSpec, field: &'static str, reason: impl Into<String>) -> RenderError {
    RenderError::Object {
        index: spec.index,
        name: spec.name.clone(),
        object_type: spec.object_type,
        field,
        reason: reason.into(),
    }
}

/// What each object needs, in object order.
pub fn plan(objects: &[ObjectSpec]) -> Vec<ObjectPlan> {
    objects
        .iter()
        .map(|o| {
            if o.is_history() {
                ObjectPlan::ListVersions {
                    object_type: o.object_type,
                    name: o.name.clone(),
                }
            } else {
                ObjectPlan::Fetch(FetchKey {
                    object_type: o.object_type,
                    name: o.name.clone(),
                    version: o.version.clone(),
                })
            }
        })
        .collect()
}

/// Select the versions of a history object: enabled ones, newest first, starting at
/// `objectVersion` when set, at most `objectVersionHistory` of them.
pub fn select_versions<'a>(
    spec: &ObjectSpec,
    versions: &'a [VersionInfo],
) -> Result<Vec<&'a VersionInfo>, RenderError> {
    let mut found = spec.version.is_none();
    let mut out = Vec::new();
    for v in versions.iter().filter(|v| v.enabled) {
        if !found && spec.version.as_deref() == Some(v.version.as_str()) {
            found = true;
        }
        if found {
            out.push(v);
            if out.len() >= spec.version_history as usize {
                break;
            }
        }
    }
    if !found {
        return Err(obj_err(
            spec,
            "objectVersion",
            format!(
                "version {:?} is not among the enabled versions",
                spec.version.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(out)
}

/// The fetches a history object needs once its versions are listed.
pub fn history_fetches(
    spec: &ObjectSpec,
    versions: &[VersionInfo],
) -> Result<Vec<FetchKey>, RenderError> {
    Ok(select_versions(spec, versions)?
        .into_iter()
        .map(|v| FetchKey {
            object_type: spec.object_type,
            name: spec.name.clone(),
            version: Some(v.version.clone()),
        })
        .collect())
}

/// Fetches still missing from `data` (deduplicated). Version listings that are missing are
/// returned as `ListVersions` plans.
pub fn needed_fetches(
    objects: &[ObjectSpec],
    data: &VaultData,
) -> Result<(BTreeSet<FetchKey>, Vec<ObjectPlan>), RenderError> {
    let mut fetches = BTreeSet::new();
    let mut listings = Vec::new();
    for (spec, p) in objects.iter().zip(plan(objects)) {
        match p {
            ObjectPlan::Fetch(k) => {
                if !data.objects.contains_key(&k) {
                    fetches.insert(k);
                }
            }
            ObjectPlan::ListVersions { object_type, name } => {
                match data.versions.get(&(object_type, name.clone())) {
                    Some(list) => {
                        for k in history_fetches(spec, list)? {
                            if !data.objects.contains_key(&k) {
                                fetches.insert(k);
                            }
                        }
                    }
                    None => listings.push(ObjectPlan::ListVersions { object_type, name }),
                }
            }
        }
    }
    Ok((fetches, listings))
}

/// Render every object. Pure; fails without partial output.
pub fn render(
    objects: &[ObjectSpec],
    data: &VaultData,
    opts: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let mut files: Vec<(usize, OutFile)> = Vec::new();
    let mut versions = Vec::new();
    for spec in objects {
        let base = spec.file_name();
        let id_base = format!("{}/{}", spec.object_type.object_type(), spec.name);
        let targets: Vec<(String, String, FetchKey)> = if spec.is_history() {
            let list = data
                .versions
                .get(&(spec.object_type, spec.name.clone()))
                .ok_or_else(|| {
                    obj_err(
                        spec,
                        "objectVersionHistory",
                        "no version listing was fetched",
                    )
                })?;
            history_fetches(spec, list)?
                .into_iter()
                .enumerate()
                .map(|(i, k)| (format!("{base}/{i}"), format!("{id_base}/{i}"), k))
                .collect()
        } else {
            vec![(
                base.to_string(),
                id_base,
                FetchKey {
                    object_type: spec.object_type,
                    name: spec.name.clone(),
                    version: spec.version.clone(),
                },
            )]
        };
        for (path, id, key) in targets {
            let fetched = data.objects.get(&key).ok_or_else(|| {
                obj_err(
                    spec,
                    "objectVersion",
                    format!(
                        "version {:?} was not fetched",
                        key.version.as_deref().unwrap_or("latest")
                    ),
                )
            })?;
            for f in render_object(spec, fetched, &path, opts)? {
                files.push((spec.index, f));
            }
            versions.push(ObjectVersion {
                id,
                version: fetched.version().to_string(),
            });
        }
    }
    let paths: Vec<&str> = files.iter().map(|(_, f)| f.path.as_str()).collect();
    if let Some((later, earlier)) = first_path_clash(&paths) {
        let (ia, a) = &files[later];
        let ib = files[earlier].0;
        let spec = objects.iter().find(|o| o.index == *ia);
        let other = objects.iter().find(|o| o.index == ib);
        return Err(RenderError::DuplicatePath {
            index: *ia,
            name: spec.map(|s| s.name.clone()).unwrap_or_default(),
            object_type: spec.map(|s| s.object_type).unwrap_or(ObjectKind::Secret),
            other_index: ib,
            other_name: other.map(|s| s.name.clone()).unwrap_or_default(),
            path: a.path.clone(),
        });
    }
    Ok(Rendered {
        files: files.into_iter().map(|(_, f)| f).collect(),
        versions,
    })
}

/// Render one fetched version of an object to `path` (plus `.crt`/`.key` when enabled).
pub fn render_object(
    spec: &ObjectSpec,
    fetched: &Fetched,
    path: &str,
    opts: &RenderOptions,
) -> Result<Vec<OutFile>, RenderError> {
    if fetched.object_type() != spec.object_type {
        return Err(obj_err(
            spec,
            "objectType",
            format!(
                "fetched a {} for a {}",
                fetched.object_type(),
                spec.object_type
            ),
        ));
    }
    let mode = spec.mode(opts.default_file_mode);
    if spec.format.is_trust() {
        return render_trust(spec, fetched, path, mode, opts);
    }
    match fetched {
        Fetched::Key(k) => Ok(vec![OutFile::new(
            path,
            mode,
            key_pem(spec, &k.jwk)?.into_bytes(),
        )]),
        Fetched::Cert(c) => {
            pki::cert_info(&c.cer_der)
                .map_err(|e| obj_err(spec, "cer", format!("not a valid certificate: {e}")))?;
            Ok(vec![OutFile::new(
                path,
                mode,
                pki::pem_encode("CERTIFICATE", &c.cer_der).into_bytes(),
            )])
        }
        Fetched::Secret(s) => render_secret(spec, s, path, mode, opts),
    }
}

/// `objectFormat: trust-bundle` / `truststore`: the object's CA certificates (a certificate's
/// `cer`, or the certificates of a secret: certificate-backed or PEM text) after the system
/// bundle.
fn render_trust(
    spec: &ObjectSpec,
    fetched: &Fetched,
    path: &str,
    mode: u32,
    opts: &RenderOptions,
) -> Result<Vec<OutFile>, RenderError> {
    let fail = |e: crate::trust::TrustError| obj_err(spec, "objectFormat", keyvault_free_chain(&e));
    let set = match fetched {
        Fetched::Cert(c) => {
            crate::trust::CaSet::from_der(&spec.name, std::slice::from_ref(&c.cer_der))
        }
        Fetched::Secret(s) if s.kid.as_deref().is_some_and(|k| !k.is_empty()) => {
            let bundle = cert_secret_bundle(spec, &s.value, s.content_type.as_deref())?;
            crate::trust::CaSet::from_der(&spec.name, &bundle.certs)
        }
        Fetched::Secret(s) => crate::trust::CaSet::from_pem(&spec.name, &s.value),
        Fetched::Key(_) => return Err(obj_err(spec, "objectFormat", "a key holds no certificate")),
    }
    .map_err(fail)?;
    let trust_pem = spec.format == ObjectFormat::TrustBundle;
    let bundle = crate::trust::build(
        opts.system_trust.as_deref().map(Vec::as_slice),
        &[set],
        crate::trust::Outputs {
            pem: trust_pem,
            p12: !trust_pem,
        },
    )
    .map_err(fail)?;
    Ok(vec![OutFile::new(
        path,
        mode,
        if trust_pem { bundle.pem } else { bundle.p12 },
    )])
}

/// An error and its sources, `: `-joined.
fn keyvault_free_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn key_pem(spec: &ObjectSpec, jwk: &PublicJwk) -> Result<String, RenderError> {
    match jwk.kty.as_str() {
        "RSA" | "RSA-HSM" | "EC" | "EC-HSM" => {}
        other => {
            return Err(obj_err(
                spec,
                "kty",
                format!("key type {other:?} is not supported (RSA, RSA-HSM, EC, EC-HSM)"),
            ))
        }
    }
    let der = pki::jwk_to_spki_der(jwk)
        .map_err(|e| obj_err(spec, "jwk", format!("cannot build the public key: {e}")))?;
    Ok(pki::pem_encode("PUBLIC KEY", &der))
}

fn render_secret(
    spec: &ObjectSpec,
    s: &FetchedSecret,
    path: &str,
    mode: u32,
    opts: &RenderOptions,
) -> Result<Vec<OutFile>, RenderError> {
    let backs_cert = s.kid.as_deref().is_some_and(|k| !k.is_empty());
    let mut extra: Vec<OutFile> = Vec::new();
    let content: Zeroizing<String> = if !backs_cert {
        s.value.clone()
    } else {
        let ct = s.content_type.as_deref().unwrap_or_default();
        match ct {
            CONTENT_TYPE_PEM => {
                check_pem_bundle(spec, &s.value)?;
                if opts.write_cert_and_key_in_separate_files {
                    let (key, certs) = split_pem_text(&s.value);
                    extra.push(OutFile::new(
                        format!("{path}.crt"),
                        mode,
                        certs.as_bytes().to_vec(),
                    ));
                    extra.push(OutFile::new(
                        format!("{path}.key"),
                        mode,
                        key.as_bytes().to_vec(),
                    ));
                }
                s.value.clone()
            }
            CONTENT_TYPE_PFX if spec.format == ObjectFormat::Pfx => s.value.clone(),
            CONTENT_TYPE_PFX => {
                let bundle = decode_pfx_value(spec, &s.value)?;
                let certs = if opts.construct_pem_chain {
                    pki::order_chain(&bundle.certs).map_err(|e| {
                        obj_err(
                            spec,
                            "value",
                            format!("cannot order the certificate chain: {e}"),
                        )
                    })?
                } else {
                    bundle.certs.clone()
                };
                if opts.write_cert_and_key_in_separate_files {
                    let crt = pki::bundle_to_pem(None, &certs);
                    let key = Zeroizing::new(match &bundle.key {
                        Some(k) => pki::pem_encode("PRIVATE KEY", k.pkcs8_der()),
                        None => String::new(),
                    });
                    extra.push(OutFile::new(format!("{path}.crt"), mode, crt.into_bytes()));
                    extra.push(OutFile::new(
                        format!("{path}.key"),
                        mode,
                        key.as_bytes().to_vec(),
                    ));
                }
                Zeroizing::new(pki::bundle_to_pem(bundle.key.as_ref(), &certs))
            }
            other => {
                return Err(obj_err(
                    spec,
                    "contentType",
                    format!("unknown content type {other:?} for a certificate-backed secret"),
                ))
            }
        }
    };
    let bytes = decode_content(spec, &content)?;
    let mut out = vec![OutFile {
        path: path.to_string(),
        mode,
        contents: bytes,
    }];
    out.extend(extra);
    Ok(out)
}

/// The private key and certificates (in stored order) of a certificate-backed secret, from its
/// value: base64 PFX without password (`application/x-pkcs12`) or PEM (`application/x-pem-file`).
/// `content_type` `None` is taken as PEM when the value starts like PEM, else as PFX. Validated
/// as [`render_object`] validates them; errors never quote the value.
pub fn cert_secret_bundle(
    spec: &ObjectSpec,
    value: &str,
    content_type: Option<&str>,
) -> Result<pki::CertBundle, RenderError> {
    let pem = match content_type {
        Some(CONTENT_TYPE_PEM) => true,
        Some(CONTENT_TYPE_PFX) => false,
        None => value.trim_start().starts_with("-----BEGIN"),
        Some(other) => {
            return Err(obj_err(
                spec,
                "contentType",
                format!("unknown content type {other:?} for a certificate-backed secret"),
            ))
        }
    };
    if pem {
        check_pem_bundle(spec, value)
    } else {
        decode_pfx_value(spec, value)
    }
}

fn decode_pfx_value(spec: &ObjectSpec, value: &str) -> Result<pki::CertBundle, RenderError> {
    let der = Zeroizing::new(
        GO_STD_BASE64
            .decode(strip_newlines(value).as_bytes())
            .map_err(|_| obj_err(spec, "value", "PFX value is not valid base64"))?,
    );
    pki::parse_pfx(&der, "").map_err(|e| obj_err(spec, "value", format!("cannot decode PFX: {e}")))
}

/// A PEM certificate-backed secret must be what Key Vault stores: at most one private key and at
/// least one certificate, all parseable. It is written as is, so this only checks (and returns
/// the parsed bundle).
fn check_pem_bundle(spec: &ObjectSpec, text: &str) -> Result<pki::CertBundle, RenderError> {
    let bundle = pki::parse_pem_bundle(text).map_err(|e| {
        obj_err(
            spec,
            "value",
            format!("not a PEM private key and certificate chain: {e}"),
        )
    })?;
    if bundle.certs.is_empty() {
        return Err(obj_err(
            spec,
            "value",
            "PEM content of a certificate-backed secret holds no CERTIFICATE block",
        ));
    }
    for (i, der) in bundle.certs.iter().enumerate() {
        pki::cert_info(der).map_err(|e| {
            obj_err(
                spec,
                "value",
                format!("PEM certificate {} is not valid: {e}", i + 1),
            )
        })?;
    }
    Ok(bundle)
}

fn strip_newlines(s: &str) -> Zeroizing<String> {
    Zeroizing::new(s.chars().filter(|c| *c != '\r' && *c != '\n').collect())
}

/// Apply `objectEncoding`. Errors never quote the content.
fn decode_content(spec: &ObjectSpec, content: &str) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    match spec.encoding {
        ObjectEncoding::Utf8 => Ok(Zeroizing::new(content.as_bytes().to_vec())),
        ObjectEncoding::Base64 => GO_STD_BASE64
            .decode(strip_newlines(content).as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| obj_err(spec, "objectEncoding", "value is not valid base64")),
        ObjectEncoding::Hex => hex::decode(content.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| obj_err(spec, "objectEncoding", "value is not valid hex")),
    }
}

/// Split PEM text into (private key blocks, certificate blocks), keeping each block's text.
fn split_pem_text(text: &str) -> (Zeroizing<String>, String) {
    let mut key = Zeroizing::new(String::new());
    let mut certs = String::new();
    let mut current: Option<(bool, String)> = None; // (is_key, block text)
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if current.is_none() {
            if let Some(label) = trimmed
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                if label.ends_with("PRIVATE KEY") {
                    current = Some((true, String::new()));
                } else if label == "CERTIFICATE" {
                    current = Some((false, String::new()));
                } else {
                    continue;
                }
            } else {
                continue;
            }
        }
        if let Some((is_key, buf)) = current.as_mut() {
            buf.push_str(line);
            if !line.ends_with('\n') {
                buf.push('\n');
            }
            if trimmed.starts_with("-----END ") {
                let done = Zeroizing::new(std::mem::take(buf));
                if *is_key {
                    key.push_str(&done);
                } else {
                    certs.push_str(&done);
                }
                current = None;
            }
        }
    }
    (key, certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::parse_objects;

    fn spec(yaml: &str) -> ObjectSpec {
        let text = format!(
            "array:\n  - |\n{}",
            yaml.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        parse_objects(&text).unwrap().remove(0)
    }

    fn versions(list: &[(&str, bool)]) -> Vec<VersionInfo> {
        list.iter()
            .map(|(v, e)| VersionInfo {
                version: v.to_string(),
                enabled: *e,
            })
            .collect()
    }

    fn sel(spec: &ObjectSpec, v: &[VersionInfo]) -> Vec<String> {
        select_versions(spec, v)
            .unwrap()
            .into_iter()
            .map(|v| v.version.clone())
            .collect()
    }

    #[test]
    fn version_selection() {
        let v = versions(&[
            ("v5", true),
            ("v4", false),
            ("v3", true),
            ("v2", true),
            ("v1", true),
        ]);
        let s = spec("objectName: s\nobjectType: secret\nobjectVersionHistory: 3");
        assert_eq!(sel(&s, &v), ["v5", "v3", "v2"]); // exactly N, disabled skipped
        let s =
            spec("objectName: s\nobjectType: secret\nobjectVersionHistory: 2\nobjectVersion: v3");
        assert_eq!(sel(&s, &v), ["v3", "v2"]);
        let s =
            spec("objectName: s\nobjectType: secret\nobjectVersionHistory: 10\nobjectVersion: v2");
        assert_eq!(sel(&s, &v), ["v2", "v1"]); // fewer if fewer exist
        let s = spec(
            "objectName: s\nobjectType: secret\nobjectVersionHistory: 2\nobjectVersion: latest",
        );
        assert_eq!(sel(&s, &v), ["v5", "v3"]);
        for missing in ["v4", "nope"] {
            let s = spec(&format!(
                "objectName: s\nobjectType: secret\nobjectVersionHistory: 2\nobjectVersion: {missing}"
            ));
            let e = select_versions(&s, &v).unwrap_err();
            assert!(e.to_string().contains("objectVersion"), "{e}");
            assert!(e.to_string().contains("objects[0]"), "{e}");
        }
        let s = spec("objectName: s\nobjectType: secret\nobjectVersionHistory: 3");
        assert!(sel(&s, &[]).is_empty());
    }

    #[test]
    fn plan_and_needed_fetches() {
        let objs = parse_objects(
            "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: k\n    objectType: key\n    objectVersion: v1\n  - |\n    objectName: h\n    objectType: cert\n    objectVersionHistory: 2\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: a-copy\n",
        )
        .unwrap();
        let p = plan(&objs);
        assert_eq!(
            p[1],
            ObjectPlan::Fetch(FetchKey {
                object_type: ObjectKind::Key,
                name: "k".into(),
                version: Some("v1".into())
            })
        );
        assert!(
            matches!(&p[2], ObjectPlan::ListVersions { object_type: ObjectKind::Certificate, name } if name == "h")
        );
        let mut data = VaultData::default();
        let (f, l) = needed_fetches(&objs, &data).unwrap();
        assert_eq!(f.len(), 2, "{f:?}"); // a (deduplicated) and k
        assert_eq!(l.len(), 1);
        data.versions.insert(
            (ObjectKind::Certificate, "h".into()),
            versions(&[("c3", true), ("c2", true), ("c1", true)]),
        );
        let (f, l) = needed_fetches(&objs, &data).unwrap();
        assert_eq!(f.len(), 4);
        assert!(l.is_empty());
        assert!(f.contains(&FetchKey {
            object_type: ObjectKind::Certificate,
            name: "h".into(),
            version: Some("c2".into())
        }));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = FetchedSecret {
            version: "v".into(),
            value: Zeroizing::new("hunter2".into()),
            content_type: None,
            kid: None,
        };
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2"), "{d}");
    }

    #[test]
    fn pem_split_keeps_block_text() {
        let text = "junk\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----";
        let (k, c) = split_pem_text(text);
        assert_eq!(
            k.as_str(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(c, "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n");
    }

    #[test]
    fn go_base64_semantics() {
        // newlines ignored, padding required, trailing bits tolerated
        assert_eq!(
            GO_STD_BASE64
                .decode(strip_newlines("aGVs\nbG8=").as_bytes())
                .unwrap(),
            b"hello"
        );
        assert!(GO_STD_BASE64.decode("aGVsbG8").is_err());
        assert_eq!(GO_STD_BASE64.decode("YR==").unwrap(), b"a");
    }
}
