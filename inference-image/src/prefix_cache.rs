//! Saved KV states of earlier prompts, so a request that starts with tokens the model has already
//! processed (the same system prompt, retrieved context, a conversation's earlier turns) only
//! computes the rest. Bounded in bytes and evicted least recently used. Each instance is its own
//! process serving one tenant, so the cache is never shared across tenants.

/// Snapshots of the model's KV cache, each for the token sequence it was computed from.
pub struct PrefixCache<S> {
    entries: Vec<Entry<S>>,
    budget: usize,
    used: usize,
    tick: u64,
}

struct Entry<S> {
    tokens: Vec<u32>,
    snapshot: S,
    bytes: usize,
    last_used: u64,
}

/// How many leading tokens two sequences share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<S> PrefixCache<S> {
    /// A cache holding at most `budget` bytes of snapshots (0 turns it off).
    pub fn new(budget: usize) -> Self {
        Self { entries: Vec::new(), budget, used: 0, tick: 0 }
    }

    /// Whether prompts may reuse earlier KV state at all (a budget of 0 turns reuse off, the
    /// model's own cache included, so every prompt is computed from its first token).
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Whether a snapshot of `bytes` would be kept (it fits the budget at all).
    pub fn would_keep(&self, bytes: usize) -> bool {
        self.enabled() && bytes <= self.budget
    }

    pub fn bytes(&self) -> usize {
        self.used
    }

    /// The snapshot sharing the longest prefix with `prompt`, and that prefix's length; it
    /// becomes the most recently used.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(usize, &S)> {
        let (index, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .filter(|(_, shared)| *shared > 0)
            .max_by_key(|(i, shared)| (*shared, self.entries[*i].last_used))?;
        self.tick += 1;
        let entry = &mut self.entries[index];
        entry.last_used = self.tick;
        Some((shared, &entry.snapshot))
    }

    /// Saves the state after `tokens`. Snapshots of a prefix of `tokens` are dropped (the new one
    /// serves every prompt they served), then the least recently used until the new one fits; one
    /// larger than the whole budget is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, snapshot: S, bytes: usize) {
        if tokens.is_empty() || !self.would_keep(bytes) {
            return;
        }
        let before = self.entries.len();
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        if self.entries.len() != before {
            self.used = self.entries.iter().map(|e| e.bytes).sum();
        }
        if self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return; // an entry already covers this sequence and more
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            self.used -= self.entries.swap_remove(oldest).bytes;
        }
        self.tick += 1;
        self.used += bytes;
        self.entries.push(Entry { tokens, snapshot, bytes, last_used: self.tick });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_shared_prefix_wins() {
        let mut c = PrefixCache::new(100);
        c.insert(vec![1, 2, 3], "a", 10);
        c.insert(vec![1, 2, 9, 9], "b", 10);
        assert_eq!(c.lookup(&[1, 2, 9, 5]).map(|(n, s)| (n, *s)), Some((3, "b")));
        assert_eq!(c.lookup(&[1, 2, 3, 4]).map(|(n, s)| (n, *s)), Some((3, "a")));
        assert_eq!(c.lookup(&[7, 1]).map(|(n, s)| (n, *s)), None, "nothing shared");
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        let mut c = PrefixCache::new(30);
        c.insert(vec![1], "one", 10);
        c.insert(vec![2], "two", 10);
        c.insert(vec![3], "three", 10);
        c.lookup(&[1]); // "two" is now the least recently used
        c.insert(vec![4], "four", 10);
        assert_eq!(c.bytes(), 30);
        assert!(c.lookup(&[2]).is_none(), "evicted");
        assert!(c.lookup(&[1]).is_some() && c.lookup(&[3]).is_some());
        assert!(c.lookup(&[4]).is_some());
        assert!(c.would_keep(30) && !c.would_keep(31));
        c.insert(vec![5], "too big", 31);
        assert!(c.lookup(&[5]).is_none() && c.bytes() == 30, "larger than the budget: not kept");
    }

    #[test]
    fn a_longer_run_of_the_same_conversation_replaces_its_prefix() {
        let mut c = PrefixCache::new(100);
        c.insert(vec![1, 2], "turn 1", 10);
        c.insert(vec![1, 2, 3, 4], "turn 2", 20);
        assert_eq!(c.bytes(), 20);
        assert_eq!(c.lookup(&[1, 2]).map(|(n, s)| (n, *s)), Some((2, "turn 2")));
        c.insert(vec![1, 2, 3], "shorter", 15);
        assert_eq!(c.bytes(), 20, "covered by turn 2's entry: not added");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let mut c = PrefixCache::new(0);
        assert!(!c.enabled() && !c.would_keep(1));
        c.insert(vec![1], (), 1);
        assert!(c.lookup(&[1]).is_none());
    }
}
