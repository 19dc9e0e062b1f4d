//! The upstream's answer on its way to the caller.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use keypool_sse::{UsageStripper, UsageTap};
use std::borrow::Cow;

use crate::config::Price;
use crate::scheduler::{KeyLease, Outcome, Verdict};

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Each chunk is forwarded as it arrives (never buffered whole) while the
/// tap reads usage from it; a usage event keypool asked for itself is
/// removed. The key's lease is finished with the real usage when the body
/// ends, or given back as failed if the caller goes away first (the lease's drop).
pub struct Metered {
    inner: ByteStream,
    tap: UsageTap,
    stripper: Option<UsageStripper>,
    lease: Option<KeyLease>,
    price: Option<Price>,
    done: bool,
}

impl Metered {
    pub fn new(
        inner: ByteStream,
        tap: UsageTap,
        stripper: Option<UsageStripper>,
        lease: KeyLease,
        price: Option<Price>,
    ) -> Metered {
        Metered { inner, tap, stripper, lease: Some(lease), price, done: false }
    }

    fn finish(&mut self, delivered: bool) {
        if let Some(lease) = self.lease.take() {
            let usage = self.tap.finish().usage;
            let cost_micros = match (usage, self.price) {
                (Some(u), Some(p)) => Some(super::proxy::micros(u.prompt_tokens, u.completion_tokens, p)),
                (Some(_), None) => Some(0),
                _ => None,
            };
            lease.finish(Outcome { success: delivered, usage, cost_micros, verdict: Verdict::Fine });
        }
    }
}

impl Stream for Metered {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.tap.feed(&chunk);
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
                    tracing::warn!(error = %e, "upstream body failed part-way");
                    this.finish(false);
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.finish(true);
                    this.done = true;
                    let rest = this.stripper.as_mut().map(UsageStripper::finish).unwrap_or_default();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(rest))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
