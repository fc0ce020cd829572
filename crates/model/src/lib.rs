//! Key Vault's vocabulary, shared by the client (`keyvault`), the dev vault, the renderers and
//! the controller: the object kinds and the rules for vault and object names. No I/O.

use std::fmt;

/// The three Key Vault object families.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ObjectKind {
    Secret,
    Key,
    Certificate,
}

impl ObjectKind {
    /// The URL collection: `secrets`, `keys`, `certificates`.
    pub fn collection(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secrets",
            ObjectKind::Key => "keys",
            ObjectKind::Certificate => "certificates",
        }
    }

    /// The noun in messages: `secret`, `key`, `certificate` (also [`fmt::Display`]).
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Key => "key",
            ObjectKind::Certificate => "certificate",
        }
    }

    /// The SecretProviderClass `objectType` spelling (`secret`, `key`, `cert`), also used in the
    /// object ids the CSI driver records (`cert/name`).
    pub fn object_type(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Key => "key",
            ObjectKind::Certificate => "cert",
        }
    }

    /// Parses an `objectType` exactly as the Azure provider's `switch` does (`secret`, `key`,
    /// `cert`; case-sensitive).
    pub fn from_object_type(s: &str) -> Option<ObjectKind> {
        match s {
            "secret" => Some(ObjectKind::Secret),
            "key" => Some(ObjectKind::Key),
            "cert" => Some(ObjectKind::Certificate),
            _ => None,
        }
    }

    /// Parses any common spelling, case-insensitive: `secret(s)`, `key(s)`, `cert`,
    /// `certificate(s)`.
    pub fn parse(s: &str) -> Option<ObjectKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "secret" | "secrets" => Some(ObjectKind::Secret),
            "key" | "keys" => Some(ObjectKind::Key),
            "cert" | "certificate" | "certificates" => Some(ObjectKind::Certificate),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Key Vault's vault name rules: 3-24 characters of letters, digits and hyphens, starting with
/// a letter, ending with a letter or digit, no consecutive hyphens. `Err` says which rule.
pub fn check_vault_name(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if !(3..=24).contains(&b.len()) {
        return Err("must be between 3 and 24 characters");
    }
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return Err("may only contain letters, digits and hyphens");
    }
    if !b[0].is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    if !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("must end with a letter or digit");
    }
    if name.contains("--") {
        return Err("must not contain consecutive hyphens");
    }
    Ok(())
}

/// True when `name` follows [`check_vault_name`].
pub fn valid_vault_name(name: &str) -> bool {
    check_vault_name(name).is_ok()
}

/// Key Vault object names: 1-127 characters of letters, digits and hyphens.
pub fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_spellings() {
        for k in [ObjectKind::Secret, ObjectKind::Key, ObjectKind::Certificate] {
            assert_eq!(ObjectKind::from_object_type(k.object_type()), Some(k));
            assert_eq!(ObjectKind::parse(k.collection()), Some(k));
            assert_eq!(ObjectKind::parse(&k.to_string().to_uppercase()), Some(k));
        }
        assert_eq!(ObjectKind::from_object_type("Secret"), None);
        assert_eq!(ObjectKind::from_object_type("certificate"), None);
    }

    #[test]
    fn vault_names() {
        for good in ["abc", "a23456789012345678901234", "My-Vault-01", "kv1"] {
            assert!(valid_vault_name(good), "{good}");
        }
        for (bad, rule) in [
            ("ab", "between 3 and 24"),
            ("a234567890123456789012345", "between 3 and 24"),
            ("we$ird", "letters, digits and hyphens"),
            ("a b", "letters, digits and hyphens"),
            ("1abc", "start with a letter"),
            ("abc-", "end with a letter or digit"),
            ("a--b", "consecutive hyphens"),
        ] {
            assert!(check_vault_name(bad).unwrap_err().contains(rule), "{bad}");
        }
    }

    #[test]
    fn object_names() {
        assert!(valid_object_name("db-password"));
        assert!(valid_object_name(&"a".repeat(127)));
        assert!(!valid_object_name(&"a".repeat(128)));
        assert!(!valid_object_name("a/b"));
        assert!(!valid_object_name(""));
        assert!(!valid_object_name("a_b"));
    }
}
