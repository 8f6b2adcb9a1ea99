//! Deterministic seed data for sandbox accounts, derived from the account id alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Number of transactions every seeded account starts with.
pub const SEED_TRANSACTIONS: usize = 25;

/// 2024-07-01T00:00:00Z: seed dates count back from here so a restart gives identical bytes.
const SEED_EPOCH_SECS: u64 = 1_719_792_000;

/// Alternately male and female, so a profile's gender follows from the name's position.
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

const STREETS: &[&str] = &[
    "Admiralty Way",
    "Awolowo Road",
    "Herbert Macaulay Way",
    "Allen Avenue",
    "Adeola Odeku Street",
    "Aminu Kano Crescent",
    "Ogui Road",
    "Trans-Amadi Road",
];
const AREAS: &[&str] = &[
    "Lekki, Lagos",
    "Ikoyi, Lagos",
    "Yaba, Lagos",
    "Ikeja, Lagos",
    "Victoria Island, Lagos",
    "Wuse II, Abuja",
    "Independence Layout, Enugu",
    "Port Harcourt, Rivers",
];
/// Symbol, name and asset type of the investments a seeded portfolio picks from.
const INSTRUMENTS: &[(&str, &str, &str)] = &[
    ("DANGCEM", "Dangote Cement Plc", "stock"),
    ("MTNN", "MTN Nigeria Communications Plc", "stock"),
    ("ZENITHBANK", "Zenith Bank Plc", "stock"),
    ("GTCO", "Guaranty Trust Holding Company Plc", "stock"),
    ("SEPLAT", "Seplat Energy Plc", "stock"),
    ("SIBTC-MMF", "Stanbic IBTC Money Market Fund", "mutual_fund"),
    ("FGN2034", "FGN Bond March 2034", "bond"),
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

/// The account holder's personal data for the identity routes.
///
/// Derived from the account (name, BVN) and its id alone, with its own hash salt so adding it
/// left every existing account's seed bytes unchanged.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The account name, as the bank holds it.
    pub full_name: String,
    /// `first.last<n>@example.com`.
    pub email: String,
    /// Eleven digits, `080…`.
    pub phone: String,
    /// `Male` or `Female`.
    pub gender: &'static str,
    /// `YYYY-MM-DD`.
    pub dob: String,
    /// The account's BVN, so identity and details agree.
    pub bvn: String,
    /// `Single` or `Married`.
    pub marital_status: &'static str,
    /// House number and street.
    pub address_line1: String,
    /// Area and state.
    pub address_line2: String,
    /// When the bank recorded the identity (before the seed epoch).
    pub created_at: String,
    /// Last change, between `created_at` and the seed epoch.
    pub updated_at: String,
}

impl Profile {
    /// The profile of `account`'s holder.
    pub fn seed(account: &Account) -> Profile {
        let mut rng = SplitMix(fnv1a(&format!("profile:{}", account.id)));
        let (first, last) = account
            .name
            .split_once(' ')
            .unwrap_or((account.name.as_str(), ""));
        let gender = match FIRST_NAMES.iter().position(|n| *n == first) {
            Some(i) if i % 2 == 1 => "Female",
            _ => "Male",
        };
        let email = format!(
            "{}.{}{}@example.com",
            first.to_ascii_lowercase(),
            last.to_ascii_lowercase(),
            rng.below(100)
        );
        let phone = format!("080{:08}", rng.below(100_000_000));
        let dob = format!(
            "{:04}-{:02}-{:02}",
            1965 + rng.below(39),
            1 + rng.below(12),
            1 + rng.below(28)
        );
        let marital_status = if rng.below(2) == 0 {
            "Single"
        } else {
            "Married"
        };
        let address_line1 = format!(
            "{} {}",
            1 + rng.below(120),
            STREETS[rng.below(STREETS.len() as u64) as usize]
        );
        let address_line2 = AREAS[rng.below(AREAS.len() as u64) as usize].to_owned();
        let created_days_back = 30 + rng.below(900);
        let updated_days_back = rng.below(created_days_back);
        let at = |days_back: u64| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(SEED_EPOCH_SECS - days_back * 86_400))
        };
        Profile {
            full_name: account.name.clone(),
            email,
            phone,
            gender,
            dob,
            bvn: account.bvn.clone(),
            marital_status,
            address_line1,
            address_line2,
            created_at: at(created_days_back),
            updated_at: at(updated_days_back),
        }
    }
}

