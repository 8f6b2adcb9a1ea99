//! The unversioned `/accounts/{id}…` routes the official mono-node SDK calls (Mono's v1 API).
//!
//! Shape choice: v1 answered with bare documents, not the v2 envelope. The SDK hands axios'
//! `response.data` straight to its callback, and its README reads `results.account`,
//! `results.paging.total` and `results.data` at the top level; fields are camelCase with a
//! Mongo-style `_id` (the same spelling Mono's `account_updated` webhook still uses). So a
//! success here is a bare JSON document. Failures (404 for a `missing…` account, 401, injected
//! faults) keep the sandbox's failed envelope: v1 error bodies carried a top-level `message`
//! too, so SDK code reading `message` works, and the proxy sees one error shape everywhere.

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::handler::{page_window, MONO_BASE};
use super::reply::{json_reply, PageMeta, Resp};
use super::seed::{Account, Profile, Transaction};

/// A transaction as v1 spelled it.
#[derive(Serialize)]
struct NodeTransaction<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    amount: i64,
    date: &'a str,
    narration: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    category: &'a str,
    balance: i64,
    currency: &'a str,
}

/// A v1 transactions page: `paging` first, as v1 sent it.
#[derive(Serialize)]
struct NodePage<'a> {
    paging: PageMeta,
    data: Vec<NodeTransaction<'a>>,
}

impl<'a> From<&'a Transaction> for NodeTransaction<'a> {
    fn from(t: &'a Transaction) -> Self {
        NodeTransaction {
            id: &t.id,
            amount: t.amount,
            date: &t.date,
            narration: &t.narration,
            kind: t.kind,
            category: t.category,
            balance: t.balance,
            currency: "NGN",
        }
    }
}

/// `GET /accounts/{id}`: `{"meta": {…}, "account": {"_id", "name", "accountNumber", …}}`.
pub(super) fn details(a: &Account) -> Resp {
    let body = json!({
        "meta": { "data_status": "AVAILABLE", "auth_method": "mobile_banking" },
        "account": {
            "_id": a.id,
            "name": a.name,
            "accountNumber": a.account_number,
            "currency": "NGN",
            "balance": a.balance,
            "type": "SAVINGS ACCOUNT - INDIVIDUAL",
            "bvn": a.bvn,
            "institution": {
                "name": "Sandbox Bank",
                "bankCode": "000000",
                "type": "PERSONAL_BANKING",
            },
        },
    });
    json_reply(StatusCode::OK, &body)
}

/// `GET /accounts/{id}/transactions`: `{"paging": {total, page, previous, next}, "data": […]}`
/// with the v2 route's paging rules (`paginate`, `page`, `limit`) and v1 links.
pub(super) fn transactions(a: &Account, query: Option<&str>) -> Resp {
    let base = format!("{MONO_BASE}/accounts/{}/transactions", a.id);
    let (range, paging) = page_window(a.transactions.len(), query, &base);
    let page = NodePage {
        paging,
        data: a.transactions[range].iter().map(Into::into).collect(),
    };
    json_reply(StatusCode::OK, &page)
}

/// `GET /accounts/{id}/identity`: the profile, camelCase, at the top level.
pub(super) fn identity(p: &Profile) -> Resp {
    let body = json!({
        "fullName": p.full_name,
        "email": p.email,
        "phone": p.phone,
        "gender": p.gender,
        "dob": p.dob,
        "bvn": p.bvn,
        "maritalStatus": p.marital_status,
        "addressLine1": p.address_line1,
        "addressLine2": p.address_line2,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    });
    json_reply(StatusCode::OK, &body)
}
