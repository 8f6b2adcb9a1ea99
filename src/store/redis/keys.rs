//! The Redis key layout and the encoding of every value and message stored there.
//!
//! Everything one script touches shares the hash tag `{<tenant>:<account>}`, so on a Redis
//! Cluster each script runs on one node; what starts from a job id or an event alone goes
//! through a key of its own.
//!
//! | key | value |
//! |---|---|
//! | `<prefix>:v2:{<tenant>:<account>}:lease:<kind>` | `<replica>:<claimed unix ms>`, `SET NX PX` |
//! | `<prefix>:v2:{<tenant>:<account>}:rec:<kind>` | the job record as JSON, `"v":2` |
//! | `<prefix>:v2:{<tenant>:<account>}:rl:<kind>` | realtime 429 deadline (unix ms), `PX` until then |
//! | `<prefix>:v2:{<tenant>:<account>}:cd:<route>` | a route's 429 cooldown deadline (unix ms) |
//! | `<prefix>:v2:{<tenant>:<account>}:body:<path>` | a cached body: a JSON header line, then the bytes |
//! | `<prefix>:v2:{<tenant>:<account>}:fill:<path>` | the fleet's fill lease of that body |
//! | `<prefix>:v2:{<tenant>:<account>}:bodies` | set of the paths of the bodies a sync drops |
//! | `<prefix>:v2:{<tenant>:<account>}:gen` | invalidation counter: a fill stores only if unchanged |
//! | `<prefix>:v2:job:{<job_id>}` | `{"v":2,"tenant","account","kind"}`: where the record lives |
//! | `<prefix>:v2:evt:{<event digest>}:<step>` | `busy:<replica>` or `done`: webhook delivery memory |
//! | `<prefix>:v2:limit:{<client>}:rate` | the client's GCRA arrival time (unix µs), `PX` until then |
//! | `<prefix>:v2:limit:{<client>}:quota:<period>` | billable calls spent in `d20261202` / `m202612` |
//!
//! Channels: `<prefix>:v2:events` carries [`Broadcast`]s, `<prefix>:v2:stored` says a record or a
//! body was stored so replicas waiting on it wake at once. Every key, value and message carries
//! the layout version so a later format can live beside this one.

use serde::{Deserialize, Serialize};

use crate::api::Kind;
use crate::store::{Broadcast, JobRecord, RecordKey};

/// Version of the key layout and of every stored value and message.
pub(super) const VERSION: u32 = 2;

/// Key and channel names under `<prefix>:v2`.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    base: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            base: format!("{prefix}:v{VERSION}"),
        }
    }

    /// `<base>:{<tenant>:<account>}:`: the part every key of one account starts with.
    pub(super) fn account(&self, tenant: &str, account: &str) -> String {
        format!("{}:{{{tenant}:{account}}}:", self.base)
    }

    fn scoped(&self, what: &str, key: &RecordKey) -> String {
        let mut k = self.account(&key.tenant, &key.account);
        k.push_str(what);
        k.push(':');
        k.push_str(key.kind.as_str());
        k
    }

    pub(super) fn lease(&self, key: &RecordKey) -> String {
        self.scoped("lease", key)
    }

    pub(super) fn record(&self, key: &RecordKey) -> String {
        self.scoped("rec", key)
    }

    pub(super) fn rate_limit(&self, key: &RecordKey) -> String {
        self.scoped("rl", key)
    }

    /// A Mono 429 cooldown of one route of an account.
    pub(super) fn cooldown(&self, tenant: &str, account: &str, route: &str) -> String {
        let mut k = self.account(tenant, account);
        k.push_str("cd:");
        k.push_str(route);
        k
    }

    /// A client's limit state (`rate`, `quota:<period>`): the client's own hash tag.
    pub(super) fn limit(&self, client: &str, what: &str) -> String {
        format!("{}:limit:{{{client}}}:{what}", self.base)
    }

    pub(super) fn job(&self, job_id: &str) -> String {
        format!("{}:job:{{{job_id}}}", self.base)
    }

    /// A delivery step of a webhook event (`apply`, `relay:<target digest>`).
    pub(super) fn event_step(&self, event: &str, step: &str) -> String {
        format!("{}:evt:{{{event}}}:{step}", self.base)
    }

    pub(super) fn events(&self) -> String {
        format!("{}:events", self.base)
    }

    pub(super) fn stored(&self) -> String {
        format!("{}:stored", self.base)
    }
}

