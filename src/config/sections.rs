//! Builds each section of [`Config`] from its TOML table and the environment, pushing its problems.

use std::path::PathBuf;

use http::Uri;
use toml::{Table, Value};

use super::fields::{section, Fields};
use super::*;

/// The top-level keys that hold sections, read by their own builders.
const SECTIONS: [&str; 12] = [
    "server",
    "upstream",
    "realtime",
    "cache",
    "jobs",
    "webhook",
    "store",
    "log",
    "clients",
    "route",
    "admin",
    "telemetry",
];

/// The whole config: top-level keys first, then each section in file order of the docs.
pub(super) fn build_config(root: &Table, env: &dyn Env, errors: &mut Vec<String>) -> Config {
    let mut top = Fields::new("", Some(root), errors);
    let listen = top.addr("listen", env.var("MONO_PROXY_LISTEN"), DEFAULT_LISTEN);
    let admin_listen = top.addr(
        "admin_listen",
        env.var("MONO_PROXY_ADMIN_LISTEN"),
        DEFAULT_ADMIN_LISTEN,
    );
    let public_base_url = top
        .env_or_string("public_base_url", env.var("MONO_PROXY_PUBLIC_BASE_URL"))
        .unwrap_or_else(|| format!("http://{listen}"));
    top.allow(&SECTIONS);
    top.finish();
    let public_base_url = match parse_origin(&public_base_url) {
        Ok(u) => u.to_string().trim_end_matches('/').to_string(),
        Err(e) => {
            errors.push(format!("public_base_url: {e}"));
            DEFAULT_PUBLIC_BASE_URL.to_string()
        }
    };

    let server = server(section(root, "server", errors), errors);
    let upstream = upstream(section(root, "upstream", errors), env, errors);
    let realtime = realtime(section(root, "realtime", errors), errors);
    let jobs = jobs(section(root, "jobs", errors), errors);
    let webhook = webhook(section(root, "webhook", errors), env, errors);
    let store = store(section(root, "store", errors), env, errors);
    let cache = cache(section(root, "cache", errors), &realtime, &store, errors);
    let log = log(section(root, "log", errors), env, errors);
    let telemetry = telemetry(section(root, "telemetry", errors), env, errors);
    let clients = clients(root.get("clients"), env, errors);
    let admin = admin::admin(section(root, "admin", errors), admin_listen, env, errors);
    let routes = routes::routes(root.get("route"), errors);
    Config {
        listen,
        admin_listen,
        admin,
        public_base_url,
        server,
        upstream,
        realtime,
        cache,
        jobs,
        webhook,
        store,
        log,
        telemetry,
        clients,
        routes,
    }
}

