//! Property tests of the parsers of untrusted class input (issue 13): the `objects` YAML, the
//! parameters map and whole class files. Whatever the input, they return a value or an error
//! naming the field: never a panic, never unbounded work (inputs up to the size limits finish;
//! the worst shapes are timed in `cargo bench -p kvbridge-provider --bench soak`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use proptest::prelude::*;
use render::limits;
use render::manifest::parse_class;
use render::params::{parse_objects, Parameters};

const VALID_OBJECTS: &str = "array:\n  - |\n    objectName: db-pass\n    objectType: secret\n    objectAlias: db/pass\n    objectVersionHistory: 2\n  - |\n    objectName: tls\n    objectType: cert\n  - |\n    objectName: k\n    objectType: key\n    filePermission: \"0600\"\n";

const VALID_CLASS: &str = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: c\nspec:\n  provider: azure\n  secretObjects:\n  - secretName: s\n    type: Opaque\n    data:\n    - {objectName: db-pass, key: p}\n  parameters:\n    keyvaultName: kv1\n    tenantID: t\n    objects: |\n      array:\n        - |\n          objectName: db-pass\n          objectType: secret\n";

/// Characters that change YAML structure.
const YAML_BITS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "- ",
    ": ",
    "\n",
    "\n  ",
    "\n    ",
    "'",
    "\"",
    "&a ",
    "*a",
    "!!str ",
    "? ",
    "|",
    ">",
    "#",
    ",",
    "\t",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "\\",
    "\u{0}",
    "\u{feff}",
];

/// A valid input with random structural edits: insertions of YAML syntax, deletions, and
/// duplicated slices (which grow nesting and size).
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    let edit = (
        0usize..4,
        any::<prop::sample::Index>(),
        prop::sample::select(YAML_BITS),
        1usize..40,
    );
    prop::collection::vec(edit, 1..24).prop_map(move |edits| {
        let mut s: Vec<char> = base.chars().collect();
        for (kind, at, bit, n) in edits {
            let pos = at.index(s.len() + 1);
            match kind {
                0 => {
                    for (i, c) in bit.chars().enumerate() {
                        s.insert(pos + i, c);
                    }
                }
                1 if !s.is_empty() => {
                    let end = (pos + n).min(s.len());
                    s.drain(pos.min(end)..end);
                }
                2 => {
                    let end = (pos + n).min(s.len());
                    let slice: Vec<char> = s[pos.min(end)..end].to_vec();
                    for (i, c) in slice.into_iter().enumerate() {
                        s.insert(end + i, c);
                    }
                }
                _ => {
                    for _ in 0..n {
                        for (i, c) in bit.chars().enumerate() {
                            s.insert(pos + i, c);
                        }
                    }
                }
            }
        }
        s.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn objects_never_panic_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = parse_objects(&text);
    }

    #[test]
    fn objects_never_panic_on_mutated_yaml(text in mutated(VALID_OBJECTS)) {
        match parse_objects(&text) {
            Ok(objects) => {
                prop_assert!(!objects.is_empty());
                prop_assert!(objects.len() <= limits::MAX_OBJECTS);
                for o in &objects {
                    prop_assert!(!o.file_name().contains(".."));
                    prop_assert!(!o.file_name().starts_with('/'));
                    prop_assert!(!o.file_name().chars().any(char::is_control));
                    prop_assert!(o.version_history <= limits::MAX_VERSION_HISTORY);
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("objects"), "{e}"),
        }
    }

    #[test]
    fn parameters_never_panic(
        pairs in prop::collection::btree_map(
            prop::sample::select(vec![
                "keyvaultName", "tenantID", "tenantId", "cloudName", "cloudEnvFileName",
                "usePodIdentity", "useVMManagedIdentity", "userAssignedIdentityID", "clientID",
                "objects", "csi.storage.k8s.io/pod.name", "other",
            ]).prop_map(str::to_string),
            "\\PC{0,60}",
            0..10,
        ),
        objects in mutated(VALID_OBJECTS),
    ) {
        let mut map: BTreeMap<String, String> = pairs;
        map.entry("objects".into()).or_insert(objects);
        let _ = Parameters::parse(&map);
    }

    #[test]
    fn class_files_never_panic(text in mutated(VALID_CLASS)) {
        let _ = parse_class(&text);
    }
}

/// The largest inputs the limits admit, in the shapes that used to be slow (deep nesting,
/// many objects, many name clashes to check), finish; the timing lives in the soak bench.
#[test]
fn inputs_at_the_limits_finish() {
    let deep_flow = format!(
        "array:\n  - |\n    objectName: {}\n",
        "[".repeat(limits::MAX_YAML_NESTING)
    );
    assert!(parse_objects(&deep_flow).is_err());
    let mut many = String::from("array:\n");
    for i in 0..limits::MAX_OBJECTS {
        many.push_str(&format!(
            "  - |\n    objectName: o{i}\n    objectType: secret\n    objectAlias: d{}/f{i}\n",
            i % 7
        ));
    }
    assert!(many.len() < limits::MAX_OBJECTS_BYTES);
    assert_eq!(parse_objects(&many).unwrap().len(), limits::MAX_OBJECTS);
    // Aliases forming one long chain of nested directories, each a prefix of the next one's:
    // every prefix lookup is done, none matches.
    let mut chain = String::from("array:\n");
    let mut path = String::new();
    for i in 0..200 {
        path.push_str(&format!("d{i}/"));
        chain.push_str(&format!(
            "  - |\n    objectName: o{i}\n    objectType: secret\n    objectAlias: {path}f\n"
        ));
    }
    assert_eq!(parse_objects(&chain).unwrap().len(), 200);
    // The deepest names allowed (2048 bytes of `a/a/...`), as many as fit in the parameter.
    let deep_name = "a/".repeat(render::params::MAX_PATH_BYTES / 2 - 3) + "z";
    let mut deep = String::from("array:\n");
    let mut n = 0;
    while deep.len() + deep_name.len() + 80 < limits::MAX_OBJECTS_BYTES {
        deep.push_str(&format!(
            "  - |\n    objectName: o{n}\n    objectType: secret\n    objectAlias: {deep_name}{n}\n"
        ));
        n += 1;
    }
    assert_eq!(parse_objects(&deep).unwrap().len(), n);
    let too_long = format!(
        "array:\n  - |\n    objectName: o\n    objectType: secret\n    objectAlias: {}\n",
        "a/".repeat(1100)
    );
    assert!(parse_objects(&too_long)
        .unwrap_err()
        .to_string()
        .contains("more than the limit of 2048"));
    let long_segment = format!(
        "array:\n  - |\n    objectName: {}\n    objectType: secret\n",
        "x".repeat(256)
    );
    assert!(parse_objects(&long_segment)
        .unwrap_err()
        .to_string()
        .contains("more than the limit of 255"));
}
