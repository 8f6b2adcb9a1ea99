//! The request context of an account read, and the key formats that follow from it.
//!
//! Every key the proxy derives from a read is written here once: the cache group of an account,
//! the path within it, the fill and realtime flights, the job record, and the upstream target.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::HeaderValue;

pub use crate::cache::route_of;
use crate::limits::ClientLimiter;
use crate::request::directives::Directives;
use crate::route::Kind;
use crate::routes::Route;
use crate::store::RecordKey;
use crate::telemetry::Trace;
use crate::tenant::Tenant;

/// One read of a cached (or realtime) route: who asks, for what, under which id.
#[derive(Debug, Clone)]
pub struct AccountRead {
    /// Whose key it uses.
    pub tenant: Tenant,
    /// The validated account id (empty for a route without `{id}`).
    pub account: String,
    /// The route it matched.
    pub route: Arc<Route>,
    /// The path and query as the client sent them (forwarded upstream unchanged).
    target: PathAndQuery,
    /// The normalized key within the account's cache group: `balance`,
    /// `transactions?page=2`, `statement_job/j1`.
    path_key: Cow<'static, str>,
    /// The request id sent upstream and logged.
    pub request_id: HeaderValue,
    /// The request's own cache directives.
    pub directives: Directives,
    /// The client's limits, when it has any (its upstream permits and quota).
    pub limiter: Option<Arc<ClientLimiter>>,
    /// The request's trace, carried to the upstream calls the read causes.
    pub trace: Trace,
}

impl AccountRead {
    /// The context of a read; the query is normalized once, here.
    pub fn new(
        tenant: Tenant,
        account: String,
        route: Arc<Route>,
        params: &str,
        target: PathAndQuery,
        request_id: HeaderValue,
    ) -> AccountRead {
        AccountRead {
            tenant,
            account,
            path_key: path_key(route.name, params, target.query()),
            route,
            target,
            request_id,
            directives: Directives::default(),
            limiter: None,
            trace: Trace::default(),
        }
    }

    /// The same read in the request's trace.
    pub fn with_trace(mut self, trace: Trace) -> AccountRead {
        self.trace = trace;
        self
    }

    /// Balance or transactions data (realtime, `x-has-new-data`), or neither.
    pub fn kind(&self) -> Option<Kind> {
        self.route.kind
    }

    /// The path within the account's cache group.
    pub fn path_key(&self) -> &str {
        &self.path_key
    }

    /// The cache group of the account for this tenant.
    pub fn account_key(&self) -> String {
        account_key(&self.tenant.id, &self.account)
    }

    /// The flight of a cache fill: one per tenant, account and path.
    pub fn fill_key(&self) -> String {
        let mut k = self.account_key();
        k.push('/');
        k.push_str(&self.path_key);
        k
    }

    /// The job record of this account endpoint, which is also the realtime flight's key; only
    /// balance and transactions routes have one.
    pub fn record_key(&self) -> Option<RecordKey> {
        self.route
            .kind
            .map(|kind| RecordKey::new(&self.tenant.id, &self.account, kind))
    }

    /// The upstream path and query, as the client sent them.
    pub fn target(&self) -> &str {
        self.target.as_str()
    }
}

/// A job-status read: `GET /v2/accounts/{id}/jobs/{job_id}`.
#[derive(Debug, Clone)]
pub struct JobRead {
    /// Whose key it uses.
    pub tenant: Tenant,
    /// The validated account id.
    pub account: String,
    /// The validated job id.
    pub job_id: String,
    /// The query as the client sent it (forwarded upstream unchanged).
    pub query: Option<String>,
    /// The request id sent upstream and logged.
    pub request_id: HeaderValue,
    /// The request's trace.
    pub trace: Trace,
}

impl JobRead {
    /// The upstream path of the job, with the client's query as sent.
    pub fn target(&self) -> String {
        let mut target = job_target(&self.account, &self.job_id);
        if let Some(q) = self.query.as_deref().filter(|q| !q.is_empty()) {
            target.push('?');
            target.push_str(q);
        }
        target
    }
}

