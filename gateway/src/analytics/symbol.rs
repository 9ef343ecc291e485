//! Event types and dataset names as two-byte symbols. Every event held for
//! analytics names both, and there are millions of events but only as
//! many distinct names as the agreements share (tens), so each name is
//! kept once, for the life of the process, in one table shared by every
//! population loaded.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// An interned event type or dataset name: compares and hashes as its
/// number, reads as its text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Symbol(u16);

/// More distinct names than a symbol can number.
#[derive(Debug, thiserror::Error)]
#[error(
    "more than {} distinct event types and dataset names: analytics numbers them in two bytes",
    u16::MAX
)]
pub struct TooManySymbols;

/// Names by number, read without a lock (answers read them for every
/// event they look at): chunks of [`CHUNK`] slots, each set once.
const CHUNK: usize = 256;
static NAMES: [OnceLock<Box<[OnceLock<&'static str>]>>; 256] = [const { OnceLock::new() }; 256];

/// Numbers by name, for numbering (loading) only.
fn numbers() -> &'static RwLock<HashMap<&'static str, u16>> {
    static NUMBERS: OnceLock<RwLock<HashMap<&'static str, u16>>> = OnceLock::new();
    NUMBERS.get_or_init(Default::default)
}

impl Symbol {
    /// The symbol for `name`, numbering it if it is new.
    pub fn new(name: &str) -> Result<Self, TooManySymbols> {
        if let Some(&n) = numbers().read().expect("symbol numbers").get(name) {
            return Ok(Self(n));
        }
        let mut numbers = numbers().write().expect("symbol numbers");
        if let Some(&n) = numbers.get(name) {
            return Ok(Self(n));
        }
        let n = u16::try_from(numbers.len()).map_err(|_| TooManySymbols)?;
        // Kept for the life of the process: the names are few and reused
        // by every reload.
        let name: &'static str = Box::leak(name.into());
        let chunk = NAMES[usize::from(n) / CHUNK]
            .get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        chunk[usize::from(n) % CHUNK]
            .set(name)
            .expect("each number is given once");
        numbers.insert(name, n);
        Ok(Self(n))
    }

    pub fn as_str(self) -> &'static str {
        let n = usize::from(self.0);
        NAMES[n / CHUNK]
            .get()
            .and_then(|chunk| chunk[n % CHUNK].get())
            .expect("a symbol's name is set before the symbol is handed out")
    }
}

impl std::ops::Deref for Symbol {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Symbol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// For tests, whose few names cannot overflow.
#[cfg(test)]
impl From<&str> for Symbol {
    fn from(name: &str) -> Self {
        Self::new(name).expect("a few names")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_symbol_and_reads_back() {
        let a = Symbol::new("cp_plan_start").unwrap();
        let b = Symbol::new("referral").unwrap();
        assert_eq!(a, Symbol::new("cp_plan_start").unwrap());
        assert_ne!(a, b);
        assert_eq!(&*a, "cp_plan_start");
        assert_eq!(b.as_str(), "referral");
        assert_eq!(std::mem::size_of::<Symbol>(), 2);
    }
}
