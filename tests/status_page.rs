//! The admin status page in a real headless browser: it loads with its strict CSP, draws
//! `/stats`, and shows the same hit ratio and collapsed realtime calls. Needs Debian's
//! `chromium` (`.ci/run` installs it); a screenshot is left under target/ for people to look at.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        }) {
            return path;
        }
    }
    panic!("no headless browser found: install Debian's chromium (apt-get install chromium)");
}

/// Runs headless chromium on `url` for `budget_ms` of the page's (virtual) time, with `args`;
/// its stdout.
async fn browse(url: &str, budget_ms: u32, args: &[&str]) -> String {
    let profile = tempfile_dir();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,1000",
            ])
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes within 90 s")
    .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempfile_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value of `attr` on the element with `id` in a dumped DOM.
fn attr<'a>(dom: &'a str, id: &str, attr: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>').unwrap()];
    let key = format!("{attr}=\"");
    let v = tag
        .find(&key)
        .unwrap_or_else(|| panic!("#{id} has no {attr}: {tag}"));
    let rest = &tag[v + key.len()..];
    &rest[..rest.find('"').unwrap()]
}

/// The text inside the element with `id` (no nested markup).
fn text<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap();
    let open = at + dom[at..].find('>').unwrap() + 1;
    &dom[open..open + dom[open..].find('<').unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_stats_reports_in_a_real_browser() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml("[realtime]\ncost_per_call = 0.25")
        .start()
        .await;
    for i in 0..5 {
        for _ in 0..4 {
            let r = p.get(&format!("/v2/accounts/page{i}/balance"), &[]).await;
            assert_eq!(r.status, 200);
        }
    }
    for _ in 0..3 {
        assert_eq!(p.realtime("/v2/accounts/page-rt/balance").await.status, 200);
    }

    // Under traffic: the page loads and draws; the screenshot is for people.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, url) = (Arc::clone(&stop), p.url("/v2/accounts/page0/balance"));
        tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                get(&url, &[]).await;
            }
        })
    };
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    // Long enough for several refreshes, so the charts have lines.
    browse(
        &p.admin("/"),
        12_000,
        &[&format!("--screenshot={}", shot.display())],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let png = std::fs::metadata(&shot).expect("a screenshot was written");
    assert!(png.len() > 10_000, "screenshot of {} bytes", png.len());

    // Quiet now: what the page draws is what /stats says.
    let stats = get(&p.admin("/stats"), &[]).await.json();
    let dom = browse(&p.admin("/"), 3_000, &["--dump-dom"]).await;
    assert_eq!(attr(&dom, "page", "data-loaded"), "true", "{dom}");
    let ratio = stats["cache"]["hit_ratio"].as_f64().unwrap();
    assert!(ratio > 0.5, "{stats:#}");
    let shown: f64 = attr(&dom, "hit-ratio", "data-value").parse().unwrap();
    assert!((shown - ratio).abs() < 1e-9, "page {shown}, /stats {ratio}");
    assert_eq!(text(&dom, "hit-ratio"), format!("{:.1}%", ratio * 100.0));
    let collapsed = stats["realtime"]["calls"]["collapsed"].as_f64().unwrap();
    assert_eq!(collapsed, 2.0, "{stats:#}");
    assert_eq!(attr(&dom, "rt-collapsed", "data-value"), "2");
    assert_eq!(attr(&dom, "rt-forwarded", "data-value"), "1");
    assert_eq!(text(&dom, "saved"), "0.50");
    assert_eq!(text(&dom, "error"), "", "the page reported an error");
    assert!(dom.contains("<td>balance</td>"), "routes table: {dom}");
}