/// One investment a seeded portfolio holds.
#[derive(Debug, Clone)]
pub struct Holding {
    /// Ticker, e.g. `MTNN`.
    pub symbol: &'static str,
    /// Instrument name.
    pub name: &'static str,
    /// `stock`, `mutual_fund` or `bond`.
    pub kind: &'static str,
    /// Units held.
    pub quantity: i64,
    /// What the whole position cost.
    pub cost: i64,
    /// Current price of one unit.
    pub price: i64,
}

impl Holding {
    /// What the position is worth now.
    pub fn value(&self) -> i64 {
        self.quantity * self.price
    }
}

/// A payout from a holding (dividend, coupon, interest).
#[derive(Debug, Clone)]
pub struct Earning {
    /// 24 hex characters.
    pub id: String,
    /// Amount paid out.
    pub amount: i64,
    /// `DIVIDEND MTNN`, `COUPON FGN2034`, …
    pub narration: String,
    /// RFC 3339, within 180 days before the seed epoch.
    pub date: String,
    /// Index into [`Portfolio::holdings`].
    pub holding: usize,
}

/// An account's investments for the assets and earnings routes.
#[derive(Debug, Clone)]
pub struct Portfolio {
    /// Two to four distinct instruments.
    pub holdings: Vec<Holding>,
    /// Newest first.
    pub earnings: Vec<Earning>,
}

impl Portfolio {
    /// The portfolio behind account `id` (its own hash salt, like [`Profile`]).
    pub fn seed(id: &str) -> Portfolio {
        let mut rng = SplitMix(fnv1a(&format!("portfolio:{id}")));
        let mut picks: Vec<usize> = (0..INSTRUMENTS.len()).collect();
        let count = 2 + rng.below(3) as usize;
        // Partial Fisher-Yates: distinct instruments in a seeded order.
        for i in 0..count {
            let j = i + rng.below((picks.len() - i) as u64) as usize;
            picks.swap(i, j);
        }
        let holdings: Vec<Holding> = picks[..count]
            .iter()
            .map(|&i| {
                let (symbol, name, kind) = INSTRUMENTS[i];
                let quantity = 10 + rng.below(2_000) as i64;
                let price = 50 + rng.below(5_000) as i64;
                // Bought within 25 % either side of today's price.
                let paid = price * (75 + rng.below(51) as i64) / 100;
                Holding {
                    symbol,
                    name,
                    kind,
                    quantity,
                    cost: quantity * paid.max(1),
                    price,
                }
            })
            .collect();
        let mut earnings = Vec::with_capacity(holdings.len());
        for (i, h) in holdings.iter().enumerate() {
            let days_back = 1 + rng.below(180);
            let what = match h.kind {
                "bond" => "COUPON",
                "mutual_fund" => "INTEREST",
                _ => "DIVIDEND",
            };
            earnings.push(Earning {
                id: rng.hex(24),
                amount: h.quantity * (1 + rng.below(20) as i64),
                narration: format!("{what} {}", h.symbol),
                date: rfc3339_millis(
                    UNIX_EPOCH + Duration::from_secs(SEED_EPOCH_SECS - days_back * 86_400),
                ),
                holding: i,
            });
        }
        earnings.sort_by(|a, b| b.date.cmp(&a.date));
        Portfolio { holdings, earnings }
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

/// Sixteen hex characters that depend only on `s` (stable ids for seeded documents).
pub fn stable_hex(s: &str) -> String {
    format!("{:016x}", fnv1a(s))
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
    fn profiles_and_portfolios_are_stable_per_id() {
        let a = Account::seed("666b166ce06be73");
        let p = Profile::seed(&a);
        let q = Profile::seed(&Account::seed("666b166ce06be73"));
        assert_eq!(p.email, q.email);
        assert_eq!(p.dob, q.dob);
        assert_eq!(p.phone.len(), 11);
        assert_eq!(p.bvn, a.bvn);
        assert!(p.updated_at >= p.created_at);
        let first = a.name.split(' ').next().unwrap();
        let i = FIRST_NAMES.iter().position(|n| *n == first).unwrap();
        assert_eq!(p.gender == "Female", i % 2 == 1);

        let f = Portfolio::seed("666b166ce06be73");
        assert!((2..=4).contains(&f.holdings.len()));
        assert_eq!(f.earnings.len(), f.holdings.len());
        let mut symbols: Vec<_> = f.holdings.iter().map(|h| h.symbol).collect();
        symbols.sort_unstable();
        symbols.dedup();
        assert_eq!(symbols.len(), f.holdings.len());
        assert_eq!(
            f.holdings[0].cost,
            Portfolio::seed("666b166ce06be73").holdings[0].cost
        );
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
