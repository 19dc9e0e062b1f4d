//! What every request of a caller's connection passes through before and
//! after the router: its body must keep a minimum rate ([`MinRate`]), the
//! connection knows whether a request is in flight (for its idle timeout),
//! and once a stop's grace has passed, answers still streaming are ended with
//! an error event and requests still waiting are answered 503.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::error::ApiError;
use super::framing::HeadScan;
use super::pace::{CallerPace, MinRate};
use super::signal::{Dormant, GraceEnd};
use super::unread::Unread;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one connection's requests share: how many are in flight, when the
/// last one started or ended, and when the bytes of the next one began.
#[derive(Debug)]
pub struct ConnState {
    born: Instant,
    inflight: AtomicUsize,
    /// Milliseconds after `born`.
    last_active: AtomicU64,
    /// Milliseconds after `born` when the first byte after the last request
    /// arrived (the next head began), or [`NO_HEAD`].
    head_started: AtomicU64,
    /// Told when a head begins, so its clock starts at once.
    head_begun: tokio::sync::Notify,
    /// The framing headers of the head being read (HTTP/1.1).
    head_scan: std::sync::Mutex<HeadScan>,
    /// The last head scanned had both `Transfer-Encoding` and
    /// `Content-Length`: its request is refused.
    ambiguous: AtomicBool,
}

/// `head_started` when no head has begun since the last request.
const NO_HEAD: u64 = u64::MAX;

/// Why a connection with nothing in flight is to be closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Quiet {
    /// Nothing arrived for the keep-alive timeout: close gracefully.
    Idle,
    /// A request head began and did not complete within its timeout: close at once.
    SlowHead,
}

