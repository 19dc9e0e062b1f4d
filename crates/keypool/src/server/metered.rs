//! The upstream's answer on its way to the caller.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use keypool_sse::{StreamProtocol, Terminal, UsageStripper, UsageTap};
use tokio::time::{Instant, Sleep};

use super::context::RequestContext;
use crate::config::models::ModelPrice;
use crate::scheduler::{KeyLease, Outcome, Verdict};
use crate::upstream::{BodyError, ByteStream};

/// Each chunk is forwarded as it arrives (never buffered whole) while the
/// tap reads usage from it; a usage event keypool asked for itself is
/// removed. The key's lease is finished with the real usage when the body
/// ends; if the caller goes away first, dropping this drops the upstream
/// connection at once and the lease is finished as cancelled.
///
/// After the first byte nothing is retried: an SSE answer that breaks (an
/// error, or silence past the idle timeout, or a close before the end its
/// protocol defines) ends with an OpenAI-shaped error event and
/// `data: [DONE]`, so the caller's SDK sees why it stopped. A stream that
/// ended properly gets nothing appended (see [`StreamProtocol`]).
pub struct Metered {
    inner: ByteStream,
    tap: UsageTap,
    stripper: Option<UsageStripper>,
    lease: Option<KeyLease>,
    price: Option<ModelPrice>,
    sse: bool,
    idle: Duration,
    /// Fires at the idle timeout or the total deadline, whichever is first.
    timer: Pin<Box<Sleep>>,
    total: Instant,
    /// Bytes to send after the upstream's, then end.
    tail: Option<Bytes>,
    done: bool,
    expect: Expect,
    /// The request's context, ended with the answer.
    ctx: Option<Box<RequestContext>>,
    /// The answer's body for the record, when records keep bodies.
    body: Option<Box<crate::records::body::Assembler>>,
    /// The answer's first bytes, when the request creates an object whose
    /// id must be remembered with its key (`routing::affinity`).
    objects: Option<Box<ObjectTap>>,
}

/// Keeps an answer's first [`ObjectTap::HEAD`] bytes to read the created
/// object's id from.
struct ObjectTap {
    head: Vec<u8>,
    affinity: std::sync::Arc<crate::routing::Affinity>,
}

impl ObjectTap {
    /// Enough for any create answer's `id` (it comes first, or in the
    /// stream's first event).
    const HEAD: usize = 16 * 1024;
}

/// What the request leads keypool to expect of its answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    /// How the endpoint's streams end (from its path).
    pub protocol: StreamProtocol,
    /// The gateway's estimate of the prompt, used with the streamed text
    /// when the upstream reports no usage.
    pub prompt_tokens: u64,
}

impl Metered {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: ByteStream,
        tap: UsageTap,
        stripper: Option<UsageStripper>,
        lease: KeyLease,
        price: Option<ModelPrice>,
        sse: bool,
        idle: Duration,
        total: Instant,
    ) -> Metered {
        let timer = Box::pin(tokio::time::sleep_until((Instant::now() + idle).min(total)));
        Metered {
            inner,
            tap,
            stripper,
            lease: Some(lease),
            price,
            sse,
            idle,
            timer,
            total,
            tail: None,
            done: false,
            expect: Expect::default(),
            ctx: None,
            body: None,
            objects: None,
        }
    }

    /// Remembers the id of the object this answer creates with its key.
    pub fn objects(mut self, affinity: std::sync::Arc<crate::routing::Affinity>) -> Metered {
        self.objects = Some(Box::new(ObjectTap { head: Vec::new(), affinity }));
        self
    }

    /// Sets what the answer should look like (the default expects any
    /// stream to end when the upstream closes, and no prompt).
    pub fn expect(mut self, expect: Expect) -> Metered {
        self.expect = expect;
        self
    }

    /// Hands the body the request's context, to end when the body ends.
    pub fn context(mut self, ctx: Box<RequestContext>) -> Metered {
        self.body = ctx.bodies().map(|max| Box::new(crate::records::body::Assembler::new(self.sse, max)));
        self.ctx = Some(ctx);
        self
    }

    /// The stream reached the end its protocol defines: what follows (a
    /// close, a reset, silence) cannot break it. An `error` event is a
    /// proper end that still failed.
    fn ended(&mut self) -> Option<bool> {
        let outcome = self.tap.finish();
        (!self.sse || outcome.ended(self.expect.protocol)).then_some(outcome.terminal != Some(Terminal::Error))
    }

    fn finish(&mut self, success: bool, verdict: Verdict) {
        let created = self.objects.take().filter(|_| success).and_then(|tap| {
            let id = crate::routing::affinity::created_id(&tap.head, self.sse)?;
            Some((id, tap.affinity))
        });
        if let Some(lease) = self.lease.take() {
            if let Some((id, affinity)) = &created {
                affinity.remember(id, lease.key_id());
            }
            // No usage reported (an upstream that refused `stream_options`):
            // estimated from the streamed text rather than lost.
            let usage = self.tap.finish().usage_or_estimate(self.expect.prompt_tokens);
            if let Some(u) = usage.filter(|u| u.estimated) {
                tracing::debug!(
                    key_id = lease.key_id(),
                    completion_tokens = u.completion_tokens,
                    "the stream reported no usage; estimated from its text"
                );
            }
            let cost_micros = match (usage, self.price) {
                (Some(u), Some(p)) => Some(p.cost_micros(&u)),
                (Some(_), None) => Some(0),
                _ => None,
            };
            let counted = lease.finish(Outcome { success, usage, cost_micros, verdict });
            if let Some(mut ctx) = self.ctx.take() {
                if let Some(body) = self.body.take() {
                    ctx.response_body(body.finish());
                }
                if let Some((id, _)) = created {
                    ctx.created_object(id);
                }
                // An unpriced model's cost is unknown, not free.
                ctx.usage(usage, self.price.and(cost_micros));
                ctx.counted(counted);
                if verdict == Verdict::Cancelled {
                    ctx.cancelled();
                } else if !success {
                    ctx.interrupted();
                }
                ctx.end();
            }
        }
    }

    /// Like [`Metered::ended`], for a stream that broke (a reset, silence):
    /// only an end marker seen before the break counts, not a chat
    /// `finish_reason` alone nor a close that never came.
    fn ended_before_break(&mut self) -> Option<bool> {
        let outcome = self.tap.finish();
        outcome.ended_before_break(self.expect.protocol).then_some(outcome.terminal != Some(Terminal::Error))
    }

    /// The stream broke after its first byte: tell an SSE caller why, then
    /// end. After a proper end nothing is broken, and nothing is appended.
    fn broke(&mut self, why: &str) -> Option<Bytes> {
        if let Some(fine) = self.sse.then(|| self.ended_before_break()).flatten() {
            tracing::debug!(reason = why, "upstream stream closed after its end");
            self.finish_ended(fine);
            return Some(Bytes::new());
        }
        tracing::warn!(reason = why, "upstream answer broke off part-way");
        self.finish(false, Verdict::UpstreamError);
        self.sse.then(|| error_event(why))
    }

    /// Finishes a stream that reached its protocol's end: a success, unless
    /// that end was an `error` event (the upstream's failure, not the key's).
    fn finish_ended(&mut self, fine: bool) {
        if fine {
            self.finish(true, Verdict::Fine);
        } else {
            self.finish(false, Verdict::UpstreamError);
        }
    }
}