fn server(table: Option<&Table>, errors: &mut Vec<String>) -> ServerConfig {
    let mut f = Fields::new("server", table, errors);
    let s = ServerConfig {
        header_read_timeout: f.duration("header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT),
        idle_timeout: f.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        max_connections: f.count("max_connections", DEFAULT_MAX_CONNECTIONS) as usize,
        drain_timeout: f.duration("drain_timeout", DEFAULT_DRAIN_TIMEOUT),
        max_header_bytes: f.size("max_header_bytes", DEFAULT_MAX_HEADER_BYTES) as usize,
        max_request_body: f.size("max_request_body", DEFAULT_MAX_REQUEST_BODY) as usize,
    };
    f.finish();
    if s.max_header_bytes < 8192 {
        errors.push("server.max_header_bytes: must be at least 8KiB".into());
    }
    s
}

fn upstream(table: Option<&Table>, env: &dyn Env, errors: &mut Vec<String>) -> UpstreamConfig {
    let mut f = Fields::new("upstream", table, errors);
    let base_text = f
        .env_or_string("base_url", env.var("MONO_PROXY_UPSTREAM_URL"))
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
    let base_url = match parse_origin(&base_text) {
        Ok(u) => u,
        Err(e) => {
            f.problem("base_url", e);
            Uri::from_static(DEFAULT_BASE_URL)
        }
    };
    let secret_key = f.secret("secret_key_file", env.var("MONO_SEC_KEY"));
    let timeout = f.duration("timeout", DEFAULT_TIMEOUT);
    let connect_timeout = f.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    let realtime_timeout = f.duration("realtime_timeout", DEFAULT_REALTIME_TIMEOUT);
    let ca_file = f.string("ca_file").map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            f.problem(
                "ca_file",
                format!("{} is not a readable file", ca.display()),
            );
        }
    }
    let mut accept_hosts: Vec<String> = f
        .strings("accept_hosts")
        .unwrap_or_else(|| vec!["api.withmono.com".to_string()])
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    // Absolute-form targets naming the configured origin itself are always ours.
    if let Some(a) = base_url.authority() {
        for h in [
            a.as_str().to_ascii_lowercase(),
            a.host().to_ascii_lowercase(),
        ] {
            if !accept_hosts.contains(&h) {
                accept_hosts.push(h);
            }
        }
    }
    let client_key = f.choice(
        "client_key",
        None,
        &[
            ("strip", ClientKeyPolicy::Strip),
            ("reject", ClientKeyPolicy::Reject),
        ],
    );
    let u = UpstreamConfig {
        base_url,
        secret_key,
        timeout,
        connect_timeout,
        realtime_timeout,
        ca_file,
        accept_hosts,
        pool_idle_timeout: f.duration("pool_idle_timeout", DEFAULT_POOL_IDLE_TIMEOUT),
        pool_max_idle_per_host: f.count("pool_max_idle_per_host", DEFAULT_POOL_MAX_IDLE) as usize,
        client_key,
        max_response_bytes: f.size("max_response_bytes", DEFAULT_MAX_ENTRY_BYTES) as usize,
        cooldown: f.duration("cooldown", DEFAULT_COOLDOWN),
        max_cooldown: f.duration("max_cooldown", DEFAULT_MAX_COOLDOWN),
    };
    f.finish();
    u
}

fn realtime(table: Option<&Table>, errors: &mut Vec<String>) -> RealtimeConfig {
    let mut f = Fields::new("realtime", table, errors);
    let window = f.duration("window", DEFAULT_WINDOW);
    let r = RealtimeConfig {
        window,
        cost_per_call: f.float("cost_per_call"),
        max_retry_after: f.duration("max_retry_after", window),
    };
    f.finish();
    r
}

/// The cache's `ttl` defaults to the realtime window: a cached answer is fresh as long as Mono
/// would refuse a new realtime fetch anyway.
fn cache(
    table: Option<&Table>,
    realtime: &RealtimeConfig,
    store: &StoreConfig,
    errors: &mut Vec<String>,
) -> CacheConfig {
    let mut f = Fields::new("cache", table, errors);
    let redis = store.backend == Backend::Redis;
    let c = CacheConfig {
        ttl: f.duration("ttl", realtime.window),
        max_stale: f.duration("max_stale", DEFAULT_MAX_STALE),
        max_bytes: f.size("max_bytes", DEFAULT_CACHE_MAX_BYTES),
        refresh_ahead: f.bool("refresh_ahead", false),
        shared: f.bool("shared", redis),
        shared_max_entry: f.size("shared_max_entry", DEFAULT_SHARED_MAX_ENTRY),
        request_directives: f.bool("request_directives", true),
    };
    if c.shared && !redis {
        f.problem(
            "shared",
            "the shared cache tier lives in Redis: set [store] backend = \"redis\"",
        );
    }
    f.finish();
    c
}

fn jobs(table: Option<&Table>, errors: &mut Vec<String>) -> JobsConfig {
    let mut f = Fields::new("jobs", table, errors);
    let j = JobsConfig {
        poll: f.bool("poll", true),
        poll_interval: f.duration("poll_interval", DEFAULT_POLL_INTERVAL),
        poll_deadline: f.duration("poll_deadline", DEFAULT_POLL_DEADLINE),
        poll_concurrency: f.count("poll_concurrency", DEFAULT_POLL_CONCURRENCY) as usize,
    };
    f.finish();
    j
}

