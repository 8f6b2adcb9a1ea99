//! The simulated Mono API routes, behind the service entry and the `mono-sec-key` check.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::fault::{add_headers, Injected, ResetFault};
use super::model::{is_missing, valid_id};
use super::reply::{failed, json_ok, mono_envelope, query_param, read_body, PageMeta, Resp};
use super::seed::{self, Account, Portfolio, Profile};
use super::{lock, JobKind, JobState, RecordedRequest, Sandbox, SandboxJob};
use super::{node, products};
use super::{MAX_RECORDED_BODY, MAX_REQUEST_BODY};

/// Mono's success message, typo included, so bodies match the real API byte for byte.
pub(super) const OK_MESSAGE: &str = "Request was succesfully completed";
/// Transactions per page when the client sends no `limit` / `perPage`.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page a client may ask for.
const MAX_PAGE_SIZE: usize = 500;
/// Pagination links are absolute Mono URLs; the proxy rewrites them.
pub(super) const MONO_BASE: &str = "https://api.withmono.com";

/// What an API request asks for, decided from method and path alone.
#[derive(Debug, Clone, Copy)]
enum Endpoint<'a> {
    Details(&'a str),
    Balance(&'a str),
    Transactions(&'a str),
    Job(&'a str, &'a str),
    /// A named account read beyond the core four (identity, income, the v1 routes…).
    Data(DataRoute, &'a str),
    /// `POST /v2/lookup/bvn/initiate`.
    BvnInitiate,
    Echo,
    /// Any other Mono endpoint; carries the account id when the path has one.
    Other(Option<&'a str>),
    NotFound,
}

/// The account reads that once answered as `other` and now have their own data, counter
/// and fault name, so route rules for them can be tested against the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataRoute {
    /// `GET /accounts/{id}`: v1 details, as the mono-node SDK calls it.
    NodeDetails,
    /// `GET /accounts/{id}/transactions`.
    NodeTransactions,
    /// `GET /accounts/{id}/identity`.
    NodeIdentity,
    /// `GET /v2/accounts/{id}/identity`.
    Identity,
    /// `GET /v2/accounts/{id}/income`.
    Income,
    /// `GET /v2/accounts/{id}/statement`.
    Statement,
    /// `GET /v2/accounts/{id}/earnings`.
    Earnings,
    /// `GET /v2/accounts/{id}/assets`.
    Assets,
}

impl DataRoute {
    /// Counter and fault name.
    fn name(self) -> &'static str {
        match self {
            DataRoute::NodeDetails => "node_details",
            DataRoute::NodeTransactions => "node_transactions",
            DataRoute::NodeIdentity => "node_identity",
            DataRoute::Identity => "identity",
            DataRoute::Income => "income",
            DataRoute::Statement => "statements",
            DataRoute::Earnings => "earnings",
            DataRoute::Assets => "assets",
        }
    }
}

impl Endpoint<'_> {
    /// The name faults match on and the counter plain calls bump.
    fn name(&self) -> &'static str {
        match self {
            Endpoint::Details(_) => "details",
            Endpoint::Balance(_) => "balance",
            Endpoint::Transactions(_) => "transactions",
            Endpoint::Job(..) => "job",
            Endpoint::Data(route, _) => route.name(),
            Endpoint::BvnInitiate => "bvn_initiate",
            Endpoint::Echo => "echo",
            Endpoint::Other(_) => "other",
            Endpoint::NotFound => "not_found",
        }
    }

    /// The older name this endpoint still answers to: the [`DataRoute`]s were all `other`
    /// before they had names, and tests and dashboards count and fault them by it.
    fn alias(&self) -> Option<&'static str> {
        match self {
            Endpoint::Data(..) => Some("other"),
            _ => None,
        }
    }
}

