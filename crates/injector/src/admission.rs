//! AdmissionReview v1 (`admission.k8s.io/v1`): the request as the API server sends it, parsed
//! with bounds (body size, then nesting depth before any deserialisation), and the response.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest body accepted. The API server's own request limit is 3 MiB; a Pod fits far below.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Deepest JSON nesting accepted (a Pod is ~10 levels deep; managedFields add a few).
pub const MAX_DEPTH: usize = 64;

/// Why a body is not an AdmissionReview this webhook can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the AdmissionReview is {0} bytes; at most {MAX_BODY} are accepted")]
    TooLarge(usize),
    #[error("the AdmissionReview nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("not an AdmissionReview v1 (line {line}, column {column})")]
    Json {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("the AdmissionReview has apiVersion {0:?}; admission.k8s.io/v1 is served")]
    Version(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Review {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    request: Option<AdmissionRequest>,
}

/// The parts of `request` the webhook uses.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(default)]
    pub object: Option<serde_json::Value>,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// True when `text` nests JSON arrays/objects deeper than `max` (strings are skipped, escapes
/// honoured). Linear, no allocation: run before any parser builds a tree.
pub fn nests_deeper_than(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses an AdmissionReview body: size, then depth, then JSON.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    if body.len() > MAX_BODY {
        return Err(ReviewError::TooLarge(body.len()));
    }
    if nests_deeper_than(body, MAX_DEPTH) {
        return Err(ReviewError::TooDeep);
    }
    let review: Review = serde_json::from_slice(body).map_err(|e| ReviewError::Json {
        line: e.line(),
        column: e.column(),
        source: e,
    })?;
    if review.api_version != "admission.k8s.io/v1" {
        return Err(ReviewError::Version(review.api_version));
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// The webhook's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admitted unchanged.
    Allow,
    /// Admitted with these JSON Patch (RFC 6902) operations.
    Patch(Vec<serde_json::Value>),
    /// Refused; the message reaches the user (`kubectl` prints it).
    Deny { code: u16, message: String },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    code: u16,
    message: &'a str,
}

/// The AdmissionReview v1 response for request `uid`.
pub fn response(uid: &str, verdict: &Verdict) -> serde_json::Value {
    let (allowed, patch_type, patch, status) = match verdict {
        Verdict::Allow => (true, None, None, None),
        Verdict::Patch(ops) => {
            let json = serde_json::Value::Array(ops.clone()).to_string();
            (
                true,
                Some("JSONPatch"),
                Some(base64::engine::general_purpose::STANDARD.encode(json)),
                None,
            )
        }
        Verdict::Deny { code, message } => (
            false,
            None,
            None,
            Some(StatusOut {
                code: *code,
                message,
            }),
        ),
    };
    serde_json::to_value(ReviewOut {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed,
            patch_type,
            patch,
            status,
        },
    })
    .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn review(object: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"ns","operation":"CREATE","dryRun":true,"object":{object}}}}}"#
        )
    }

    #[test]
    fn parses_and_bounds() {
        let r = parse(review(r#"{"spec":{"containers":[]}}"#).as_bytes()).unwrap();
        assert_eq!(r.uid, "u-1");
        assert_eq!(r.kind.kind, "Pod");
        assert_eq!(r.namespace.as_deref(), Some("ns"));
        assert_eq!(r.dry_run, Some(true));

        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(matches!(
            parse(review(&deep).as_bytes()),
            Err(ReviewError::TooDeep)
        ));
        // Brackets inside strings are not nesting.
        let s = format!(r#"{{"a":"{}"}}"#, "[{".repeat(10_000));
        assert!(parse(review(&s).as_bytes()).is_ok());
        assert!(matches!(
            parse(&vec![b' '; MAX_BODY + 1]),
            Err(ReviewError::TooLarge(_))
        ));
        assert!(matches!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"x"}}"#),
            Err(ReviewError::Version(_))
        ));
        assert!(matches!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1"}"#),
            Err(ReviewError::NoRequest)
        ));
        assert!(matches!(parse(b"{"), Err(ReviewError::Json { .. })));
    }

    #[test]
    fn responses() {
        let v = response("u", &Verdict::Allow);
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["uid"], "u");
        assert!(v["response"].get("patch").is_none());
        let ops = vec![serde_json::json!({"op":"add","path":"/a","value":1})];
        let v = response("u", &Verdict::Patch(ops.clone()));
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&patch).unwrap(),
            serde_json::Value::Array(ops)
        );
        let v = response(
            "u",
            &Verdict::Deny {
                code: 403,
                message: "no".into(),
            },
        );
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["code"], 403);
        assert_eq!(v["kind"], "AdmissionReview");
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[\\[\\]{}\"\\\\a-z]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(40, 400, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z\\[{\"]{1,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        /// The scanner's depth agrees with the parsed tree's for any JSON (strings holding
        /// brackets and escapes included).
        #[test]
        fn depth_scan_matches_the_tree(v in arb_json(), max in 0usize..12) {
            let text = v.to_string();
            prop_assert_eq!(nests_deeper_than(text.as_bytes(), max), depth(&v) > max);
        }

        /// Any bytes: an answer (never a panic), and anything accepted was within the bounds.
        #[test]
        fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            if parse(&body).is_ok() {
                prop_assert!(!nests_deeper_than(&body, MAX_DEPTH));
            }
        }

        /// A valid review wrapping any object within the depth bound parses; deeper ones are refused.
        #[test]
        fn wrapped_objects(v in arb_json()) {
            let body = review(&v.to_string());
            // review() adds two levels around the object.
            let within = depth(&v) + 2 <= MAX_DEPTH;
            prop_assert_eq!(parse(body.as_bytes()).is_ok(), within);
        }
    }
}
