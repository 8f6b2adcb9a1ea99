//! Fault injection: what the sandbox can do to an API request instead of answering it.

use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;

use super::reply::{failed, Resp};
use super::{lock, Sandbox};

/// Returned from the service so hyper drops the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("sandbox fault: connection reset")]
pub(super) struct ResetFault;

/// A failure the sandbox injects in front of API routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Latency(Duration),
    /// Answer this status with Mono's failed envelope.
    Status(u16),
    /// Drop the connection without a response.
    Reset,
    /// Never answer (until the sandbox shuts down).
    Hang,
    /// Answer exactly this, whatever was asked: a CDN's HTML page, a 429 with some
    /// `Retry-After`, a body with odd headers.
    Reply(CannedReply),
    /// Answer normally (same status and body), with these headers added: a
    /// `Cache-Control: private` on an ordinary 200, say. A name the sandbox already sets
    /// (`content-type`) is replaced; a name given twice is sent twice. Whatever the normal
    /// answer is gets them, a 401 or 404 too, so limit it with a route (and `times`).
    Headers(Vec<(String, String)>),
}

/// A response the sandbox answers verbatim (see [`Fault::Reply`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CannedReply {
    /// Status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl CannedReply {
    /// A reply with this status and body and no headers yet.
    pub fn new(status: u16, body: impl Into<String>) -> CannedReply {
        CannedReply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> CannedReply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn response(&self) -> Resp {
        let mut resp = Resp::new(http_body_util::Full::new(bytes::Bytes::from(
            self.body.clone(),
        )));
        *resp.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                resp.headers_mut().append(n, v);
            }
        }
        resp
    }
}

/// What [`Sandbox::inject_fault`] leaves the request to.
pub(super) enum Injected {
    /// Answer normally, then add these headers with [`add_headers`] (usually none).
    Proceed(Vec<(String, String)>),
    /// Answer this instead.
    Answer(Resp),
}

/// Adds a [`Fault::Headers`] list to a normal answer: the first value given for a name
/// replaces what the sandbox set, later ones are appended. Invalid pairs are skipped (the
/// control route refuses them up front; the Rust API trusts the test).
pub(super) fn add_headers(resp: &mut Resp, headers: &[(String, String)]) {
    let mut replaced: Vec<HeaderName> = Vec::new();
    for (name, value) in headers {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            tracing::warn!(header = %name, "sandbox header fault skips an invalid header");
            continue;
        };
        if !replaced.contains(&n) {
            resp.headers_mut().remove(&n);
            replaced.push(n.clone());
        }
        resp.headers_mut().append(n, v);
    }
}

impl Fault {
    /// A [`Fault::Headers`] from borrowed pairs, e.g.
    /// `Fault::headers(&[("cache-control", "private")])`.
    pub fn headers(pairs: &[(&str, &str)]) -> Fault {
        Fault::Headers(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// This fault on every API request until cleared.
    pub fn always(self) -> FaultSpec {
        FaultSpec {
            fault: self,
            times: None,
            route: None,
        }
    }

    /// This fault on the next `n` API requests only.
    pub fn times(self, n: u32) -> FaultSpec {
        self.always().times(n)
    }

    /// This fault on one route name or path prefix only (see [`FaultSpec::route`]), until
    /// cleared: `Fault::headers(&[("cache-control", "private")]).route("identity")`.
    pub fn route(self, route: impl Into<String>) -> FaultSpec {
        self.always().route(route)
    }
}

/// A fault with its limits: how many requests it hits and which route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// What happens.
    pub fault: Fault,
    /// `Some(n)`: only the next `n` matching requests; `None`: until cleared.
    pub times: Option<u32>,
    /// Only requests whose path starts with this (when it starts with `/`) or whose route
    /// name equals it: `details`, `balance`, `transactions`, `job`, `echo`, `other`,
    /// `not_found`, or one of the account-data names `node_details`, `node_transactions`,
    /// `node_identity`, `identity`, `income`, `statements`, `earnings`, `assets` (which
    /// `other` also still matches, as it did before they had names) and `bvn_initiate`;
    /// `None` matches every API request.
    pub route: Option<String>,
}

impl FaultSpec {
    /// Limits the fault to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> FaultSpec {
        self.times = Some(n);
        self
    }

    /// Limits the fault to a route name or path prefix (see [`FaultSpec::route`]).
    pub fn route(mut self, route: impl Into<String>) -> FaultSpec {
        self.route = Some(route.into());
        self
    }
}

impl From<Fault> for FaultSpec {
    fn from(fault: Fault) -> FaultSpec {
        fault.always()
    }
}

