//! A minimum rate for request bodies: a caller that trickles its upload
//! (or goes silent part-way) is cut off with 408, as its own error, instead of
//! holding a key while the upstream waits for the rest and then being blamed
//! on the upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Set on a request (in its extensions) when its body was cut off for
/// arriving too slowly, so the handler can tell that failure from others.
#[derive(Debug, Clone, Default)]
pub struct CallerPace(Arc<AtomicBool>);

impl CallerPace {
    /// Whether the caller's body was cut off as too slow.
    pub fn too_slow(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The error a too-slow body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {rate} bytes/s over {window:?} (server.min_body_rate)")]
pub struct TooSlow {
    rate: u64,
    window: Duration,
}

/// A request body that must deliver at least `rate` bytes per second,
/// measured in windows of `window` that start when the reader has to wait:
/// each window must bring `rate × window` bytes (or the end of the body).
/// Time the handler spends not reading is not held against the caller.
pub struct MinRate<B> {
    inner: B,
    rate: u64,
    window: Duration,
    pace: CallerPace,
    /// Bytes received since the current window started.
    received: u64,
    /// Allocated on the first wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether a window is running.
    running: bool,
}

impl<B> MinRate<B> {
    /// `rate` 0 turns the check off.
    pub fn new(inner: B, rate: u64, window: Duration, pace: CallerPace) -> MinRate<B> {
        MinRate { inner, rate, window, pace, received: 0, timer: None, running: false }
    }

    fn needed(&self) -> u64 {
        (self.rate as f64 * self.window.as_secs_f64()).ceil() as u64
    }
}

impl<B> Body for MinRate<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    if this.received >= this.needed() {
                        this.running = false;
                        this.received = 0;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.rate == 0 => Poll::Pending,
            Poll::Pending => {
                let deadline = Instant::now() + this.window;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.running {
                    this.running = true;
                    this.received = 0;
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pace.0.store(true, Ordering::Relaxed);
                tracing::info!(rate = this.rate, window = ?this.window, "a caller's request body was too slow; cut off");
                Poll::Ready(Some(Err(Box::new(TooSlow { rate: this.rate, window: this.window }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn trickled(
        every: Duration,
        chunk: usize,
        count: usize,
    ) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let chunks = futures_util::stream::unfold(0, move |i| async move {
            if i == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from(vec![b'x'; chunk]))), i + 1))
        });
        StreamBody::new(Box::pin(chunks))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_rate_is_cut_off_within_a_window() {
        let pace = CallerPace::default();
        // 10 bytes a second against 100 bytes/s over 2 s.
        let body = MinRate::new(trickled(Duration::from_secs(1), 10, 1000), 100, Duration::from_secs(2), pace.clone());
        let started = Instant::now();
        let err = body.collect().await.err().unwrap();
        assert!(err.to_string().contains("min_body_rate"), "{err}");
        assert!(pace.too_slow());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_or_faster_is_read_whole() {
        let pace = CallerPace::default();
        let body = MinRate::new(trickled(Duration::from_secs(1), 100, 30), 100, Duration::from_secs(2), pace.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3000);
        assert!(!pace.too_slow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_slow_body_that_ends_within_a_window_passes() {
        let body = MinRate::new(
            trickled(Duration::from_millis(500), 1, 3),
            100,
            Duration::from_secs(2),
            CallerPace::default(),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
    }
}
