//! Identifiers: object versions (32 lowercase hex characters, like Key Vault).

use ring::rand::{SecureRandom, SystemRandom};

/// A fresh 32-hex-character version id.
pub fn new_version() -> String {
    hex::encode(random_bytes::<16>())
}

/// Random bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SystemRandom only fails when the OS has no entropy source; fall back to time-based bytes.
    if SystemRandom::new().fill(&mut buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = t[i % t.len()] ^ (i as u8);
        }
    }
    buf
}

/// A uniform float in [0, 1) for fault decisions.
pub fn random_unit() -> f64 {
    let b = random_bytes::<8>();
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_32_lower_hex_and_distinct() {
        let a = new_version();
        let b = new_version();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
