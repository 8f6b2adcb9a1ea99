//! The request context of an account read, and the key formats that follow from it.
//!
//! Every key the proxy derives from a read is written here once: the cache group of an account,
//! the path within it, the fill and realtime flights, the job record, and the upstream target.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderValue;

use crate::route::Kind;
use crate::store::RecordKey;
use crate::tenant::Tenant;

/// One read of `/v2/accounts/{id}/balance|transactions`: who asks, for what, under which id.
#[derive(Debug, Clone)]
pub struct AccountRead {
    /// Whose key it uses.
    pub tenant: Tenant,
    /// The validated account id.
    pub account: String,
    /// Balance or transactions.
    pub kind: Kind,
    /// The query as the client sent it (forwarded upstream unchanged).
    query: Option<String>,
    /// The normalized path within the account's cache group: `balance`, `transactions?page=2`.
    path_key: Cow<'static, str>,
    /// The request id sent upstream and logged.
    pub request_id: HeaderValue,
}

impl AccountRead {
    /// The context of a read; the query is normalized once, here.
    pub fn new(
        tenant: Tenant,
        account: String,
        kind: Kind,
        query: Option<&str>,
        request_id: HeaderValue,
    ) -> AccountRead {
        AccountRead {
            tenant,
            account,
            kind,
            path_key: path_key(kind, query),
            query: query.filter(|q| !q.is_empty()).map(str::to_string),
            request_id,
        }
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

    /// The job record of this account endpoint, which is also the realtime flight's key.
    pub fn record_key(&self) -> RecordKey {
        RecordKey::new(&self.tenant.id, &self.account, self.kind)
    }

    /// The upstream path and query, with the client's query as sent.
    pub fn target(&self) -> String {
        let mut target = format!("/v2/accounts/{}/{}", self.account, self.kind.as_str());
        if let Some(q) = &self.query {
            target.push('?');
            target.push_str(q);
        }
        target
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

/// The cache path key of an account endpoint: `balance` or `transactions?page=2`.
/// Borrowed when there is no query, so the common hit allocates nothing for it.
pub fn path_key(kind: Kind, query: Option<&str>) -> Cow<'static, str> {
    let q = normalize_query(query);
    if q.is_empty() {
        Cow::Borrowed(kind.as_str())
    } else {
        Cow::Owned(format!("{}?{q}", kind.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn read(query: Option<&str>) -> AccountRead {
        let tenant = Tenant::new(Secret::new("k"));
        let rid = HeaderValue::from_static("r1");
        AccountRead::new(tenant, "abc".into(), Kind::Transactions, query, rid)
    }

    #[test]
    fn query_normalization_sorts_and_drops_empty_pairs() {
        assert_eq!(normalize_query(Some("paginate=true&")), "paginate=true");
        assert_eq!(normalize_query(Some("b=2&&a=1&")), "a=1&b=2");
        assert_eq!(path_key(Kind::Balance, Some("&")), "balance");
        assert_eq!(normalize_query(Some("page=2&page=1")), "page=2&page=1");
        assert_ne!(
            normalize_query(Some("page=2&page=1")),
            normalize_query(Some("page=1&page=2"))
        );
        assert_ne!(
            path_key(Kind::Transactions, Some("page=1")),
            path_key(Kind::Transactions, Some("page=2"))
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
        assert_eq!(r.record_key().flat(), format!("{tenant}:abc:transactions"));
        assert_eq!(r.target(), "/v2/accounts/abc/transactions?page=2&limit=5&");
        assert_eq!(read(None).target(), "/v2/accounts/abc/transactions");
        assert_eq!(read(Some("")).target(), "/v2/accounts/abc/transactions");
    }
}
