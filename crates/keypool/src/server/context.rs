//! One request's context, from the edge to its one end.
//!
//! Created when a request reaches the handler, it gathers what the request
//! did (who sent it, what it asked for, each attempt, the wait, the first
//! byte, the usage and cost) and is ended exactly once: by the handler for
//! an answer that is complete when it leaves (an error, a small body), by
//! the answer's body when a streamed answer ends, or, when neither happens
//! (the caller went away, the server stopped), when it is dropped. Its end
//! produces the request's record.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{request::Parts, HeaderMap, HeaderValue};
use keypool_sse::Usage;
use tokio::time::Instant;

use super::auth::TokenId;
use super::signal::GraceEnd;
use crate::records::{error_type, Attempt, Counted, Recorder, RequestRecord};
use crate::scheduler::Charged;
use crate::store::now_unix_ms;

/// The response header carrying keypool's request id.
pub const REQUEST_ID_HEADER: &str = "x-keypool-request-id";
/// OpenAI's header for a caller's own request id: adopted as keypool's.
pub const CLIENT_REQUEST_ID_HEADER: &str = "x-client-request-id";
/// Longest `X-Client-Request-Id` adopted, as OpenAI allows (512 ASCII characters).
const CLIENT_REQUEST_ID_MAX: usize = 512;
/// Longest user agent, `user` field or upstream request id kept in a record.
const TEXT_MAX: usize = 512;

/// A request's facts as its answer's head reports them (all in µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadFacts {
    /// The key of the last attempt; `None` when no attempt was sent.
    pub key_id: Option<i64>,
    /// Attempts sent upstream.
    pub attempts: u32,
    /// Time waited for a key with room (or for the upstream's breaker).
    pub queue_us: u64,
    /// The attempts' durations summed, each from its send to its answer's
    /// head (or its failure).
    pub upstream_us: u64,
    /// From the request's arrival to now.
    pub elapsed_us: u64,
}

/// One request's facts, ended once (see the module's comment). Boxed by its
/// owner so that the futures carrying it stay small.
#[derive(Debug)]
pub struct RequestContext {
    recorder: Recorder,
    started: Instant,
    record: RequestRecord,
    /// The attempt under way: its key and when it was sent.
    attempt: Option<(i64, Instant, Counted)>,
    /// Waiting for a key (or for the upstream's breaker) since then.
    queued: Option<Instant>,
    /// Ended when the stop's grace has passed: what is cut then was cut by
    /// the gateway, not left by the caller.
    grace: Option<GraceEnd>,
    /// The request's hold on its token's limits and budget, settled at its end.
    ticket: Option<crate::tenants::Ticket>,
    ended: bool,
}

impl RequestContext {
    /// A context for the request whose head is `parts`, sent from `client`
    /// (the caller's address, as [`super::client::real_client`] finds it).
    pub fn begin(recorder: Recorder, parts: &Parts, client: Option<IpAddr>, started: Instant) -> RequestContext {
        let headers = &parts.headers;
        let request_id = client_request_id(headers).map_or_else(new_request_id, str::to_owned);
        let grace = parts.extensions.get::<GraceEnd>().cloned();
        RequestContext {
            recorder,
            started,
            record: RequestRecord {
                request_id,
                started_at: now_unix_ms(),
                client_addr: client.map(|ip| ip.to_string()),
                user_agent: text_header(headers, axum::http::header::USER_AGENT.as_str()),
                method: parts.method.as_str().to_owned(),
                path: text(parts.uri.path()),
                ..RequestRecord::default()
            },
            attempt: None,
            queued: None,
            grace,
            ticket: None,
            ended: false,
        }
    }