/// Maps a path to an endpoint; ids outside `[A-Za-z0-9._-]{1,64}` never match an account.
fn parse_endpoint<'a>(method: &Method, path: &'a str) -> Endpoint<'a> {
    let segs: Vec<&'a str> = path.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET;
    match segs.as_slice() {
        ["v2", "echo", ..] => Endpoint::Echo,
        ["v2", "accounts", "auth" | "initiate"] if method == Method::POST => Endpoint::Other(None),
        ["v2", "accounts", id] if get && valid_id(id) => Endpoint::Details(id),
        ["v2", "accounts", id, "balance"] if valid_id(id) => {
            if get {
                Endpoint::Balance(id)
            } else {
                Endpoint::NotFound
            }
        }
        ["v2", "accounts", id, "transactions"] if valid_id(id) => {
            if get {
                Endpoint::Transactions(id)
            } else {
                Endpoint::NotFound
            }
        }
        ["v2", "accounts", id, "jobs", job] if valid_id(id) => {
            if get && valid_id(job) {
                Endpoint::Job(id, job)
            } else {
                Endpoint::NotFound
            }
        }
        // Only GET has a named route: other methods on these paths stay `other`, as before.
        ["v2", "accounts", id, read] if get && valid_id(id) => match *read {
            "identity" => Endpoint::Data(DataRoute::Identity, id),
            "income" => Endpoint::Data(DataRoute::Income, id),
            "statement" => Endpoint::Data(DataRoute::Statement, id),
            "earnings" => Endpoint::Data(DataRoute::Earnings, id),
            "assets" => Endpoint::Data(DataRoute::Assets, id),
            _ => Endpoint::Other(Some(id)),
        },
        ["v2", "lookup", "bvn", "initiate"] if method == Method::POST => Endpoint::BvnInitiate,
        ["v2", "accounts", id, _, ..] if valid_id(id) => Endpoint::Other(Some(id)),
        ["v1" | "v3", _, ..] => Endpoint::Other(None),
        ["accounts", id] if get && valid_id(id) => Endpoint::Data(DataRoute::NodeDetails, id),
        ["accounts", id, "transactions"] if get && valid_id(id) => {
            Endpoint::Data(DataRoute::NodeTransactions, id)
        }
        ["accounts", id, "identity"] if get && valid_id(id) => {
            Endpoint::Data(DataRoute::NodeIdentity, id)
        }
        ["accounts", id, ..] if valid_id(id) => Endpoint::Other(Some(id)),
        ["account", _, ..] => Endpoint::Other(None),
        _ => Endpoint::NotFound,
    }
}

#[derive(Serialize)]
struct BalanceData<'a> {
    id: &'a str,
    name: &'a str,
    account_number: &'a str,
    balance: i64,
    currency: &'a str,
}

#[derive(Serialize)]
struct JobData<'a> {
    id: &'a str,
    job_status: &'a str,
    name: &'a str,
    account: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    synced: bool,
    reauth_required: bool,
}

#[derive(Serialize)]
struct EchoData<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: BTreeMap<String, String>,
    body: Cow<'a, str>,
}