/// A record as stored in Redis.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredRecord {
    pub(super) v: u32,
    pub(super) tenant: String,
    #[serde(flatten)]
    pub(super) record: JobRecord,
}

/// Where the record of a job lives.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct JobRef {
    pub(super) v: u32,
    pub(super) tenant: String,
    pub(super) account: String,
    pub(super) kind: Kind,
}

impl JobRef {
    /// The index entry of a record stored under `key`.
    pub(super) fn encode(key: &RecordKey) -> String {
        serde_json::to_string(&JobRef {
            v: VERSION,
            tenant: key.tenant.to_string(),
            account: key.account.clone(),
            kind: key.kind,
        })
        .unwrap_or_default()
    }

    /// The record key an index entry points at; other versions and garbage read as absent.
    pub(super) fn decode(text: &str) -> Option<RecordKey> {
        let jref = serde_json::from_str::<JobRef>(text)
            .ok()
            .filter(|j| j.v == VERSION)?;
        Some(RecordKey {
            tenant: jref.tenant.into(),
            account: jref.account,
            kind: jref.kind,
        })
    }
}

/// A broadcast on the events channel, with the replica that sent it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Event {
    pub(super) v: u32,
    pub(super) from: String,
    pub(super) msg: Broadcast,
}

/// "A record was stored under `key`" on the stored channel.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredNote {
    pub(super) v: u32,
    pub(super) from: String,
    pub(super) key: String,
}

pub(super) fn encode_record(tenant: &str, record: &JobRecord) -> String {
    let stored = StoredRecord {
        v: VERSION,
        tenant: tenant.to_string(),
        record: record.clone(),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

/// A stored record of this version; anything else reads as absent.
pub(super) fn decode_record(text: &str) -> Option<StoredRecord> {
    match serde_json::from_str::<StoredRecord>(text) {
        Ok(r) if r.v == VERSION => Some(r),
        Ok(r) => {
            tracing::debug!(v = r.v, "ignoring a record of another version");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable record in redis");
            None
        }
    }
}

/// The claim time of a lease value `<replica>:<unix ms>`.
pub(super) fn lease_claimed_at(value: &str) -> Option<u64> {
    value.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobStatus;

    fn key() -> RecordKey {
        RecordKey::new(&"0123abcd".into(), "acc1", Kind::Balance)
    }

    #[test]
    fn keys_are_versioned_and_scoped_by_prefix_and_tenant() {
        let k = Keys::new("mono-proxy");
        assert_eq!(
            k.lease(&key()),
            "mono-proxy:v2:{0123abcd:acc1}:lease:balance"
        );
        assert_eq!(
            k.record(&key()),
            "mono-proxy:v2:{0123abcd:acc1}:rec:balance"
        );
        assert_eq!(
            k.rate_limit(&key()),
            "mono-proxy:v2:{0123abcd:acc1}:rl:balance"
        );
        assert_eq!(k.job("j1"), "mono-proxy:v2:job:{j1}");
        assert_eq!(
            k.event_step("ab12", "apply"),
            "mono-proxy:v2:evt:{ab12}:apply"
        );
        assert_eq!(k.events(), "mono-proxy:v2:events");
        assert_eq!(k.stored(), "mono-proxy:v2:stored");
    }

    #[test]
    fn records_carry_their_version_and_other_versions_read_as_absent() {
        let record = JobRecord {
            job_id: "j1".into(),
            account: "acc1".into(),
            kind: Kind::Transactions,
            status: JobStatus::Processing,
            started_at: 5,
            updated_at: 6,
            has_new_data: Some(true),
            reauth_required: false,
        };
        let text = encode_record("t1", &record);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["v"], 2);
        assert_eq!(json["tenant"], "t1");
        assert_eq!(json["kind"], "transactions");
        let back = decode_record(&text).unwrap();
        assert_eq!(back.record, record);
        let other = text.replacen("\"v\":2", "\"v\":3", 1);
        assert!(decode_record(&other).is_none());
        assert!(decode_record("not json").is_none());
    }

    #[test]
    fn job_index_entries_round_trip() {
        let text = JobRef::encode(&key());
        assert_eq!(JobRef::decode(&text), Some(key()));
        assert_eq!(
            JobRef::decode(&text.replacen("\"v\":2", "\"v\":9", 1)),
            None
        );
    }

    #[test]
    fn lease_values_name_the_claim_time() {
        assert_eq!(
            lease_claimed_at("abc123:1700000000000"),
            Some(1_700_000_000_000)
        );
        assert_eq!(lease_claimed_at("garbage"), None);
    }
}
