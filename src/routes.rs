//! The route table: which Mono endpoints are cached, for how long, what a sync drops, and the
//! name each carries in metrics and logs. Built once from `[[route]]` and the built-in routes;
//! matched on every request without allocating.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::api::{is_valid_id, Kind};
use crate::cache::Storing;
use crate::config::{CacheConfig, RouteConfig};
use crate::labels::intern;

/// Segments a matched path may have at most (Mono's longest paths have six).
const MAX_SEGMENTS: usize = 12;

/// One route, compiled.
#[derive(Debug)]
pub struct Route {
    /// Name in metrics and logs (interned: a bounded set of configured names).
    pub name: &'static str,
    segments: Box<[Segment]>,
    methods: Box<[Method]>,
    /// Freshness of cached answers; zero when the route is not cached.
    pub ttl: Duration,
    /// A finished sync of the account drops the route's cached answers.
    pub invalidate_on_sync: bool,
    /// `x-realtime: true` collapses on it.
    pub realtime: bool,
    /// Balance or transactions data: answers carry `x-has-new-data`, realtime calls a record.
    pub kind: Option<Kind>,
    /// Identity or BVN content.
    pub personal_data: bool,
    /// Answers come in Mono's v2 envelope (`status`, `data`); the unversioned API's do not.
    pub enveloped: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `{id}`: the account.
    Account,
    /// Any other `{placeholder}`: part of the cache key.
    Param,
}

impl Route {
    /// Compiles a configured route; `default_ttl` stands in for an unset `ttl`.
    fn compile(cfg: &RouteConfig, default_ttl: Duration) -> Route {
        let segments = cfg
            .path
            .trim_start_matches('/')
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some("id") => Segment::Account,
                    Some(_) => Segment::Param,
                    None => Segment::Literal(seg.into()),
                },
            )
            .collect();
        // Realtime jobs and `x-has-new-data` are v2 notions: the unversioned API has neither.
        let v2 = cfg.path.starts_with("/v2/");
        let kind = if v2 && cfg.path.ends_with("/balance") {
            Some(Kind::Balance)
        } else if v2 && cfg.path.ends_with("/transactions") {
            Some(Kind::Transactions)
        } else {
            None
        };
        let mut ttl = cfg.ttl.unwrap_or(default_ttl);
        // Personal data is cached only when the operator said so, route by route.
        if cfg.personal_data && !cfg.cache_personal_data {
            ttl = Duration::ZERO;
        }
        Route {
            name: intern(&cfg.name),
            segments,
            methods: cfg.methods.clone().into_boxed_slice(),
            ttl,
            invalidate_on_sync: cfg.invalidate_on_sync,
            realtime: cfg.realtime && kind.is_some(),
            kind,
            personal_data: cfg.personal_data,
            enveloped: cfg.path.starts_with("/v2/"),
        }
    }

    /// Whether GET answers of this route are cached.
    pub fn cached(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// How a body of this route fetched `age` ago is stored.
    pub fn storing(&self, age: Duration) -> Storing {
        Storing {
            ttl: self.ttl,
            age,
            enveloped: self.enveloped,
        }
    }

    /// Whether the route answers `method`.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}

/// A request matched to a route, borrowing from the request's path.
#[derive(Debug)]
pub struct Matched<'p> {
    /// The route.
    pub route: Arc<Route>,
    /// The account id, when the template has `{id}`.
    pub account: Option<&'p str>,
    /// Other placeholders' values joined with `/` (part of the cache key); empty when none.
    pub params: String,
}

/// A path split at `/` once (after its leading `/`), shared by classification and matching.
#[derive(Debug, Clone, Copy)]
pub struct Segments<'p> {
    parts: [&'p str; MAX_SEGMENTS],
    n: usize,
}

impl<'p> Segments<'p> {
    /// No segments yet.
    pub fn new() -> Segments<'p> {
        Segments {
            parts: [""; MAX_SEGMENTS],
            n: 0,
        }
    }

    /// Splits `path`; `None` beyond the segments any route can have.
    pub fn split(path: &'p str) -> Option<Segments<'p>> {
        let mut segments = Segments::new();
        let rest = path.strip_prefix('/').unwrap_or(path);
        for part in rest.split('/') {
            if !segments.push(part) {
                return None;
            }
        }
        Some(segments)
    }

    /// Adds the next segment; false when there is no room left (no route is that long).
    pub fn push(&mut self, part: &'p str) -> bool {
        let Some(slot) = self.parts.get_mut(self.n) else {
            return false;
        };
        *slot = part;
        self.n += 1;
        true
    }

    /// The segments in order.
    pub fn as_slice(&self) -> &[&'p str] {
        &self.parts[..self.n]
    }
}

