//! Environment placeholders: `<akvs-name>@azurekeyvault[?<query>]` (akv2k8s's syntax, unchanged).
//!
//! - `<akvs-name>`: an `AzureKeyVaultSecret` in the pod's namespace, so a Kubernetes object name
//!   (RFC 1123 subdomain: lowercase letters, digits, `-` and `.`, starting and ending with a
//!   letter or digit, at most 253 characters);
//! - `<query>`: which part of the object (see [`crate::query`]): letters, digits, `_`, `.`, `-`,
//!   at most 253 characters (akv2k8s 1.5 accepts dots; kvbridge also `-`, which multi-key entries
//!   use). An empty query (`name@azurekeyvault?`) is no query.
//!
//! A value that is exactly a placeholder is one. A value that merely contains
//! `@azurekeyvault` (an e-mail address such as `ops@azurekeyvault.example`) is an ordinary
//! value. A value that *ends* in `@azurekeyvault` or contains `@azurekeyvault?` but is not a
//! valid placeholder is an error: passing it through would hand the application the literal
//! text instead of the secret.

use std::fmt;

/// The marker between the name and the query.
pub const MARKER: &str = "@azurekeyvault";
/// Longest object name Kubernetes accepts.
pub const MAX_NAME: usize = 253;
/// Longest query.
pub const MAX_QUERY: usize = 253;

/// A parsed placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placeholder {
    /// The `AzureKeyVaultSecret`'s name.
    pub akvs: String,
    /// The query; empty when none.
    pub query: String,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.query.is_empty() {
            write!(f, "{}{MARKER}", self.akvs)
        } else {
            write!(f, "{}{MARKER}?{}", self.akvs, self.query)
        }
    }
}

/// Why a value that looks like a placeholder is not one. The value is a placeholder, not a
/// secret, so quoting (a bounded prefix of) it is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("{0:?} is not a valid AzureKeyVaultSecret name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)")]
    Name(String),
    #[error("query {0:?} is not valid (letters, digits, '_', '.', '-', at most 253 characters)")]
    Query(String),
    #[error("more than one '?' after {MARKER}")]
    TwoQueries,
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// An RFC 1123 subdomain (a Kubernetes object name).
pub fn valid_object_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && !name.contains("..")
}

fn valid_query(q: &str) -> bool {
    q.len() <= MAX_QUERY
        && q.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Parses an environment value: `Ok(None)` for an ordinary value, `Ok(Some(_))` for a
/// placeholder, `Err` for a malformed one.
pub fn parse(value: &str) -> Result<Option<Placeholder>, PlaceholderError> {
    let Some(at) = value.find(MARKER) else {
        return Ok(None);
    };
    let rest = &value[at + MARKER.len()..];
    let query = match rest.strip_prefix('?') {
        Some(q) => q,
        None if rest.is_empty() => "",
        // `ops@azurekeyvault.example.com`: an ordinary value.
        None => return Ok(None),
    };
    let name = &value[..at];
    if !valid_object_name(name) {
        return Err(PlaceholderError::Name(clip(name)));
    }
    if query.contains('?') {
        return Err(PlaceholderError::TwoQueries);
    }
    if !valid_query(query) {
        return Err(PlaceholderError::Query(clip(query)));
    }
    Ok(Some(Placeholder {
        akvs: name.to_string(),
        query: query.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(akvs: &str, query: &str) -> Option<Placeholder> {
        Some(Placeholder {
            akvs: akvs.into(),
            query: query.into(),
        })
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            parse("db-password@azurekeyvault"),
            Ok(ph("db-password", ""))
        );
        assert_eq!(
            parse("db-password@azurekeyvault?"),
            Ok(ph("db-password", ""))
        );
        assert_eq!(
            parse("cert@azurekeyvault?tls.key"),
            Ok(ph("cert", "tls.key"))
        );
        assert_eq!(
            parse("cfg.v2@azurekeyvault?db_host"),
            Ok(ph("cfg.v2", "db_host"))
        );
        assert_eq!(parse("cfg@azurekeyvault?db-host"), Ok(ph("cfg", "db-host")));
        assert_eq!(parse("a@azurekeyvault?raw"), Ok(ph("a", "raw")));
        let long = "a".repeat(253);
        assert_eq!(parse(&format!("{long}@azurekeyvault")), Ok(ph(&long, "")));
        assert_eq!(
            ph("x", "q").unwrap().to_string(),
            "x@azurekeyvault?q",
            "Display round-trips"
        );
    }

    #[test]
    fn ordinary_values() {
        for v in [
            "",
            "plain",
            "ops@azurekeyvault.example.com",
            "a@azurekeyvaultx",
            "@azure",
            "x@AZUREKEYVAULT",
        ] {
            assert_eq!(parse(v), Ok(None), "{v}");
        }
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        for v in [
            "@azurekeyvault",
            "My_Secret@azurekeyvault",
            "-a@azurekeyvault",
            "a-@azurekeyvault",
            "a..b@azurekeyvault",
            "a b@azurekeyvault?x",
            &format!("{}@azurekeyvault", "a".repeat(254)),
        ] {
            assert!(matches!(parse(v), Err(PlaceholderError::Name(_))), "{v}");
        }
        assert_eq!(
            parse("a@azurekeyvault?x?y"),
            Err(PlaceholderError::TwoQueries)
        );
        for v in [
            "a@azurekeyvault?x y",
            "a@azurekeyvault?ü",
            "a@azurekeyvault?a/b",
        ] {
            assert!(matches!(parse(v), Err(PlaceholderError::Query(_))), "{v}");
        }
        let e = parse(&format!("{}@azurekeyvault", "A".repeat(10_000))).unwrap_err();
        assert!(e.to_string().len() < 400, "bounded message");
    }
}
