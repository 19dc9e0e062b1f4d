//! Request framing hyper resolves silently: a head with both
//! `Transfer-Encoding` and `Content-Length`.
//!
//! hyper reads such a request by its `Transfer-Encoding` alone (RFC 9112
//! §6.1 allows that) and closes the connection after it, removing the
//! `Content-Length` before the request reaches keypool, so nothing after
//! hyper can tell. A proxy that disagrees with another one in the path about
//! where such a body ends is how requests are smuggled; keypool refuses it
//! outright (400, connection closed) so that no front end can be told one
//! length and keypool use the other. [`HeadScan`] watches the bytes of each
//! HTTP/1.1 head as they are read, before hyper parses them.
//!
//! What it sees: a head that begins on a connection with no request in
//! flight (the usual case, and every first request). A head pipelined
//! behind a request still in flight is read by hyper ahead of time and not
//! scanned; hyper still reads it by `Transfer-Encoding` and closes the
//! connection after it.

/// An incremental look at one request head: which framing headers its
/// lines name, until its empty line.
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Bytes of the current line so far, capped past the longest name.
    column: usize,
    /// Whether the current line can still be `transfer-encoding:`.
    maybe_te: bool,
    /// Whether the current line can still be `content-length:`.
    maybe_cl: bool,
    /// Whether the current line has held only `\r` so far.
    blank: bool,
    /// Whether any line (the request line) has begun: blank lines before a
    /// request are skipped, as hyper skips them.
    begun: bool,
    seen_te: bool,
    seen_cl: bool,
    /// The head's empty line was seen: what follows is its body.
    done: bool,
}

const TE: &[u8] = b"transfer-encoding:";
const CL: &[u8] = b"content-length:";

impl HeadScan {
    /// A scan for a new head.
    pub fn new() -> HeadScan {
        HeadScan { maybe_te: true, maybe_cl: true, blank: true, ..HeadScan::default() }
    }

    /// Reads the next bytes of the head (bytes past its end are ignored).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            if b == b'\n' {
                if self.blank && self.begun {
                    self.done = true;
                    return;
                }
                self.begun |= !self.blank;
                (self.column, self.maybe_te, self.maybe_cl, self.blank) = (0, true, true, true);
                continue;
            }
            self.blank &= b == b'\r';
            let lower = b.to_ascii_lowercase();
            let at = self.column;
            self.maybe_te &= TE.get(at) == Some(&lower);
            self.maybe_cl &= CL.get(at) == Some(&lower);
            self.seen_te |= self.maybe_te && at + 1 == TE.len();
            self.seen_cl |= self.maybe_cl && at + 1 == CL.len();
            self.column = (at + 1).min(TE.len());
        }
    }

    /// Whether the head names both `Transfer-Encoding` and `Content-Length`.
    pub fn ambiguous(&self) -> bool {
        self.seen_te && self.seen_cl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> bool {
        let mut s = HeadScan::new();
        for p in parts {
            s.feed(p);
        }
        s.ambiguous()
    }

    #[test]
    fn both_framing_headers_in_any_case_and_split_anywhere_are_seen() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(scan(&[head]));
        for cut in 0..head.len() {
            assert!(scan(&[&head[..cut], &head[cut..]]), "split at {cut}");
        }
        assert!(scan(&[b"POST / HTTP/1.1\nTRANSFER-ENCODING:chunked\ncontent-LENGTH:3\n\n"]));
        assert!(scan(&[b"\r\n\r\nPOST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"]));
    }

    #[test]
    fn one_framing_header_or_names_only_alike_are_not_ambiguous() {
        assert!(!scan(&[b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\nx-content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\ncontent-length-x: 5\r\ntransfer-encoding: chunked\r\n\r\n"]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\nx: content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"]));
    }

    #[test]
    fn the_body_after_the_head_is_not_read() {
        let head = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(!scan(&[head, b"5\r\ncontent-length: 9\r\n"]));
    }
}
