//! The sandbox's named account reads beyond details/balance/transactions (the v1 routes the
//! mono-node SDK calls, v2 identity, income, statement, earnings, assets, BVN lookup), their
//! counters, and the faults that target them, called directly over loopback HTTP.

mod support;

use bytes::Bytes;
use http::{Method, StatusCode};
use mono_proxy::sandbox::{CannedReply, Fault, RunningSandbox};
use serde_json::Value;
use support::{assert_envelope, Reply, KEY};

const ACC: &str = "666b166ce06be73";

async fn start() -> RunningSandbox {
    support::sandbox(support::sandbox_config()).await
}

/// GET with the sandbox's key.
async fn get(sb: &RunningSandbox, path: &str) -> Reply {
    let url = format!("{}{path}", sb.base_url(false));
    support::get(&url, &[("mono-sec-key", KEY)]).await
}

/// POST a JSON body with the sandbox's key.
async fn post(sb: &RunningSandbox, path: &str, body: &str) -> Reply {
    let url = format!("{}{path}", sb.base_url(false));
    support::send(
        Method::POST,
        &url,
        &[("mono-sec-key", KEY), ("content-type", "application/json")],
        Bytes::from(body.to_owned()),
    )
    .await
}

/// POST to a control route (no key).
async fn control(sb: &RunningSandbox, path: &str, body: &str) -> Reply {
    let url = format!("{}{path}", sb.base_url(false));
    support::send(Method::POST, &url, &[], Bytes::from(body.to_owned())).await
}

/// Asserts Mono's success envelope and returns its `data`.
fn ok_data(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["status"], "successful", "{body}");
    assert_eq!(body["message"], "Request was succesfully completed");
    assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    body["data"].clone()
}

