//! What rendering produces: files to deliver (path, mode, contents). Publishing them is the
//! caller's business (`mount::writer::AtomicWriter`, or the CSI driver from a gRPC response).

use std::fmt;

use zeroize::Zeroizing;

/// One file to deliver: relative path, mode, contents (zeroized on drop, never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct OutFile {
    /// Relative path with `/` separators (`name`, `alias`, `name/0`).
    pub path: String,
    pub mode: u32,
    pub contents: Zeroizing<Vec<u8>>,
}

impl OutFile {
    pub fn new(path: impl Into<String>, mode: u32, contents: Vec<u8>) -> OutFile {
        OutFile {
            path: path.into(),
            mode,
            contents: Zeroizing::new(contents),
        }
    }
}

impl fmt::Debug for OutFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field(
                "contents",
                &format_args!("<{} bytes redacted>", self.contents.len()),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_contents() {
        let s = format!("{:?}", OutFile::new("p", 0o644, b"hunter2".to_vec()));
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redacted"), "{s}");
    }
}
