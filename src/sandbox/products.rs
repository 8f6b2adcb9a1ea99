//! Mono's v2 data products beyond details, balance and transactions: identity, income,
//! statement, earnings, assets, and the BVN lookup's first step.
//!
//! Every answer is Mono's envelope with data derived from the seeded account (or, for assets
//! and earnings, a [`Portfolio`] seeded from the same id), so equal calls give equal bytes and
//! the proxy's cache tests can compare them. The envelope `timestamp` is the account's data
//! version, as on balance, so it moves only when the account's data does.

use hyper::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

use super::handler::{MONO_BASE, OK_MESSAGE};
use super::reply::{failed, mono_envelope, mono_envelope_meta, query_param, Resp};
use super::seed::{self, Account, Holding, Portfolio, Profile};

/// Narration prefix of the seeded salary credits; what follows is the employer.
const SALARY_PREFIX: &str = "SALARY PAYMENT ";
/// Longest statement period Mono accepts, in months.
const MAX_STATEMENT_MONTHS: u32 = 12;

/// `GET /v2/accounts/{id}/identity`: the holder's personal data, snake_case.
pub(super) fn identity(a: &Account, p: &Profile) -> Resp {
    let data = json!({
        "full_name": p.full_name,
        "email": p.email,
        "phone": p.phone,
        "gender": p.gender,
        "dob": p.dob,
        "bvn": p.bvn,
        "marital_status": p.marital_status,
        "address_line1": p.address_line1,
        "address_line2": p.address_line2,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    });
    mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
}

/// `GET /v2/accounts/{id}/income`: an income summary computed from the account's credits.
///
/// Salary credits are the regular stream, other transfers in the irregular one; refunds are
/// not income. Answered synchronously (Mono may take a moment on a first call; the shape of
/// the finished summary is what clients read), with the field names Mono uses since March
/// 2025 (`aggregated_monthly_average…`).
pub(super) fn income(a: &Account) -> Resp {
    let credits = a.transactions.iter().filter(|t| t.kind == "credit");
    let regular: Vec<_> = credits.clone().filter(|t| t.category == "income").collect();
    let irregular: Vec<_> = credits.filter(|t| t.category == "transfer").collect();
    let incomes: Vec<_> = a
        .transactions
        .iter()
        .filter(|t| t.kind == "credit" && matches!(t.category, "income" | "transfer"))
        .collect();
    // Calendar months with any income, so a month-long seed averages over one month.
    let mut months: Vec<&str> = incomes.iter().filter_map(|t| t.date.get(..7)).collect();
    months.sort_unstable();
    months.dedup();
    let months = months.len().max(1) as i64;
    let sum = |list: &[&seed::Transaction]| list.iter().map(|t| t.amount).sum::<i64>();
    let (total_regular, total_irregular) = (sum(&regular), sum(&irregular));
    let total = total_regular + total_irregular;
    // Newest first, like the transaction list.
    let last = incomes.first();
    let employer = regular
        .first()
        .and_then(|t| t.narration.strip_prefix(SALARY_PREFIX));
    let income_type = match (regular.is_empty(), irregular.is_empty()) {
        (false, _) => "salary",
        (true, false) => "irregular",
        (true, true) => "none",
    };
    let streams = usize::from(!regular.is_empty()) + usize::from(!irregular.is_empty());
    let data = json!({
        "account": a.id,
        "income_summary": {
            "total_income": total,
            "employer": employer,
            "income_type": income_type,
            "aggregated_monthly_average": total / months,
            "aggregated_monthly_average_regular": total_regular / months,
            "aggregated_monthly_average_irregular": total_irregular / months,
            "average_income_amount": total / (incomes.len().max(1) as i64),
            "last_income_amount": last.map(|t| t.amount),
            "last_income_description": last.map(|t| t.narration.as_str()),
            "last_income_date": last.map(|t| t.date.as_str()),
            "number_of_income_streams": streams,
            "currency": "NGN",
        },
    });
    mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
}

/// `meta` of a JSON statement.
#[derive(Serialize)]
struct StatementMeta {
    count: usize,
}

/// `GET /v2/accounts/{id}/statement?period=lastNmonths&output=json|pdf`.
///
/// JSON: every transaction (the seed spans under a month, so every valid period covers it;
/// filtering by date would drop seed data as soon as a sync adds a transaction dated today)
/// with `meta.count`. PDF: the `BUILDING` job document Mono answers before the file exists.
/// A period or output Mono would refuse is a 400.
pub(super) fn statement(a: &Account, query: Option<&str>) -> Resp {
    let query = query.unwrap_or("");
    let period = query_param(query, "period").unwrap_or("last12months");
    if parse_period(period).is_none() {
        return failed(
            StatusCode::BAD_REQUEST,
            "Invalid period: use last1month to last12months",
        );
    }
    match query_param(query, "output").unwrap_or("json") {
        "json" => mono_envelope_meta(
            StatusCode::OK,
            OK_MESSAGE,
            &a.timestamp,
            &a.transactions,
            Some(StatementMeta {
                count: a.transactions.len(),
            }),
        ),
        "pdf" => {
            let job = format!("stmt_{}", seed::stable_hex(&format!("{}:{period}", a.id)));
            let data = json!({
                "id": job,
                "status": "BUILDING",
                "path": format!("{MONO_BASE}/v2/accounts/{}/statement/jobs/{job}", a.id),
            });
            mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
        }
        _ => failed(StatusCode::BAD_REQUEST, "Invalid output: use json or pdf"),
    }
}

