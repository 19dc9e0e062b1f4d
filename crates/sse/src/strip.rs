//! Removing usage-only events from an SSE stream.
//!
//! When the gateway adds `stream_options.include_usage` to a request the
//! caller made without it, the upstream appends one extra event whose payload
//! is `{"choices":[],"usage":{...}}`. The caller did not ask for it, so the
//! gateway drops that event and forwards every other byte unchanged.

use std::borrow::Cow;

use crate::tap::strip_usage_event;
use crate::MAX_BUFFERED_BYTES;

/// Removes usage-only events from an SSE stream; everything else passes byte
/// for byte.
///
/// Events end at a blank line (`\n\n`, `\r\n\r\n`, `\r\r`, or any mix, split
/// anywhere across chunks). An event can only be judged once it is complete,
/// so the unfinished tail of a chunk is held back until its event ends; the
/// complete events in front of it are released at once. An event is removed
/// iff its `data:` payload (several `data:` lines joined by `\n`) satisfies
/// [`strip_usage_event`]; comments, `event:`/`id:` lines, `[DONE]` and error
/// events pass unchanged.
///
/// Memory is bounded: an event longer than [`MAX_BUFFERED_BYTES`] is never
/// judged — while incomplete it is released as it arrives, unfiltered.
#[derive(Debug)]
pub struct UsageStripper {
    /// Start of the current, unfinished event, from earlier chunks. Cleared,
    /// never shrunk, and its capacity never exceeds `max_buffered`.
    held: Vec<u8>,
    /// The current event outgrew the cap: its bytes are released as they
    /// arrive until it ends.
    passthrough: bool,
    /// No byte of the current line has been seen yet, so a line terminator
    /// now would end a blank line, i.e. the event.
    line_start: bool,
    /// The last byte seen ended a (non-blank) line with `\r`: a `\n` right
    /// after it belongs to the same line ending.
    after_cr: bool,
    /// The last event ended with `\r` as the very last byte of a chunk; a
    /// `\n` opening the next chunk completes that ending. `Some(true)` when
    /// that event was removed, so the `\n` goes with it.
    pending_lf: Option<bool>,
    /// Events removed so far.
    removed: u64,
    /// Longest event that is judged (and so the most bytes held back).
    max_buffered: usize,
}

impl Default for UsageStripper {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageStripper {
    /// A stripper that holds back at most [`MAX_BUFFERED_BYTES`].
    pub fn new() -> Self {
        Self::with_max_buffered(MAX_BUFFERED_BYTES)
    }

    /// A stripper with a custom cap, so tests can reach the overflow path
    /// cheaply.
    pub(crate) fn with_max_buffered(max_buffered: usize) -> Self {
        Self {
            held: Vec::new(),
            passthrough: false,
            line_start: true,
            after_cr: false,
            pending_lf: None,
            removed: 0,
            max_buffered,
        }
    }

    /// Returns what to forward now for this chunk.
    ///
    /// `Cow::Borrowed(s)` is always a prefix of `chunk` (so the caller can
    /// forward `bytes.slice(..s.len())` without copying); `Cow::Owned` when
    /// bytes had to be assembled (bytes held back from earlier chunks, or an
    /// event removed in the middle of this chunk).
    pub fn push<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        if chunk.is_empty() {
            return Cow::Borrowed(chunk);
        }
        let mut out = Out::new(chunk);
        // Position of the next byte to scan, and start of the current
        // event's bytes within `chunk`.
        let mut i = 0;
        let mut seg = 0;
        if let Some(drop) = self.pending_lf.take() {
            if chunk.first() == Some(&b'\n') {
                if !drop {
                    out.range(0, 1);
                }
                i = 1;
                seg = 1;
            }
        }
        while let Some(off) = chunk.get(i..).unwrap_or_default().iter().position(|&b| b == b'\n' || b == b'\r') {
            let p = i + off;
            let lf = chunk.get(p) == Some(&b'\n');
            if p > i {
                self.line_start = false;
                self.after_cr = false;
            }
            if lf && self.after_cr {
                // Second half of a `\r\n` line ending.
                self.after_cr = false;
                i = p + 1;
                continue;
            }
            if !self.line_start {
                self.line_start = true;
                self.after_cr = !lf;
                i = p + 1;
                continue;
            }
            // A blank line: the event ends here, with the `\n` of a `\r\n`.
            let mut end = p + 1;
            let mut open_cr = false;
            let mut crlf = 0;
            if !lf {
                match chunk.get(end) {
                    Some(b'\n') => {
                        end += 1;
                        crlf = 1;
                    }
                    None => open_cr = true,
                    Some(_) => {}
                }
            }
            // The `\n` of a `\r\n` blank line is never counted against the
            // cap, whether it comes with the event, with the next chunk, or
            // not at all (a lone `\r`): whether it follows may be unknown
            // when a chunk ends with the `\r`, and the judgement must not
            // depend on where the stream was cut.
            let dropped = self.end_event(&mut out, seg, end, crlf);
            if open_cr {
                self.pending_lf = Some(dropped);
            }
            self.after_cr = false;
            seg = end;
            i = end;
        }
        if i < chunk.len() {
            self.line_start = false;
            self.after_cr = false;
        }
        self.hold_tail(&mut out, seg);
        out.finish()
    }

