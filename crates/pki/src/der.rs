//! A minimal DER reader/writer for the few structures this crate builds by hand
//! (PKCS#1, SEC1, PKCS#8, SPKI). Definite lengths only.

use crate::PkiError;

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// rsaEncryption 1.2.840.113549.1.1.1
pub(crate) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey 1.2.840.10045.2.1
pub(crate) const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 1.2.840.10045.3.1.7
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 1.3.132.0.34
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// secp521r1 1.3.132.0.35
pub(crate) const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

fn malformed(what: &str) -> PkiError {
    PkiError::InvalidKey(format!("malformed DER ({what})"))
}

/// A cursor over DER-encoded input.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.input.first().copied()
    }

    /// Reads one TLV, returning (tag, value, whole encoding).
    pub(crate) fn read_any(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), PkiError> {
        let input = self.input;
        let tag = *input.first().ok_or_else(|| malformed("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(malformed("high tag number"));
        }
        let first = *input.get(1).ok_or_else(|| malformed("truncated length"))?;
        let (len, header) = if first < 0x80 {
            (first as usize, 2usize)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err(malformed("unsupported length"));
            }
            let bytes = input
                .get(2..2 + n)
                .ok_or_else(|| malformed("truncated length"))?;
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, 2 + n)
        };
        let end = header
            .checked_add(len)
            .filter(|end| *end <= input.len())
            .ok_or_else(|| malformed("length exceeds input"))?;
        self.input = &input[end..];
        Ok((tag, &input[header..end], &input[..end]))
    }

    /// Reads one TLV that must carry `tag`, returning its value.
    pub(crate) fn read(&mut self, tag: u8) -> Result<&'a [u8], PkiError> {
        let (t, value, _) = self.read_any()?;
        if t != tag {
            return Err(malformed("unexpected tag"));
        }
        Ok(value)
    }

    /// Reads a TLV with `tag` only when it is next.
    pub(crate) fn read_optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, PkiError> {
        if self.peek_tag() == Some(tag) {
            self.read(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads an INTEGER and returns its unsigned big-endian magnitude without leading zeros.
    pub(crate) fn read_uint(&mut self) -> Result<&'a [u8], PkiError> {
        let v = self.read(TAG_INTEGER)?;
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(malformed("negative integer"));
        }
        Ok(strip_zeros(v))
    }
}

/// Removes leading zero bytes (keeps at least nothing for zero).
pub(crate) fn strip_zeros(mut v: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = v {
        v = rest;
    }
    v
}

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// Encodes a SEQUENCE of already-encoded elements.
pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &parts.concat())
}

/// Encodes an unsigned big-endian magnitude as a DER INTEGER.
pub(crate) fn uint(magnitude: &[u8]) -> Vec<u8> {
    let m = strip_zeros(magnitude);
    let mut v = Vec::with_capacity(m.len() + 1);
    if m.first().is_none_or(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(m);
    tlv(TAG_INTEGER, &v)
}

/// Encodes a BIT STRING with no unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(0);
    v.extend_from_slice(bytes);
    tlv(TAG_BIT_STRING, &v)
}

/// Returns the payload of a BIT STRING value that has no unused bits.
pub(crate) fn bit_string_bytes(value: &[u8]) -> Result<&[u8], PkiError> {
    match value {
        [0, rest @ ..] => Ok(rest),
        _ => Err(malformed("bit string with unused bits")),
    }
}

/// Dotted-decimal form of an OID's content bytes.
pub(crate) fn oid_to_string(content: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for b in content {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_long_lengths_and_integers() {
        let big = vec![0xffu8; 300];
        let enc = uint(&big);
        let mut r = Reader::new(&enc);
        assert_eq!(r.read_uint().unwrap(), &big[..]);
        assert!(r.is_empty());
        assert_eq!(uint(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(uint(&[]), vec![2, 1, 0]);
        assert_eq!(oid_to_string(OID_RSA), "1.2.840.113549.1.1.1");
        assert_eq!(oid_to_string(OID_P521), "1.3.132.0.35");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Walks every TLV, descending into constructed values (bounded depth).
        fn walk(input: &[u8], depth: usize) -> usize {
            let mut r = Reader::new(input);
            let mut seen = 0;
            while !r.is_empty() {
                let before = r.input.len();
                match r.read_any() {
                    Ok((tag, value, whole)) => {
                        assert_eq!(before - r.input.len(), whole.len(), "consumes the TLV");
                        assert!(whole.len() >= value.len() + 2);
                        assert!(whole.ends_with(value));
                        seen += 1;
                        if tag & 0x20 != 0 && depth < 32 {
                            seen += walk(value, depth + 1);
                        }
                    }
                    Err(_) => break,
                }
            }
            seen
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn reader_never_panics_on_random_input(input in proptest::collection::vec(any::<u8>(), 0..512)) {
                walk(&input, 0);
                let mut r = Reader::new(&input);
                let _ = r.read_uint();
                let mut r = Reader::new(&input);
                let _ = r.read_optional(TAG_SEQUENCE);
                let _ = bit_string_bytes(&input);
                let _ = oid_to_string(&input);
            }

            #[test]
            fn tlv_round_trips(tag in any::<u8>().prop_filter("low tag number", |t| t & 0x1f != 0x1f),
                               value in proptest::collection::vec(any::<u8>(), 0..1024)) {
                let enc = tlv(tag, &value);
                let mut r = Reader::new(&enc);
                let (t, v, whole) = r.read_any().unwrap();
                prop_assert_eq!(t, tag);
                prop_assert_eq!(v, &value[..]);
                prop_assert_eq!(whole.len(), enc.len());
                prop_assert!(r.is_empty());
            }

            #[test]
            fn uint_round_trips(m in proptest::collection::vec(any::<u8>(), 0..300)) {
                let enc = uint(&m);
                let mut r = Reader::new(&enc);
                let got = r.read_uint().unwrap();
                prop_assert_eq!(got, strip_zeros(&m));
                prop_assert!(got.first() != Some(&0));
            }

            /// Nested structures with mutated bytes: the walk still ends without panicking.
            #[test]
            fn mutated_nested_structures(depth in 1usize..40, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                                         cut in any::<Option<usize>>()) {
                let mut enc = uint(&[1, 2, 3]);
                for i in 0..depth {
                    enc = if i % 2 == 0 { seq(&[&enc, &bit_string(&[0x55; 3])]) } else { tlv(0xa0, &enc) };
                }
                for (i, b) in &edits {
                    let n = enc.len();
                    enc[i % n] = *b;
                }
                if let Some(c) = cut {
                    let n = enc.len();
                    enc.truncate(c % (n + 1));
                }
                walk(&enc, 0);
            }
        }
    }
}