    /// keypool's id for this request (`x-keypool-request-id`).
    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    /// The request id as a response header value.
    pub fn request_id_header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.record.request_id).ok()
    }

    /// What the answer's head tells the caller about this request so far
    /// (read when the head is made: for a stream, before its body).
    pub fn head_facts(&self) -> HeadFacts {
        let mut upstream_us: u64 = self.record.attempts.iter().map(|a| a.duration_us).sum();
        let mut attempts = self.record.attempts.len() as u32;
        if let Some((_, sent, _)) = &self.attempt {
            upstream_us = upstream_us.saturating_add(micros(Instant::now().saturating_duration_since(*sent)));
            attempts += 1;
        }
        let mut queue_us = self.record.queue_wait_us;
        if let Some(since) = self.queued {
            queue_us = queue_us.saturating_add(micros(Instant::now().saturating_duration_since(since)));
        }
        HeadFacts {
            key_id: self.record.key_id,
            attempts,
            queue_us,
            upstream_us,
            elapsed_us: micros(Instant::now().saturating_duration_since(self.started)),
        }
    }

    /// The model the caller asked for, once inspection read it.
    pub fn model(&self) -> Option<&str> {
        self.record.model.as_deref()
    }

    pub fn set_token(&mut self, token: TokenId) {
        self.record.token_id = Some(token.0);
    }

    /// The request was admitted by its token's limits and budget: `ticket`
    /// is settled with what it used and spent when the request ends.
    pub fn hold(&mut self, ticket: crate::tenants::Ticket) {
        self.ticket = Some(ticket);
    }

    /// What inspection read from the body: the model, whether it streams,
    /// and OpenAI's end-user id (`user`).
    pub fn set_request(&mut self, model: Option<&str>, stream: bool, end_user: Option<&str>) {
        self.record.model = model.map(text);
        self.record.stream = stream;
        self.record.end_user = end_user.map(text);
    }

    /// The request starts waiting for a key with room (or for the
    /// upstream's breaker to close).
    pub fn queue(&mut self) {
        self.unqueue();
        self.queued = Some(Instant::now());
    }

    /// The wait is over; it counts in `queue_wait_us` (so does a wait the
    /// caller gave up on, when the context ends).
    pub fn unqueue(&mut self) {
        if let Some(since) = self.queued.take() {
            let us = micros(Instant::now().saturating_duration_since(since));
            self.record.queue_wait_us = self.record.queue_wait_us.saturating_add(us);
        }
    }

    /// An attempt is sent with `key_id`.
    pub fn attempt_sent(&mut self, key_id: i64) {
        self.close_attempt(0, "unfinished");
        self.attempt = Some((key_id, Instant::now(), Counted::default()));
        self.record.key_id = Some(key_id);
    }

    /// The attempt under way ended: the upstream's status (0 when none came) and why.
    pub fn attempt_ended(&mut self, status: u16, reason: &'static str) {
        self.close_attempt(status, reason);
    }

    fn close_attempt(&mut self, status: u16, reason: &'static str) {
        if let Some((key_id, sent, counted)) = self.attempt.take() {
            let duration_us = micros(Instant::now().saturating_duration_since(sent));
            self.record.attempts.push(Attempt { key_id, status, reason: reason.into(), duration_us, counted });
        }
    }

    /// What the attempt counts for in its key's totals, as its lease's end
    /// said ([`crate::scheduler::KeyLease::finish`]): the attempt under way,
    /// or the last one when its answer's body ended after it closed.
    /// A charge to the key that answered also becomes the request's cost
    /// when the answer priced none (a success without usage is charged its
    /// estimate), so the key's stored spend, summed from the records, is
    /// what the scheduler counted.
    pub fn counted(&mut self, charged: Charged) {
        match (&mut self.attempt, self.record.attempts.last_mut()) {
            (Some(open), _) => open.2 = charged.counted,
            (None, Some(last)) => last.counted = charged.counted,
            (None, None) => {}
        }
        if charged.cost_micros > 0 && self.record.cost_micros.is_none() {
            self.record.cost_micros = Some(charged.cost_micros);
        }
    }

    /// The upstream's answer head arrived: the time to first byte, and the
    /// upstream's own request id.
    pub fn answered(&mut self, upstream: &HeaderMap) {
        self.record.ttfb_us = Some(micros(Instant::now().saturating_duration_since(self.started)));
        self.record.upstream_request_id = text_header(upstream, "x-request-id");
    }

    /// The status the caller gets.
    pub fn status(&mut self, status: u16) {
        self.record.status = status;
    }

    /// Why the request failed, in keypool's words: an [`ApiError`]'s code,
    /// an attempt's reason, or one of [`error_type`]'s.
    ///
    /// [`ApiError`]: super::ApiError
    pub fn error(&mut self, kind: &'static str) {
        self.record.error_type = Some(kind.into());
    }

    /// The answer's usage and cost, once known.
    pub fn usage(&mut self, usage: Option<Usage>, cost_micros: Option<u64>) {
        if let Some(u) = usage {
            self.record.prompt_tokens = Some(u.prompt_tokens);
            self.record.completion_tokens = Some(u.completion_tokens);
            self.record.cached_tokens = Some(u.cached_tokens);
            self.record.reasoning_tokens = Some(u.reasoning_tokens);
            self.record.usage_estimated = u.estimated;
        }
        self.record.cost_micros = cost_micros;
    }

    /// The most of each body kept, when records keep bodies.
    pub fn bodies(&self) -> Option<usize> {
        self.recorder.bodies()
    }

    /// The caller's request body, kept (cut) when records keep bodies.
    pub fn request_body(&mut self, body: &[u8]) {
        if let Some(max) = self.bodies() {
            self.record.request_body = Some(crate::records::body::cut(body, max));
        }
    }

    /// An error answer's body (as the caller gets it, quoted or passed on),
    /// kept (cut) when records keep bodies.
    pub fn error_body(&mut self, body: &[u8]) {
        if let Some(max) = self.bodies() {
            self.record.response_body = Some(crate::records::body::cut(body, max));
        }
    }

    /// The answer's body as the caller got it (a stream's text), already cut.
    pub fn response_body(&mut self, text: String) {
        if self.bodies().is_some() {
            self.record.response_body = Some(text);
        }
    }

    /// The request created the object `id` (see `routing::affinity`).
    pub fn created_object(&mut self, id: String) {
        self.record.created_object = Some(id);
    }

    /// The answer broke off after part of it reached the caller.
    pub fn interrupted(&mut self) {
        self.record.error_type = Some(error_type::STREAM_INTERRUPTED.into());
    }

    /// The request ended before its answer was complete: the caller went
    /// away, or the gateway cut it at the end of the stop's grace (an open
    /// stream got its error event, a waiting request 503).
    pub fn cancelled(&mut self) {
        if self.grace.as_ref().is_some_and(GraceEnd::has_passed) {
            if self.record.status == 0 {
                self.record.status = 503;
            }
            self.record.error_type = Some(error_type::SHUTTING_DOWN.into());
            return;
        }
        self.record.cancelled = true;
        if self.record.error_type.is_none() {
            self.record.error_type = Some(error_type::CANCELLED.into());
        }
    }

    /// Ends the request: its record goes to the writer. Dropping the
    /// context ends it too (as cancelled, when nothing answered).
    pub fn end(mut self) {
        self.finish();
    }

    /// Ends the request with the status the caller got, unless one was set
    /// before; a failure that no one named is the upstream's.
    pub fn end_as(mut self, status: u16) {
        if self.record.status == 0 {
            self.record.status = status;
        }
        if self.record.status >= 400 && self.record.error_type.is_none() {
            self.record.error_type = Some(error_type::UPSTREAM_ERROR.into());
        }
        self.finish();
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.unqueue();
        self.close_attempt(0, "cancelled");
        self.record.duration_us = micros(Instant::now().saturating_duration_since(self.started));
        if let Some(ticket) = self.ticket.take() {
            let r = &self.record;
            // Tokens as the usage said; without it, the estimate.
            let used_tokens = match (r.prompt_tokens, r.completion_tokens) {
                (Some(p), Some(c)) => Some(p.saturating_add(c)),
                (p, _) => p,
            };
            let sent = !r.attempts.is_empty();
            ticket.settle(crate::tenants::End { sent, used_tokens, cost_micros: r.cost_micros.unwrap_or(0) });
        }
        crate::metrics::request_ended(&self.record);
        log_request(&self.record);
        crate::telemetry::request_span(&self.record);
        if self.recorder.is_on() {
            self.recorder.record(std::mem::take(&mut self.record));
        }
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        if !self.ended {
            // Nothing ended it: the handler was dropped (the caller went
            // away, or the server stopped) before an answer was complete.
            if self.record.status == 0 {
                self.cancelled();
            }
            self.finish();
        }
    }
}