/// An OpenAI-shaped error event followed by `[DONE]`.
fn error_event(why: &str) -> Bytes {
    let error = serde_json::json!({"error": {
        "message": format!("The upstream stream broke off: {why}. Nothing was retried, since part of the answer was already sent."),
        "type": "upstream_error", "param": null, "code": "stream_interrupted"
    }});
    Bytes::from(format!("data: {error}\n\ndata: [DONE]\n\n"))
}

impl Stream for Metered {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(tail) = this.tail.take().filter(|t| !t.is_empty()) {
                return Poll::Ready(Some(Ok(tail)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let next = (Instant::now() + this.idle).min(this.total);
                    this.timer.as_mut().reset(next);
                    this.tap.feed(&chunk);
                    if let Some(body) = this.body.as_mut() {
                        body.feed(&chunk);
                    }
                    if let Some(tap) = this.objects.as_mut() {
                        let room = ObjectTap::HEAD.saturating_sub(tap.head.len());
                        tap.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    }
                    let Some(stripper) = this.stripper.as_mut() else {
                        return Poll::Ready(Some(Ok(chunk)));
                    };
                    let out = match stripper.push(&chunk) {
                        Cow::Borrowed(prefix) => chunk.slice(..prefix.len()),
                        Cow::Owned(bytes) => Bytes::from(bytes),
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    match this.broke(&format!("the connection failed ({e})")) {
                        Some(event) => this.tail = Some(event),
                        None => return Poll::Ready(Some(Err(e))),
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let outcome = this.tap.finish();
                    let held = this.stripper.as_mut().map(UsageStripper::finish).unwrap_or_default();
                    let mut tail = held;
                    if let Some(fine) = this.ended() {
                        this.finish_ended(fine);
                    } else if outcome.saw_error {
                        // The upstream said why; it only left out the end marker.
                        this.finish(false, Verdict::UpstreamError);
                        tail.extend_from_slice(b"data: [DONE]\n\n");
                    } else if let Some(event) = this.broke("it closed before the end of the stream") {
                        tail.extend_from_slice(&event);
                    }
                    if !tail.is_empty() {
                        this.tail = Some(Bytes::from(tail));
                    }
                }
                Poll::Pending => {
                    if this.timer.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        let why = if Instant::now() >= this.total {
                            "the total timeout passed".to_owned()
                        } else {
                            format!("no data for {:?}", this.idle)
                        };
                        match this.broke(&why) {
                            Some(event) => this.tail = Some(event),
                            None => return Poll::Ready(None),
                        }
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.lease.is_some() {
            crate::metrics::cancelled();
            tracing::info!("the caller went away before the answer was complete; upstream connection dropped");
            self.finish(false, Verdict::Cancelled);
        }
    }
}
