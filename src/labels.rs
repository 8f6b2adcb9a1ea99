//! Metric label values from the config (route and client names) as `&'static str`, so a label
//! costs no allocation per request.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// A configured name as `&'static str`. Names come from the config, so the set is bounded; a
/// reload naming the same things again reuses them.
pub fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_interned_once() {
        let a = intern("billing");
        let b = intern(&String::from("billing"));
        assert!(std::ptr::eq(a, b));
    }
}