impl ConnState {
    pub fn new() -> ConnState {
        ConnState {
            born: Instant::now(),
            inflight: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            head_started: AtomicU64::new(NO_HEAD),
            head_begun: tokio::sync::Notify::new(),
            head_scan: std::sync::Mutex::new(HeadScan::new()),
            ambiguous: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis().min(u128::from(NO_HEAD - 1)) as u64
    }

    fn touch(&self) {
        self.last_active.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Notes that the caller sent `bytes`: with nothing in flight, they are
    /// (the start of) the next request's head, which has begun.
    pub fn bytes_read(&self, bytes: &[u8]) {
        if self.inflight.load(Ordering::Relaxed) != 0 {
            return;
        }
        let begins = self.head_started.load(Ordering::Relaxed) == NO_HEAD;
        if begins {
            self.head_started.store(self.now_ms(), Ordering::Relaxed);
            self.head_begun.notify_one();
        }
        if let Ok(mut scan) = self.head_scan.lock() {
            if begins {
                *scan = HeadScan::new();
                self.ambiguous.store(false, Ordering::Relaxed);
            }
            scan.feed(bytes);
            if scan.ambiguous() {
                self.ambiguous.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Whether the head of the request now starting named both
    /// `Transfer-Encoding` and `Content-Length` (see [`super::framing`]).
    fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Ordering::Relaxed)
    }

    /// Resolves once the connection has had no request in flight for
    /// `idle`, or (with `head`) once a request head that began has taken
    /// longer than that. Unlike hyper's own head timer, the head's clock
    /// starts at its first byte, so a kept-alive connection may wait longer
    /// than `head` for its next request (a load balancer in front expects
    /// its idle connections to stay open as long as it keeps them).
    pub async fn until_quiet(&self, idle: Duration, head: Option<Duration>) -> Quiet {
        loop {
            if self.inflight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(idle.min(head.unwrap_or(idle))).await;
                continue;
            }
            let started = self.head_started.load(Ordering::Relaxed);
            if let (Some(head), true) = (head, started != NO_HEAD) {
                let due = self.born + Duration::from_millis(started) + head;
                if Instant::now() >= due {
                    return Quiet::SlowHead;
                }
                tokio::time::sleep_until(due).await;
                continue;
            }
            let due = self.born + Duration::from_millis(self.last_active.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return Quiet::Idle;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = self.head_begun.notified() => {}
            }
        }
    }
}

/// A request in flight on a connection, from its head until its answer's body is dropped.
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(conn: &Arc<ConnState>) -> Busy {
        conn.inflight.fetch_add(1, Ordering::Relaxed);
        conn.head_started.store(NO_HEAD, Ordering::Relaxed);
        conn.touch();
        Busy(Arc::clone(conn))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The edge settings a worker's connections share.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub min_body_rate: u64,
    pub window: Duration,
    /// Longest a caller may take nothing of an answer (`server.write_timeout`).
    pub write_timeout: Duration,
    /// Set when a stop's grace has passed.
    pub ending: GraceEnd,
    /// Longest request target, in bytes (`server.max_uri_bytes`).
    pub max_uri_bytes: usize,
    /// Most bytes of header names and values a request may carry
    /// (`server.max_header_bytes`).
    pub max_header_bytes: usize,
}

/// The router as hyper serves it on one connection.
#[derive(Clone)]
pub struct CallerService {
    router: Router,
    conn: Arc<ConnState>,
    pacing: Arc<Pacing>,
    /// The caller's address, given to handlers as axum's `ConnectInfo`.
    peer: SocketAddr,
}

impl CallerService {
    pub fn new(router: Router, conn: Arc<ConnState>, pacing: Arc<Pacing>, peer: SocketAddr) -> CallerService {
        CallerService { router, conn, pacing, peer }
    }

    /// The state of the connection this serves.
    pub fn conn_state(&self) -> Arc<ConnState> {
        Arc::clone(&self.conn)
    }
}

/// Most header fields a request may carry: hyper's own limit for an
/// HTTP/1.1 head, held for HTTP/2 too.
pub const MAX_HEADERS: usize = 100;

impl CallerService {
    /// The answer to a request whose head keypool refuses before routing it:
    /// a framing that a proxy in front could read otherwise (400, and the
    /// connection closed), a request target longer than
    /// `server.max_uri_bytes` (414), more header bytes than
    /// `server.max_header_bytes` or more than [`MAX_HEADERS`] fields (431).
    fn refused<B>(&self, req: &Request<B>) -> Option<Response<axum::body::Body>> {
        if req.version() < http::Version::HTTP_2 && self.conn.take_ambiguous() {
            let mut response = ApiError::AmbiguousFraming.into_response();
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return Some(response);
        }
        let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target > self.pacing.max_uri_bytes {
            return Some(ApiError::UriTooLong { limit: self.pacing.max_uri_bytes }.into_response());
        }
        let headers = req.headers();
        let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
        if bytes > self.pacing.max_header_bytes || headers.len() > MAX_HEADERS {
            let (limit, count) = (self.pacing.max_header_bytes, MAX_HEADERS);
            return Some(ApiError::HeadersTooLarge { limit, count }.into_response());
        }
        None
    }
}

impl<B> hyper::service::Service<Request<B>> for CallerService
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Ending<axum::body::Body>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        let busy = Busy::new(&self.conn);
        if let Some(refused) = self.refused(&req) {
            let ending = self.pacing.ending.clone();
            return Box::pin(std::future::ready(Ok(refused.map(|body| Ending::new(body, false, ending, busy)))));
        }
        let pace = CallerPace::default();
        req.extensions_mut().insert(pace.clone());
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        req.extensions_mut().insert(self.pacing.ending.clone());
        let (rate, window) = (self.pacing.min_body_rate, self.pacing.window);
        let req = req.map(|body| MinRate::new(body, rate, window, pace.clone()));
        let ending = self.pacing.ending.clone();
        let http2 = req.version() == http::Version::HTTP_2;
        let write_timeout = self.pacing.write_timeout;
        let answering = tower_service::Service::call(&mut self.router.clone(), req);
        Box::pin(async move {
            let response = match until_grace_end(answering, &ending, http2).await {
                // A body cut off as too slow is the caller's error, whatever
                // the handler made of the failure it saw; but a body refused
                // by its declared length stays refused as too large, however
                // slowly what followed was drained.
                Some(Ok(r))
                    if pace.too_slow()
                        && !r.status().is_success()
                        && r.status() != http::StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    let mut e = ApiError::CallerTooSlow { rate, window }.into_response();
                    super::error::carry_request_headers(r.headers(), e.headers_mut());
                    e
                }
                Some(Ok(r)) => r,
                Some(Err(never)) => match never {},
                None => ApiError::ShuttingDown.into_response(),
            };
            let sse = response.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| is_event_stream(v.as_bytes()));
            let response = if http2 && sse {
                response.map(|body| axum::body::Body::new(Unread::watch(body, write_timeout)))
            } else {
                response
            };
            Ok(response.map(|body| Ending::new(body, sse, ending, busy)))
        })
    }
}

