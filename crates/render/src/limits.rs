//! Bounds on what a SecretProviderClass (or a class file) may ask for.
//!
//! A class is written by any namespace's author and reaches the node's provider, which serves
//! every pod on the node: its size, nesting and object count are bounded before any YAML parser
//! runs, so that parsing and the checks that follow stay linear and take milliseconds.
//!
//! The bounds are far above what real classes use (the Kubernetes API server already refuses
//! objects above ~1.5 MiB; the Azure provider's documented examples have a handful of objects).

/// Largest `objects` parameter, in bytes.
pub const MAX_OBJECTS_BYTES: usize = 256 * 1024;
/// Largest class file or parameters map (all values together), in bytes.
pub const MAX_CLASS_BYTES: usize = 1024 * 1024;
/// Most entries in `objects.array`.
pub const MAX_OBJECTS: usize = 1000;
/// Largest `objectVersionHistory` of one object.
pub const MAX_VERSION_HISTORY: u32 = 200;
/// Most files one mount may produce (objects × history).
pub const MAX_FILES: u64 = 10_000;
/// Largest YAML nesting (estimated from the text, see [`yaml_nesting_bound`]).
pub const MAX_YAML_NESTING: usize = 64;

/// An upper bound on the nesting depth of a YAML text, computed in one linear pass without
/// parsing it.
///
/// Flow collections (`[`, `{` outside quotes and comments) count one level each. A block
/// collection nested in another either starts at a larger indentation or follows a compact
/// indicator (`- `, `? `, `: `) on the same line, so a line's block depth is at most its
/// indentation plus the indicators on it. Block scalar contents are counted as if they were
/// structure, which only makes the bound larger; real classes stay far below
/// [`MAX_YAML_NESTING`] (the documented shapes give at most 8).
pub fn yaml_nesting_bound(text: &str) -> usize {
    let mut max = 0usize;
    let mut flow = 0usize;
    for line in text.lines() {
        let bytes = line.as_bytes();
        let indent = bytes
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        let mut block = indent;
        let mut quote: Option<u8> = None;
        let mut i = indent;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(q) => {
                    if q == b'"' && b == b'\\' {
                        i += 1;
                    } else if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    // A quote opens a quoted scalar only where a scalar can start; inside a
                    // plain scalar (`don't`) it is a literal, and brackets after it count.
                    b'"' | b'\''
                        if i == indent
                            || matches!(bytes[i - 1], b' ' | b'\t' | b'[' | b'{' | b',') =>
                    {
                        quote = Some(b)
                    }
                    b'#' if i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t' => break,
                    b'[' | b'{' => {
                        flow += 1;
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    b'-' | b'?' | b':'
                        if bytes.get(i + 1).is_none_or(|n| *n == b' ' || *n == b'\t') =>
                    {
                        block += 1
                    }
                    _ => {}
                },
            }
            max = max.max(block + flow);
            i += 1;
        }
        // A quoted scalar may span lines in flow context; a single-quoted one ends at its
        // quote, so carrying the state over lines is not needed for an upper bound: a line
        // read as outside quotes only counts more brackets, never fewer.
        max = max.max(block + flow);
    }
    max
}

/// Checks a YAML text against a size limit and [`MAX_YAML_NESTING`] before it is parsed.
pub fn check_yaml(text: &str, max_bytes: usize) -> Result<(), String> {
    if text.len() > max_bytes {
        return Err(format!(
            "is {} bytes, more than the limit of {max_bytes}",
            text.len()
        ));
    }
    let depth = yaml_nesting_bound(text);
    if depth > MAX_YAML_NESTING {
        return Err(format!(
            "is nested too deeply (about {depth} levels, limit {MAX_YAML_NESTING})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_small_for_real_shapes() {
        let objects = "array:\n  - |\n    objectName: s1\n    objectType: secret\n  - |\n    objectName: k\n    objectType: key\n";
        assert!(
            yaml_nesting_bound(objects) <= 8,
            "{}",
            yaml_nesting_bound(objects)
        );
        assert!(yaml_nesting_bound("objectName: a\nobjectType: cert # [x] {y}\n") <= 2);
        assert!(yaml_nesting_bound("a: '[[[['\nb: \"{{{{\\\"[[\"\n") <= 2);
        // A quote inside a plain scalar does not hide what follows it.
        assert!(yaml_nesting_bound(&format!("[a'{}", "[".repeat(100))) >= 100);
    }

    #[test]
    fn bound_grows_with_every_kind_of_nesting() {
        let flow = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(yaml_nesting_bound(&flow) >= 100);
        let compact = "- ".repeat(100);
        assert!(yaml_nesting_bound(&compact) >= 100);
        let mut indented = String::new();
        for i in 0..100 {
            indented.push_str(&" ".repeat(i));
            indented.push_str("a:\n");
        }
        assert!(yaml_nesting_bound(&indented) >= 99);
        // Brackets across lines keep counting.
        assert!(yaml_nesting_bound(&"[\n".repeat(100)) >= 100);
    }

    #[test]
    fn check_names_the_limit() {
        assert!(check_yaml("a: b", 3).unwrap_err().contains("limit of 3"));
        let deep = "[".repeat(1000);
        assert!(check_yaml(&deep, MAX_OBJECTS_BYTES)
            .unwrap_err()
            .contains("nested too deeply"));
    }
}