    /// End of stream: whatever is still held back (an unterminated last
    /// event), unless it is a usage-only event. Resets the stripper.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        let removed = self.removed;
        *self = Self::with_max_buffered(self.max_buffered);
        self.removed = removed;
        if is_usage_event(&held) {
            self.removed += 1;
            Vec::new()
        } else {
            held
        }
    }

    /// Number of events removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// The event occupying `chunk[seg..end]` (after any held bytes) is
    /// complete: release or remove it. `uncounted` bytes at its end (the
    /// `\n` of a `\r\n` blank line) do not count against the cap. Returns
    /// whether it was removed.
    fn end_event(&mut self, out: &mut Out<'_>, seg: usize, end: usize, uncounted: usize) -> bool {
        let part = out.chunk.get(seg..end).unwrap_or_default();
        if self.passthrough {
            self.passthrough = false;
            out.range(seg, end);
            return false;
        }
        // Judge only events within the cap, whole or split, so the result
        // never depends on how the transport chunked the stream.
        if (self.held.len() + part.len()).saturating_sub(uncounted) > self.max_buffered {
            out.bytes(&self.held);
            out.range(seg, end);
            self.held.clear();
            return false;
        }
        let usage = if self.held.is_empty() {
            is_usage_event(part)
        } else {
            self.held.extend_from_slice(part);
            is_usage_event(&self.held)
        };
        if usage {
            self.removed += 1;
        } else if self.held.is_empty() {
            out.range(seg, end);
        } else {
            out.bytes(&self.held);
        }
        self.held.clear();
        usage
    }

    /// Holds back `chunk[seg..]`, the start of an unfinished event, or
    /// releases it once the event is known to exceed the cap.
    fn hold_tail(&mut self, out: &mut Out<'_>, seg: usize) {
        let tail = out.chunk.get(seg..).unwrap_or_default();
        if tail.is_empty() {
            return;
        }
        if self.passthrough {
            out.range(seg, out.chunk.len());
            return;
        }
        let needed = self.held.len() + tail.len();
        if needed > self.max_buffered {
            // Give up on this event: release it as is, free the memory.
            self.passthrough = true;
            out.bytes(&self.held);
            out.range(seg, out.chunk.len());
            self.held = Vec::new();
            return;
        }
        if needed > self.held.capacity() {
            // Grow geometrically, but never past the cap.
            let target = needed.max(self.held.capacity().saturating_mul(2)).min(self.max_buffered);
            self.held.reserve_exact(target - self.held.len());
        }
        self.held.extend_from_slice(tail);
    }

    /// Bytes currently retained for held-back data (for boundedness tests).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.held.capacity()
    }
}

/// The output of one `push`: a prefix of the chunk for as long as possible,
/// an owned copy once anything else has to be assembled.
struct Out<'a> {
    chunk: &'a [u8],
    /// Length of the borrowed prefix while `owned` is `None`.
    prefix: usize,
    owned: Option<Vec<u8>>,
}

impl<'a> Out<'a> {
    fn new(chunk: &'a [u8]) -> Self {
        Self { chunk, prefix: 0, owned: None }
    }

    /// Forwards `chunk[start..end]`; ranges come in increasing order.
    fn range(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        if self.owned.is_none() && start == self.prefix {
            self.prefix = end;
            return;
        }
        let piece = self.chunk.get(start..end).unwrap_or_default();
        self.owned_mut().extend_from_slice(piece);
    }

