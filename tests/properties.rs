//! Property tests for every parser reachable from the network or from files: the hello
//! header, path rules and blocked-path matching, PEM, plane manifests and the routes file.
//! Each runs 10,000 generated cases: no input panics, and no invalid input is accepted.

use proptest::prelude::*;

use planelink::gateway::paths::{ApiPath, PathRule, normalize};
use planelink::planes::manifest::parse_file;
use planelink::tunnel::Hello;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A path segment as an attacker might spell it: words, empty, `.`, encodings.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        Just(String::new()),
        Just(".".to_string()),
        Just("watch".to_string()),
        Just("namespaces".to_string()),
        "[ -~]{0,6}",
    ]
}

/// `secrets` of kube-system or of all namespaces, spelt with extra `//`, `/./` and the
/// legacy watch prefix.
fn blocked_spelling() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![Just("/"), Just("//"), Just("/./")], 5),
        any::<bool>(),
        any::<bool>(),
        prop::option::of("[a-z0-9-]{1,10}"),
    )
        .prop_map(|(seps, watch, in_kube_system, name)| {
            let mut path = format!("{}api{}v1", seps[0], seps[1]);
            if watch {
                path.push_str(&format!("{}watch", seps[2]));
            }
            if in_kube_system {
                path.push_str(&format!("{}namespaces{}kube-system", seps[3], seps[2]));
            }
            path.push_str(&format!("{}secrets", seps[4]));
            if let Some(name) = name {
                path.push_str(&format!("/{name}"));
            }
            path
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hello_never_panics_and_needs_a_protocol(header in "[ -~]{0,200}") {
        if let Ok(hello) = Hello::parse(&header) {
            prop_assert!(hello.protocol != 0);
        }
    }

    #[test]
    fn hello_without_protocol_is_refused(role in "[a-z]{0,10}", version in "[0-9.]{0,10}") {
        let header = format!("role={role}; version={version}; capabilities=h2");
        prop_assert!(Hello::parse(&header).is_err());
    }

    #[test]
    fn path_parsing_never_panics(segments in prop::collection::vec(segment(), 0..10)) {
        let path = format!("/{}", segments.join("/"));
        if let Ok(normalized) = normalize(&path) {
            prop_assert!(!normalized.contains("//"));
            prop_assert!(!normalized.split('/').any(|s| s == "." || s == ".."));
            let _ = ApiPath::parse(&normalized);
            let _ = PathRule::parse(&path);
        }
    }

    #[test]
    fn blocked_secrets_hold_for_every_spelling(path in blocked_spelling()) {
        let rules = [
            PathRule::parse("/api/v1/secrets").unwrap(),
            PathRule::parse("/api/v1/namespaces/kube-system/secrets").unwrap(),
        ];
        let normalized = normalize(&path).unwrap();
        let api = ApiPath::parse(&normalized);
        prop_assert!(rules.iter().any(|r| r.matches(&normalized, api.as_ref())), "{path} passed");
    }

    #[test]
    fn token_minting_is_refused_for_every_spelling(
        seps in prop::collection::vec(prop_oneof![Just("/"), Just("//"), Just("/./")], 7),
        ns in "[a-z0-9-]{1,10}",
        account in "[a-z0-9-]{1,10}",
    ) {
        let path = format!(
            "{}api{}v1{}namespaces{}{ns}{}serviceaccounts{}{account}{}token",
            seps[0], seps[1], seps[2], seps[3], seps[4], seps[5], seps[6]
        );
        let api = ApiPath::parse(&normalize(&path).unwrap()).unwrap();
        prop_assert!(api.mints_token(&http::Method::POST), "{path}");
    }

    #[test]
    fn pem_never_panics_and_never_yields_a_certificate_from_noise(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(contents) = planelink::trust::pem::parse(&bytes) {
            prop_assert!(contents.certificates.is_empty(), "random bytes parsed as a certificate");
        }
    }

    #[test]
    fn manifests_never_panic(text in "[ -~\n]{0,400}", json in any::<bool>()) {
        let _ = parse_file(&text, json);
    }

    #[test]
    fn planes_outside_the_group_are_refused(group in "[a-z]{1,12}(\\.[a-z]{1,8})?", kind in prop_oneof![Just("DataPlane"), Just("BuildPlane"), Just("ObservabilityPlane")]) {
        prop_assume!(group != "openchoreo.dev");
        let text = format!("apiVersion: {group}/v1alpha1\nkind: {kind}\nmetadata: {{name: p}}\nspec: {{}}\n");
        prop_assert!(parse_file(&text, false).is_err());
    }

    #[test]
    fn routes_files_never_panic(text in "[ -~\n]{0,300}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, &text).unwrap();
        let _ = planelink::agent::upstream::load_routes(&path);
    }
}