impl Sandbox {
    /// Injects `fault` on every API request until cleared; `None` clears.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.set_fault_spec(fault.map(Fault::always));
    }

    /// Injects a fault limited by count and/or route; `None` clears.
    pub fn set_fault_spec(&self, spec: Option<FaultSpec>) {
        if let Some(spec) = &spec {
            tracing::info!(fault = ?spec.fault, times = ?spec.times, route = ?spec.route, "sandbox fault set");
        }
        *lock(&self.shared.fault) = spec;
    }

    /// The fault currently armed, if any.
    pub fn fault(&self) -> Option<FaultSpec> {
        lock(&self.shared.fault).clone()
    }

    /// Takes one use of the armed fault if it matches this request; `routes` are the names
    /// the request answers to (its own, then any older alias).
    fn take_fault(&self, routes: &[&str], path: &str) -> Option<Fault> {
        let mut armed = lock(&self.shared.fault);
        let spec = armed.as_mut()?;
        if let Some(want) = &spec.route {
            let hit = if want.starts_with('/') {
                path.starts_with(want.as_str())
            } else {
                routes.contains(&want.as_str())
            };
            if !hit {
                return None;
            }
        }
        let fault = spec.fault.clone();
        if let Some(left) = spec.times.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                *armed = None;
            }
        }
        Some(fault)
    }

    /// Applies the armed fault if it matches: [`Injected::Proceed`] lets the request go on
    /// (after any injected latency, with any headers to add), [`Injected::Answer`] is the
    /// injected answer, `Err` drops the connection.
    pub(super) async fn inject_fault(
        &self,
        routes: &[&str],
        path: &str,
    ) -> Result<Injected, ResetFault> {
        let Some(fault) = self.take_fault(routes, path) else {
            return Ok(Injected::Proceed(Vec::new()));
        };
        self.bump("faulted");
        match fault {
            Fault::Latency(d) => tokio::time::sleep(d).await,
            Fault::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message = status
                    .canonical_reason()
                    .unwrap_or("sandbox injected fault");
                return Ok(Injected::Answer(failed(status, message)));
            }
            Fault::Reset => return Err(ResetFault),
            Fault::Reply(reply) => return Ok(Injected::Answer(reply.response())),
            Fault::Headers(headers) => return Ok(Injected::Proceed(headers)),
            // The connection task is dropped when the sandbox shuts down.
            Fault::Hang => std::future::pending::<()>().await,
        }
        Ok(Injected::Proceed(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxConfig;

    #[test]
    fn limited_fault_expires_and_route_filter_applies() {
        let sb = Sandbox::new(SandboxConfig::default());
        sb.set_fault_spec(Some(Fault::Reset.times(2).route("/v2/accounts/a/")));
        assert_eq!(sb.take_fault(&["balance"], "/v2/accounts/b/balance"), None);
        assert_eq!(
            sb.take_fault(&["balance"], "/v2/accounts/a/balance"),
            Some(Fault::Reset)
        );
        assert_eq!(
            sb.take_fault(&["balance"], "/v2/accounts/a/balance"),
            Some(Fault::Reset)
        );
        assert_eq!(sb.take_fault(&["balance"], "/v2/accounts/a/balance"), None);
        assert_eq!(sb.fault(), None);
    }

    #[test]
    fn named_routes_match_their_own_name_and_their_alias() {
        let sb = Sandbox::new(SandboxConfig::default());
        sb.set_fault_spec(Some(Fault::Reset.route("other")));
        let path = "/v2/accounts/a/identity";
        assert_eq!(sb.take_fault(&["balance"], path), None);
        assert_eq!(
            sb.take_fault(&["identity", "other"], path),
            Some(Fault::Reset)
        );
        sb.set_fault_spec(Some(Fault::Reset.route("identity")));
        assert_eq!(sb.take_fault(&["income", "other"], path), None);
        assert_eq!(
            sb.take_fault(&["identity", "other"], path),
            Some(Fault::Reset)
        );
    }

    #[test]
    fn header_faults_replace_then_append() {
        let mut resp = failed(StatusCode::OK, "ok");
        add_headers(
            &mut resp,
            &[
                ("Content-Type".to_owned(), "text/plain".to_owned()),
                ("cache-control".to_owned(), "private".to_owned()),
                ("cache-control".to_owned(), "max-age=0".to_owned()),
                ("bad header".to_owned(), "x".to_owned()),
            ],
        );
        let h = resp.headers();
        assert_eq!(h.get("content-type").unwrap(), "text/plain");
        let cc: Vec<_> = h.get_all("cache-control").iter().collect();
        assert_eq!(cc, ["private", "max-age=0"]);
        assert_eq!(h.len(), 3);
    }
}
