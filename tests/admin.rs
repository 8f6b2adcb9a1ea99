//! The admin listener's access control: beyond loopback it needs `[admin] token`; with a
//! token every endpoint but the probes and the static page wants it as a bearer token.

mod support;

use mono_proxy::config::Config;
use support::*;

const TOKEN: &str = "admin-token-0123456789abcdef";

#[test]
fn an_admin_listener_beyond_loopback_needs_a_token() {
    let env = [("MONO_SEC_KEY", KEY)];
    let e = Config::parse_runnable("admin_listen = \"0.0.0.0:9901\"", &env).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("admin.token") && text.contains("beyond loopback"),
        "{text}"
    );
    // The image's way: the listener and the token from the environment.
    let env = [
        ("MONO_SEC_KEY", KEY),
        ("MONO_PROXY_ADMIN_LISTEN", "0.0.0.0:9901"),
        ("MONO_PROXY_ADMIN_TOKEN", TOKEN),
    ];
    assert!(Config::parse_runnable("", &env).is_ok());
    let short = Config::parse_runnable(
        "admin_listen = \"0.0.0.0:9901\"\n[admin]\ntoken = \"short\"",
        &[("MONO_SEC_KEY", KEY)],
    )
    .unwrap_err();
    assert!(short.to_string().contains("16 characters"), "{short}");
    let both = Config::parse_runnable(
        &format!("[admin]\ntoken = \"{TOKEN}\"\ntoken_file = \"/nonexistent\""),
        &[("MONO_SEC_KEY", KEY)],
    )
    .unwrap_err();
    assert!(both.to_string().contains("set one of"), "{both}");
    // Loopback needs nothing.
    assert!(Config::parse_runnable(
        "admin_listen = \"127.0.0.1:9901\"",
        &[("MONO_SEC_KEY", KEY)]
    )
    .is_ok());
}

#[tokio::test]
async fn with_a_token_the_admin_api_wants_it_and_the_probes_do_not() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[admin]\ntoken = \"{TOKEN}\""))
        .start()
        .await;
    let bearer = format!("Bearer {TOKEN}");
    for open in ["/healthz", "/readyz", "/"] {
        assert_eq!(get(&p.admin(open), &[]).await.status, 200, "{open}");
    }
    for guarded in ["/metrics", "/stats", "/config"] {
        let none = get(&p.admin(guarded), &[]).await;
        assert_eq!(none.status, 401, "{guarded}");
        assert!(none
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
        assert!(!none.text().contains(TOKEN));
        let wrong = get(
            &p.admin(guarded),
            &[("authorization", "Bearer admin-token-0123456789abcdeX")],
        )
        .await;
        assert_eq!(wrong.status, 401, "{guarded}");
        let basic = get(&p.admin(guarded), &[("authorization", TOKEN)]).await;
        assert_eq!(basic.status, 401, "{guarded}: the scheme is required");
        let ok = get(&p.admin(guarded), &[("authorization", bearer.as_str())]).await;
        assert_eq!(ok.status, 200, "{guarded}");
    }
    // The token is not a client token: the proxy port does not take it.
    let through = p.get("/v2/accounts/adm1/balance", &[]).await;
    assert_eq!(through.status, 200);
    let config = get(&p.admin("/config"), &[("authorization", bearer.as_str())]).await;
    assert_eq!(config.status, 200);
    let c = config.json();
    assert_eq!(c["admin"]["token"], "[redacted]");
    assert_eq!(c["upstream"]["secret_key"], "[redacted]");
    assert!(!config.text().contains(TOKEN) && !config.text().contains(KEY));
    assert_eq!(get(&p.admin("/config"), &[]).await.status, 401);
    let stats = get(&p.admin("/stats"), &[("authorization", bearer.as_str())]).await;
    assert!(
        !stats.text().contains(TOKEN),
        "the token leaked into /stats"
    );
}
