//! Parsing of Entra ID / IMDS token responses and errors.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use zeroize::Zeroizing;

use super::{now_secs, AccessToken};
use crate::error::{sanitize, Error, Target};
use crate::transport::Response;

fn num_or_string(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

/// Parses an Entra ID / IMDS token response or error.
pub(crate) fn parse_token_response(
    credential: &str,
    target: &Target,
    resp: &Response,
    redact: &[&str],
) -> Result<AccessToken, Error> {
    let v: Option<Value> = serde_json::from_slice(&resp.body).ok();
    if !(200..300).contains(&resp.status) {
        return Err(auth_error(credential, resp.status, v.as_ref(), redact));
    }
    let Some(v) = v else {
        return Err(Error::BadResponse {
            target: Box::new(target.clone()),
            detail: format!("HTTP {} with a body that is not JSON", resp.status),
        });
    };
    let Some(token) = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return Err(Error::BadResponse {
            target: Box::new(target.clone()),
            detail: "token response without access_token".into(),
        });
    };
    token_from_json(credential, &v, token)
}

/// Longest token lifetime believed (managed identity tokens live about 24 h); a server that
/// claims more is clamped so a hostile or broken endpoint cannot pin a token forever.
pub(crate) const MAX_TOKEN_LIFETIME_SECS: i64 = 25 * 3600;

/// An [`AccessToken`] from `access_token` plus `expires_on` (absolute, seconds) or
/// `expires_in` (relative), numbers or numeric strings; one hour when neither is usable.
pub(crate) fn token_from_json(
    credential: &str,
    v: &Value,
    token: &str,
) -> Result<AccessToken, Error> {
    let now = now_secs();
    let expires_on = v
        .get("expires_on")
        .and_then(num_or_string)
        .filter(|e| *e > 1_000_000_000)
        .or_else(|| {
            v.get("expires_in")
                .and_then(num_or_string)
                .map(|s| now.saturating_add(s))
        })
        .unwrap_or_else(|| {
            tracing::debug!(
                credential,
                "token response without expiry; assuming one hour"
            );
            now + 3600
        })
        .clamp(0, now.saturating_add(MAX_TOKEN_LIFETIME_SECS));
    Ok(AccessToken {
        token: Zeroizing::new(token.to_string()),
        expires_on: UNIX_EPOCH + Duration::from_secs(expires_on as u64),
    })
}

fn auth_error(credential: &str, status: u16, v: Option<&Value>, redact: &[&str]) -> Error {
    let get = |k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let error = get("error");
    let desc = get("error_description");
    let aadsts = desc
        .strip_prefix("AADSTS")
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| format!("AADSTS{d}"))
        .or_else(|| {
            v.and_then(|v| v.get("error_codes"))
                .and_then(|c| c.get(0))
                .and_then(Value::as_u64)
                .map(|n| format!("AADSTS{n}"))
        });
    let code = aadsts.clone().unwrap_or_else(|| {
        if error.is_empty() {
            "unknown".to_string()
        } else {
            error.to_string()
        }
    });
    let mut message = sanitize(if desc.is_empty() { error } else { desc }, redact);
    if message.is_empty() {
        message = if v.is_some() {
            "no error description".into()
        } else {
            "error body is not JSON".into()
        };
    }
    if aadsts.is_some() && !error.is_empty() {
        message = format!("{error}: {message}");
    }
    Error::Auth {
        credential: credential.to_string(),
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Default::default(),
            body: Zeroizing::new(body.as_bytes().to_vec()),
            attempts: 1,
            retry_after: None,
            beyond_deadline: None,
        }
    }

    #[test]
    fn token_and_error_parsing() {
        let t = Target::op("https://login/t/oauth2/v2.0/token", "token request");
        let ok = parse_token_response(
            "c",
            &t,
            &resp(200, r#"{"access_token":"abc","expires_in":3599}"#),
            &[],
        )
        .unwrap();
        assert_eq!(ok.token.as_str(), "abc");
        let left = ok.expires_on.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        let on = now_secs() + 1234;
        let imds = parse_token_response(
            "c",
            &t,
            &resp(
                200,
                &format!(r#"{{"access_token":"x","expires_in":"100","expires_on":"{on}"}}"#),
            ),
            &[],
        )
        .unwrap();
        assert_eq!(imds.expires_on, UNIX_EPOCH + Duration::from_secs(on as u64));
        // Absurd lifetimes (a hostile or broken endpoint) are clamped, never overflow.
        for body in [
            r#"{"access_token":"x","expires_on":"1900000000000"}"#.to_string(),
            format!(r#"{{"access_token":"x","expires_in":{}}}"#, i64::MAX),
            r#"{"access_token":"x","expires_in":1e300}"#.to_string(),
            r#"{"access_token":"x","expires_in":"-1e300"}"#.to_string(),
        ] {
            let tok = parse_token_response("c", &t, &resp(200, &body), &[]).unwrap();
            let max = SystemTime::now() + Duration::from_secs(MAX_TOKEN_LIFETIME_SECS as u64 + 5);
            assert!(tok.expires_on <= max, "{body}");
        }
        assert!(!format!("{ok:?}").contains("abc"));

        let e = parse_token_response(
            "client secret credential for app a",
            &t,
            &resp(401, r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: s3cret.\r\nTrace ID: 1","error_codes":[7000215]}"#),
            &["s3cret"],
        )
        .unwrap_err();
        let s = e.to_string();
        assert_eq!(e.code(), Some("AADSTS7000215"));
        assert!(
            s.contains("client secret credential for app a")
                && s.contains("HTTP 401")
                && s.contains("invalid_client"),
            "{s}"
        );
        assert!(!s.contains("s3cret") && !s.contains("Trace ID"), "{s}");
        let e = parse_token_response("c", &t, &resp(400, r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#), &[]).unwrap_err();
        assert_eq!(e.code(), Some("invalid_request"));
        let e = parse_token_response("c", &t, &resp(502, "<html>"), &[]).unwrap_err();
        assert!(e.to_string().contains("not JSON"));
        assert!(matches!(
            parse_token_response("c", &t, &resp(200, "{}"), &[]),
            Err(Error::BadResponse { .. })
        ));
    }
}
