//! A byte-pair encoder that only counts, over OpenAI's vocabularies.
//!
//! Written here rather than used from a crate because of memory: keypool
//! needs a tokenizer exactly for the users with the smallest keys (a TPM limit
//! makes every request's count matter), and those run keypool on small
//! machines. tiktoken-rs keeps a vocabulary three times over (token → rank and
//! rank → token hash maps of owned `Vec`s, plus a sorted copy), about 35 MB
//! resident for o200k inside keypool; bpe-openai measured 65 MB. Counting
//! needs only "is this byte string a token, and of what rank": one arena of
//! token bytes, one end offset per rank and an open-addressing table of ranks,
//! about 6 MB for o200k. The vocabulary and the pre-tokenizing pattern are
//! still tiktoken-rs's; tests check the counts against it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hasher;

use fancy_regex::Regex;
use tiktoken_rs::CoreBPE;

/// cl100k_base's pre-tokenizing pattern, as OpenAI publishes it (tiktoken-rs
/// exports only o200k's).
const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

/// Marks an empty slot in the rank table (ranks are stored plus one).
const EMPTY: u32 = 0;

/// Longest piece merged exactly (see `merged_parts`).
const MAX_MERGED_PIECE: usize = 1 << 20;

pub struct Bpe {
    /// Every token's bytes, in rank order.
    bytes: Vec<u8>,
    /// `ends[r]`: where rank r's bytes end in `bytes` (they start at `ends[r - 1]`).
    ends: Vec<u32>,
    /// Open addressing on the token bytes' hash: rank + 1, or EMPTY.
    slots: Vec<u32>,
    pattern: Regex,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the tokenizer could not be built: {0}")]
    Source(String),
}

impl Bpe {
    pub fn o200k() -> Result<Bpe, BuildError> {
        let source = tiktoken_rs::o200k_base().map_err(|e| BuildError::Source(e.to_string()))?;
        Bpe::from_tiktoken(&source, tiktoken_rs::O200K_BASE_PAT_STR)
    }

    pub fn cl100k() -> Result<Bpe, BuildError> {
        let source = tiktoken_rs::cl100k_base().map_err(|e| BuildError::Source(e.to_string()))?;
        Bpe::from_tiktoken(&source, CL100K_PATTERN)
    }

    /// Copies the ordinary tokens out of a tiktoken encoder (which is then
    /// dropped by the caller). Ranks run from 0 without gaps until the first
    /// one the encoder does not know: the special tokens live above that.
    fn from_tiktoken(source: &CoreBPE, pattern: &str) -> Result<Bpe, BuildError> {
        let mut bytes = Vec::with_capacity(4 << 20);
        let mut ends = Vec::with_capacity(200_000);
        for rank in 0u32.. {
            let Ok(token) = source.decode_bytes(&[rank]) else { break };
            bytes.extend_from_slice(&token);
            ends.push(u32::try_from(bytes.len()).map_err(|_| BuildError::Source("vocabulary too large".into()))?);
        }
        if ends.len() < 256 {
            return Err(BuildError::Source(format!("only {} tokens in the vocabulary", ends.len())));
        }
        bytes.shrink_to_fit();
        ends.shrink_to_fit();
        // Load factor at most 1/2 keeps probe runs short.
        let capacity = (ends.len() * 2).next_power_of_two();
        let pattern = Regex::new(pattern).map_err(|e| BuildError::Source(e.to_string()))?;
        let mut bpe = Bpe { bytes, ends, slots: vec![EMPTY; capacity], pattern };
        for rank in 0..bpe.ends.len() as u32 {
            let mut i = bpe.home(bpe.token(rank));
            while bpe.slots[i] != EMPTY {
                i = (i + 1) & (capacity - 1);
            }
            bpe.slots[i] = rank + 1;
        }
        Ok(bpe)
    }

    fn token(&self, rank: u32) -> &[u8] {
        let r = rank as usize;
        let start = if r == 0 { 0 } else { self.ends[r - 1] as usize };
        &self.bytes[start..self.ends[r] as usize]
    }