impl Sandbox {
    /// The service: every failure becomes a response, except an injected reset.
    pub(super) async fn handle(self, req: Request<Incoming>) -> Result<Resp, ResetFault> {
        let path = req.uri().path();
        if path == "/__sandbox" || path.starts_with("/__sandbox/") {
            return Ok(self.control(req).await);
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(body, MAX_REQUEST_BODY).await {
            Ok(body) => body,
            Err(resp) => {
                self.bump("total");
                return Ok(resp);
            }
        };
        self.record(RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), v)
                })
                .collect(),
            body: body.slice(..body.len().min(MAX_RECORDED_BODY)),
        });
        self.bump("total");
        let endpoint = parse_endpoint(&parts.method, parts.uri.path());
        tracing::debug!(method = %parts.method, path = parts.uri.path(), route = endpoint.name(), "sandbox request");

        let route = endpoint.name();
        // A repeated name is harmless: faults only ask whether theirs is among them.
        let routes = [route, endpoint.alias().unwrap_or(route)];
        let extra_headers = match self.inject_fault(&routes, parts.uri.path()).await? {
            Injected::Answer(resp) => return Ok(resp),
            Injected::Proceed(headers) => headers,
        };
        let latency = self.shared.cfg.latency;
        if latency > Duration::ZERO {
            tokio::time::sleep(latency).await;
        }
        let key_ok = parts.headers.get("mono-sec-key").is_some_and(|k| {
            let cfg = &self.shared.cfg;
            k.as_bytes() == cfg.secret_key.as_bytes()
                || cfg.extra_keys.iter().any(|x| k.as_bytes() == x.as_bytes())
        });
        let mut resp = if key_ok {
            self.answer(endpoint, &parts, &body)
        } else {
            self.bump("unauthorized");
            failed(StatusCode::UNAUTHORIZED, "Invalid or missing mono-sec-key")
        };
        add_headers(&mut resp, &extra_headers);
        Ok(resp)
    }

    /// Answers an authorised API request.
    fn answer(&self, endpoint: Endpoint<'_>, parts: &Parts, body: &Bytes) -> Resp {
        match endpoint {
            Endpoint::Details(id) => {
                self.bump("details");
                if is_missing(id) {
                    return account_not_found();
                }
                self.details(id)
            }
            Endpoint::Balance(id) => self.account_read(id, JobKind::Balance, parts),
            Endpoint::Transactions(id) => self.account_read(id, JobKind::Transactions, parts),
            Endpoint::Job(id, job_id) => {
                self.bump("job");
                if is_missing(id) {
                    return account_not_found();
                }
                self.job_status(id, job_id)
            }
            Endpoint::Data(route, id) => {
                self.bump(route.name());
                // They answered as `other` before they had names; keep that count meaning
                // what it did for the tests and dashboards that read it.
                self.bump("other");
                if is_missing(id) {
                    return account_not_found();
                }
                self.account_data(route, id, parts.uri.query())
            }
            Endpoint::BvnInitiate => {
                // Counted even when refused: Mono bills failed lookups too.
                self.bump("bvn_initiate");
                products::bvn_initiate(body)
            }
            Endpoint::Echo => {
                self.bump("echo");
                echo(parts, body)
            }
            Endpoint::Other(account) => {
                self.bump("other");
                if account.is_some_and(is_missing) {
                    return account_not_found();
                }
                self.other(account, parts)
            }
            Endpoint::NotFound => {
                self.bump("not_found");
                failed(
                    StatusCode::NOT_FOUND,
                    &format!("Cannot {} {}", parts.method, parts.uri.path()),
                )
            }
        }
    }

    /// Balance or transactions, plain or realtime.
    fn account_read(&self, id: &str, kind: JobKind, parts: &Parts) -> Resp {
        let realtime = wants_realtime(&parts.headers);
        if is_missing(id) {
            let counter = if realtime {
                format!("{}_realtime", kind.route())
            } else {
                kind.route().to_owned()
            };
            self.bump(&counter);
            return account_not_found();
        }
        let job = if realtime {
            let (job, new) = self.realtime(id, kind);
            let suffix = if new { "_realtime" } else { "_realtime_repeat" };
            self.bump(&format!("{}{suffix}", kind.route()));
            Some(job)
        } else {
            self.bump(kind.route());
            None
        };
        let mut resp = {
            let mut world = lock(&self.shared.world);
            let account = world.account(id);
            match kind {
                JobKind::Balance => balance_body(account),
                JobKind::Transactions => transactions_body(account, parts.uri.query()),
            }
        };
        if let Some(job) = job {
            set_job_headers(resp.headers_mut(), &job);
        }
        resp
    }

    /// The named account reads, from the same seeded account the core routes use.
    fn account_data(&self, route: DataRoute, id: &str, query: Option<&str>) -> Resp {
        let mut world = lock(&self.shared.world);
        let a = world.account(id);
        match route {
            DataRoute::NodeDetails => node::details(a),
            DataRoute::NodeTransactions => node::transactions(a, query),
            DataRoute::NodeIdentity => node::identity(&Profile::seed(a)),
            DataRoute::Identity => products::identity(a, &Profile::seed(a)),
            DataRoute::Income => products::income(a),
            DataRoute::Statement => products::statement(a, query),
            DataRoute::Earnings => products::earnings(a, &Portfolio::seed(id)),
            DataRoute::Assets => products::assets(a, &Portfolio::seed(id)),
        }
    }

    fn details(&self, id: &str) -> Resp {
        let mut world = lock(&self.shared.world);
        let a = world.account(id);
        let data = json!({
            "account": {
                "id": a.id,
                "name": a.name,
                "currency": "NGN",
                "type": "SAVINGS ACCOUNT - INDIVIDUAL",
                "account_number": a.account_number,
                "balance": a.balance,
                "bvn": a.bvn,
                "institution": {
                    "name": "Sandbox Bank",
                    "bank_code": "000000",
                    "type": "PERSONAL_BANKING",
                },
            },
            "customer": { "id": format!("cus_{}", a.id) },
            "meta": { "data_status": "AVAILABLE", "auth_method": "mobile_banking" },
        });
        mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
    }

    fn job_status(&self, account: &str, job_id: &str) -> Resp {
        let Some(job) = self.job(job_id).filter(|j| j.account == account) else {
            return failed(StatusCode::NOT_FOUND, "Job not found");
        };
        let data = JobData {
            id: &job.id,
            job_status: job.status.as_str(),
            name: job.kind.job_name(),
            account: &job.account,
            kind: job.kind.job_type(),
            synced: job.status == JobState::Finished,
            reauth_required: job.reauth_required,
        };
        mono_envelope(
            StatusCode::OK,
            "Job execution completed",
            &seed::now_rfc3339(),
            data,
            None,
        )
    }

    /// Endpoints the proxy only passes through: a plausible envelope is enough.
    fn other(&self, account: Option<&str>, parts: &Parts) -> Resp {
        let path = parts.uri.path();
        let now = seed::now_rfc3339();
        let data = match (account, path.rsplit('/').next()) {
            (None, Some("auth")) if parts.method == Method::POST => {
                json!({ "id": seed::random_hex16() })
            }
            (None, Some("initiate")) => json!({
                "mono_url": format!("https://connect.mono.co/?reference={}", seed::random_hex16()),
                "customer": seed::random_hex16(),
            }),
            _ => json!({ "method": parts.method.as_str(), "path": path }),
        };
        mono_envelope(StatusCode::OK, OK_MESSAGE, &now, data, None)
    }
}

