//! A map of the values most recently kept, about `capacity` of them: two generations,
//! the older dropped whole when the younger fills up, so that no access pays for
//! bookkeeping.

use std::collections::HashMap;
use std::hash::Hash;

/// The values most recently kept (see the module's documentation).
#[derive(Debug)]
pub struct RecentMap<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    generation: usize,
    /// Whether a value was ever dropped or forgotten.
    lossy: bool,
}

impl<K: Eq + Hash, V> RecentMap<K, V> {
    /// An empty map keeping about `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            generation: (capacity / 2).max(1),
            lossy: false,
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Moves the value out.
    pub fn take(&mut self, key: &K) -> Option<V> {
        self.young.remove(key).or_else(|| self.old.remove(key))
    }

    /// Keeps `value` as the latest for `key`.
    pub fn keep(&mut self, key: K, value: V) {
        if self.young.len() >= self.generation && !self.young.contains_key(&key) {
            self.lossy |= !self.old.is_empty();
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&key);
        self.young.insert(key, value);
    }

    /// Drops the value of `key`, if kept.
    pub fn forget(&mut self, key: &K) {
        if self.take(key).is_some() {
            self.lossy = true;
        }
    }

    /// Drops every value.
    pub fn clear(&mut self) {
        self.lossy |= !(self.young.is_empty() && self.old.is_empty());
        self.young.clear();
        self.old.clear();
    }

    /// Whether every value ever kept is still here: then a key that is absent was
    /// never kept.
    pub fn holds_all_kept(&self) -> bool {
        !self.lossy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_value_of_a_key() {
        let mut recent = RecentMap::new(4);
        recent.keep(1, "a");
        recent.keep(1, "b");
        assert_eq!(recent.get(&1), Some(&"b"));
        assert!(recent.holds_all_kept());
    }

    #[test]
    fn drops_the_older_generation_once_the_younger_is_full() {
        let mut recent = RecentMap::new(4);
        for key in 0..4 {
            recent.keep(key, key);
        }
        assert!(recent.holds_all_kept());
        recent.keep(4, 4);
        recent.keep(5, 5);
        recent.keep(6, 6);
        assert_eq!(recent.get(&0), None);
        assert_eq!(recent.get(&6), Some(&6));
        assert!(!recent.holds_all_kept());
    }

    #[test]
    fn a_key_kept_again_lives_in_the_younger_generation_only() {
        let mut recent = RecentMap::new(4);
        recent.keep(1, "old");
        recent.keep(2, "x");
        recent.keep(3, "y");
        recent.keep(1, "new");
        recent.keep(4, "z");
        assert_eq!(recent.take(&1), Some("new"));
        assert_eq!(recent.get(&1), None);
    }

    #[test]
    fn forgetting_or_clearing_a_kept_value_says_the_map_no_longer_holds_all() {
        let mut recent = RecentMap::new(4);
        recent.forget(&1);
        recent.clear();
        assert!(recent.holds_all_kept());
        recent.keep(1, 1);
        recent.forget(&1);
        assert!(!recent.holds_all_kept());
    }
}