fn webhook(table: Option<&Table>, env: &dyn Env, errors: &mut Vec<String>) -> WebhookConfig {
    let mut f = Fields::new("webhook", table, errors);
    let path = f
        .string("path")
        .unwrap_or_else(|| DEFAULT_WEBHOOK_PATH.to_string());
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        f.problem(
            "path",
            format!("{path:?} must be a plain path starting with /"),
        );
    }
    let secret = f.secret("secret_file", env.var("MONO_WEBHOOK_SECRET"));
    let mut forward_to = Vec::new();
    for target in f.strings("forward_to").unwrap_or_default() {
        match parse_url(&target) {
            Ok(u) => forward_to.push(u),
            Err(e) => f.problem("forward_to", e),
        }
    }
    let w = WebhookConfig {
        path,
        secret,
        forward_to,
        timeout: f.duration("timeout", DEFAULT_WEBHOOK_TIMEOUT),
        max_body: f.size("max_body", DEFAULT_WEBHOOK_MAX_BODY) as usize,
        memory: f.size("memory", DEFAULT_WEBHOOK_MEMORY),
    };
    f.finish();
    w
}

fn store(table: Option<&Table>, env: &dyn Env, errors: &mut Vec<String>) -> StoreConfig {
    let mut f = Fields::new("store", table, errors);
    let backend_given = table.is_some_and(|t| t.contains_key("backend"))
        || env.var("MONO_PROXY_STORE_BACKEND").is_some();
    let mut backend = f.choice(
        "backend",
        env.var("MONO_PROXY_STORE_BACKEND"),
        &[("memory", Backend::Memory), ("redis", Backend::Redis)],
    );
    let redis_url = f
        .env_or_string("redis_url", env.var("MONO_PROXY_REDIS_URL"))
        .unwrap_or_else(|| DEFAULT_REDIS_URL.to_string());
    redis_url_problem(&mut f, "redis_url", &redis_url);
    let cluster_nodes = f.strings("cluster_nodes").unwrap_or_default();
    for node in &cluster_nodes {
        redis_url_problem(&mut f, "cluster_nodes", node);
    }
    let sentinels = f.strings("sentinels").unwrap_or_default();
    for sentinel in &sentinels {
        redis_url_problem(&mut f, "sentinels", sentinel);
    }
    let sentinel_master = f.string("sentinel_master");
    let prefix = f
        .string("prefix")
        .unwrap_or_else(|| DEFAULT_STORE_PREFIX.to_string());
    if prefix.is_empty() || prefix.contains(char::is_whitespace) || prefix.contains(['{', '}']) {
        f.problem("prefix", "must be non-empty, without spaces or braces");
    }
    let password = f.secret("password_file", env.var("MONO_PROXY_REDIS_PASSWORD"));
    let mut s = StoreConfig {
        backend,
        redis_url,
        prefix,
        timeout: f.duration("timeout", DEFAULT_STORE_TIMEOUT),
        fail_open: f.bool("fail_open", true),
        ca_file: f.string("ca_file").map(PathBuf::from),
        client_cert: f.string("client_cert").map(PathBuf::from),
        client_key: f.string("client_key").map(PathBuf::from),
        password,
        cluster_nodes,
        sentinels,
        sentinel_master,
    };
    // Naming a cluster or sentinels is asking for Redis; an explicit "memory" is a contradiction.
    let fleet = !s.cluster_nodes.is_empty() || !s.sentinels.is_empty();
    if fleet && !backend_given {
        backend = Backend::Redis;
        s.backend = backend;
    }
    store_problems(&mut f, &s);
    f.finish();
    s
}

/// A Redis URL must say `redis://` or `rediss://` (or a unix socket).
fn redis_url_problem(f: &mut Fields<'_, '_>, key: &str, url: &str) {
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        let shown = redact_url(url);
        f.problem(key, format!("{shown:?} is not a redis:// or rediss:// URL"));
    }
}