    /// Forwards bytes that are not part of the chunk.
    fn bytes(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.owned_mut().extend_from_slice(bytes);
        }
    }

    fn owned_mut(&mut self) -> &mut Vec<u8> {
        let (chunk, prefix) = (self.chunk, self.prefix);
        self.owned.get_or_insert_with(|| {
            let mut v = Vec::with_capacity(chunk.len());
            v.extend_from_slice(chunk.get(..prefix).unwrap_or_default());
            v
        })
    }

    fn finish(self) -> Cow<'a, [u8]> {
        match self.owned {
            Some(v) => Cow::Owned(v),
            None => Cow::Borrowed(self.chunk.get(..self.prefix).unwrap_or_default()),
        }
    }
}

/// Whether the complete event `event` is a usage-only event.
fn is_usage_event(event: &[u8]) -> bool {
    let mut first: Option<&[u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    for value in event.split(|&b| b == b'\n' || b == b'\r').filter_map(data_value) {
        match (&mut joined, first) {
            (Some(j), _) => {
                j.push(b'\n');
                j.extend_from_slice(value);
            }
            (None, Some(f)) => {
                let mut j = Vec::with_capacity(f.len() + 1 + value.len());
                j.extend_from_slice(f);
                j.push(b'\n');
                j.extend_from_slice(value);
                joined = Some(j);
            }
            (None, None) => first = Some(value),
        }
    }
    match joined {
        Some(j) => strip_usage_event(&j),
        None => first.is_some_and(strip_usage_event),
    }
}

/// The value of a `data` field line (without "data:" and one optional
/// leading space), or `None` for any other line.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    match rest.split_first() {
        None => Some(rest),
        Some((b':', value)) => Some(value.strip_prefix(b" ").unwrap_or(value)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(content: &str) -> String {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}],"usage":null}}"#
        )
    }

    const ROLE_CHUNK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
    const FINISH_CHUNK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;
    const USAGE_CHUNK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

    /// A realistic include_usage stream as (event, is_usage) pairs, each
    /// event's lines ended by `nl`.
    fn realistic_events(nl: &str) -> Vec<(String, bool)> {
        let ev = |lines: &[&str]| {
            let mut s = String::new();
            for l in lines {
                s.push_str(l);
                s.push_str(nl);
            }
            s.push_str(nl);
            s
        };
        vec![
            (ev(&[": keep-alive"]), false),
            (ev(&[&format!("data: {ROLE_CHUNK}")]), false),
            (ev(&["event: message", &format!("data: {}", chunk("Hello"))]), false),
            (ev(&[": keep-alive"]), false),
            (ev(&["id: 3", &format!("data:{}", chunk(" world"))]), false),
            // Model text quoting the key must not be mistaken for usage.
            (ev(&[&format!("data: {}", chunk(r#" {\"choices\":[],\"usage\":{\"total_tokens\":9}}"#))]), false),
            (ev(&[&format!("data: {FINISH_CHUNK}")]), false),
            (ev(&[&format!("data: {USAGE_CHUNK}")]), true),
            (ev(&["data: [DONE]"]), false),
        ]
    }

    fn join(events: &[(String, bool)]) -> (Vec<u8>, Vec<u8>) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (event, usage) in events {
            input.extend_from_slice(event.as_bytes());
            if !usage {
                expected.extend_from_slice(event.as_bytes());
            }
        }
        (input, expected)
    }

    /// Feeds `pieces`, checks every borrowed output is a prefix of its
    /// chunk, and returns all output plus `finish()`.
    fn strip_pieces(s: &mut UsageStripper, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            match s.push(piece) {
                Cow::Borrowed(b) => {
                    assert_eq!(b.as_ptr(), piece.as_ptr(), "borrowed is not a prefix");
                    assert!(b.len() <= piece.len());
                    out.extend_from_slice(b);
                }
                Cow::Owned(v) => out.extend_from_slice(&v),
            }
        }
        out.extend_from_slice(&s.finish());
        out
    }

    fn split_at_points<'a>(input: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut prev = 0;
        for &p in points {
            pieces.push(&input[prev..p]);
            prev = p;
        }
        pieces.push(&input[prev..]);
        pieces
    }

    #[test]
    fn realistic_stream_every_split_point_lf_crlf_cr() {
        for nl in ["\n", "\r\n", "\r"] {
            let (input, expected) = join(&realistic_events(nl));
            let mut s = UsageStripper::new();
            assert_eq!(strip_pieces(&mut s, &[&input]), expected, "whole, {nl:?}");
            assert_eq!(s.removed(), 1);
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                let mut s = UsageStripper::new();
                assert_eq!(strip_pieces(&mut s, &[a, b]), expected, "cut at {cut}, {nl:?}");
                assert_eq!(s.removed(), 1);
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let mut s = UsageStripper::new();
            assert_eq!(strip_pieces(&mut s, &bytes), expected, "bytewise {nl:?}");
            assert_eq!(s.removed(), 1);
        }
    }

    proptest! {
        #[test]
        fn random_splits_remove_exactly_usage_events(
            endings in proptest::collection::vec(
                prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 9),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
        ) {
            // Each event with its own line ending, so endings mix.
            let events: Vec<(String, bool)> = endings
                .iter()
                .zip(realistic_events("\n"))
                .map(|(nl, (ev, usage))| (ev.replace('\n', nl), usage))
                .collect();
            let (input, expected) = join(&events);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut s = UsageStripper::new();
            prop_assert_eq!(strip_pieces(&mut s, &split_at_points(&input, &points)), expected);
            prop_assert_eq!(s.removed(), 1);
        }
    }

    #[test]
    fn stream_without_usage_is_identical_and_borrowed_whole() {
        for nl in ["\n", "\r\n"] {
            let events: Vec<(String, bool)> = realistic_events(nl).into_iter().filter(|(_, usage)| !usage).collect();
            let (input, expected) = join(&events);
            assert_eq!(input, expected);
            let mut s = UsageStripper::new();
            match s.push(&input) {
                Cow::Borrowed(b) => assert_eq!(b, &input[..]),
                Cow::Owned(_) => panic!("expected the whole chunk borrowed"),
            }
            assert!(s.finish().is_empty());
            assert_eq!(s.removed(), 0);
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                let mut s = UsageStripper::new();
                assert_eq!(strip_pieces(&mut s, &[a, b]), input, "cut at {cut}");
            }
        }
    }

    #[test]
    fn complete_events_then_partial_returns_borrowed_prefix() {
        let complete = format!("data: {}\n\n: keep-alive\r\n\r\n", chunk("a"));
        let partial = format!("data: {}", chunk("b"));
        let input = format!("{complete}{partial}");
        let mut s = UsageStripper::new();
        match s.push(input.as_bytes()) {
            Cow::Borrowed(b) => assert_eq!(b, complete.as_bytes()),
            Cow::Owned(_) => panic!("expected a borrowed prefix"),
        }
        // The held tail comes out with the rest of its event.
        let out = s.push(b"\n\ndata: [DONE]\n\n");
        assert_eq!(&out[..], format!("{partial}\n\ndata: [DONE]\n\n").as_bytes());
        assert!(matches!(out, Cow::Owned(_)));
    }

    #[test]
    fn usage_event_position_decides_borrowed_or_owned() {
        let content = format!("data: {}\n\n", chunk("a"));
        let usage = format!("data: {USAGE_CHUNK}\n\n");
        let done = "data: [DONE]\n\n";
        // Usage last in the chunk: what precedes it is still a prefix.
        let input = format!("{content}{usage}");
        let mut s = UsageStripper::new();
        assert!(matches!(s.push(input.as_bytes()), Cow::Borrowed(b) if b == content.as_bytes()));
        // Usage mid-chunk: the output is assembled.
        let input = format!("{content}{usage}{done}");
        let mut s = UsageStripper::new();
        let out = s.push(input.as_bytes());
        assert!(matches!(out, Cow::Owned(_)));
        assert_eq!(&out[..], format!("{content}{done}").as_bytes());
        assert_eq!(s.removed(), 1);
    }

    #[test]
    fn usage_event_split_across_chunks_is_removed() {
        let mut s = UsageStripper::new();
        let usage = format!("data: {USAGE_CHUNK}\r\n\r\n");
        let (a, rest) = usage.as_bytes().split_at(20);
        let (b, c) = rest.split_at(rest.len() - 3);
        assert!(s.push(b"data: [DONE").is_empty());
        assert!(s.push(b"]\n").is_empty());
        // `[DONE]`'s event ends with this chunk's first byte.
        assert_eq!(&s.push(&[b"\n", a].concat())[..], b"data: [DONE]\n\n");
        assert!(s.push(b).is_empty());
        assert!(s.push(c).is_empty());
        assert_eq!(s.removed(), 1);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn cr_ending_split_before_lf_goes_with_its_event() {
        // `\r\r\n`: the blank line's `\r\n` may be split across chunks.
        let usage = format!("data: {USAGE_CHUNK}\r\r");
        let mut s = UsageStripper::new();
        assert!(s.push(usage.as_bytes()).is_empty());
        assert_eq!(&s.push(b"\ndata: [DONE]\r\r")[..], b"data: [DONE]\r\r");
        assert_eq!(&s.push(b"\n")[..], b"\n");
        assert_eq!(s.removed(), 1);
        let input = format!("{usage}\n: x\r\rdata: [DONE]\r\r\n");
        for cut in 0..=input.len() {
            let (a, b) = input.as_bytes().split_at(cut);
            let mut s = UsageStripper::new();
            assert_eq!(strip_pieces(&mut s, &[a, b]), b": x\r\rdata: [DONE]\r\r\n", "cut at {cut}");
        }
    }

    #[test]
    fn multi_line_data_usage_event_is_removed() {
        let input = "data: {\"choices\":[],\ndata: \"usage\":{\"total_tokens\":1}}\n\ndata: [DONE]\n\n";
        let mut s = UsageStripper::new();
        assert_eq!(strip_pieces(&mut s, &[input.as_bytes()]), b"data: [DONE]\n\n");
        assert_eq!(s.removed(), 1);
    }

    #[test]
    fn other_events_pass_unchanged() {
        let input = concat!(
            ": {\"choices\":[],\"usage\":{\"total_tokens\":1}}\n\n",
            "event: usage\nid: 1\n\n",
            "data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
            "data: {\"choices\":[],\"usage\":null}\n\n",
            "data2: {\"choices\":[],\"usage\":{\"total_tokens\":1}}\n\n",
            "\n\n",
            "data: [DONE]\n\n",
        );
        let mut s = UsageStripper::new();
        assert_eq!(strip_pieces(&mut s, &[input.as_bytes()]), input.as_bytes());
        assert_eq!(s.removed(), 0);
    }

    #[test]
    fn unterminated_last_event_at_finish() {
        let mut s = UsageStripper::new();
        assert!(s.push(b"data: [DONE]").is_empty());
        assert_eq!(s.finish(), b"data: [DONE]");
        assert!(s.push(format!("data: {USAGE_CHUNK}\n").as_bytes()).is_empty());
        assert!(s.finish().is_empty());
        assert_eq!(s.removed(), 1);
    }

    #[test]
    fn oversize_partial_event_is_released_and_buffer_bounded() {
        let cap = 64;
        let big = format!("data: {}\n\n", chunk(&"x".repeat(200)));
        let usage = format!("data: {USAGE_CHUNK}\n\n");
        let input = format!("{big}{usage}data: [DONE]\n\n");
        for size in [1, 7, 50, 300] {
            let mut s = UsageStripper::with_max_buffered(cap);
            let mut out = Vec::new();
            for piece in input.as_bytes().chunks(size) {
                out.extend_from_slice(&s.push(piece));
                assert!(s.buffer_capacity() <= cap);
            }
            out.extend_from_slice(&s.finish());
            // The usage event is itself over the cap here, so it passes too.
            assert_eq!(out, input.as_bytes(), "pieces of {size}");
            assert_eq!(s.removed(), 0);
        }
        // With a cap that fits the usage event, only the big one is released.
        let cap = usage.len();
        for size in [1, 7, 50, 300, input.len()] {
            let mut s = UsageStripper::with_max_buffered(cap);
            let pieces: Vec<&[u8]> = input.as_bytes().chunks(size).collect();
            assert_eq!(strip_pieces(&mut s, &pieces), format!("{big}data: [DONE]\n\n").as_bytes(), "pieces of {size}");
            assert_eq!(s.removed(), 1);
        }
    }

    #[test]
    fn oversize_at_default_cap_does_not_panic() {
        let mut s = UsageStripper::new();
        let mut out = s.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"").into_owned();
        let filler = vec![b'a'; 64 * 1024];
        for _ in 0..(MAX_BUFFERED_BYTES / filler.len() + 2) {
            out.extend_from_slice(&s.push(&filler));
            assert!(s.buffer_capacity() <= MAX_BUFFERED_BYTES);
        }
        assert!(out.len() > MAX_BUFFERED_BYTES, "released, not held");
        let usage = format!("\"}}}}]}}\n\ndata: {USAGE_CHUNK}\n\ndata: [DONE]\n\n");
        out.extend_from_slice(&s.push(usage.as_bytes()));
        out.extend_from_slice(&s.finish());
        assert!(out.ends_with(b"\"}}]}\n\ndata: [DONE]\n\n"));
        assert_eq!(s.removed(), 1);
    }
}
