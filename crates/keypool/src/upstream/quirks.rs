//! What this upstream is known to refuse, learned from its answers and
//! shared by every worker: the `stream_options` keypool adds to ask for a
//! stream's usage (some OpenAI-compatible servers answer 400 to an unknown
//! parameter), and 404s to every path (a base URL without its version path).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// 404s in a row, across requests, after which the URL tried is logged.
const NOT_FOUND_IN_A_ROW: u32 = 3;

#[derive(Debug, Default)]
pub struct Quirks {
    refuses_stream_options: AtomicBool,
    /// Answers in a row that were a plain 404 (not a model a key lacks).
    not_found: AtomicU32,
}

impl Quirks {
    /// Whether the upstream refused an added `stream_options` before.
    pub fn refuses_stream_options(&self) -> bool {
        self.refuses_stream_options.load(Ordering::Relaxed)
    }

    /// Takes in the status of an answer passed to the caller: an upstream
    /// that answers 404 to request after request is logged once per run of
    /// them, with the URL tried (its password masked), since the usual cause
    /// is a base URL without its version path (`http://host:port` instead of
    /// `http://host:port/v1`).
    pub fn note_status(&self, status: http::StatusCode, url: &http::Uri) {
        if status != http::StatusCode::NOT_FOUND {
            if self.not_found.load(Ordering::Relaxed) != 0 {
                self.not_found.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.not_found.fetch_add(1, Ordering::Relaxed) + 1 == NOT_FOUND_IN_A_ROW {
            tracing::warn!(
                url = %crate::config::mask_url_password(&url.to_string()),
                "the upstream answered 404 to {NOT_FOUND_IN_A_ROW} requests in a row: check that its base URL \
                 includes the version path (e.g. /v1)"
            );
        }
    }

    /// Remembers that it does; logged once.
    pub fn note_refuses_stream_options(&self) {
        if !self.refuses_stream_options.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the upstream refuses `stream_options`: keypool stops adding it and counts streamed usage from the text"
            );
        }
    }
}

/// Whether a 400/422 says the upstream does not know `stream_options`
/// ("Unrecognized request argument supplied: stream_options" (Azure),
/// "Unknown parameter: 'stream_options'" (OpenAI's form), "extra fields not
/// permitted" / "Extra inputs are not permitted" naming it (pydantic-based
/// servers), "unsupported parameter"). The field must be named beside such
/// words: a relay that echoes the request in its errors names it too.
pub fn refuses_stream_options(status: http::StatusCode, body: &[u8]) -> bool {
    if status != http::StatusCode::BAD_REQUEST && status != http::StatusCode::UNPROCESSABLE_ENTITY {
        return false;
    }
    const FIELD: &[u8] = b"stream_options";
    const BEFORE: &[&[u8]] =
        &[b"unknown", b"unrecognized", b"unrecognised", b"unsupported", b"extra", b"not permitted"];
    const AFTER: &[&[u8]] = &[b"not permitted", b"extra", b"unknown", b"unrecognized", b"unsupported", b"not allowed"];
    let text = body.to_ascii_lowercase();
    let found = |window: &[u8], words: &[&[u8]]| words.iter().any(|w| window.windows(w.len()).any(|x| x == *w));
    (0..text.len().saturating_sub(FIELD.len() - 1)).filter(|at| text[*at..].starts_with(FIELD)).any(|at| {
        let before = &text[at.saturating_sub(60)..at];
        let after = &text[at + FIELD.len()..(at + FIELD.len() + 80).min(text.len())];
        found(before, BEFORE) || found(after, AFTER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_400_refusing_stream_options_is_a_refusal_of_the_field() {
        let refusals: &[&[u8]] = &[
            br#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error"}}"#,
            br#"{"error":{"message":"Unknown parameter: 'stream_options'.","type":"invalid_request_error","param":"stream_options"}}"#,
            br#"{"detail":[{"loc":["body","stream_options"],"msg":"extra fields not permitted","type":"value_error.extra"}]}"#,
            br#"{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"],"msg":"Extra inputs are not permitted"}]}"#,
            br#"{"error":{"message":"Unsupported parameter: stream_options"}}"#,
        ];
        for body in refusals {
            assert!(refuses_stream_options(http::StatusCode::BAD_REQUEST, body), "{}", String::from_utf8_lossy(body));
        }
        assert!(refuses_stream_options(http::StatusCode::UNPROCESSABLE_ENTITY, refusals[3]));
        assert!(!refuses_stream_options(http::StatusCode::BAD_REQUEST, b"{\"error\":{\"message\":\"bad\"}}"));
        assert!(!refuses_stream_options(http::StatusCode::UNAUTHORIZED, refusals[0]));
    }

    #[test]
    fn an_error_that_only_echoes_the_request_is_no_refusal_of_the_field() {
        let echo = br#"{"error":{"message":"temperature must be at most 2","request":{"model":"m","stream":true,"stream_options":{"include_usage":true},"temperature":5}}}"#;
        assert!(!refuses_stream_options(http::StatusCode::BAD_REQUEST, echo));
        let named = br#"{"error":{"message":"Invalid value for stream_options.include_usage: expected a boolean"}}"#;
        assert!(!refuses_stream_options(http::StatusCode::BAD_REQUEST, named));
    }
}

#[cfg(test)]
mod not_found_tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log sink the test reads back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_run_of_404s_is_logged_once_with_the_url_tried() {
        let sink = Sink::default();
        let make = {
            let sink = sink.clone();
            move || sink.clone()
        };
        let subscriber = tracing_subscriber::fmt().with_writer(make).with_ansi(false).finish();
        let q = Quirks::default();
        let url: http::Uri = "http://user:secret@127.0.0.1:9/chat/completions".parse().unwrap();
        tracing::subscriber::with_default(subscriber, || {
            q.note_status(http::StatusCode::NOT_FOUND, &url);
            q.note_status(http::StatusCode::NOT_FOUND, &url);
            q.note_status(http::StatusCode::OK, &url);
            for _ in 0..5 {
                q.note_status(http::StatusCode::NOT_FOUND, &url);
            }
        });
        let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(log.matches("answered 404 to 3 requests in a row").count(), 1, "{log}");
        assert!(log.contains("127.0.0.1:9/chat/completions") && !log.contains("secret"), "{log}");
    }
}