/// The upstream path of a job's status.
pub fn job_target(account: &str, job_id: &str) -> String {
    format!("/v2/accounts/{account}/jobs/{job_id}")
}

/// The cache group key of an account for a tenant: `tenant:account`.
pub fn account_key(tenant: &Arc<str>, account: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + 1 + account.len());
    k.push_str(tenant);
    k.push(':');
    k.push_str(account);
    k
}

/// Normalizes a query for cache keys: pairs sorted, empty pairs and trailing `&` dropped.
pub fn normalize_query(query: Option<&str>) -> String {
    let Some(q) = query else {
        return String::new();
    };
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    if pairs.is_empty() {
        return String::new();
    }
    // Stable and by name only: repeated parameters keep their order (`page=2&page=1` differs
    // from `page=1&page=2` to an upstream that reads the first), other orders do not matter.
    pairs.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    pairs.join("&")
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// The cache path key of a route's answer: `balance`, `transactions?page=2`,
/// `statement_job/j1`. Borrowed when there is neither parameter nor query, so the common hit
/// allocates nothing for it.
pub fn path_key(route: &'static str, params: &str, query: Option<&str>) -> Cow<'static, str> {
    let q = normalize_query(query);
    if q.is_empty() && params.is_empty() {
        return Cow::Borrowed(route);
    }
    let mut key = String::with_capacity(route.len() + params.len() + q.len() + 2);
    key.push_str(route);
    if !params.is_empty() {
        key.push('/');
        key.push_str(params);
    }
    if !q.is_empty() {
        key.push('?');
        key.push_str(&q);
    }
    Cow::Owned(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn read(query: Option<&str>) -> AccountRead {
        let tenant = Tenant::new(Secret::new("k"));
        let rid = HeaderValue::from_static("r1");
        let routes = crate::routes::Routes::new(&[], &crate::cache::tests_config());
        let route = Arc::clone(routes.by_name("transactions").unwrap());
        let target = match query {
            Some(q) => format!("/v2/accounts/abc/transactions?{q}"),
            None => "/v2/accounts/abc/transactions".to_string(),
        };
        AccountRead::new(
            tenant,
            "abc".into(),
            route,
            "",
            target.parse().unwrap(),
            rid,
        )
    }

    #[test]
    fn query_normalization_sorts_and_drops_empty_pairs() {
        assert_eq!(normalize_query(Some("paginate=true&")), "paginate=true");
        assert_eq!(normalize_query(Some("b=2&&a=1&")), "a=1&b=2");
        assert_eq!(path_key("balance", "", Some("&")), "balance");
        assert_eq!(
            path_key("statement_job", "j1", Some("b=1")),
            "statement_job/j1?b=1"
        );
        assert_eq!(route_of("statement_job/j1?b=1"), "statement_job");
        assert_eq!(route_of("transactions?page=2"), "transactions");
        assert_eq!(route_of("balance"), "balance");
        assert_eq!(normalize_query(Some("page=2&page=1")), "page=2&page=1");
        assert_ne!(
            normalize_query(Some("page=2&page=1")),
            normalize_query(Some("page=1&page=2"))
        );
        assert_ne!(
            path_key("transactions", "", Some("page=1")),
            path_key("transactions", "", Some("page=2"))
        );
    }

    #[test]
    fn a_read_owns_its_keys_and_its_target() {
        let r = read(Some("page=2&limit=5&"));
        let tenant = r.tenant.id.to_string();
        assert_eq!(r.path_key(), "transactions?limit=5&page=2");
        assert_eq!(r.account_key(), format!("{tenant}:abc"));
        assert_eq!(
            r.fill_key(),
            format!("{tenant}:abc/transactions?limit=5&page=2")
        );
        assert_eq!(
            r.record_key().unwrap().flat(),
            format!("{tenant}:abc:transactions")
        );
        assert_eq!(r.target(), "/v2/accounts/abc/transactions?page=2&limit=5&");
        assert_eq!(read(None).target(), "/v2/accounts/abc/transactions");
    }
}
