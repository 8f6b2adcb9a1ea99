//! Property tests: classification, id and job-id validation, query normalization, cache key
//! formats and config parsing hold on any input, not only on the cases we thought of.

use http::{HeaderMap, HeaderValue, Method, Uri};
use mono_proxy::config::Config;
use mono_proxy::request::context::{account_key, normalize_query, path_key};
use mono_proxy::route::{self, Class, Rules, MAX_ID_LEN};
use mono_proxy::routes::Routes;
use proptest::prelude::*;

const HOSTS: &[&str] = &["api.withmono.com"];

fn hosts() -> Vec<String> {
    HOSTS.iter().map(ToString::to_string).collect()
}

fn classify(method: &Method, uri: &Uri, realtime: Option<&str>) -> Result<Class, u16> {
    let mut headers = HeaderMap::new();
    if let Some(v) = realtime.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert("x-realtime", v);
    }
    let config = Config::parse_runnable("", &[("MONO_SEC_KEY", "k")]).expect("defaults");
    let routes = Routes::new(&config.routes, &config.cache);
    let hosts = hosts();
    let rules = Rules {
        webhook_path: "/webhooks/mono",
        accept_hosts: &hosts,
        routes: &routes,
    };
    route::classify(method, uri, &headers, &rules).map_err(|e| e.status().as_u16())
}

/// The id rule written out independently of the code under test.
fn id_oracle(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// Path segments, biased towards the ones that matter: ids, dots, encodings, empties.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v2".to_string()),
        Just("accounts".to_string()),
        Just("balance".to_string()),
        Just("transactions".to_string()),
        Just("jobs".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(String::new()),
        Just("%2e%2E".to_string()),
        Just("a%2Fb".to_string()),
        Just("%5c".to_string()),
        "[A-Za-z0-9._~%-]{0,12}",
        "[A-Za-z0-9._-]{120,140}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..7).prop_map(|s| format!("/{}", s.join("/")))
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        Just(Method::TRACE),
        Just(Method::CONNECT),
        "[A-Za-z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn classify_never_panics_on_any_target(target in "\\PC{0,200}", m in method(), rt in proptest::option::of("\\PC{0,8}")) {
        if let Ok(uri) = target.parse::<Uri>() {
            let _ = classify(&m, &uri, rt.as_deref());
        }
    }

    #[test]
    fn nothing_validation_refuses_is_forwarded(p in path(), q in proptest::option::of("[a-z=&]{0,12}"), m in method()) {
        let target = match &q { Some(q) => format!("{p}?{q}"), None => p.clone() };
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
        let result = classify(&m, &uri, None);
        let segments: Vec<&str> = p.split('/').skip(1).collect();
        let lower = p.to_ascii_lowercase();
        let refused_path = segments.iter().any(|s| *s == "." || *s == "..")
            || p.contains("//")
            || lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c");
        let forwarded_method = route::FORWARDED_METHODS.contains(&m);
        if refused_path || !forwarded_method {
            prop_assert!(result.is_err(), "{m} {target} was classified as {result:?}");
        }
        // Any account id that reaches a class was valid.
        if let (Ok(_), ["v2", "accounts", id, ..]) = (&result, segments.as_slice()) {
            prop_assert!(id.is_empty() || id_oracle(id), "{target} passed with id {id:?}");
        }
        match result {
            Ok(Class::Cached { account, .. } | Class::Realtime { account, .. }) => {
                prop_assert!(id_oracle(&account));
            }
            Ok(Class::JobStatus { account, job_id }) => {
                prop_assert!(id_oracle(&account) && id_oracle(&job_id));
            }
            _ => {}
        }
    }

    #[test]
    fn id_validation_is_exactly_the_documented_rule(id in prop_oneof!["\\PC{0,140}", "[A-Za-z0-9._-]{0,140}"]) {
        prop_assert_eq!(route::is_valid_id(&id), id_oracle(&id));
    }

    #[test]
    fn query_normalization_is_idempotent_and_order_blind(pairs in prop::collection::vec(("[a-z]{1,6}", "[a-z0-9]{0,4}"), 0..6), empties in 0usize..3) {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut query = distinct.join("&");
        query.push_str(&"&".repeat(empties));
        let once = normalize_query(Some(&query));
        prop_assert_eq!(normalize_query(Some(&once)), once.clone());
        let mut reversed = distinct.clone();
        reversed.reverse();
        prop_assert_eq!(normalize_query(Some(&reversed.join("&"))), once.clone());
        prop_assert!(!once.starts_with('&') && !once.ends_with('&') && !once.contains("&&"));
    }

    #[test]
    fn cache_keys_never_collide_across_accounts_or_paths(a in "[A-Za-z0-9._-]{1,20}", b in "[A-Za-z0-9._-]{1,20}", qa in proptest::option::of("[a-z]{1,3}=[0-9]{1,2}"), qb in proptest::option::of("[a-z]{1,3}=[0-9]{1,2}")) {
        let tenant: std::sync::Arc<str> = "00112233aabbccdd".into();
        prop_assert_eq!(account_key(&tenant, &a) == account_key(&tenant, &b), a == b);
        let (ka, kb) = (path_key("transactions", "", qa.as_deref()), path_key("transactions", "", qb.as_deref()));
        prop_assert_eq!(ka == kb, normalize_query(qa.as_deref()) == normalize_query(qb.as_deref()));
        prop_assert!(ka.starts_with("transactions"));
        prop_assert_ne!(path_key("balance", "", qa.as_deref()), path_key("transactions", "", qa.as_deref()));
    }

    #[test]
    fn config_parsing_never_panics(text in "\\PC{0,300}") {
        let _ = Config::parse(&text, &[("MONO_SEC_KEY", "k")]);
    }

    #[test]
    fn config_values_of_every_shape_give_problems_not_panics(
        key in prop::sample::select(vec![
            "listen", "upstream.timeout", "upstream.base_url", "cache.max_bytes", "cache.ttl",
            "realtime.window", "realtime.max_retry_after", "server.max_connections",
            "store.redis_url", "webhook.forward_to", "webhook.memory", "jobs.poll",
        ]),
        value in prop_oneof![
            "[^\"\\\\]{0,30}".prop_map(|s| format!("\"{s}\"")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("[]".to_string()),
            Just("[\"a\", 1]".to_string()),
            Just("{}".to_string()),
        ],
    ) {
        let text = match key.split_once('.') {
            Some((section, field)) => format!("[{section}]\n{field} = {value}\n"),
            None => format!("{key} = {value}\n"),
        };
        if text.parse::<toml::Table>().is_ok() {
            let _ = Config::parse(&text, &[("MONO_SEC_KEY", "k")]);
        }
    }
}
