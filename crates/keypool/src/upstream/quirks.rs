//! What this upstream is known to refuse, learned from its answers and
//! shared by every worker: today, the `stream_options` keypool adds to ask
//! for a stream's usage (some OpenAI-compatible servers answer 400 to an
//! unknown parameter).

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Quirks {
    refuses_stream_options: AtomicBool,
}

impl Quirks {
    /// Whether the upstream refused an added `stream_options` before.
    pub fn refuses_stream_options(&self) -> bool {
        self.refuses_stream_options.load(Ordering::Relaxed)
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

/// Whether a 400 says the upstream does not know `stream_options`
/// ("Unrecognized request argument supplied: stream_options",
/// "Unknown parameter: 'stream_options'", "extra fields not permitted").
pub fn refuses_stream_options(status: http::StatusCode, body: &[u8]) -> bool {
    if status != http::StatusCode::BAD_REQUEST && status != http::StatusCode::UNPROCESSABLE_ENTITY {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("stream_options")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_400_naming_stream_options_is_a_refusal_of_the_field() {
        let body = br#"{"error":{"message":"Unrecognized request argument supplied: stream_options","type":"invalid_request_error"}}"#;
        assert!(refuses_stream_options(http::StatusCode::BAD_REQUEST, body));
        assert!(!refuses_stream_options(http::StatusCode::BAD_REQUEST, b"{\"error\":{\"message\":\"bad\"}}"));
        assert!(!refuses_stream_options(http::StatusCode::UNAUTHORIZED, body));
    }
}
