//! Signed JWTs as tests need them: projected service-account tokens (workload identity) and
//! client assertions, signed with a key the dev vault was seeded to trust.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{json, Value};

/// The audience Entra expects on federated (workload identity) tokens.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A compact JWS: header `{"alg", "typ": "JWT"}` plus the members of `header_extra`, `claims`,
/// signed with `alg` (RS*/PS*/ES256/ES384) by `key`.
pub fn sign(alg: &str, header_extra: Value, claims: &Value, key: &pki::PrivateKey) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let (Some(h), Some(extra)) = (header.as_object_mut(), header_extra.as_object()) {
        h.extend(extra.clone());
    }
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let sig = pki::jws_sign(alg, key, input.as_bytes())
        .unwrap_or_else(|e| panic!("signing a test JWT with {alg}: {e}"));
    format!("{input}.{}", B64URL.encode(sig))
}

/// A service-account token as kubelet projects it: issuer `iss`, subject `sub`
/// (`system:serviceaccount:NS:NAME`), audience `aud`, valid from 5 s ago until `exp`; ES256 with
/// key id `k`.
pub fn service_account_token(
    key: &pki::PrivateKey,
    iss: &str,
    sub: &str,
    aud: &str,
    exp: i64,
) -> String {
    let t = now();
    sign(
        "ES256",
        json!({"kid": "k"}),
        &json!({"iss": iss, "sub": sub, "aud": [aud], "iat": t, "nbf": t - 5, "exp": exp}),
        key,
    )
}

/// An EC P-256 issuer key and its public key as a PEM `PUBLIC KEY` (for a dev-vault seed's
/// `issuerKey` file).
pub fn issuer_key() -> (pki::PrivateKey, String) {
    let key = pki::generate_key(pki::KeyKind::Ec(pki::Curve::P256))
        .unwrap_or_else(|e| panic!("generating an issuer key: {e}"));
    let spki = pki::spki_der(&key).unwrap_or_else(|e| panic!("issuer key SPKI: {e}"));
    (key, pki::pem_encode("PUBLIC KEY", &spki))
}
