//! Bodies kept in records (`records.bodies`): the request's as sent, the
//! answer's as the caller read it, a streamed answer as its assembled text
//! (the deltas' text joined, not the events), each cut to a size.

use keypool_sse::SseFramer;

/// `bytes` as text (invalid UTF-8 replaced), cut to at most `max` bytes at
/// a character boundary; NULs are dropped (PostgreSQL's text refuses them).
pub fn cut(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max.saturating_add(4))]);
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().filter(|c| *c != '\0') {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Collects an answer's body as it streams, up to `max` bytes of text.
#[derive(Debug)]
pub struct Assembler {
    max: usize,
    /// `Some` for server-sent events: their deltas' text is kept.
    framer: Option<SseFramer>,
    raw: Vec<u8>,
    text: String,
}

impl Assembler {
    /// `sse`: the answer is a stream of server-sent events.
    pub fn new(sse: bool, max: usize) -> Assembler {
        Assembler { max, framer: sse.then(SseFramer::new), raw: Vec::new(), text: String::new() }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let max = self.max;
        match &mut self.framer {
            None => {
                let room = max.saturating_add(4).saturating_sub(self.raw.len());
                self.raw.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Some(framer) => {
                let text = &mut self.text;
                if text.len() >= max {
                    return;
                }
                framer.feed(chunk, |data| {
                    if let Some(piece) = delta_text(data) {
                        text.push_str(&piece);
                    }
                });
            }
        }
    }

    /// The body as kept.
    pub fn finish(self) -> String {
        match self.framer {
            None => cut(&self.raw, self.max),
            Some(_) => cut(self.text.as_bytes(), self.max),
        }
    }
}

/// The text one event adds: a chat chunk's `choices[].delta.content`, a
/// completion's `choices[].text`, or a Responses API
/// `response.output_text.delta` event's `delta`. Other events add nothing.
fn delta_text(data: &[u8]) -> Option<String> {
    if data == b"[DONE]" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
        let mut out = String::new();
        for c in choices {
            let piece = c.get("delta").and_then(|d| d.get("content")).or_else(|| c.get("text"));
            if let Some(s) = piece.and_then(|p| p.as_str()) {
                out.push_str(s);
            }
        }
        return (!out.is_empty()).then_some(out);
    }
    let kind = v.get("type").and_then(|t| t.as_str())?;
    if kind.ends_with("output_text.delta") {
        return v.get("delta").and_then(|d| d.as_str()).map(str::to_owned);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_stops_at_a_character_boundary_and_drops_nuls() {
        assert_eq!(cut("héllo".as_bytes(), 2), "h");
        assert_eq!(cut("héllo".as_bytes(), 3), "hé");
        assert_eq!(cut(b"a\0b", 10), "ab");
        assert_eq!(cut(&[0xff, b'a'], 10), "\u{fffd}a");
    }

    #[test]
    fn a_stream_is_kept_as_its_text() {
        let mut a = Assembler::new(true, 100);
        let events = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\", wor\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"conte",
            "nt\":\"ld\"}}]}\n\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"!\"}\n\n",
            "data: [DONE]\n\n",
        );
        // Fed in uneven pieces, split inside a character too.
        for piece in events.as_bytes().chunks(7) {
            a.feed(piece);
        }
        assert_eq!(a.finish(), "你好, world!");
        let mut short = Assembler::new(true, 4);
        short.feed("data: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\n\n".as_bytes());
        assert_eq!(short.finish(), "你");
    }

    #[test]
    fn a_plain_answer_is_kept_as_it_came_cut_to_size() {
        let mut a = Assembler::new(false, 10);
        a.feed(br#"{"id":"chatcmpl-1","#);
        a.feed(b"more");
        assert_eq!(a.finish(), r#"{"id":"cha"#);
    }
}
