//! Property tests of the FlexVolume options parser (kubelet passes JSON written by whoever wrote
//! the pod spec): any JSON object, any values, never a panic; what it accepts is then parsed
//! with the same bounded class parser as the CSI provider.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use proptest::prelude::*;
use provider::flexvolume::translate;
use serde_json::Value;

const KEYS: &[&str] = &[
    "usepodidentity",
    "usevmmanagedidentity",
    "vmmanagedidentityclientid",
    "keyvaultname",
    "keyvaultobjectnames",
    "keyvaultobjectaliases",
    "keyvaultobjecttypes",
    "keyvaultobjectversions",
    "resourcegroup",
    "subscriptionid",
    "tenantid",
    "cloudname",
    "kubernetes.io/pod.name",
    "kubernetes.io/pod.namespace",
    "kubernetes.io/secret/clientid",
    "kubernetes.io/secret/clientsecret",
    "other",
];

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        "\\PC{0,40}".prop_map(Value::String),
        "[a-z0-9;|: \\-]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_options_translate_or_fail_cleanly(
        options in prop::collection::btree_map(prop::sample::select(KEYS).prop_map(str::to_string), value(), 0..14)
    ) {
        if let Ok((params, _secrets)) = translate(&options) {
            // What translation accepts goes through the provider's bounded class parser.
            let _ = render::params::Parameters::parse(&params);
        }
    }

    #[test]
    fn arbitrary_json_text_never_panics(text in "\\PC{0,300}") {
        if let Ok(options) = serde_json::from_str::<BTreeMap<String, Value>>(&text) {
            let _ = translate(&options);
        }
    }

    #[test]
    fn object_lists_of_any_shape(
        names in "[a-z0-9;]{0,60}",
        types in "[a-z;]{0,40}",
        aliases in "[a-z0-9;./]{0,60}",
        versions in "[a-f0-9;]{0,40}",
    ) {
        let mut options = BTreeMap::new();
        for (k, v) in [
            ("keyvaultname", "kv1"),
            ("tenantid", "t"),
            ("keyvaultobjectnames", names.as_str()),
            ("keyvaultobjecttypes", types.as_str()),
            ("keyvaultobjectaliases", aliases.as_str()),
            ("keyvaultobjectversions", versions.as_str()),
        ] {
            options.insert(k.to_string(), Value::String(v.to_string()));
        }
        if let Ok((params, _)) = translate(&options) {
            let _ = render::params::Parameters::parse(&params);
        }
    }
}
