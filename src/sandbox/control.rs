//! The `/__sandbox/*` control routes: inspection and steering for out-of-process tests.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::model::valid_id;
use super::reply::{failed, json_ok, query_param, read_body, Resp};
use super::{CannedReply, Fault, FaultSpec, Sandbox};

/// Control route bodies are tiny JSON documents.
const MAX_CONTROL_BODY: usize = 64 * 1024;

/// Body of `POST /__sandbox/fault`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    kind: String,
    ms: Option<u64>,
    status: Option<u16>,
    times: Option<u32>,
    route: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

/// Body of `POST /__sandbox/balance`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceRequest {
    account: String,
    balance: i64,
    #[serde(default)]
    staged: bool,
}

impl Sandbox {
    /// `/__sandbox/…`: inspection and control for out-of-process tests; no key, not counted.
    pub(super) async fn control(&self, req: Request<Incoming>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let body = match read_body(req.into_body(), MAX_CONTROL_BODY).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        match (method, path.as_str()) {
            (Method::GET, "/__sandbox/counts") => json_ok(&self.counts()),
            (Method::POST, "/__sandbox/reset") => {
                self.reset_counts();
                self.clear_requests();
                self.set_fault(None);
                if query_param(&query, "windows") == Some("true") {
                    self.clear_windows();
                }
                json_ok(&json!({ "status": "ok" }))
            }
            (Method::POST, "/__sandbox/fault") => match parse_fault(&body) {
                Ok(spec) => {
                    self.set_fault_spec(spec);
                    json_ok(&json!({ "status": "ok" }))
                }
                Err(message) => failed(StatusCode::BAD_REQUEST, &message),
            },
            (Method::GET, "/__sandbox/requests") => {
                let list: Vec<_> = self
                    .requests()
                    .iter()
                    .map(|r| {
                        let headers: Vec<(&str, &str)> = r
                            .headers
                            .iter()
                            .map(|(n, v)| match n.as_str() {
                                // The control routes are unauthenticated: keep keys out.
                                "mono-sec-key" => (n.as_str(), "[redacted]"),
                                _ => (n.as_str(), v.as_str()),
                            })
                            .collect();
                        json!({
                            "method": r.method,
                            "path": r.path,
                            "query": r.query,
                            "headers": headers,
                            "body": String::from_utf8_lossy(&r.body),
                        })
                    })
                    .collect();
                json_ok(&list)
            }
            (Method::POST, "/__sandbox/balance") => {
                match serde_json::from_slice::<BalanceRequest>(&body) {
                    Ok(req) if valid_id(&req.account) => {
                        if req.staged {
                            self.stage_balance(&req.account, req.balance);
                        } else {
                            self.set_balance(&req.account, req.balance);
                        }
                        json_ok(&json!({ "status": "ok" }))
                    }
                    Ok(_) => failed(StatusCode::BAD_REQUEST, "invalid account id"),
                    Err(err) => failed(StatusCode::BAD_REQUEST, &err.to_string()),
                }
            }
            (Method::POST, "/__sandbox/finish-jobs") => {
                self.finish_jobs_now();
                json_ok(&json!({ "status": "ok" }))
            }
            (method, path) => failed(
                StatusCode::NOT_FOUND,
                &format!("Cannot {method} {path} (sandbox control route)"),
            ),
        }
    }
}

/// Parses `{"kind": "latency|status|reset|hang|reply|headers|none", "ms", "status",
/// "headers", "body", "times", "route"}`.
fn parse_fault(body: &[u8]) -> Result<Option<FaultSpec>, String> {
    let req: FaultRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let fault = match req.kind.as_str() {
        "none" => return Ok(None),
        "latency" => Fault::Latency(Duration::from_millis(
            req.ms.ok_or("latency fault needs \"ms\"")?,
        )),
        "status" => {
            let status = req.status.ok_or("status fault needs \"status\"")?;
            if !(100..=999).contains(&status) {
                return Err(format!("status {status} is not an HTTP status"));
            }
            Fault::Status(status)
        }
        "reset" => Fault::Reset,
        "hang" => Fault::Hang,
        "reply" => Fault::Reply(CannedReply {
            status: req.status.ok_or("reply fault needs \"status\"")?,
            headers: req.headers,
            body: req.body,
        }),
        "headers" => {
            if req.headers.is_empty() {
                return Err("headers fault needs \"headers\": [[name, value], …]".to_owned());
            }
            // Refused here rather than skipped later, so a typo is a 400, not a silent no-op.
            for (name, value) in &req.headers {
                if HeaderName::from_bytes(name.as_bytes()).is_err()
                    || HeaderValue::from_str(value).is_err()
                {
                    return Err(format!("invalid header {name:?}: {value:?}"));
                }
            }
            Fault::Headers(req.headers)
        }
        other => return Err(format!("unknown fault kind {other:?}")),
    };
    if req.times == Some(0) {
        return Err("\"times\" must be at least 1".to_owned());
    }
    Ok(Some(FaultSpec {
        fault,
        times: req.times,
        route: req.route,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_bodies_parse() {
        let spec = parse_fault(br#"{"kind":"status","status":503,"times":2}"#)
            .unwrap()
            .unwrap();
        assert_eq!(spec.fault, Fault::Status(503));
        assert_eq!(spec.times, Some(2));
        assert_eq!(parse_fault(br#"{"kind":"none"}"#).unwrap(), None);
        assert!(parse_fault(br#"{"kind":"latency"}"#).is_err());
        assert!(parse_fault(br#"{"kind":"boom"}"#).is_err());
        let spec = parse_fault(
            br#"{"kind":"headers","headers":[["cache-control","private"]],"route":"identity"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(spec.fault, Fault::headers(&[("cache-control", "private")]));
        assert_eq!(spec.route.as_deref(), Some("identity"));
        assert!(parse_fault(br#"{"kind":"headers"}"#).is_err());
        assert!(parse_fault(br#"{"kind":"headers","headers":[["a b","x"]]}"#).is_err());
    }
}
