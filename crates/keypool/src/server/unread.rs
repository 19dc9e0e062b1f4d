//! An HTTP/2 answer its caller stopped reading gives its key back.
//!
//! On HTTP/1.1 such a caller fills the socket and the write timeout
//! ([`super::stalled`]) ends the connection. On HTTP/2 the socket stays
//! writable (the caller's library still reads frames and answers pings);
//! the stream's flow-control window fills instead, and hyper stops asking
//! the body for more, so the body cannot notice by itself. A watchdog task
//! per watched answer drops the body once hyper has not come back for it for
//! the write timeout: the key's lease is then finished as cancelled, and the
//! stream is reset when hyper next asks.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `ready_at` while hyper is waiting on the body (not a stall).
const WAITED_ON: u64 = u64::MAX;

struct Shared<B> {
    body: Mutex<Option<B>>,
    base: Instant,
    /// Milliseconds after `base` when the body last handed hyper a frame, or
    /// [`WAITED_ON`].
    ready_at: AtomicU64,
}

/// A body whose caller must keep taking it; see the module doc.
pub struct Unread<B> {
    shared: Arc<Shared<B>>,
    timeout: Duration,
}

impl<B: Send + 'static> Unread<B> {
    /// Watches `body` (spawning its watchdog on the current runtime).
    pub fn watch(body: B, timeout: Duration) -> Unread<B> {
        let shared =
            Arc::new(Shared { body: Mutex::new(Some(body)), base: Instant::now(), ready_at: AtomicU64::new(0) });
        tokio::spawn(watchdog(Arc::downgrade(&shared), timeout));
        Unread { shared, timeout }
    }
}

/// Ends with the answer; drops its body once hyper has not asked for more
/// for `timeout` after taking a frame.
async fn watchdog<B>(shared: Weak<Shared<B>>, timeout: Duration) {
    loop {
        let Some(watched) = shared.upgrade() else { return };
        let at = watched.ready_at.load(Ordering::Relaxed);
        let wake = if at == WAITED_ON {
            Instant::now() + timeout
        } else {
            let due = watched.base + Duration::from_millis(at) + timeout;
            if Instant::now() >= due {
                let dropped = watched.body.lock().unwrap_or_else(|p| p.into_inner()).take();
                if dropped.is_some() {
                    tracing::info!(?timeout, "an HTTP/2 caller stopped reading its answer; its key is given back");
                }
                return;
            }
            due
        };
        drop(watched);
        tokio::time::sleep_until(wake).await;
    }
}

impl<B> Body for Unread<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = &self.shared;
        let mut body = shared.body.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = body.as_mut() else {
            let why = format!("the caller read nothing for {:?} (server.write_timeout)", self.timeout);
            return Poll::Ready(Some(Err(why.into())));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let at = match &polled {
            Poll::Pending => WAITED_ON,
            Poll::Ready(_) => shared.base.elapsed().as_millis().min(u128::from(WAITED_ON - 1)) as u64,
        };
        shared.ready_at.store(at, Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                // Ended: nothing left for the watchdog to guard.
                *body = None;
                shared.ready_at.store(WAITED_ON, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let body = self.shared.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref().map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// Two frames, `gap` apart.
    fn two_frames(gap: Duration) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin + Send + 'static {
        let frames = futures_util::stream::unfold(0, move |i| async move {
            match i {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"one"))), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"two"))), 2))
                }
                _ => None,
            }
        });
        StreamBody::new(Box::pin(frames))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_upstream_is_waited_for() {
        let body = Unread::watch(two_frames(Duration::from_secs(50)), Duration::from_secs(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "onetwo");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_asked_for_past_the_timeout_is_dropped() {
        let mut body = Unread::watch(two_frames(Duration::ZERO), Duration::from_secs(5));
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(body.shared.body.lock().unwrap().is_none(), "the watchdog dropped the body");
        assert!(body.frame().await.unwrap().is_err());
    }
}