/// The answer, or `None` once the stop's grace has passed. An HTTP/1.1
/// request is polled by its connection's task, which is woken when the grace
/// ends (workers::until_closed), so it only reads the flag; an HTTP/2
/// request runs in a task of its own and waits for the grace itself.
async fn until_grace_end<F: Future>(answering: F, ending: &GraceEnd, http2: bool) -> Option<F::Output> {
    let mut answering = std::pin::pin!(answering);
    let mut waiting = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(answered) = answering.as_mut().poll(cx) {
            return Poll::Ready(Some(answered));
        }
        if ending.has_passed() {
            return Poll::Ready(None);
        }
        if http2 && waiting.get_or_insert_with(|| ending.passed()).poll_unpin(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Whether a `Content-Type` is `text/event-stream` (any case, parameters
/// allowed), without allocating: every answer is checked.
fn is_event_stream(value: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    let value = value.trim_ascii_start();
    value.get(..SSE.len()).is_some_and(|head| head.eq_ignore_ascii_case(SSE))
}

/// An answer's body that a stop can end: an event stream gets an
/// OpenAI-shaped error event and `data: [DONE]`, any other streamed body is
/// cut off (the caller sees the connection fail). A body already in memory
/// (its size known, such as an error) is always sent whole. Dropping the
/// inner body finishes its key's lease as cancelled.
pub struct Ending<B> {
    inner: Option<B>,
    sse: bool,
    /// False for a body already in memory: nothing to wait for, so never cut.
    endable: bool,
    /// Whether what was sent so far ends between two events.
    at_boundary: bool,
    ending: GraceEnd,
    /// Made on the first wait for the inner body, then reused.
    waiter: Option<Dormant<WaitForCancellationFutureOwned>>,
    _busy: Busy,
}

impl<B: Body> Ending<B> {
    fn new(inner: B, sse: bool, ending: GraceEnd, busy: Busy) -> Ending<B> {
        let endable = sse || inner.size_hint().exact().is_none();
        Ending { inner: Some(inner), sse, endable, at_boundary: true, ending, waiter: None, _busy: busy }
    }

    /// Ends the answer now, because the stop's grace has passed.
    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.inner = None;
        if !self.sse {
            return Poll::Ready(Some(Err("the gateway is shutting down".into())));
        }
        let mut event = Vec::new();
        if !self.at_boundary {
            // Close the event cut in the middle, so the error is read on its own.
            event.extend_from_slice(b"\n\n");
        }
        event.extend_from_slice(&ApiError::ShuttingDown.sse_event());
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

impl<B> Body for Ending<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if this.endable && this.ending.has_passed() {
            return this.end();
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                    this.at_boundary = data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n");
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending if !this.endable => Poll::Pending,
            Poll::Pending => {
                let ending = &this.ending;
                match this.waiter.get_or_insert_with(|| ending.passed()).poll_unpin(cx) {
                    Poll::Ready(()) => this.end(),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::is_event_stream;

    #[test]
    fn event_streams_are_told_by_their_content_type() {
        for yes in ["text/event-stream", "Text/Event-Stream; charset=utf-8", "  text/event-stream"] {
            assert!(is_event_stream(yes.as_bytes()), "{yes}");
        }
        for no in ["application/json", "text/event", "", "text/plain; x=text/event-stream"] {
            assert!(!is_event_stream(no.as_bytes()), "{no}");
        }
    }
}