/// The request's one line at info (target `keypool::request`): its ids,
/// model, status, attempts, latency and tokens; never a body or a secret.
fn log_request(r: &RequestRecord) {
    tracing::info!(
        target: "keypool::request",
        request_id = %r.request_id,
        method = %r.method,
        path = %r.path,
        client = r.client_addr.as_deref(),
        token_id = r.token_id,
        key_id = r.key_id,
        model = r.model.as_deref(),
        stream = r.stream,
        status = r.status,
        attempts = r.attempts.len(),
        latency_ms = r.duration_us as f64 / 1000.0,
        ttfb_ms = r.ttfb_us.map(|us| us as f64 / 1000.0),
        queue_ms = r.queue_wait_us as f64 / 1000.0,
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        error = r.error_type.as_deref(),
        "request"
    );
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A header's value as [`text`]; `None` when absent or not text.
fn text_header(headers: &HeaderMap, name: &str) -> Option<String> {
    Some(text(headers.get(name)?.to_str().ok()?))
}

/// Caller-given text as a record keeps it: at most [`TEXT_MAX`] characters,
/// without NUL characters (a JSON string may carry `\u0000`, which
/// PostgreSQL refuses in text: one such request must not stop the log).
fn text(s: &str) -> String {
    let cut = s.char_indices().nth(TEXT_MAX).map_or(s.len(), |(i, _)| i);
    let s = &s[..cut];
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_owned()
    }
}