impl Default for Segments<'_> {
    fn default() -> Self {
        Segments::new()
    }
}

/// The routes in match order: the configured ones, then the built-in ones not replaced by name.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Arc<Route>>,
    /// Indexes into `routes` (in match order) by segment count: a path is only ever compared
    /// with the routes of its own length.
    by_len: Vec<Vec<usize>>,
}

impl Routes {
    /// Compiles `[[route]]` and the built-in routes.
    pub fn new(configured: &[RouteConfig], cache: &CacheConfig) -> Routes {
        let mut routes: Vec<Arc<Route>> = configured
            .iter()
            .map(|r| Arc::new(Route::compile(r, cache.ttl)))
            .collect();
        for builtin in builtin_routes() {
            if !configured.iter().any(|r| r.name == builtin.name) {
                routes.push(Arc::new(Route::compile(&builtin, cache.ttl)));
            }
        }
        let mut by_len = vec![Vec::new(); MAX_SEGMENTS + 1];
        for (i, r) in routes.iter().enumerate() {
            if let Some(slot) = by_len.get_mut(r.segments.len()) {
                slot.push(i);
            }
        }
        Routes { routes, by_len }
    }

    /// The route a request names, with the ids it carries; `None` when no route matches (or an
    /// id is not a valid id: such a path is never cached).
    pub fn find<'p>(&self, method: &Method, path: &'p str) -> Option<Matched<'p>> {
        self.find_in(method, &Segments::split(path)?)
    }

    /// [`Routes::find`] over a path already split (classification splits it once).
    pub fn find_in<'p>(&self, method: &Method, segments: &Segments<'p>) -> Option<Matched<'p>> {
        let parts = segments.as_slice();
        let n = parts.len();
        'routes: for &index in &self.by_len[n] {
            let route = &self.routes[index];
            if !route.allows(method) {
                continue;
            }
            for (seg, part) in route.segments.iter().zip(parts) {
                let ok = match seg {
                    Segment::Literal(lit) => **lit == **part,
                    Segment::Account | Segment::Param => is_valid_id(part),
                };
                if !ok {
                    continue 'routes;
                }
            }
            let mut account = None;
            let mut params = String::new();
            for (seg, part) in route.segments.iter().zip(parts) {
                match seg {
                    Segment::Account => account = Some(*part),
                    Segment::Param => {
                        if !params.is_empty() {
                            params.push('/');
                        }
                        params.push_str(part);
                    }
                    Segment::Literal(_) => {}
                }
            }
            return Some(Matched {
                route: Arc::clone(route),
                account,
                params,
            });
        }
        None
    }

    /// The route named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// Whether a finished sync drops cached answers of the route named `name` (unknown names:
    /// yes, the safe side).
    pub fn invalidates(&self, name: &str) -> bool {
        self.by_name(name).is_none_or(|r| r.invalidate_on_sync)
    }

    /// The longest freshness of any route (the cache keeps entries that long plus `max_stale`).
    pub fn max_ttl(&self) -> Duration {
        self.routes
            .iter()
            .map(|r| r.ttl)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Every route, in match order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

/// The built-in routes: today's two cached endpoints, account details, the official SDK's
/// unversioned paths, and the endpoints that are named (for metrics and 429 cooldowns) but not
/// cached because they hold personal data or are billed per call.
pub fn builtin_routes() -> Vec<RouteConfig> {
    let r = |name: &str, path: &str, ttl: Option<Duration>, realtime: bool, personal: bool| {
        RouteConfig {
            name: name.into(),
            path: path.into(),
            methods: vec![Method::GET],
            ttl,
            invalidate_on_sync: path.contains("{id}"),
            realtime,
            personal_data: personal,
            cache_personal_data: false,
        }
    };
    let off = Some(Duration::ZERO);
    let mut bvn = r("bvn_lookup", "/v2/lookup/bvn/initiate", off, false, true);
    bvn.methods = vec![Method::POST];
    // Account details carry the holder's BVN: personal data, cached (apps read them before
    // every transactions call) but only in process, never in the shared tier. A [[route]] named
    // `account` with ttl = "0s" turns that off.
    let details = |name: &str, path: &str| RouteConfig {
        personal_data: true,
        cache_personal_data: true,
        ..r(name, path, None, false, false)
    };
    vec![
        r("balance", "/v2/accounts/{id}/balance", None, true, false),
        r(
            "transactions",
            "/v2/accounts/{id}/transactions",
            None,
            true,
            false,
        ),
        details("account", "/v2/accounts/{id}"),
        // mono-node (through HTTPS_PROXY) calls the unversioned API: its own entries, since the
        // shapes differ from v2's.
        details("node_account", "/accounts/{id}"),
        r(
            "node_transactions",
            "/accounts/{id}/transactions",
            None,
            false,
            false,
        ),
        r("identity", "/v2/accounts/{id}/identity", off, false, true),
        r("node_identity", "/accounts/{id}/identity", off, false, true),
        r("income", "/v2/accounts/{id}/income", off, false, false),
        r(
            "statement",
            "/v2/accounts/{id}/statement",
            off,
            false,
            false,
        ),
        r("earnings", "/v2/accounts/{id}/earnings", off, false, false),
        r("assets", "/v2/accounts/{id}/assets", off, false, false),
        bvn,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> CacheConfig {
        crate::cache::tests_config()
    }

    #[test]
    fn builtin_routes_match_their_paths_and_no_other() {
        let routes = Routes::new(&[], &cache());
        let m = routes
            .find(&Method::GET, "/v2/accounts/abc/balance")
            .unwrap();
        assert_eq!(m.route.name, "balance");
        assert_eq!(m.account, Some("abc"));
        assert!(m.route.realtime && m.route.cached());
        assert_eq!(
            routes
                .find(&Method::GET, "/v2/accounts/abc")
                .unwrap()
                .route
                .name,
            "account"
        );
        let node = routes
            .find(&Method::GET, "/accounts/abc/transactions")
            .unwrap();
        assert_eq!(node.route.name, "node_transactions");
        assert!(node.route.cached() && !node.route.realtime);
        assert_eq!(node.route.kind, None);
        let details = routes.find(&Method::GET, "/accounts/abc").unwrap();
        assert!(details.route.cached() && details.route.personal_data);
        let identity = routes
            .find(&Method::GET, "/v2/accounts/abc/identity")
            .unwrap();
        assert!(!identity.route.cached());
        assert!(routes
            .find(&Method::POST, "/v2/accounts/abc/balance")
            .is_none());
        assert!(routes
            .find(&Method::GET, "/v2/accounts/a b/balance")
            .is_none());
        assert!(routes
            .find(&Method::GET, "/v2/accounts/abc/balance/x")
            .is_none());
        assert_eq!(
            routes
                .find(&Method::POST, "/v2/lookup/bvn/initiate")
                .unwrap()
                .route
                .name,
            "bvn_lookup"
        );
    }

    #[test]
    fn configured_routes_come_first_and_replace_builtins_by_name() {
        let identity = RouteConfig {
            name: "identity".into(),
            path: "/v2/accounts/{id}/identity".into(),
            methods: vec![Method::GET],
            ttl: Some(Duration::from_secs(3600)),
            invalidate_on_sync: false,
            realtime: false,
            personal_data: true,
            cache_personal_data: true,
        };
        let statement = RouteConfig {
            name: "statement_job".into(),
            path: "/v2/accounts/{id}/statement/jobs/{job}".into(),
            personal_data: false,
            cache_personal_data: false,
            ..identity.clone()
        };
        let routes = Routes::new(&[identity, statement], &cache());
        let m = routes
            .find(&Method::GET, "/v2/accounts/abc/identity")
            .unwrap();
        assert_eq!(m.route.ttl, Duration::from_secs(3600));
        assert!(!routes.invalidates("identity"));
        let m = routes
            .find(&Method::GET, "/v2/accounts/abc/statement/jobs/j1")
            .unwrap();
        assert_eq!((m.account, m.params.as_str()), (Some("abc"), "j1"));
        assert_eq!(routes.iter().filter(|r| r.name == "identity").count(), 1);
        assert_eq!(routes.max_ttl(), Duration::from_secs(3600));
    }

    #[test]
    fn personal_data_is_not_cached_unless_the_operator_says_so() {
        let mut cfg = builtin_routes()
            .into_iter()
            .find(|r| r.name == "identity")
            .unwrap();
        cfg.ttl = Some(Duration::from_secs(60));
        assert!(!Route::compile(&cfg, Duration::from_secs(1)).cached());
        cfg.cache_personal_data = true;
        assert!(Route::compile(&cfg, Duration::from_secs(1)).cached());
    }
}
