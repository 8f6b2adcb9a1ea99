use super::*;

/// An empty environment for config tests.
pub(crate) const NO_ENV: [(&str, &str); 0] = [];

#[test]
fn a_redis_password_never_prints() {
    let c = Config::parse(
        "[store]\nredis_url = \"redis://u:hunter2@h:6379/0\"",
        &[("MONO_SEC_KEY", "k")],
    )
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("redis://u:***@h:6379/0"), "{dbg}");
}

#[test]
fn a_toml_syntax_error_names_the_place_but_never_quotes_the_line() {
    let text = "[admin]\ntoken = \"hunter2-hunter2-hunter2\nx = 1\n";
    let e = Config::parse(text, &NO_ENV).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn telemetry_is_off_by_default_and_an_endpoint_gets_the_traces_path() {
    let env = [("MONO_SEC_KEY", "k")];
    assert!(Config::parse("", &env)
        .unwrap()
        .telemetry
        .otlp_endpoint
        .is_none());
    let c = Config::parse(
        "[telemetry]\notlp_endpoint = \"http://collector:4318\"\nsampling_ratio = 0.25",
        &env,
    )
    .unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(c.telemetry.sampling_ratio, 0.25);
    let otel = Config::parse(
        "",
        &[
            ("MONO_SEC_KEY", "k"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_SERVICE_NAME", "ledger-proxy"),
        ],
    )
    .unwrap();
    assert_eq!(
        otel.telemetry.otlp_endpoint.as_deref(),
        Some("http://otel:4318/v1/traces")
    );
    assert_eq!(otel.telemetry.service_name, "ledger-proxy");
    let full = Config::parse(
        "[telemetry]\notlp_endpoint = \"https://c.example/otlp/v1/traces\"",
        &env,
    )
    .unwrap();
    assert_eq!(
        full.telemetry.otlp_endpoint.as_deref(),
        Some("https://c.example/otlp/v1/traces")
    );
    let e = Config::parse(
        "[telemetry]\notlp_endpoint = \"collector\"\nsampling_ratio = 2.0\nsampler = 1",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("otlp_endpoint") && e.contains("sampling_ratio") && e.contains("sampler"),
        "{e}"
    );
}

#[test]
fn missing_secret_refuses_to_run() {
    let err = Config::parse_runnable("", &NO_ENV).unwrap_err();
    assert!(err.to_string().contains("MONO_SEC_KEY"));
    assert!(Config::parse_runnable("", &[("MONO_SEC_KEY", "k")]).is_ok());
}

#[test]
fn secret_never_prints() {
    let c = Config::parse("", &[("MONO_SEC_KEY", "live_sk_topsecret")]).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("topsecret"), "{dbg}");
}
