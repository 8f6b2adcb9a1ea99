//! `[[route]]` tables: which Mono endpoints are cached, for how long, and what a sync drops.

use std::time::Duration;

use http::Method;
use toml::Value;

use serde::Serialize;

use super::fields::Fields;

/// One `[[route]]` table as configured (compiled into the route table at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteConfig {
    /// Name in metrics and logs; a built-in route of the same name is replaced.
    pub name: String,
    /// Path template: literal segments and `{placeholders}`; `{id}` is the account id.
    pub path: String,
    /// Methods the route matches (only GET and HEAD answers are ever cached).
    #[serde(serialize_with = "super::show::methods")]
    pub methods: Vec<Method>,
    /// Freshness of cached answers; `None` = `[cache] ttl`; zero = not cached.
    #[serde(serialize_with = "super::show::opt_duration")]
    pub ttl: Option<Duration>,
    /// A finished sync of the account drops the route's cached answers.
    pub invalidate_on_sync: bool,
    /// `x-realtime: true` collapses on it (balance and transactions paths only).
    pub realtime: bool,
    /// Its answers hold identity or BVN data: never cached unless `cache_personal_data`.
    pub personal_data: bool,
    /// The operator accepts caching this route's personal data.
    pub cache_personal_data: bool,
}

/// Longest route name (it is a metrics label).
const MAX_NAME: usize = 48;

/// Reads the `[[route]]` array, every problem pushed to `errors`.
pub(super) fn routes(value: Option<&Value>, errors: &mut Vec<String>) -> Vec<RouteConfig> {
    let items = match value {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(format!(
                "[[route]]: expected an array of tables, found {}",
                other.type_str()
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Table(t) = item else {
            errors.push(format!("route[{i}]: expected a table"));
            continue;
        };
        let mut f = Fields::new(&format!("route[{i}]"), Some(t), errors);
        let name = f.string("name").unwrap_or_default();
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            f.problem(
                "name",
                format!("{name:?}: 1 to {MAX_NAME} characters of a-z, 0-9, _ and -"),
            );
        }
        let path = f.string("path").unwrap_or_default();
        if let Err(e) = check_template(&path) {
            f.problem("path", e);
        }
        let methods = match f.strings("methods") {
            None => vec![Method::GET],
            Some(words) => words
                .iter()
                .filter_map(|w| match Method::from_bytes(w.as_bytes()) {
                    Ok(m) if crate::api::FORWARDED_METHODS.contains(&m) => Some(m),
                    _ => {
                        f.problem(
                            "methods",
                            format!("{w:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE"),
                        );
                        None
                    }
                })
                .collect(),
        };
        let ttl = f.optional_duration("ttl");
        let route = RouteConfig {
            name,
            path,
            methods,
            ttl,
            invalidate_on_sync: f.bool("invalidate_on_sync", true),
            realtime: f.bool("realtime", false),
            personal_data: f.bool("personal_data", false),
            cache_personal_data: f.bool("cache_personal_data", false),
        };
        if route.realtime && !is_realtime_path(&route.path) {
            f.problem(
                "realtime",
                "Mono syncs in realtime only balance and transactions: the path must end in /balance or /transactions and name the account as {id}",
            );
        }
        if route.invalidate_on_sync
            && !route.path.contains("{id}")
            && t.contains_key("invalidate_on_sync")
        {
            f.problem(
                "invalidate_on_sync",
                "needs the account in the path as {id}: a sync is of one account",
            );
        }
        if route.cache_personal_data && !route.personal_data {
            f.problem(
                "cache_personal_data",
                "applies to personal_data routes only",
            );
        }
        f.finish();
        if out.iter().any(|r| r.name == route.name) {
            errors.push(format!("route[{i}]: duplicate name {:?}", route.name));
        }
        out.push(route);
    }
    out
}

/// A template: `/` then segments, each literal (`[A-Za-z0-9._-]`) or one `{name}`; at most one
/// `{id}`.
pub fn check_template(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} must start with /"));
    };
    let mut ids = 0;
    for seg in rest.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "{path:?}: placeholder {seg:?} must be {{name}} with a-z, 0-9 and _"
                ));
            }
            ids += usize::from(name == "id");
        } else if seg.is_empty()
            || seg == "."
            || seg == ".."
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{path:?}: segment {seg:?} must be a word of A-Z, a-z, 0-9, '.', '_' and '-', or a {{placeholder}}"
            ));
        }
    }
    if ids > 1 {
        return Err(format!("{path:?}: at most one {{id}} (the account id)"));
    }
    Ok(())
}

/// Whether a template names one of Mono's realtime endpoints for an account.
fn is_realtime_path(path: &str) -> bool {
    path.contains("{id}") && (path.ends_with("/balance") || path.ends_with("/transactions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        assert!(check_template("/v2/accounts/{id}/identity").is_ok());
        assert!(check_template("/v2/accounts/{id}/statement/{job}").is_ok());
        assert!(check_template("v2/accounts").is_err());
        assert!(check_template("/v2//accounts").is_err());
        assert!(check_template("/v2/../accounts").is_err());
        assert!(check_template("/v2/{id}/{id}").is_err());
        assert!(check_template("/v2/{}/x").is_err());
        assert!(check_template("/v2/acc ounts").is_err());
    }

    #[test]
    fn a_route_table_parses_and_every_problem_is_named() {
        let text = r#"
[[route]]
name = "identity"
path = "/v2/accounts/{id}/identity"
ttl = "1h"
personal_data = true
cache_personal_data = true

[[route]]
name = "Bad Name"
path = "/v2/accounts/{id}/identity"
realtime = true
methods = ["GET", "TRACE"]
"#;
        let root: toml::Table = text.parse().unwrap();
        let mut errors = Vec::new();
        let routes = routes(root.get("route"), &mut errors);
        assert_eq!(routes[0].ttl, Some(Duration::from_secs(3600)));
        assert!(routes[0].cache_personal_data);
        let all = errors.join("\n");
        assert!(all.contains("route[1].name"), "{all}");
        assert!(all.contains("route[1].realtime"), "{all}");
        assert!(all.contains("route[1].methods"), "{all}");
        assert_eq!(errors.len(), 3, "{all}");
    }
}
