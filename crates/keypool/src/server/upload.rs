//! A caller's upload, watched as it is sent: the first-byte clock starts
//! only once the whole body has gone upstream, and a body that stops
//! part-way (the caller slow or gone) is the caller's fault alone, never
//! the upstream's (so it cannot open the upstream's breaker for everyone).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use crate::upstream::{BodyError, ByteStream};

/// Where an upload stands. A body dropped unfinished stays `Sending` or
/// `Handed` (and its sender closes): the send failed for another reason
/// than the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Waiting for the caller's next bytes.
    Sending,
    /// A chunk went to the upstream at this instant and the upstream has not
    /// asked for the next since: while it stays so, the upstream (not the
    /// caller) is the one holding the upload up.
    Handed(tokio::time::Instant),
    Complete,
    /// The caller's body failed (too slow, reset, cut short).
    Failed,
}

/// Wraps `inner` so the returned receiver follows its progress.
pub fn watch_upload(inner: ByteStream) -> (ByteStream, watch::Receiver<Sent>) {
    let (tx, rx) = watch::channel(Sent::Sending);
    (Box::pin(Watched { inner, tx }), rx)
}

struct Watched {
    inner: ByteStream,
    tx: watch::Sender<Sent>,
}

impl Stream for Watched {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                self.tx.send_replace(Sent::Handed(tokio::time::Instant::now()));
            }
            Poll::Pending => {
                self.tx.send_if_modified(|s| {
                    let handed = matches!(s, Sent::Handed(_));
                    if handed {
                        *s = Sent::Sending;
                    }
                    handed
                });
            }
            Poll::Ready(None) => {
                self.tx.send_replace(Sent::Complete);
            }
            Poll::Ready(Some(Err(_))) => {
                self.tx.send_replace(Sent::Failed);
            }
        }
        polled
    }
}
