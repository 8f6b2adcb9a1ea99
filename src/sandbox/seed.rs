//! Deterministic seed data for sandbox accounts, derived from the account id alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Number of transactions every seeded account starts with.
pub const SEED_TRANSACTIONS: usize = 25;

/// 2024-07-01T00:00:00Z: seed dates count back from here so a restart gives identical bytes.
const SEED_EPOCH_SECS: u64 = 1_719_792_000;

const FIRST_NAMES: &[&str] = &[
    "Samuel", "Adaeze", "Tunde", "Chioma", "Ibrahim", "Ngozi", "Emeka", "Funke", "Musa", "Zainab",
    "Olumide", "Amaka",
];
const LAST_NAMES: &[&str] = &[
    "Olamide", "Okafor", "Adebayo", "Eze", "Bello", "Nwosu", "Balogun", "Okonkwo", "Abubakar",
    "Adeyemi", "Obi", "Lawal",
];
const DEBITS: &[(&str, &str)] = &[
    ("POS PURCHASE SHOPRITE LEKKI", "shopping"),
    ("TRANSFER TO IKEDC PREPAID", "bills"),
    ("AIRTIME MTN 08030000000", "airtime"),
    ("UBER TRIP LAGOS", "transport"),
    ("NETFLIX.COM SUBSCRIPTION", "entertainment"),
    ("ATM WITHDRAWAL IKEJA", "cash"),
];
const CREDITS: &[(&str, &str)] = &[
    ("SALARY PAYMENT ACME LTD", "income"),
    ("TRANSFER FROM ADEBAYO T", "transfer"),
    ("REFUND JUMIA ORDER", "refund"),
];

/// One transaction in Mono's `/transactions` shape.
#[derive(Debug, Clone, Serialize)]
pub struct Transaction {
    pub id: String,
    pub narration: String,
    pub amount: i64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub balance: i64,
    pub date: String,
    pub category: &'static str,
}

/// A simulated linked account; `timestamp` changes only when its data changes.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub account_number: String,
    pub bvn: String,
    pub balance: i64,
    /// Newest first, as Mono lists them.
    pub transactions: Vec<Transaction>,
    /// RFC 3339 timestamp of the current data version, reused by every response.
    pub timestamp: String,
    /// Applied by the next successful sync.
    pub staged_balance: Option<i64>,
    rng: SplitMix,
}

impl Account {
    /// Builds the account's seed data from its id.
    pub fn seed(id: &str) -> Account {
        let mut rng = SplitMix(fnv1a(id));
        let name = format!(
            "{} {}",
            FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize],
            LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]
        );
        let account_number = format!("0{:09}", rng.below(1_000_000_000));
        let bvn = format!("22{:09}", rng.below(1_000_000_000));
        let mut balance = 10_000 + rng.below(500_000) as i64;
        let mut oldest_first = Vec::with_capacity(SEED_TRANSACTIONS);
        for i in 0..SEED_TRANSACTIONS {
            let days_back = (SEED_TRANSACTIONS - i) as u64;
            let secs = SEED_EPOCH_SECS - days_back * 86_400 + rng.below(86_400);
            let amount = 500 + rng.below(50_000) as i64;
            // Debits never overdraw, so the running balance stays plausible.
            let credit = rng.below(3) == 0 || amount > balance;
            let (narration, category) = if credit {
                CREDITS[rng.below(CREDITS.len() as u64) as usize]
            } else {
                DEBITS[rng.below(DEBITS.len() as u64) as usize]
            };
            balance += if credit { amount } else { -amount };
            oldest_first.push(Transaction {
                id: rng.hex(24),
                narration: narration.to_owned(),
                amount,
                kind: if credit { "credit" } else { "debit" },
                balance,
                date: rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs)),
                category,
            });
        }
        oldest_first.reverse();
        let timestamp = rfc3339_millis(
            UNIX_EPOCH
                + Duration::from_secs(SEED_EPOCH_SECS + rng.below(86_400))
                + Duration::from_millis(rng.below(1000)),
        );
        Account {
            id: id.to_owned(),
            name,
            account_number,
            bvn,
            balance,
            transactions: oldest_first,
            timestamp,
            staged_balance: None,
            rng,
        }
    }

    /// Moves the balance to `new_balance`, recording the difference as a transaction.
    ///
    /// Returns whether anything changed; a change starts a new data version.
    pub fn apply_balance(&mut self, new_balance: i64) -> bool {
        if new_balance == self.balance {
            return false;
        }
        let delta = new_balance - self.balance;
        let now = SystemTime::now();
        let (narration, kind, category) = if delta > 0 {
            ("SANDBOX SYNC CREDIT", "credit", "transfer")
        } else {
            ("SANDBOX SYNC DEBIT", "debit", "bills")
        };
        self.transactions.insert(
            0,
            Transaction {
                id: self.rng.hex(24),
                narration: narration.to_owned(),
                amount: delta.abs(),
                kind,
                balance: new_balance,
                date: rfc3339_millis(now),
                category,
            },
        );
        self.balance = new_balance;
        self.timestamp = rfc3339_millis(now);
        true
    }
}

/// Formats a time as Mono does: RFC 3339 with milliseconds and `Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The current time in Mono's timestamp format.
pub fn now_rfc3339() -> String {
    rfc3339_millis(SystemTime::now())
}

/// FNV-1a: a stable hash, so seeds do not change between Rust releases.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64: tiny, deterministic, good enough for fake bank data.
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

/// Sixteen random hex characters for job ids (not derived from the seed: jobs are unique).
pub fn random_hex16() -> String {
    let (hi, _) = uuid::Uuid::new_v4().as_u64_pair();
    format!("{hi:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_gives_same_seed() {
        let a = Account::seed("666b166ce06be73");
        let b = Account::seed("666b166ce06be73");
        assert_eq!(a.name, b.name);
        assert_eq!(a.balance, b.balance);
        assert_eq!(a.timestamp, b.timestamp);
        assert_eq!(a.transactions.len(), SEED_TRANSACTIONS);
        assert_eq!(a.transactions[0].balance, a.balance);
        assert_eq!(a.account_number.len(), 10);
    }

    #[test]
    fn balance_change_adds_a_transaction_and_a_new_version() {
        let mut a = Account::seed("abc");
        let before = a.balance;
        assert!(!a.apply_balance(before));
        assert!(a.apply_balance(before + 100));
        assert_eq!(a.transactions.len(), SEED_TRANSACTIONS + 1);
        assert_eq!(a.transactions[0].amount, 100);
        assert_eq!(a.transactions[0].kind, "credit");
    }
}