#[tokio::test]
async fn node_details_is_the_v1_camel_case_document_without_an_envelope() {
    let sb = start().await;
    let v2 = ok_data(&get(&sb, &format!("/v2/accounts/{ACC}")).await);

    let reply = get(&sb, &format!("/accounts/{ACC}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert!(body.get("status").is_none(), "v1 has no envelope: {body}");
    let account = &body["account"];
    assert_eq!(account["_id"], ACC);
    assert_eq!(account["name"], v2["account"]["name"]);
    assert_eq!(account["accountNumber"], v2["account"]["account_number"]);
    assert_eq!(account["balance"], v2["account"]["balance"]);
    assert_eq!(account["currency"], "NGN");
    assert_eq!(account["institution"]["bankCode"], "000000");
    assert_eq!(body["meta"]["data_status"], "AVAILABLE");

    let again = get(&sb, &format!("/accounts/{ACC}")).await;
    assert_eq!(again.body, reply.body, "same data gives identical bytes");
    assert_eq!(sb.sandbox.count("node_details"), 2);
    assert_eq!(
        sb.sandbox.count("details"),
        1,
        "v2 details keeps its own counter"
    );
}

#[tokio::test]
async fn node_transactions_pages_with_v1_paging_and_links() {
    let sb = start().await;
    let page1 = get(&sb, "/accounts/acc1/transactions").await;
    assert_eq!(page1.status, StatusCode::OK);
    let page1 = page1.json();
    assert_eq!(page1["paging"]["total"], 25);
    assert_eq!(page1["paging"]["page"], 1);
    assert_eq!(page1["paging"]["previous"], Value::Null);
    assert_eq!(
        page1["paging"]["next"],
        "https://api.withmono.com/accounts/acc1/transactions?page=2"
    );
    let data = page1["data"].as_array().unwrap();
    assert_eq!(data.len(), 20);
    for field in ["_id", "amount", "date", "narration", "type", "balance"] {
        assert!(!data[0][field].is_null(), "v1 transaction has {field}");
    }
    // Same transactions as v2, in the same order.
    let v2 = get(&sb, "/v2/accounts/acc1/transactions").await.json();
    assert_eq!(data[0]["_id"], v2["data"][0]["id"]);
    assert_eq!(data[19]["amount"], v2["data"][19]["amount"]);

    let page2 = get(
        &sb,
        "/accounts/acc1/transactions?paginate=true&limit=10&page=2",
    )
    .await
    .json();
    assert_eq!(page2["data"].as_array().unwrap().len(), 10);
    assert_eq!(page2["paging"]["page"], 2);
    assert_eq!(
        page2["paging"]["previous"],
        "https://api.withmono.com/accounts/acc1/transactions?page=1&limit=10"
    );
    assert_eq!(
        page2["paging"]["next"],
        "https://api.withmono.com/accounts/acc1/transactions?page=3&limit=10"
    );

    let all = get(&sb, "/accounts/acc1/transactions?paginate=false")
        .await
        .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 25);
    assert_eq!(all["paging"]["next"], Value::Null);
    assert_eq!(sb.sandbox.count("node_transactions"), 3);
    assert_eq!(sb.sandbox.count("transactions"), 1);
}

#[tokio::test]
async fn identity_is_deterministic_personal_data_in_both_spellings() {
    let sb = start().await;
    let details = ok_data(&get(&sb, &format!("/v2/accounts/{ACC}")).await);
    let first = get(&sb, &format!("/v2/accounts/{ACC}/identity")).await;
    let v2 = ok_data(&first);
    assert_eq!(v2["full_name"], details["account"]["name"]);
    assert_eq!(v2["bvn"], details["account"]["bvn"]);
    let phone = v2["phone"].as_str().unwrap();
    assert!(phone.len() == 11 && phone.starts_with("080"), "{phone}");
    assert!(v2["email"].as_str().unwrap().ends_with("@example.com"));
    assert!(["Male", "Female"].contains(&v2["gender"].as_str().unwrap()));
    assert_eq!(v2["dob"].as_str().unwrap().len(), "1990-01-31".len());
    assert!(v2["address_line1"].is_string() && v2["address_line2"].is_string());
    let second = get(&sb, &format!("/v2/accounts/{ACC}/identity")).await;
    assert_eq!(first.body, second.body, "identity bytes are stable");

    let v1 = get(&sb, &format!("/accounts/{ACC}/identity")).await;
    assert_eq!(v1.status, StatusCode::OK);
    let v1 = v1.json();
    assert!(v1.get("status").is_none(), "v1 has no envelope: {v1}");
    assert_eq!(v1["fullName"], v2["full_name"]);
    assert_eq!(v1["email"], v2["email"]);
    assert_eq!(v1["maritalStatus"], v2["marital_status"]);
    assert_eq!(v1["addressLine1"], v2["address_line1"]);

    let other = ok_data(&get(&sb, "/v2/accounts/someone-else/identity").await);
    assert_ne!(other["bvn"], v2["bvn"], "data is per account");

    assert_eq!(sb.sandbox.count("identity"), 3);
    assert_eq!(sb.sandbox.count("node_identity"), 1);
    // These reads answered as `other` before they had names; that count still includes them.
    assert_eq!(sb.sandbox.count("other"), 4);
}

#[tokio::test]
async fn income_statement_earnings_and_assets_answer_envelopes() {
    let sb = start().await;

    let income = ok_data(&get(&sb, &format!("/v2/accounts/{ACC}/income")).await);
    let summary = &income["income_summary"];
    assert_eq!(income["account"], ACC);
    assert_eq!(summary["currency"], "NGN");
    let total = summary["total_income"].as_i64().unwrap();
    let regular = summary["aggregated_monthly_average_regular"]
        .as_i64()
        .unwrap();
    let irregular = summary["aggregated_monthly_average_irregular"]
        .as_i64()
        .unwrap();
    assert!(total > 0 && regular + irregular <= total);
    if summary["income_type"] == "salary" {
        assert_eq!(summary["employer"], "ACME LTD");
    }

    let statement = get(
        &sb,
        &format!("/v2/accounts/{ACC}/statement?period=last6months"),
    )
    .await;
    let rows = ok_data(&statement);
    assert_eq!(rows.as_array().unwrap().len(), 25);
    assert_eq!(statement.json()["meta"]["count"], 25);
    let pdf = ok_data(
        &get(
            &sb,
            &format!("/v2/accounts/{ACC}/statement?period=last1month&output=pdf"),
        )
        .await,
    );
    assert_eq!(pdf["status"], "BUILDING");
    assert!(pdf["id"].as_str().unwrap().starts_with("stmt_"));
    let bad = get(
        &sb,
        &format!("/v2/accounts/{ACC}/statement?period=last13months"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_envelope(&bad.json());

    let assets = ok_data(&get(&sb, &format!("/v2/accounts/{ACC}/assets")).await);
    let list = assets["assets"].as_array().unwrap();
    assert!((2..=4).contains(&list.len()));
    let value: i64 = list
        .iter()
        .map(|a| a["details"]["current_balance"].as_i64().unwrap())
        .sum();
    assert_eq!(assets["balances"]["total_value"], value);

    let earnings = ok_data(&get(&sb, &format!("/v2/accounts/{ACC}/earnings")).await);
    let earnings = earnings.as_array().unwrap();
    assert_eq!(earnings.len(), list.len(), "one payout per holding");
    let symbols: Vec<&Value> = list.iter().map(|a| &a["details"]["symbol"]).collect();
    assert!(earnings
        .iter()
        .all(|e| symbols.contains(&&e["asset"]["symbol"])));

    assert_eq!(sb.sandbox.count("income"), 1);
    assert_eq!(sb.sandbox.count("statements"), 3);
    assert_eq!(sb.sandbox.count("assets"), 1);
    assert_eq!(sb.sandbox.count("earnings"), 1);
}

#[tokio::test]
async fn missing_accounts_are_404_on_every_new_route() {
    let sb = start().await;
    let routes = [
        ("/accounts/missing-1", "node_details"),
        ("/accounts/missing-1/transactions", "node_transactions"),
        ("/accounts/missing-1/identity", "node_identity"),
        ("/v2/accounts/missing-1/identity", "identity"),
        ("/v2/accounts/missing-1/income", "income"),
        ("/v2/accounts/missing-1/statement", "statements"),
        ("/v2/accounts/missing-1/earnings", "earnings"),
        ("/v2/accounts/missing-1/assets", "assets"),
    ];
    for (path, counter) in routes {
        let reply = get(&sb, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        let body = reply.json();
        assert_envelope(&body);
        assert_eq!(body["message"], "Account not found");
        assert_eq!(sb.sandbox.count(counter), 1, "{counter}");
    }

    let url = format!("{}/v2/accounts/acc1/identity", sb.base_url(false));
    let wrong_key = support::get(&url, &[("mono-sec-key", "live_sk_wrong")]).await;
    assert_eq!(wrong_key.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        sb.sandbox.count("identity"),
        1,
        "refused calls are not route-counted"
    );
    assert_eq!(sb.sandbox.count("unauthorized"), 1);
}

#[tokio::test]
async fn bvn_initiate_answers_a_session_or_monos_400() {
    let sb = start().await;
    let path = "/v2/lookup/bvn/initiate";
    let ok = post(&sb, path, r#"{"bvn":"12345678901","scope":"identity"}"#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let body = ok.json();
    assert_eq!(body["status"], "successful");
    let session = body["data"]["session_id"].as_str().unwrap();
    assert_eq!(session.len(), 36, "a UUID: {session}");
    let methods = body["data"]["methods"].as_array().unwrap();
    assert!(methods.iter().any(|m| m["method"] == "phone"));
    assert!(methods.iter().all(|m| m["hint"].is_string()));

    for bad in [
        r#"{"bvn":"1234567890","scope":"identity"}"#,
        r#"{"bvn":"123456789012"}"#,
        r#"{"bvn":"12345abcde1"}"#,
        r#"{"scope":"identity"}"#,
        "not json",
    ] {
        let reply = post(&sb, path, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_envelope(&reply.json());
    }
    assert_eq!(
        sb.sandbox.count("bvn_initiate"),
        6,
        "failed lookups reach Mono too"
    );

    assert_eq!(get(&sb, path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(sb.sandbox.count("not_found"), 1, "only POST is the lookup");
    assert_eq!(sb.sandbox.count("other"), 0);
}

#[tokio::test]
async fn header_fault_keeps_the_answer_and_adds_headers() {
    let sb = start().await;
    let identity = format!("/v2/accounts/{ACC}/identity");
    let plain = get(&sb, &identity).await;
    assert_eq!(plain.header("cache-control"), None);

    sb.sandbox.set_fault_spec(Some(
        Fault::headers(&[("Cache-Control", "private")]).route("identity"),
    ));
    let faulted = get(&sb, &identity).await;
    assert_eq!(faulted.status, StatusCode::OK);
    assert_eq!(faulted.header("cache-control"), Some("private"));
    assert_eq!(faulted.body, plain.body, "the body is the normal one");
    assert_eq!(faulted.header("content-type"), Some("application/json"));
    // Other routes are untouched, and the fault stays until cleared.
    let income = get(&sb, &format!("/v2/accounts/{ACC}/income")).await;
    assert_eq!(income.header("cache-control"), None);
    let again = get(&sb, &identity).await;
    assert_eq!(again.header("cache-control"), Some("private"));
    assert_eq!(sb.sandbox.count("faulted"), 2);
    assert_eq!(
        sb.sandbox.count("identity"),
        3,
        "header faults still answer"
    );

    // Over the control API, limited to one call.
    let set = control(
        &sb,
        "/__sandbox/fault",
        r#"{"kind":"headers","headers":[["cache-control","no-store"]],"route":"node_details","times":1}"#,
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    let node = format!("/accounts/{ACC}");
    let once = get(&sb, &node).await;
    assert_eq!(once.status, StatusCode::OK);
    assert_eq!(once.header("cache-control"), Some("no-store"));
    assert_eq!(once.json()["account"]["_id"], ACC);
    assert_eq!(get(&sb, &node).await.header("cache-control"), None);
    assert_eq!(sb.sandbox.fault(), None, "a used-up fault disarms");

    let refused = control(
        &sb,
        "/__sandbox/fault",
        r#"{"kind":"headers","headers":[]}"#,
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn faults_by_the_old_other_name_still_reach_the_named_reads() {
    let sb = start().await;
    sb.sandbox
        .set_fault_spec(Some(Fault::Status(503).route("other").times(1)));
    let reply = get(&sb, "/v2/accounts/acc1/assets").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sb.sandbox.count("assets"),
        0,
        "a faulted call is not route-counted"
    );
    assert_eq!(
        get(&sb, "/v2/accounts/acc1/assets").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_canned_429_hits_node_transactions_only() {
    let sb = start().await;
    let body = r#"{"message":"Too many requests"}"#;
    sb.sandbox.set_fault_spec(Some(
        Fault::Reply(
            CannedReply::new(429, body)
                .header("retry-after", "7")
                .header("content-type", "application/json"),
        )
        .route("node_transactions")
        .times(1),
    ));
    // Neither the v2 route nor v1 details match the fault's name.
    assert_eq!(
        get(&sb, "/v2/accounts/acc1/transactions").await.status,
        StatusCode::OK
    );
    assert_eq!(get(&sb, "/accounts/acc1").await.status, StatusCode::OK);

    let limited = get(&sb, "/accounts/acc1/transactions").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("7"));
    assert_eq!(limited.text(), body);
    assert_eq!(sb.sandbox.count("faulted"), 1);
    assert_eq!(sb.sandbox.count("node_transactions"), 0);

    let next = get(&sb, "/accounts/acc1/transactions").await;
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(sb.sandbox.count("node_transactions"), 1);

    // The same through the control API, with Mono's failed envelope.
    let set = control(
        &sb,
        "/__sandbox/fault",
        r#"{"kind":"status","status":429,"route":"node_transactions","times":1}"#,
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    let limited = get(&sb, "/accounts/acc1/transactions?page=2").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_envelope(&limited.json());
}
