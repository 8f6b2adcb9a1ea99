use super::*;

use crate::config::tests::NO_ENV;

#[test]
fn defaults_apply_to_an_empty_file() {
    let c = Config::parse("", &NO_ENV).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.realtime.window, DEFAULT_WINDOW);
    assert_eq!(c.cache.ttl, DEFAULT_WINDOW);
    assert_eq!(c.cache.max_bytes, 256 * 1024 * 1024);
    assert_eq!(
        c.upstream.base_url.authority().unwrap().as_str(),
        "api.withmono.com"
    );
    assert!(c.upstream.accept_hosts.contains(&"api.withmono.com".into()));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
        listen = "nope"
        bogus = 1
        [upstream]
        timeout = "soon"
        base_url = "ftp://x"
        [cache]
        max_bytes = "lots"
        colour = "red"
    "#;
    let errs = Config::parse(text, &NO_ENV).unwrap_err().0;
    for needle in [
        "listen:",
        "bogus: unknown key",
        "upstream.timeout",
        "upstream.base_url",
        "cache.max_bytes",
        "cache.colour: unknown key",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{needle} in {errs:?}"
        );
    }
}

#[test]
fn environment_overrides_a_key_the_file_also_sets() {
    let text = r#"
        listen = "127.0.0.1:1111"
        [upstream]
        base_url = "https://api.withmono.com"
        [log]
        filter = "info"
    "#;
    let env = [
        ("MONO_PROXY_LISTEN", "127.0.0.1:2222"),
        ("MONO_PROXY_UPSTREAM_URL", "http://127.0.0.1:3333"),
        ("RUST_LOG", "debug"),
    ];
    let c = Config::parse(text, &env).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:2222");
    assert_eq!(
        c.upstream.base_url.authority().unwrap().as_str(),
        "127.0.0.1:3333"
    );
    assert_eq!(c.log.filter, "debug");
}

#[test]
fn env_and_file_secret_together_is_a_problem() {
    let errs = Config::parse(
        "[upstream]\nsecret_key_file = \"/tmp/k\"",
        &[("MONO_SEC_KEY", "k")],
    )
    .unwrap_err();
    assert!(errs.to_string().contains("choose one"));
}

/// The one problem naming `key`, which must not show `password`.
fn problem_hiding(text: &str, key: &str, password: &str) -> String {
    let errs = Config::parse(text, &NO_ENV).unwrap_err().0;
    let named: Vec<&String> = errs.iter().filter(|e| e.contains(key)).collect();
    assert_eq!(named.len(), 1, "one {key} problem in {errs:?}");
    assert!(!named[0].contains(password), "{}", named[0]);
    named[0].clone()
}

#[test]
fn a_bad_redis_url_is_shown_without_its_password() {
    let shown = problem_hiding(
        "[store]\nredis_url = \"http://user:hunter2@h:1\"",
        "store.redis_url",
        "hunter2",
    );
    assert!(shown.contains("http://user:***@h:1"), "{shown}");
}

#[test]
fn urls_with_credentials_are_refused_without_showing_them() {
    let shown = problem_hiding(
        "[webhook]\nforward_to = [\"https://user:hunter2@hooks.example/in\"]",
        "webhook.forward_to",
        "hunter2",
    );
    assert!(shown.contains("must not carry credentials"), "{shown}");
    problem_hiding(
        "[webhook]\nforward_to = [\"ftp://user:hunter2@hooks.example\"]",
        "webhook.forward_to",
        "hunter2",
    );
    problem_hiding(
        "[upstream]\nbase_url = \"https://user:hunter2@api.example/v1\"",
        "upstream.base_url",
        "hunter2",
    );
    problem_hiding(
        "public_base_url = \"http://user:hunter2@proxy.example\"",
        "public_base_url",
        "hunter2",
    );
}