    fn home(&self, piece: &[u8]) -> usize {
        let mut h = rustc_hash::FxHasher::default();
        h.write(piece);
        (h.finish() as usize) & (self.slots.len() - 1)
    }

    /// The rank of `piece` if it is a whole token.
    fn rank(&self, piece: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(piece);
        loop {
            match self.slots[i] {
                EMPTY => return None,
                slot if self.token(slot - 1) == piece => return Some(slot - 1),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Tokens in `text`, special-token text counted as ordinary text (as
    /// tiktoken's `encode_ordinary`).
    pub fn count(&self, text: &str) -> u64 {
        let mut total = 0u64;
        let mut done = 0;
        for found in self.pattern.find_iter(text) {
            match found {
                Ok(m) => {
                    let piece = m.as_str().as_bytes();
                    total += if self.rank(piece).is_some() { 1 } else { self.merged_parts(piece) };
                    done = m.end();
                }
                Err(e) => {
                    // The pattern's backtracking limit (very long runs): count
                    // the rest one token per byte rather than fail; no token is
                    // shorter, so this never under-counts.
                    tracing::debug!(error = %e, "token pattern gave up; counting the rest by bytes");
                    return total + (text.len() - done) as u64;
                }
            }
        }
        total
    }

    /// How many tokens byte-pair merging leaves of `piece`.
    fn merged_parts(&self, piece: &[u8]) -> u64 {
        if piece.len() > MAX_MERGED_PIECE {
            // One run of a megabyte without a break (base64, a repeated
            // character): one token per byte, never an under-count, and no
            // merge state of ~20 bytes per byte.
            return piece.len() as u64;
        }
        self.split(piece).len() as u64
    }

    /// Where byte-pair merging cuts `piece`: each part's start. Repeatedly
    /// merges the adjacent pair whose union is the lowest-ranked token
    /// (leftmost first on ties), as tiktoken does; a heap of candidate merges
    /// with lazy invalidation keeps long pieces O(n log n).
    fn split(&self, piece: &[u8]) -> Vec<u32> {
        // Pieces are at most MAX_MERGED_PIECE bytes, so positions fit in u32.
        let n = piece.len() as u32;
        if n < 2 {
            return (0..n).collect();
        }
        let at = |i: u32| i as usize;
        // Parts are [start, next[start]); `alive` marks where a part starts.
        let mut next: Vec<u32> = (1..=n).collect();
        let mut prev: Vec<u32> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; at(n)];
        let mut heap = BinaryHeap::with_capacity(at(n));
        for i in 0..n - 1 {
            if let Some(r) = self.rank(&piece[at(i)..at(i + 2)]) {
                heap.push(Reverse((r, i, i + 2)));
            }
        }
        while let Some(Reverse((_, start, end))) = heap.pop() {
            // Stale unless `start` still begins a part whose right neighbour ends at `end`.
            if !alive[at(start)] || next[at(start)] >= n || next[at(next[at(start)])] != end {
                continue;
            }
            alive[at(next[at(start)])] = false;
            next[at(start)] = end;
            if end < n {
                prev[at(end)] = start;
            }
            if start > 0 {
                let left = prev[at(start)];
                if let Some(r) = self.rank(&piece[at(left)..at(end)]) {
                    heap.push(Reverse((r, left, end)));
                }
            }
            if end < n {
                let right_end = next[at(end)];
                if let Some(r) = self.rank(&piece[at(start)..at(right_end)]) {
                    heap.push(Reverse((r, start, right_end)));
                }
            }
        }
        (0..n).filter(|&i| alive[at(i)]).collect()
    }

    /// Bytes held, for the memory figure in tests.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4 + self.slots.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn ours() -> &'static (Bpe, Bpe) {
        static B: OnceLock<(Bpe, Bpe)> = OnceLock::new();
        B.get_or_init(|| match (Bpe::o200k(), Bpe::cl100k()) {
            (Ok(o), Ok(c)) => (o, c),
            (Err(e), _) | (_, Err(e)) => panic!("{e}"),
        })
    }

    fn theirs(text: &str) -> (u64, u64) {
        let o = tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len() as u64;
        let c = tiktoken_rs::cl100k_base_singleton().encode_ordinary(text).len() as u64;
        (o, c)
    }

    fn check(text: &str) {
        let (o, c) = ours();
        assert_eq!((o.count(text), c.count(text)), theirs(text), "{text:?}");
    }

    #[test]
    fn vocabularies_are_complete_and_compact() {
        let (o, c) = ours();
        assert_eq!(o.ends.len(), 199_998);
        assert_eq!(c.ends.len(), 100_256);
        // Every token is found under its own rank.
        for bpe in [o, c] {
            for rank in 0..bpe.ends.len() as u32 {
                assert_eq!(bpe.rank(bpe.token(rank)), Some(rank));
            }
        }
        assert!(o.heap_bytes() < 8 << 20, "o200k holds {} bytes", o.heap_bytes());
    }

    #[test]
    fn counts_match_tiktoken_on_real_text() {
        for text in [
            "",
            "hello world",
            "Hello, world! How's it going? I'm fine; we'll see.",
            "  leading spaces and trailing   \n\n\tTabs\r\nand CRLF\r\n",
            "数字 12345678901234 und Umlaute: äöü ß — emoji 🙂👍🏽 and symbols ™©®",
            "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            "<|endoftext|> is text here, not a special token",
            "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
            "U29tZSBiYXNlNjQgZW5jb2RlZCBieXRlcyB0aGF0IGdvIG9uIGZvciBhIHdoaWxlLi4u/+==",
        ] {
            check(text);
        }
        check(include_str!("../../../../README.md"));
        check(include_str!("../server/proxy.rs"));
    }

    /// Cut points as tiktoken's own merge makes them, over the same ranks.
    fn tiktoken_split(which: usize, bpe: &Bpe, piece: &[u8]) -> Vec<u32> {
        static RANKS: [OnceLock<rustc_hash::FxHashMap<Vec<u8>, u32>>; 2] = [OnceLock::new(), OnceLock::new()];
        let ranks =
            RANKS[which].get_or_init(|| (0..bpe.ends.len() as u32).map(|r| (bpe.token(r).to_vec(), r)).collect());
        let mut at = 0u32;
        tiktoken_rs::byte_pair_split(piece, ranks)
            .iter()
            .map(|part| {
                let start = at;
                at += part.len() as u32;
                start
            })
            .collect()
    }

    #[test]
    fn long_unbroken_runs_are_never_under_counted() {
        let (o, _) = ours();
        let run = "A".repeat(MAX_MERGED_PIECE + 1);
        assert_eq!(o.merged_parts(run.as_bytes()), run.len() as u64);
        assert!(o.count(&run) >= tiktoken_rs::o200k_base_singleton().encode_ordinary(&run[..4096]).len() as u64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Not only the count: the same cut points as tiktoken (a wrong
        /// tie-break would often keep the count and move a cut).
        #[test]
        fn pieces_are_cut_where_tiktoken_cuts(piece in "[a-c!=. ]{2,40}|(ab|ba|aa|==|\\.\\.){1,20}") {
            let (o, c) = ours();
            for (which, bpe) in [o, c].into_iter().enumerate() {
                prop_assert_eq!(bpe.split(piece.as_bytes()), tiktoken_split(which, bpe, piece.as_bytes()), "{:?}", piece);
            }
        }

        #[test]
        fn counts_match_tiktoken_on_any_text(text in "[a-zA-Z0-9 \\n\\t.,;:!?'\"(){}<>/\\\\_=+*&^%$#@~`|-]{0,200}") {
            check(&text);
        }

        #[test]
        fn counts_match_tiktoken_on_unicode(text in "\\PC{0,80}") {
            check(&text);
        }
    }
}
