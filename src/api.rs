//! The vocabulary of Mono's API that every layer shares: the two account endpoints with realtime
//! data, what an id may be, and the methods ever forwarded. It imports nothing of the proxy.

use http::Method;

/// The two account endpoints the proxy caches and collapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `/v2/accounts/{id}/balance`
    Balance,
    /// `/v2/accounts/{id}/transactions`
    Transactions,
}

impl Kind {
    /// The path segment and label of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Balance => "balance",
            Kind::Transactions => "transactions",
        }
    }
}

/// Longest account or job id accepted.
pub const MAX_ID_LEN: usize = 128;

/// The methods Mono's API uses: the only ones ever forwarded (a TRACE answered by a middlebox
/// as HTTP defines it would echo the injected key back to the app).
pub const FORWARDED_METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Ids, account and job alike: 1 to [`MAX_ID_LEN`] of `[A-Za-z0-9._-]`, never `.` or `..`.
/// Job ids that Mono sends are held to the same rule before they are stored or polled.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
