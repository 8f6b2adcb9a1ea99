//! Fault injection: what the sandbox can do to an API request instead of answering it.

use std::time::Duration;

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
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                hyper::header::HeaderValue::from_str(value),
            ) {
                resp.headers_mut().append(n, v);
            }
        }
        resp
    }
}

impl Fault {
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
}

/// A fault with its limits: how many requests it hits and which route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// What happens.
    pub fault: Fault,
    /// `Some(n)`: only the next `n` matching requests; `None`: until cleared.
    pub times: Option<u32>,
    /// Only requests whose path starts with this (when it starts with `/`) or whose route
    /// name equals it (`details`, `balance`, `transactions`, `job`, `echo`, `other`,
    /// `not_found`); `None` matches every API request.
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

    /// Takes one use of the armed fault if it matches this request.
    fn take_fault(&self, route: &str, path: &str) -> Option<Fault> {
        let mut armed = lock(&self.shared.fault);
        let spec = armed.as_mut()?;
        if let Some(want) = &spec.route {
            let hit = if want.starts_with('/') {
                path.starts_with(want.as_str())
            } else {
                want == route
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

    /// Applies the armed fault if it matches: `Ok(None)` lets the request go on (after any
    /// injected latency), `Ok(Some)` is the injected answer, `Err` drops the connection.
    pub(super) async fn inject_fault(
        &self,
        route: &str,
        path: &str,
    ) -> Result<Option<Resp>, ResetFault> {
        let Some(fault) = self.take_fault(route, path) else {
            return Ok(None);
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
                return Ok(Some(failed(status, message)));
            }
            Fault::Reset => return Err(ResetFault),
            Fault::Reply(reply) => return Ok(Some(reply.response())),
            // The connection task is dropped when the sandbox shuts down.
            Fault::Hang => std::future::pending::<()>().await,
        }
        Ok(None)
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
        assert_eq!(sb.take_fault("balance", "/v2/accounts/b/balance"), None);
        assert_eq!(
            sb.take_fault("balance", "/v2/accounts/a/balance"),
            Some(Fault::Reset)
        );
        assert_eq!(
            sb.take_fault("balance", "/v2/accounts/a/balance"),
            Some(Fault::Reset)
        );
        assert_eq!(sb.take_fault("balance", "/v2/accounts/a/balance"), None);
        assert_eq!(sb.fault(), None);
    }
}
