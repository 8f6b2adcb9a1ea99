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

#[tokio::test]
async fn the_account_view_shows_the_window_and_the_cached_entries() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let rt = p.realtime("/v2/accounts/view1/balance").await;
    assert_eq!(rt.status, 200);
    let job = rt.header("x-job-id").unwrap().to_string();
    assert_eq!(
        p.get("/v2/accounts/view1/transactions?page=2", &[])
            .await
            .status,
        200
    );
    let v = get(&p.admin("/accounts/view1"), &[]).await;
    assert_eq!(v.status, 200, "{}", v.text());
    let v = v.json();
    let t = &v["tenants"][0];
    assert_eq!(t["used_by"][0], "default", "{v:#}");
    let window = &t["realtime"]["balance"];
    assert_eq!(window["job_id"], job.as_str(), "{v:#}");
    assert_eq!(window["in_window"], true, "{v:#}");
    assert!(window["window_end"].as_str().unwrap() > window["window_start"].as_str().unwrap());
    assert_eq!(t["realtime"]["transactions"], serde_json::Value::Null);
    let cached = t["cached"].as_array().unwrap();
    let routes: Vec<(&str, &str)> = cached
        .iter()
        .map(|c| (c["route"].as_str().unwrap(), c["query"].as_str().unwrap()))
        .collect();
    assert!(routes.contains(&("balance", "")), "{v:#}");
    assert!(routes.contains(&("transactions", "page=2")), "{v:#}");
    assert!(cached
        .iter()
        .all(|c| c["bytes"].as_u64().unwrap() > 0 && c["state"] == "fresh"));
    assert!(t["x_has_new_data"].is_boolean(), "{v:#}");
    // Nothing held: an empty view, not an error; a bad id: 400.
    let empty = get(&p.admin("/accounts/never-seen"), &[]).await.json();
    assert_eq!(empty["tenants"][0]["cached"].as_array().unwrap().len(), 0);
    assert_eq!(get(&p.admin("/accounts/a%2Fb"), &[]).await.status, 400);
}

#[tokio::test]
async fn a_rotated_admin_token_file_is_picked_up_without_restart() {
    let sb = sandbox(sandbox_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[admin]\ntoken_file = \"{}\"", file.display()))
        .start()
        .await;
    let old = format!("Bearer {TOKEN}");
    assert_eq!(
        get(&p.admin("/stats"), &[("authorization", old.as_str())])
            .await
            .status,
        200
    );
    let rotated = "rotated-admin-token-abcdef0123";
    std::fs::write(&file, format!("{rotated}\n")).unwrap();
    let new = format!("Bearer {rotated}");
    let picked = eventually(std::time::Duration::from_secs(15), || async {
        get(&p.admin("/stats"), &[("authorization", new.as_str())])
            .await
            .status
            == 200
    })
    .await;
    assert!(picked, "the rotated admin token was not picked up");
    assert_eq!(
        get(&p.admin("/stats"), &[("authorization", old.as_str())])
            .await
            .status,
        401
    );
}