/// `last1month` … `last12months` → months; anything else → `None`.
fn parse_period(period: &str) -> Option<u32> {
    let n = period.strip_prefix("last")?;
    let n = n
        .strip_suffix("months")
        .or_else(|| n.strip_suffix("month"))?;
    // Digits only: `u32::from_str` would also take `+6`.
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<u32>()
        .ok()
        .filter(|m| (1..=MAX_STATEMENT_MONTHS).contains(m))
}

/// `GET /v2/accounts/{id}/earnings`: payouts from the account's investments, newest first.
pub(super) fn earnings(a: &Account, f: &Portfolio) -> Resp {
    let data: Vec<Value> = f
        .earnings
        .iter()
        .filter_map(|e| {
            let h = f.holdings.get(e.holding)?;
            Some(json!({
                "id": e.id,
                "amount": e.amount,
                "narration": e.narration,
                "date": e.date,
                "asset": {
                    "symbol": h.symbol,
                    "name": h.name,
                    "type": h.kind,
                    "quantity": h.quantity,
                },
            }))
        })
        .collect();
    mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
}

/// `GET /v2/accounts/{id}/assets`: the account's investments with totals.
pub(super) fn assets(a: &Account, f: &Portfolio) -> Resp {
    let total_value: i64 = f.holdings.iter().map(Holding::value).sum();
    let total_cost: i64 = f.holdings.iter().map(|h| h.cost).sum();
    let assets: Vec<Value> = f
        .holdings
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "type": h.kind,
                "cost": h.cost,
                "return": h.value() - h.cost,
                "quantity": h.quantity,
                "currency": "NGN",
                "details": {
                    "symbol": h.symbol,
                    "price": h.price,
                    "current_balance": h.value(),
                },
            })
        })
        .collect();
    let data = json!({
        "balances": {
            "total_value": total_value,
            "total_cost": total_cost,
            "total_return": total_value - total_cost,
            "currency": "NGN",
        },
        "assets": assets,
    });
    mono_envelope(StatusCode::OK, OK_MESSAGE, &a.timestamp, data, None)
}

/// `POST /v2/lookup/bvn/initiate` with `{"bvn": "12345678901", "scope": "identity"}`.
///
/// An 11-digit BVN (a JSON string, as Mono documents) gets a fresh `session_id` and the
/// verification methods, whose hints are derived from the BVN; anything else is Mono's 400
/// failed envelope. Mono bills both, which is why the proxy guards this route: the sandbox
/// just behaves like Mono.
pub(super) fn bvn_initiate(body: &[u8]) -> Resp {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return failed(
            StatusCode::BAD_REQUEST,
            "Invalid request body: expected {\"bvn\": \"…\", \"scope\": \"identity\"}",
        );
    };
    let bvn = match req.get("bvn") {
        Some(Value::String(bvn)) if bvn.len() == 11 && bvn.bytes().all(|b| b.is_ascii_digit()) => {
            bvn.as_str()
        }
        _ => {
            return failed(
                StatusCode::BAD_REQUEST,
                "Invalid BVN: a BVN is an 11-digit number",
            )
        }
    };
    match req.get("scope") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "identity" || s == "bank_accounts" => {}
        Some(_) => {
            return failed(
                StatusCode::BAD_REQUEST,
                "Invalid scope: use identity or bank_accounts",
            )
        }
    }
    let data = json!({
        "session_id": uuid::Uuid::new_v4().to_string(),
        "methods": [
            {
                "method": "email",
                "hint": format!(
                    "An email with a verification code will be sent to b{}***@example.com",
                    &bvn[9..]
                ),
            },
            {
                "method": "phone",
                "hint": format!(
                    "Sms with a verification code will be sent to phone 080***{}",
                    &bvn[7..]
                ),
            },
            {
                "method": "alternate_phone",
                "hint": "Sms with a verification code will be sent to your alternate phone number",
            },
        ],
    });
    mono_envelope(
        StatusCode::OK,
        "BVN Lookup successfully initiated.",
        &seed::now_rfc3339(),
        data,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_periods_parse() {
        assert_eq!(parse_period("last1month"), Some(1));
        assert_eq!(parse_period("last6months"), Some(6));
        assert_eq!(parse_period("last12months"), Some(12));
        assert_eq!(parse_period("last13months"), None);
        assert_eq!(parse_period("last0months"), None);
        assert_eq!(parse_period("6months"), None);
        assert_eq!(parse_period("last-1months"), None);
        assert_eq!(parse_period("last+6months"), None);
        assert_eq!(parse_period("lastmonths"), None);
    }

    #[test]
    fn bvn_lookups_are_checked_like_mono() {
        let ok = bvn_initiate(br#"{"bvn":"12345678901","scope":"identity"}"#);
        assert_eq!(ok.status(), StatusCode::OK);
        for bad in [
            &br#"{"bvn":"1234567890"}"#[..],
            br#"{"bvn":"1234567890a"}"#,
            br#"{"bvn":12345678901}"#,
            br#"{"bvn":"12345678901","scope":"everything"}"#,
            br#"{}"#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                bvn_initiate(bad).status(),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