/// `x-realtime: true`, name and value in any case.
fn wants_realtime(headers: &HeaderMap) -> bool {
    headers
        .get("x-realtime")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `x-job-id`, `x-job-status`, and `x-has-new-data: true` only when true (Mono omits false).
fn set_job_headers(headers: &mut HeaderMap, job: &SandboxJob) {
    if let Ok(id) = HeaderValue::from_str(&job.id) {
        headers.insert("x-job-id", id);
    }
    headers.insert(
        "x-job-status",
        HeaderValue::from_static(job.status.as_str()),
    );
    if job.has_new_data {
        headers.insert("x-has-new-data", HeaderValue::from_static("true"));
    }
}

fn balance_body(a: &Account) -> Resp {
    let data = BalanceData {
        id: &a.id,
        name: &a.name,
        account_number: &a.account_number,
        balance: a.balance,
        currency: "NGN",
    };
    mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
}

/// One page of transactions with Mono's `meta` and absolute pagination links.
fn transactions_body(a: &Account, query: Option<&str>) -> Resp {
    let base = format!("{MONO_BASE}/v2/accounts/{}/transactions", a.id);
    let (range, meta) = page_window(a.transactions.len(), query, &base);
    mono_envelope(
        StatusCode::OK,
        OK_MESSAGE,
        &a.timestamp,
        &a.transactions[range],
        Some(meta),
    )
}

/// The part of a `total`-long transaction list a query asks for (`paginate=false`, `page`,
/// `limit` or `perPage`), with the `meta` (v2) / `paging` (v1) document; its links are
/// `link_base?page=N`, plus the client's `limit` when it chose one.
pub(super) fn page_window(
    total: usize,
    query: Option<&str>,
    link_base: &str,
) -> (Range<usize>, PageMeta) {
    let query = query.unwrap_or("");
    let paginate = query_param(query, "paginate") != Some("false");
    let limit = query_param(query, "limit")
        .or_else(|| query_param(query, "perPage"))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let per_page = limit.unwrap_or(DEFAULT_PAGE_SIZE).min(MAX_PAGE_SIZE);
    let page = query_param(query, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    if !paginate {
        let meta = PageMeta {
            total,
            page: 1,
            previous: None,
            next: None,
        };
        return (0..total, meta);
    }
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = start.saturating_add(per_page).min(total);
    let pages = total.div_ceil(per_page);
    // Keep a client-chosen page size in the links so following them stays consistent.
    let link = |p: usize| {
        let mut url = format!("{link_base}?page={p}");
        if let Some(n) = limit {
            url.push_str(&format!("&limit={n}"));
        }
        url
    };
    let meta = PageMeta {
        total,
        page,
        previous: (page > 1).then(|| link(page - 1)),
        next: (page < pages).then(|| link(page + 1)),
    };
    (start..end, meta)
}

fn echo(parts: &Parts, body: &Bytes) -> Resp {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    json_ok(&EchoData {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers,
        body: String::from_utf8_lossy(body),
    })
}

fn account_not_found() -> Resp {
    failed(StatusCode::NOT_FOUND, "Account not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_parsed_from_method_and_path() {
        let get = Method::GET;
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc"),
            Endpoint::Details("abc")
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc/balance"),
            Endpoint::Balance("abc")
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc/jobs/jobs.accounts_1"),
            Endpoint::Job("abc", "jobs.accounts_1")
        ));
        assert!(matches!(
            parse_endpoint(&Method::PUT, "/v2/echo/x"),
            Endpoint::Echo
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc/identity"),
            Endpoint::Data(DataRoute::Identity, "abc")
        ));
        assert!(matches!(
            parse_endpoint(&Method::POST, "/v2/accounts/abc/identity"),
            Endpoint::Other(Some("abc"))
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc/statement"),
            Endpoint::Data(DataRoute::Statement, "abc")
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc/statement/jobs/j1"),
            Endpoint::Other(Some("abc"))
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/abc/income-records"),
            Endpoint::Other(Some("abc"))
        ));
        assert!(matches!(
            parse_endpoint(&get, "/accounts/abc"),
            Endpoint::Data(DataRoute::NodeDetails, "abc")
        ));
        assert!(matches!(
            parse_endpoint(&get, "/accounts/abc/transactions"),
            Endpoint::Data(DataRoute::NodeTransactions, "abc")
        ));
        assert!(matches!(
            parse_endpoint(&get, "/accounts/abc/identity"),
            Endpoint::Data(DataRoute::NodeIdentity, "abc")
        ));
        assert!(matches!(
            parse_endpoint(&Method::POST, "/accounts/abc/sync"),
            Endpoint::Other(Some("abc"))
        ));
        assert!(matches!(
            parse_endpoint(&Method::POST, "/v2/lookup/bvn/initiate"),
            Endpoint::BvnInitiate
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/lookup/bvn/initiate"),
            Endpoint::NotFound
        ));
        assert!(matches!(
            parse_endpoint(&Method::POST, "/v2/accounts/auth"),
            Endpoint::Other(None)
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/nothing"),
            Endpoint::NotFound
        ));
        assert!(matches!(
            parse_endpoint(&get, "/v2/accounts/../balance"),
            Endpoint::NotFound
        ));
    }
}