/// The combinations of `[store]` keys that cannot work together, and unreadable files.
fn store_problems(f: &mut Fields<'_, '_>, s: &StoreConfig) {
    let fleet = !s.cluster_nodes.is_empty() || !s.sentinels.is_empty();
    if fleet && s.backend == Backend::Memory {
        f.problem(
            "backend",
            "\"memory\" contradicts cluster_nodes / sentinels; use backend = \"redis\"",
        );
    }
    if !s.cluster_nodes.is_empty() && !s.sentinels.is_empty() {
        f.problem(
            "sentinels",
            "cluster_nodes and sentinels are exclusive: Redis Cluster does not use Sentinel",
        );
    }
    match (&s.sentinel_master, s.sentinels.is_empty()) {
        (None, false) => f.problem(
            "sentinel_master",
            "required with sentinels: the master name the sentinels monitor",
        ),
        (Some(_), true) => f.problem("sentinel_master", "set sentinels as well"),
        _ => {}
    }
    if s.sentinel_master.as_deref().is_some_and(str::is_empty) {
        f.problem("sentinel_master", "must not be empty");
    }
    let urls = s.urls();
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls != 0 && tls != urls.len() {
        f.problem(
            "cluster_nodes",
            "mixes redis:// and rediss://; every node must use the same scheme",
        );
    }
    if tls == 0 && s.backend == Backend::Redis {
        for (key, set) in [
            ("ca_file", s.ca_file.is_some()),
            ("client_cert", s.client_cert.is_some()),
        ] {
            if set {
                f.problem(key, "takes effect only with rediss:// (TLS) URLs");
            }
        }
    }
    if s.client_cert.is_some() != s.client_key.is_some() {
        f.problem("client_key", "client_cert and client_key go together");
    }
    for (key, path) in [
        ("ca_file", &s.ca_file),
        ("client_cert", &s.client_cert),
        ("client_key", &s.client_key),
    ] {
        if let Some(path) = path {
            if let Err(e) = std::fs::metadata(path) {
                f.problem(key, format!("cannot read {}: {e}", path.display()));
            }
        }
    }
    // Under Sentinel the URLs are the sentinels': their passwords are theirs, the master's may
    // differ.
    let url_passwords = urls.iter().any(|u| url_password(u).is_some());
    if url_passwords && s.password != SecretSource::None && s.topology() != Topology::Sentinel {
        f.problem(
            "password_file",
            "the URL holds a password too; give it in one place (MONO_PROXY_REDIS_PASSWORD, password_file or the URL)",
        );
    }
}

fn log(table: Option<&Table>, env: &dyn Env, errors: &mut Vec<String>) -> LogConfig {
    let mut f = Fields::new("log", table, errors);
    let format = f.choice(
        "format",
        env.var("MONO_PROXY_LOG_FORMAT"),
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    let filter = f
        .env_or_string("filter", env.var("RUST_LOG"))
        .unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&filter).is_err() {
        f.problem("filter", format!("invalid log filter {filter:?}"));
    }
    f.finish();
    LogConfig { format, filter }
}

