//! Observing a finished request: counts, latency, first byte, queue wait
//! and upstream 429s, through metric handles cached per worker thread, so
//! the request path neither allocates label sets nor looks up the
//! recorder's registry (after a label set's first request on a thread).

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{Counter, Histogram};

use super::labels::LabelId;
use super::{QUEUE_WAIT, REQUESTS, REQUEST_DURATION, TTFB, UPSTREAM_429};
use crate::records::rollup::ErrorKind;
use crate::records::RequestRecord;

/// Raw model names remembered per thread at most (each maps to its label);
/// past it a name is matched again each time, so callers that invent
/// names cannot grow the memory.
const MODEL_NAMES_MAX: usize = 4096;

/// Handles already registered on this thread.
#[derive(Default)]
struct Cache {
    models: HashMap<Box<str>, LabelId>,
    requests: HashMap<(LabelId, u16, u8), (Counter, Histogram)>,
    ttfb: HashMap<LabelId, Histogram>,
    queue_wait: Option<Histogram>,
    upstream_429: Option<Counter>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Counts a request that ended, from its record (before it goes to the
/// writer; with records off it is still counted). Does nothing until the
/// exporter is installed.
pub fn request_ended(record: &RequestRecord) {
    let Some(installed) = super::installed() else { return };
    let kind = ErrorKind::of_request(record);
    let seconds = |us: u64| us as f64 / 1e6;
    CACHE.with_borrow_mut(|cache| {
        let labels = &installed.labels;
        let model = match record.model.as_deref() {
            None => labels.of(None),
            Some(name) => match cache.models.get(name) {
                Some(id) => *id,
                None => {
                    let id = labels.of(Some(name));
                    if cache.models.len() < MODEL_NAMES_MAX {
                        cache.models.insert(name.into(), id);
                    }
                    id
                }
            },
        };
        let status = status_slot(record.status);
        let (count, duration) = cache.requests.entry((model, status, kind_slot(kind))).or_insert_with(|| {
            let labels = [
                ("model", labels.name(model).to_owned()),
                ("status", status_label(status)),
                ("kind", kind_label(kind).to_owned()),
            ];
            (metrics::counter!(REQUESTS, &labels), metrics::histogram!(REQUEST_DURATION, &labels))
        });
        count.increment(1);
        duration.record(seconds(record.duration_us));
        if let Some(ttfb) = record.ttfb_us {
            let name = labels.name(model);
            let h = cache.ttfb.entry(model).or_insert_with(|| metrics::histogram!(TTFB, "model" => name.to_owned()));
            h.record(seconds(ttfb));
        }
        cache.queue_wait.get_or_insert_with(|| metrics::histogram!(QUEUE_WAIT)).record(seconds(record.queue_wait_us));
        let rate_limited = record.attempts.iter().filter(|a| a.status == 429).count() as u64;
        if rate_limited > 0 {
            cache.upstream_429.get_or_insert_with(|| metrics::counter!(UPSTREAM_429)).increment(rate_limited);
        }
    });
}

/// The status as a label slot: the code when it is an HTTP status, 0 when
/// none was sent, 1 for anything else.
fn status_slot(status: u16) -> u16 {
    match status {
        0 => 0,
        100..=599 => status,
        _ => 1,
    }
}

fn status_label(slot: u16) -> String {
    match slot {
        0 => "none".to_owned(),
        1 => "other".to_owned(),
        code => code.to_string(),
    }
}

fn kind_slot(kind: Option<ErrorKind>) -> u8 {
    kind.map_or(0, |k| k as u8 + 1)
}

/// `ok`, or the error class as the rollups name it.
pub fn kind_label(kind: Option<ErrorKind>) -> &'static str {
    match kind {
        None => "ok",
        Some(ErrorKind::Caller) => "caller",
        Some(ErrorKind::RateLimited) => "rate_limited",
        Some(ErrorKind::Key) => "key",
        Some(ErrorKind::Timeout) => "timeout",
        Some(ErrorKind::Upstream) => "upstream",
        Some(ErrorKind::Gateway) => "gateway",
        Some(ErrorKind::Cancelled) => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_bounded() {
        assert_eq!(status_label(status_slot(200)), "200");
        assert_eq!(status_label(status_slot(0)), "none");
        assert_eq!(status_label(status_slot(999)), "other");
    }
}
