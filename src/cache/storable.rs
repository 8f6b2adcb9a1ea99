//! What may be stored: JSON in Mono's envelope for v2 routes, a bare JSON object that is not a
//! failure for the unversioned API; and the hash of the data behind `x-has-new-data`.

use std::hash::{Hash, Hasher};

use http::header::HeaderValue;

/// Why a 200 was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Its `Content-Type` is not JSON.
    NotJson,
    /// It is not Mono's envelope: not JSON, no `data`, or `"status": "failed"`.
    NotEnvelope,
}

impl NotStored {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            NotStored::NotJson => "not_json",
            NotStored::NotEnvelope => "not_envelope",
        }
    }
}

/// Whether a 200 may be stored: a JSON body in Mono's envelope (for v2 routes; the unversioned
/// API answers bare JSON objects, never `"status": "failed"`). Returns the hash of its `data`
/// (of the whole body when there is no envelope).
pub fn storable(
    content_type: Option<&HeaderValue>,
    body: &[u8],
    enveloped: bool,
) -> Result<u64, NotStored> {
    if let Some(ct) = content_type {
        if !is_json(ct.as_bytes()) {
            return Err(NotStored::NotJson);
        }
    }
    match data_hash(body) {
        Some(h) => Ok(h),
        None if !enveloped && is_answer_object(body) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            Ok(h.finish())
        }
        None => Err(NotStored::NotEnvelope),
    }
}

/// A JSON object that is not a failure envelope.
fn is_answer_object(body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => !o
            .get("status")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("failed")),
        _ => false,
    }
}

/// `application/json` or any `+json` type, parameters aside.
fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Hash of the `data` of Mono's envelope (the timestamp changes on every call; the data does
/// not); `None` when the body is not one.
pub fn data_hash(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        status: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let envelope = serde_json::from_slice::<Envelope<'_>>(body).ok()?;
    if envelope
        .status
        .is_some_and(|s| s.eq_ignore_ascii_case("failed"))
    {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    envelope.data?.get().hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_hash_ignores_the_timestamp() {
        let a = br#"{"status":"successful","timestamp":"1","data":{"balance":1}}"#;
        let b = br#"{"status":"successful","timestamp":"2","data":{"balance":1}}"#;
        let c = br#"{"status":"successful","timestamp":"2","data":{"balance":2}}"#;
        assert_eq!(data_hash(a), data_hash(b));
        assert_ne!(data_hash(a), data_hash(c));
    }

    #[test]
    fn only_json_in_monos_envelope_is_storable() {
        let json = HeaderValue::from_static("application/json; charset=utf-8");
        let ok = br#"{"status":"successful","data":{"balance":1}}"#;
        assert!(storable(Some(&json), ok, true).is_ok());
        assert!(storable(None, ok, true).is_ok());
        let problem = HeaderValue::from_static("application/problem+json");
        assert!(storable(Some(&problem), ok, true).is_ok());
        let html = HeaderValue::from_static("text/html");
        assert_eq!(storable(Some(&html), ok, true), Err(NotStored::NotJson));
        let page = b"<html><body>Down for maintenance</body></html>";
        assert_eq!(
            storable(Some(&json), page, true),
            Err(NotStored::NotEnvelope)
        );
        assert_eq!(storable(None, b"[1,2]", true), Err(NotStored::NotEnvelope));
        assert_eq!(
            storable(
                None,
                br#"{"status":"successful","message":"no data"}"#,
                true
            ),
            Err(NotStored::NotEnvelope)
        );
        assert_eq!(
            storable(None, br#"{"status":"FAILED","data":null}"#, true),
            Err(NotStored::NotEnvelope)
        );
        // The unversioned API answers bare objects: stored, unless they are a failure.
        let bare = br#"{"meta":{"data_status":"AVAILABLE"},"account":{"_id":"a"}}"#;
        assert!(storable(Some(&json), bare, false).is_ok());
        assert_eq!(
            storable(Some(&json), bare, true),
            Err(NotStored::NotEnvelope)
        );
        assert_eq!(
            storable(None, br#"{"status":"failed","message":"x"}"#, false),
            Err(NotStored::NotEnvelope)
        );
        assert_eq!(
            storable(Some(&json), page, false),
            Err(NotStored::NotEnvelope)
        );
    }
}