/// `[telemetry]`: where spans go (nowhere unless `otlp_endpoint` is set) and how many.
fn telemetry(table: Option<&Table>, env: &dyn Env, errors: &mut Vec<String>) -> TelemetryConfig {
    let mut f = Fields::new("telemetry", table, errors);
    // Ours (over the file), then the file, then OpenTelemetry's own variables, which a
    // collector's deployment may set for every service.
    let endpoint = f
        .env_or_string("otlp_endpoint", env.var("MONO_PROXY_OTLP_ENDPOINT"))
        .or_else(|| env.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env.var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let otlp_endpoint = match endpoint.as_deref().map(parse_url) {
        None => None,
        Some(Ok(uri)) => Some(otlp_traces_url(&uri)),
        Some(Err(e)) => {
            f.problem("otlp_endpoint", e);
            None
        }
    };
    let sampling_ratio = f.float("sampling_ratio").unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        f.problem("sampling_ratio", "must be between 0 and 1");
    }
    let service_name = f
        .string("service_name")
        .or_else(|| env.var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    let t = TelemetryConfig {
        otlp_endpoint,
        sampling_ratio: sampling_ratio.clamp(0.0, 1.0),
        service_name,
        export_interval: f.duration("export_interval", DEFAULT_EXPORT_INTERVAL),
        export_timeout: f.duration("export_timeout", DEFAULT_EXPORT_TIMEOUT),
    };
    f.finish();
    t
}

/// OTLP/HTTP's traces URL: a base (`http://collector:4318`) gets `/v1/traces`, as the
/// OpenTelemetry exporters do with `OTEL_EXPORTER_OTLP_ENDPOINT`; a full path stays.
fn otlp_traces_url(uri: &Uri) -> String {
    let text = uri.to_string();
    if uri.path().trim_end_matches('/').is_empty() {
        format!("{}/v1/traces", text.trim_end_matches('/'))
    } else {
        text
    }
}

/// `[[clients]]`: an array of tables, each a named app with its token and optional own key.
fn clients(value: Option<&Value>, env: &dyn Env, errors: &mut Vec<String>) -> Vec<ClientConfig> {
    let items = match value {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(format!(
                "[[clients]]: expected an array of tables, found {}",
                other.type_str()
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<ClientConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Table(t) = item else {
            errors.push(format!("clients[{i}]: expected a table"));
            continue;
        };
        let mut f = Fields::new(&format!("clients[{i}]"), Some(t), errors);
        let name = f.string("name").unwrap_or_else(|| format!("client{i}"));
        let token = match (f.string("token_env"), f.string("token_file")) {
            (Some(var), None) => named_env_secret(&mut f, "token_env", &var, env),
            (None, Some(file)) => SecretSource::File(PathBuf::from(file)),
            _ => {
                f.problem("token_env", "set exactly one of token_env or token_file");
                SecretSource::None
            }
        };
        let secret_key = match f.string("secret_key_env") {
            Some(var) => named_env_secret(&mut f, "secret_key_env", &var, env),
            None => SecretSource::None,
        };
        // An app with its own Mono key is its own Mono app: its own webhook secret and targets.
        let webhook_secret = match (
            f.string("webhook_secret_env"),
            f.string("webhook_secret_file"),
        ) {
            (Some(var), None) => named_env_secret(&mut f, "webhook_secret_env", &var, env),
            (None, Some(file)) => SecretSource::File(PathBuf::from(file)),
            (Some(_), Some(_)) => {
                f.problem(
                    "webhook_secret_env",
                    "set one of webhook_secret_env or webhook_secret_file",
                );
                SecretSource::None
            }
            (None, None) => SecretSource::None,
        };
        let mut forward_to = Vec::new();
        for target in f.strings("forward_to").unwrap_or_default() {
            match parse_url(&target) {
                Ok(u) => forward_to.push(u),
                Err(e) => f.problem("forward_to", e),
            }
        }
        let own_app = webhook_secret != SecretSource::None || !forward_to.is_empty();
        if own_app && secret_key == SecretSource::None {
            f.problem(
                "webhook_secret_env",
                "webhook_secret_* and forward_to belong to a client with its own Mono key (secret_key_env); clients sharing the default key share [webhook]",
            );
        }
        if !forward_to.is_empty() && webhook_secret == SecretSource::None {
            f.problem("forward_to", "set the app's webhook_secret_env or webhook_secret_file too: its webhooks are told apart by their secret");
        }
        let limits = limits::client_limits(&mut f);
        f.finish();
        if out.iter().any(|c| c.name == name) {
            errors.push(format!("clients[{i}]: duplicate name {name:?}"));
        }
        out.push(ClientConfig {
            name,
            token,
            secret_key,
            webhook_secret,
            forward_to,
            limits,
        });
    }
    out
}

/// The secret held by the environment variable that `key` names; unset is a problem, since the
/// file asked for it by name.
fn named_env_secret(f: &mut Fields<'_, '_>, key: &str, var: &str, env: &dyn Env) -> SecretSource {
    match env.var(var) {
        Some(v) => SecretSource::Value(Secret::new(v)),
        None => {
            f.problem(key, format!("environment variable {var} is not set"));
            SecretSource::None
        }
    }
}

/// Parses an `http(s)://host[:port]` origin with no path, query or credentials.
fn parse_origin(text: &str) -> Result<Uri, String> {
    let uri = parse_url(text)?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{:?} must not have a path", redact_url(text)));
    }
    Ok(uri)
}

/// Parses an absolute `http(s)://` URL with a host and no credentials. Problems show the text
/// with its password redacted: a URL refused for carrying credentials must not print them.
fn parse_url(text: &str) -> Result<Uri, String> {
    let shown = redact_url(text);
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{shown:?} must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{shown:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{shown:?} must not carry credentials"));
    }
    if uri.query().is_some() {
        return Err(format!("{shown:?} must not have a query"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests;
