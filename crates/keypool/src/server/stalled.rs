//! A caller's socket whose writes must make progress: a write (or flush)
//! that stays pending for longer than the write timeout fails the
//! connection. That is how a caller that stops reading a stream lets go of
//! what its request holds: hyper drops the response body, which finishes the
//! key's lease as cancelled and gives its in-flight slot back.
//!
//! A write is pending only when the socket's send buffer is full, that is when
//! the caller does not read; an upstream that is slow to answer leaves the
//! body pending instead, which this does not time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with a limit on how long its writes may stay pending.
pub struct Stalled<T> {
    inner: T,
    /// Told of every read that brings bytes (for the head timer).
    reads: Option<std::sync::Arc<super::service::ConnState>>,
    timeout: Duration,
    /// Allocated on the first write that has to wait, then reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer is running for the current wait.
    waiting: bool,
}

impl<T> Stalled<T> {
    pub fn new(inner: T, timeout: Duration) -> Stalled<T> {
        Stalled { inner, reads: None, timeout, timer: None, waiting: false }
    }

    /// Tells `conn` whenever bytes arrive.
    pub fn noting_reads(mut self, conn: std::sync::Arc<super::service::ConnState>) -> Stalled<T> {
        self.reads = Some(conn);
        self
    }

    /// Notes that a write made progress (or failed): the next wait starts afresh.
    fn progressed<R>(&mut self, result: Poll<R>) -> Poll<R> {
        if result.is_ready() {
            self.waiting = false;
        }
        result
    }

    /// The write is pending: starts the clock if needed (registering this
    /// task to be woken when it runs out) and fails once it has.
    fn wait<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let deadline = Instant::now() + self.timeout;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the caller read nothing for {:?} (server.write_timeout)", self.timeout),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalled<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Some(conn), Poll::Ready(Ok(()))) = (&self.reads, &read) {
            if buf.filled().len() > before {
                conn.bytes_read(&buf.filled()[before..]);
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalled<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.wait(cx),
            done => this.progressed(done),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.wait(cx),
            done => this.progressed(done),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.wait(cx),
            done => this.progressed(done),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.wait(cx),
            done => this.progressed(done),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A pipe nobody reads: writes succeed until its buffer is full, then
    /// fail once the timeout has passed without progress.
    #[tokio::test(start_paused = true)]
    async fn a_write_pending_past_the_timeout_fails() {
        let (near, _far) = tokio::io::duplex(64);
        let mut stalled = Stalled::new(near, Duration::from_secs(5));
        stalled.write_all(&[1; 64]).await.unwrap();
        let started = Instant::now();
        let err = stalled.write_all(&[2; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// A slow reader that keeps reading is never cut off, however long the
    /// whole transfer takes.
    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_up_is_never_cut_off() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                match far.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let mut stalled = Stalled::new(near, Duration::from_secs(5));
        stalled.write_all(&[7; 160]).await.unwrap();
        stalled.shutdown().await.unwrap();
        drop(stalled);
        assert_eq!(reader.await.unwrap(), 160);
    }
}
