//! Property tests of the parsers that read what a vault or token endpoint sends (issue 13):
//! `Retry-After` in all its forms, `WWW-Authenticate` challenges, Entra ID / IMDS token
//! responses and NMI responses. Random and adversarial inputs: none may panic, results stay
//! within their documented bounds, well-formed inputs round-trip. A few seconds in all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::client::parse_challenge;
use crate::credential::parse_nmi_response;
use crate::credential::parse_token_response;
use crate::error::Target;
use crate::transport::{retry_after, Response, MAX_SERVER_WAIT};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Header values: printable ASCII (what `HeaderValue` accepts), biased towards numbers,
/// exponents, dates and the characters challenges are built from.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "[0-9]{1,40}",
        "-?[0-9]{0,20}(\\.[0-9]{0,20})?([eE][-+]?[0-9]{1,4})?",
        "(inf|Infinity|NaN|-inf|\\+1|1_000|0x10| 7 )",
        "(Mon|Fri|Sun), [0-9]{1,2} (Jan|Dec|Feb) [0-9]{1,6} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
        "[ =,\"a-zA-Z:/.0-9_-]{0,200}",
    ]
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn response(status: u16, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: HeaderMap::new(),
        body: Zeroizing::new(body),
        attempts: 1,
        retry_after: None,
        beyond_deadline: None,
    }
}

/// JSON documents with the token response's field names at every level, any value types.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        header_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            Just("access_token".to_string()),
            Just("expires_in".to_string()),
            Just("expires_on".to_string()),
            Just("error".to_string()),
            Just("error_description".to_string()),
            Just("error_codes".to_string()),
            Just("token".to_string()),
            Just("clientid".to_string()),
            "[a-z_]{1,12}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retry_after_never_panics_and_stays_bounded(
        name in prop_oneof![Just("retry-after"), Just("retry-after-ms"), Just("x-ms-retry-after-ms")],
        value in header_text(),
        other in proptest::option::of(header_text()),
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
        if let Some(o) = other.and_then(|o| HeaderValue::from_str(&o).ok()) {
            h.insert("retry-after", o);
        }
        if let Some(d) = retry_after(&h, now()) {
            prop_assert!(d <= MAX_SERVER_WAIT);
        }
    }

    #[test]
    fn retry_after_seconds_and_dates_round_trip(secs in 0u64..10_000_000, ms in 0u64..100_000_000) {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_str(&secs.to_string()).unwrap());
        prop_assert_eq!(retry_after(&h, now()), Some(Duration::from_secs(secs)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(secs));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        prop_assert_eq!(retry_after(&h, now()), Some(Duration::from_secs(secs)));
        h.insert("x-ms-retry-after-ms", HeaderValue::from_str(&ms.to_string()).unwrap());
        prop_assert_eq!(retry_after(&h, now()), Some(Duration::from_millis(ms)));
    }

    #[test]
    fn challenge_parsing_never_panics(values in prop::collection::vec(header_text(), 0..4), prefix in "(Bearer |bearer |Basic |PoP |)") {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{v}")) {
                h.append("www-authenticate", v);
            }
        }
        if let Some((c, resource)) = parse_challenge(&h) {
            prop_assert!(!c.scope.is_empty() && !resource.is_empty());
        }
    }

    #[test]
    fn well_formed_challenges_round_trip(
        tenant in "[a-z0-9-]{1,36}",
        host in "[a-z]{1,20}(\\.[a-z]{1,10}){0,3}",
        port in proptest::option::of(1u16..),
        use_scope in any::<bool>(),
        key in prop_oneof![Just("authorization"), Just("authorization_uri")],
    ) {
        let origin = match port {
            Some(p) => format!("https://{host}:{p}"),
            None => format!("https://{host}"),
        };
        let param = if use_scope {
            format!("scope=\"{origin}/.default\"")
        } else {
            format!("resource=\"{origin}\"")
        };
        let mut h = HeaderMap::new();
        h.insert(
            "www-authenticate",
            HeaderValue::from_str(&format!("Bearer {key}=\"https://login.example/{tenant}\", {param}")).unwrap(),
        );
        let (c, resource) = parse_challenge(&h).expect("parses");
        prop_assert_eq!(c.tenant.as_deref(), Some(tenant.as_str()));
        prop_assert_eq!(c.scope, format!("{origin}/.default"));
        prop_assert_eq!(resource, origin);
    }

    #[test]
    fn token_responses_never_panic_and_expiry_is_bounded(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(429), Just(500), 100u16..600],
        body in prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
    ) {
        let t = Target::op("https://login.example/t/oauth2/v2.0/token", "token request");
        let r = response(status, body.clone());
        if let Ok(tok) = parse_token_response("c", &t, &r, &[]) {
            prop_assert!((200..300).contains(&status));
            let max = SystemTime::now() + Duration::from_secs(26 * 3600);
            prop_assert!(tok.expires_on <= max);
            prop_assert!(!tok.token.is_empty());
        }
        let n = parse_nmi_response("c", &t, &r, None);
        if let Ok(tok) = n {
            prop_assert_eq!(status, 200);
            prop_assert!(tok.expires_on <= SystemTime::now() + Duration::from_secs(26 * 3600));
        } else if let Err(e) = n {
            // Errors are one bounded line.
            let s = e.to_string();
            prop_assert!(!s.contains('\n') && s.len() < 1000, "{}", s);
        }
    }

    #[test]
    fn well_formed_token_responses_round_trip(token in "[A-Za-z0-9._-]{1,200}", lifetime in 1i64..86_400, as_string in any::<bool>()) {
        let t = Target::op("https://login.example/t/oauth2/v2.0/token", "token request");
        let expires_in = if as_string { json!(lifetime.to_string()) } else { json!(lifetime) };
        let body = json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"});
        let tok = parse_token_response("c", &t, &response(200, body.to_string().into_bytes()), &[]).unwrap();
        prop_assert_eq!(tok.token.as_str(), token.as_str());
        let left = tok.expires_on.duration_since(SystemTime::now()).unwrap_or_default();
        prop_assert!(left <= Duration::from_secs(lifetime as u64) && left + Duration::from_secs(5) >= Duration::from_secs(lifetime as u64));
        let nmi = json!({"token": body, "clientid": "c1"});
        let tok = parse_nmi_response("c", &t, &response(200, nmi.to_string().into_bytes()), Some("C1")).unwrap();
        prop_assert_eq!(tok.token.as_str(), token.as_str());
    }
}
