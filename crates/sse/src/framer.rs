//! Incremental SSE line framing.

use crate::MAX_BUFFERED_BYTES;

/// Incremental SSE line framer: feed arbitrary byte slices (split at any
/// byte, `\n`, `\r\n` or `\r` line endings), get each `data:` field value.
///
/// It dispatches per `data:` line rather than assembling multi-line events at
/// the blank line: OpenAI-style upstreams put each JSON chunk on one `data:`
/// line, and per-line dispatch lets the common case run without copying —
/// a line that lies whole inside one fed slice is handed out in place, and
/// only a line split across slices is copied into a reusable buffer.
#[derive(Debug)]
pub struct SseFramer {
    /// Start of a line that was split across `feed` calls. Cleared, never
    /// shrunk, so steady-state streaming does not allocate.
    line: Vec<u8>,
    /// The current line passed `max_line` and is being skipped to its end.
    discarding: bool,
    /// The last line ended with `\r`; a `\n` right after it (possibly in the
    /// next slice) belongs to the same line ending.
    skip_lf: bool,
    /// Longest line kept, in bytes, excluding its line ending.
    max_line: usize,
}

impl Default for SseFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl SseFramer {
    /// A framer that keeps lines of up to [`MAX_BUFFERED_BYTES`].
    pub fn new() -> Self {
        Self::with_max_line(MAX_BUFFERED_BYTES)
    }

    /// A framer with a custom line cap, so tests can exercise the overflow
    /// path with small inputs.
    pub(crate) fn with_max_line(max_line: usize) -> Self {
        Self { line: Vec::new(), discarding: false, skip_lf: false, max_line }
    }

    /// Calls `on_data` once per complete `data:` field value (without the
    /// "data:" prefix and one optional leading space), ignoring comments
    /// (lines starting with ':'), `event:`, `id:`, `retry:` lines.
    ///
    /// A line longer than the cap is dropped whole, whatever the split
    /// points, so the result never depends on how the transport chunked the
    /// body. A final line with no line ending stays pending: the caller's own
    /// SSE parser would not deliver it either.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_data: impl FnMut(&[u8])) {
        loop {
            if self.skip_lf {
                match bytes.split_first() {
                    Some((b'\n', rest)) => {
                        self.skip_lf = false;
                        bytes = rest;
                    }
                    Some(_) => self.skip_lf = false,
                    None => return,
                }
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.hold_partial(bytes);
                return;
            };
            let (part, ending) = bytes.split_at(end);
            let Some((&terminator, rest)) = ending.split_first() else {
                return;
            };
            self.skip_lf = terminator == b'\r';
            self.complete_line(part, &mut on_data);
            bytes = rest;
        }
    }

    /// Ends the current line with its final piece `part` and dispatches it.
    fn complete_line(&mut self, part: &[u8], on_data: &mut impl FnMut(&[u8])) {
        if self.discarding {
            self.discarding = false;
        } else if self.line.is_empty() {
            if part.len() <= self.max_line {
                dispatch(part, on_data);
            }
        } else {
            if self.line.len() + part.len() <= self.max_line {
                self.line.extend_from_slice(part);
                dispatch(&self.line, on_data);
            }
            self.line.clear();
        }
    }

    /// Keeps the unterminated tail of a slice for the next `feed`, or starts
    /// discarding once the line is known to exceed the cap.
    fn hold_partial(&mut self, part: &[u8]) {
        if self.discarding || part.is_empty() {
            return;
        }
        let needed = self.line.len() + part.len();
        if needed > self.max_line {
            self.discarding = true;
            self.line.clear();
            return;
        }
        if needed > self.line.capacity() {
            // Grow geometrically like Vec would, but never past the cap, so
            // the retained buffer is bounded by `max_line` itself.
            let target = needed.max(self.line.capacity().saturating_mul(2)).min(self.max_line);
            self.line.reserve_exact(target - self.line.len());
        }
        self.line.extend_from_slice(part);
    }

    /// Bytes currently retained by the line buffer (for boundedness tests).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.line.capacity()
    }
}

/// Interprets one complete line per the SSE field syntax and reports `data`
/// values; every other field and comment is irrelevant to usage.
fn dispatch(line: &[u8], on_data: &mut impl FnMut(&[u8])) {
    if line.is_empty() || line.first() == Some(&b':') {
        return;
    }
    let (name, value) = match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let (name, rest) = line.split_at(colon);
            let value = rest.get(1..).unwrap_or_default();
            (name, value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &b""[..]),
    };
    if name == b"data" {
        on_data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(framer: &mut SseFramer, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for piece in pieces {
            framer.feed(piece, |d| out.push(d.to_vec()));
        }
        out
    }

    #[test]
    fn framer_extracts_data_and_ignores_other_fields() {
        let mut f = SseFramer::new();
        let input =
            b": keep-alive\nevent: message\nid: 7\nretry: 100\ndata: {\"a\":1}\n\ndata:nospace\ndata:  two\ndata\n\n";
        let got = collect(&mut f, &[input]);
        assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"nospace".to_vec(), b" two".to_vec(), Vec::new()]);
    }

    #[test]
    fn framer_handles_all_line_endings_split_anywhere() {
        let input: &[u8] = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r\n";
        let whole = collect(&mut SseFramer::new(), &[input]);
        assert_eq!(whole, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(collect(&mut SseFramer::new(), &[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(collect(&mut SseFramer::new(), &bytes), whole);
    }

    #[test]
    fn framer_keeps_unterminated_line_pending() {
        let mut f = SseFramer::new();
        assert!(collect(&mut f, &[b"data: [DONE]"]).is_empty());
        assert_eq!(collect(&mut f, &[b"\n"]), vec![b"[DONE]".to_vec()]);
    }

    #[test]
    fn framer_drops_oversize_line_and_recovers() {
        let input: &[u8] = b"data: 0123456789\ndata: ok\ndata: 0123456789abcdef\ndata: 01\n";
        // Cap of 10 bytes: "data: ok" and "data: 01" fit, the others do not.
        let whole = collect(&mut SseFramer::with_max_line(10), &[input]);
        assert_eq!(whole, vec![b"ok".to_vec(), b"01".to_vec()]);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(collect(&mut SseFramer::with_max_line(10), &[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn framer_buffer_stays_bounded() {
        let mut f = SseFramer::with_max_line(64);
        let long = vec![b'x'; 1000];
        for chunk in long.chunks(7) {
            f.feed(chunk, |_| panic!("oversize line must not be delivered"));
        }
        assert!(f.buffer_capacity() <= 64);
        let mut got = Vec::new();
        f.feed(b"\ndata: after\n", |d| got.push(d.to_vec()));
        assert_eq!(got, vec![b"after".to_vec()]);
    }

    proptest! {
        #[test]
        fn framer_split_invariant(
            lines in proptest::collection::vec(
                prop_oneof![
                    "data: [a-z{}\":, ]{0,20}",
                    ": [a-z ]{0,10}",
                    "event: [a-z]{1,8}",
                    "id: [0-9]{1,4}",
                    Just(String::new()),
                ],
                0..12,
            ),
            endings in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\r")], 12),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
            cap in 4usize..40,
        ) {
            let mut input = Vec::new();
            for (line, ending) in lines.iter().zip(endings.iter()) {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(ending.as_bytes());
            }
            let whole = collect(&mut SseFramer::with_max_line(cap), &[&input]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                pieces.push(&input[prev..p]);
                prev = p;
            }
            pieces.push(&input[prev..]);
            prop_assert_eq!(collect(&mut SseFramer::with_max_line(cap), &pieces), whole);
        }
    }
}
