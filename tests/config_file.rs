//! The documented `proxy.toml` at the repo root is valid and matches the built-in defaults.

use mono_proxy::config::{self, Config};

#[test]
fn shipped_proxy_toml_is_valid_and_says_the_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"))
        .expect("proxy.toml at the repo root");
    let env = [("MONO_SEC_KEY", "k")];
    let file = Config::parse_runnable(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    let defaults = Config::parse_runnable("", &env).unwrap();
    assert_eq!(format!("{file:?}"), format!("{defaults:?}"));
    assert_eq!(
        file.upstream
            .base_url
            .authority()
            .map(http::uri::Authority::as_str),
        Some("api.withmono.com")
    );
    assert_eq!(file.realtime.window, config::DEFAULT_WINDOW);
}