/// The caller's `X-Client-Request-Id` when usable as an id: 1 to 512
/// printable ASCII characters (OpenAI's rule for the header). Another one
/// is ignored (the request is not refused for it) and keypool makes its own.
fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    let id = headers.get(CLIENT_REQUEST_ID_HEADER)?.to_str().ok()?.trim();
    let printable = id.bytes().all(|b| b.is_ascii_graphic());
    (!id.is_empty() && id.len() <= CLIENT_REQUEST_ID_MAX && printable).then_some(id)
}

/// A new request id: `req_`, then 32 hex digits: the time in milliseconds
/// (so ids sort by arrival), a counter, and random bits, so ids from
/// several instances do not collide.
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = u64::try_from(now_unix_ms()).unwrap_or(0);
    let random: u32 = rand::random();
    format!(
        "req_{:012x}{:04x}{:08x}{:08x}",
        ms & 0xffff_ffff_ffff,
        n & 0xffff,
        random,
        (n >> 16) as u32 ^ random.rotate_left(13)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_callers_request_id_is_adopted_only_when_it_is_a_usable_id() {
        let mut h = HeaderMap::new();
        assert_eq!(client_request_id(&h), None);
        h.insert(CLIENT_REQUEST_ID_HEADER, HeaderValue::from_static("my-trace-42"));
        assert_eq!(client_request_id(&h), Some("my-trace-42"));
        for bad in ["", "has space", &"x".repeat(513)] {
            h.insert(CLIENT_REQUEST_ID_HEADER, HeaderValue::from_str(bad).unwrap());
            assert_eq!(client_request_id(&h), None, "{bad:?}");
        }
        h.insert(CLIENT_REQUEST_ID_HEADER, HeaderValue::from_bytes("é".as_bytes()).unwrap());
        assert_eq!(client_request_id(&h), None);
        h.insert(CLIENT_REQUEST_ID_HEADER, HeaderValue::from_str(&"x".repeat(512)).unwrap());
        assert!(client_request_id(&h).is_some());
    }

    #[test]
    fn caller_text_is_cut_and_loses_nul_characters() {
        assert_eq!(text("a\0b"), "ab");
        assert_eq!(text(&"é".repeat(600)).chars().count(), TEXT_MAX);
        assert_eq!(text("plain"), "plain");
    }

    #[test]
    fn request_ids_are_distinct_and_sort_by_time() {
        let ids: Vec<String> = (0..1000).map(|_| new_request_id()).collect();
        let set: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|id| id.len() == 36 && id.starts_with("req_")));
        assert!(ids.windows(2).all(|w| w[0][4..16] <= w[1][4..16]), "the time comes first");
    }
}
