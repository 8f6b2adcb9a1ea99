use super::*;

const MIN: Duration = Duration::from_secs(60);

fn cfg(max_bytes: u64) -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(60),
        max_stale: Duration::from_secs(60),
        max_bytes,
        refresh_ahead: false,
        shared: false,
        shared_max_entry: 1024,
        request_directives: true,
    }
}

#[test]
fn a_body_outside_the_envelope_is_never_stored() {
    let html = HeaderValue::from_static("text/html");
    let page = b"<html><body>Down for maintenance</body></html>";
    let cache = ResponseCache::new(&cfg(1 << 20), MIN);
    assert!(cache
        .store(
            "t:a",
            "balance",
            Bytes::from_static(page),
            Some(html),
            Storing::fresh(MIN, true)
        )
        .is_err());
    assert!(cache.lookup("t:a", "balance").is_none());
}

#[tokio::test]
async fn has_new_data_follows_syncs() {
    let cache = ResponseCache::new(&cfg(1 << 20), MIN);
    let v1 = Bytes::from_static(br#"{"data":{"balance":1}}"#);
    let v2 = Bytes::from_static(br#"{"data":{"balance":2}}"#);
    assert!(
        !cache
            .store(
                "t:a",
                "balance",
                v1.clone(),
                None,
                Storing::fresh(MIN, true)
            )
            .unwrap()
            .has_new_data
    );
    cache.invalidate("t:a", None, &|_| true);
    assert!(cache.lookup("t:a", "balance").is_none());
    assert!(
        cache
            .store(
                "t:a",
                "balance",
                v2.clone(),
                None,
                Storing::fresh(MIN, true)
            )
            .unwrap()
            .has_new_data
    );
    cache.invalidate("t:a", None, &|_| true);
    assert!(
        !cache
            .store("t:a", "balance", v2, None, Storing::fresh(MIN, true))
            .unwrap()
            .has_new_data
    );
    cache.job_started("t:a");
    assert!(!cache.lookup("t:a", "balance").unwrap().has_new_data);
}

#[tokio::test]
async fn stored_entry_does_not_pin_the_buffer_it_was_sliced_from() {
    let cache = ResponseCache::new(&cfg(1 << 20), MIN);
    // Like hyper's read buffer: one large allocation, the body and header slices of it.
    let mut buf = vec![0u8; 8192];
    buf[..10].copy_from_slice(br#"{"data":1}"#);
    buf[10..26].copy_from_slice(b"application/json");
    let buf = Bytes::from(buf);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let ct = HeaderValue::from_maybe_shared(buf.slice(10..26)).unwrap();
    assert!(range.contains(&(ct.as_bytes().as_ptr() as usize)));
    let stored = cache
        .store(
            "t:a",
            "balance",
            buf.slice(..10),
            Some(ct),
            Storing::fresh(MIN, true),
        )
        .unwrap();
    assert_eq!(&stored.body[..], br#"{"data":1}"#);
    assert!(!range.contains(&(stored.body.as_ptr() as usize)));
    let stored_ct = stored.content_type().unwrap();
    assert_eq!(stored_ct, "application/json");
    assert!(!range.contains(&(stored_ct.as_bytes().as_ptr() as usize)));
}

#[tokio::test]
async fn query_variants_per_account_are_bounded() {
    let cache = ResponseCache::new(&cfg(1 << 24), MIN);
    for i in 0..(MAX_PATHS_PER_ACCOUNT + 10) {
        let path = format!("transactions?x={i}");
        cache
            .store(
                "t:a",
                &path,
                Bytes::from_static(br#"{"data":[]}"#),
                None,
                Storing::fresh(MIN, true),
            )
            .unwrap();
    }
    assert!(cache.lookup("t:a", "transactions?x=0").is_none());
    let last = format!("transactions?x={}", MAX_PATHS_PER_ACCOUNT + 9);
    assert!(cache.lookup("t:a", &last).is_some());
}

#[tokio::test]
async fn a_new_job_drops_the_pending_comparison_of_the_last_sync() {
    let cache = ResponseCache::new(&cfg(1 << 20), MIN);
    cache
        .store(
            "t:a",
            "balance",
            Bytes::from_static(br#"{"data":1}"#),
            None,
            Storing::fresh(MIN, true),
        )
        .unwrap();
    cache.invalidate("t:a", None, &|_| true);
    cache.job_started("t:a");
    let b = cache
        .store(
            "t:a",
            "balance",
            Bytes::from_static(br#"{"data":2}"#),
            None,
            Storing::fresh(MIN, true),
        )
        .unwrap();
    assert!(!b.has_new_data);
}

#[tokio::test(start_paused = true)]
async fn freshness_moves_from_fresh_to_stale_to_expired() {
    let cache = ResponseCache::new(&cfg(1 << 20), MIN);
    let b = cache
        .store(
            "t:a",
            "balance",
            Bytes::from_static(br#"{"data":1}"#),
            None,
            Storing::fresh(MIN, true),
        )
        .unwrap();
    assert_eq!(cache.freshness(&b), Freshness::Fresh(60));
    tokio::time::advance(Duration::from_secs(90)).await;
    assert_eq!(cache.freshness(&b), Freshness::Stale(30));
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(cache.freshness(&b), Freshness::Expired);
}

#[test]
fn content_types_come_back_as_stored() {
    let cache = ResponseCache::new(&cfg(1 << 20), MIN);
    let body = || Bytes::from_static(br#"{"data":{}}"#);
    let cases = [
        ("balance", None),
        ("identity", Some("application/json")),
        ("transactions", Some("application/json; charset=utf-8")),
    ];
    for (path, ct) in cases {
        let ct = ct.map(HeaderValue::from_static);
        cache
            .store("t:a", path, body(), ct.clone(), Storing::fresh(MIN, true))
            .unwrap();
        let back = cache.lookup("t:a", path).unwrap().content_type();
        assert_eq!(back, ct, "{path}");
    }
}
