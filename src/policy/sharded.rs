//! A hash map whose versions share their unchanged parts.
//!
//! The map is split into shards, each behind an `Arc`. Cloning the map
//! copies the shard pointers (a few hundred atomic increments, whatever its
//! size); an insert or a remove copies only the one shard it touches. So a
//! snapshot published after an edit shares all but a few shards with the
//! snapshot before it, and publishing costs what the edit touched, not what
//! the map holds.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// How many shards a map has: with 10,000 entries, an edit copies about 40.
const SHARDS: usize = 256;

/// A persistent hash map (see the module docs).
pub struct ShardedMap<K, V> {
    /// Picks a key's shard; random per map, so that keys a tenant chooses
    /// cannot all be steered into one shard.
    hasher: foldhash::fast::RandomState,
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
            hasher: self.hasher.clone(),
            shards: self.shards.clone(),
        }
    }
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        let empty = Arc::new(HashMap::new());
        ShardedMap {
            hasher: foldhash::fast::RandomState::default(),
            shards: vec![empty; SHARDS],
        }
    }
}

impl<K, V> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries: usize = self.shards.iter().map(|shard| shard.len()).sum();
        f.debug_struct("ShardedMap")
            .field("entries", &entries)
            .finish()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The modulo of a 64-bit hash by a power of two: uniform.
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    /// The value for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// How many entries the map holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.len()).sum()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| shard.is_empty())
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    /// Sets `key` to `value`, copying the key's shard if another version
    /// shares it.
    pub fn insert(&mut self, key: K, value: V) {
        let shard = self.shard_of(&key);
        Arc::make_mut(&mut self.shards[shard]).insert(key, value);
    }

    /// Removes `key`, copying its shard only when the key is there.
    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        if self.shards[shard].contains_key(key) {
            Arc::make_mut(&mut self.shards[shard]).remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_its_version_and_shares_untouched_shards() {
        let mut map: ShardedMap<String, u32> = ShardedMap::default();
        for i in 0..1_000 {
            map.insert(format!("host-{i}"), i);
        }
        let before = map.clone();
        map.insert("host-1".into(), 7);
        map.remove("host-2");
        map.remove("absent");
        assert_eq!(before.get("host-1"), Some(&1));
        assert_eq!(before.get("host-2"), Some(&2));
        assert_eq!(map.get("host-1"), Some(&7));
        assert_eq!(map.get("host-2"), None);
        assert_eq!((before.len(), map.len()), (1_000, 999));
        let shared = before
            .shards
            .iter()
            .zip(&map.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 2, "only the touched shards are copied");
    }
}
