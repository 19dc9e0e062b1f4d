//! Serving on one single-threaded runtime per core.
//!
//! One acceptor (a task on the main runtime) takes connections from the
//! listener and hands them round-robin to worker threads, each running its
//! own current-thread tokio runtime with its own router, hence its own
//! upstream connection pool. A caller's connection, its handler, and the
//! upstream connections it uses then live on one thread for their whole life.
//!
//! Why not tokio's multi-thread runtime alone: a proxied request wakes the
//! process twice (the caller's request, the upstream's answer), and on each
//! wake-up the work-stealing scheduler also wakes an idle worker (a futex per
//! request under strace) and may move the handler and the pooled upstream
//! connection's task to different threads, which then talk through channels
//! across cores. Keeping them on one thread measured +18% to +27% requests/s
//! at concurrency 64 on a 2-core machine (docs/benchmarks.md). Why not
//! SO_REUSEPORT listeners, one per worker: a second keypool started by
//! mistake on the same port would then bind too and silently take half the
//! connections, instead of failing with "address in use".
//!
//! The cost: work on one connection cannot move to an idle core, so nothing on
//! a worker may block for long (large prompts are counted on the blocking
//! pool for that reason).
//!
//! No caller can hold a connection, a descriptor or a key without doing its
//! part (the `[server]` settings): a head must arrive within
//! `header_read_timeout` of its first byte (a silent new connection closes
//! after it too), a connection
//! with no request in flight closes after `keep_alive_timeout`, HTTP/2
//! callers must answer pings, a write that makes no progress for
//! `write_timeout` fails the connection ([`super::stalled`]; for one unread
//! HTTP/2 stream, [`super::unread`]), a body must keep `min_body_rate`
//! ([`super::pace`]), and at most `max_connections` are open at once.
//!
//! With TLS or the PROXY protocol configured, a connection first goes
//! through the [`Front`] on its worker (a handshake costs its worker the
//! CPU it takes); a plain connection never does, and costs what it did.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::accept;
use super::front::{Front, Opened, Socket};
use super::service::{CallerService, ConnState, Pacing, Quiet};
use super::signal::{Dormant, GraceEnd};
use super::stalled::Stalled;
use crate::config::{Cidr, ServerConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections accepted but not yet taken by a busy worker, per worker.
const HANDOFF_QUEUE: usize = 1024;

/// A connection on its way to a worker, with its place under the cap on
/// open connections (given back when the connection ends).
pub(super) type Conn = (std::net::TcpStream, SocketAddr, Option<OwnedSemaphorePermit>);
pub(super) type Queue = mpsc::Sender<Conn>;

/// How callers' connections are treated: the `[server]` settings, the
/// signal that a stop's grace has passed (answers still streaming then end
/// with an error event, requests still waiting get 503), and the peers
/// whose PROXY header is believed (`telemetry.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct Edge {
    pub config: ServerConfig,
    pub ending: GraceEnd,
    pub trusted_proxies: Vec<Cidr>,
}

/// The number of workers for a configured count: 0 means one per core.
pub fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Serves `listener` on `workers` threads, each with the router `make_router`
/// builds for it, until `stop` is cancelled (or the runtime running the
/// returned task shuts down); then stops accepting, serves the connections
/// already handed over, and lets open requests finish (until `edge.ending`
/// ends them). The handle ends when every worker has. With TLS configured,
/// its files are read first: an error names the setting at fault.
pub fn serve<F, E>(
    listener: TcpListener,
    workers: usize,
    mut make_router: F,
    stop: CancellationToken,
    edge: Edge,
) -> Result<JoinHandle<io::Result<()>>, E>
where
    F: FnMut() -> Result<Router, E>,
    E: From<io::Error>,
{
    let front = Front::start(&edge, &stop)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .map(Arc::new);
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        let router = make_router()?;
        let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
        let (ended_tx, ended_rx) = oneshot::channel();
        let edge = edge.clone();
        let front = front.clone();
        // A worker ends once its queue is closed (the acceptor stopped or was
        // dropped) and empty; an error here drops the queues made so far, so
        // the workers already started end too.
        let thread = std::thread::Builder::new()
            .name(format!("keypool-worker-{i}"))
            .spawn(move || {
                let _ = ended_tx.send(run_worker(rx, router, edge, front));
            })
            .map_err(|e| io::Error::new(e.kind(), format!("starting worker thread {i}: {e}")))?;
        queues.push(tx);
        threads.push((thread, ended_rx));
    }
    let cap = match edge.config.max_connections {
        0 => None,
        n => Some((Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))), n)),
    };
    Ok(tokio::spawn(async move {
        accept(listener, queues, stop, cap).await;
        join(threads).await
    }))
}

fn run_worker(handoff: mpsc::Receiver<Conn>, router: Router, edge: Edge, front: Option<Arc<Front>>) -> io::Result<()> {
    let ended = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|runtime| {
        runtime.block_on(async {
            let collecting = tokio::spawn(crate::memory::collect_periodically());
            serve_handed_over(handoff, router, edge, front).await;
            collecting.abort();
        })
    });
    if let Err(e) = &ended {
        // Said at once: the acceptor leaves this worker out from now on.
        tracing::error!(error = %e, worker = ?std::thread::current().name(), "a worker stopped");
    }
    ended
}

/// Waits for every worker to end, without blocking a thread of the runtime
/// (so a process that stops in a hurry is not held by a worker still busy).
async fn join(threads: Vec<(ThreadHandle<()>, oneshot::Receiver<io::Result<()>>)>) -> io::Result<()> {
    let mut result = Ok(());
    for (_thread, ended) in threads {
        let ended = ended.await.unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
        if let Err(e) = ended {
            result = Err(e);
        }
    }
    result
}

/// Serves the connections handed to this worker until its queue is closed
/// (the acceptor stopped) and empty; then asks every connection to finish
/// (idle ones close, open requests complete) and waits for them.
async fn serve_handed_over(mut handoff: mpsc::Receiver<Conn>, router: Router, edge: Edge, front: Option<Arc<Front>>) {
    let protocols = Arc::new(Protocols::new(&edge.config));
    let pacing = Arc::new(Pacing {
        min_body_rate: edge.config.min_body_rate,
        window: edge.config.min_body_rate_window,
        write_timeout: edge.config.write_timeout,
        ending: edge.ending.clone(),
        max_uri_bytes: edge.config.max_uri_bytes,
        max_header_bytes: edge.config.max_header_bytes,
    });
    let connections = TaskTracker::new();
    // Cancelled when the worker's queue is closed, and at the latest when the
    // grace ends, so a connection's task is woken then and the requests it
    // holds see the grace over (CallerService).
    let closing = edge.ending.token().child_token();
    while let Some((stream, peer, permit)) = handoff.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "could not take a connection over");
                continue;
            }
        };
        if let Some(front) = &front {
            let serving = serve_fronted(
                Arc::clone(front),
                stream,
                peer,
                router.clone(),
                Arc::clone(&pacing),
                Arc::clone(&protocols),
                closing.clone(),
                edge.ending.clone(),
            );
            connections.spawn(async move {
                serving.await;
                drop(permit);
            });
            continue;
        }
        let service = CallerService::new(router.clone(), Arc::new(ConnState::new()), Arc::clone(&pacing), peer);
        let serving =
            serve_connection(stream, None, service, Arc::clone(&protocols), closing.clone(), edge.ending.clone());
        connections.spawn(async move {
            serving.await;
            drop(permit);
        });
    }
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// The HTTP settings every connection of a worker is served with, whichever
/// way its protocol was told (a setting added here reaches all three).
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// For a connection whose first bytes left the protocol open.
    auto: auto::Builder<TokioExecutor>,
    /// Longest wait for a request's head (and a new connection's first bytes).
    header_read_timeout: Duration,
    /// Longest a connection stays open with no request in flight.
    keep_alive_timeout: Duration,
    /// Longest a write to the caller may make no progress.
    write_timeout: Duration,
}

impl Protocols {
    fn new(config: &ServerConfig) -> Protocols {
        let mut http1 = http1::Builder::new();
        // Off: hyper starts its head clock whenever it waits for a head, so
        // it would also close kept-alive connections after it. The head is
        // timed from its first byte instead (ConnState::until_quiet).
        http1.timer(TokioTimer::new()).header_read_timeout(None);
        // HTTP/2 heads over the limit are answered 431 by h2 itself.
        let header_list = u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(header_list)
            .keep_alive_interval(config.http2_keep_alive_interval)
            .keep_alive_timeout(config.http2_keep_alive_timeout);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
        auto.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(header_list)
            .keep_alive_interval(config.http2_keep_alive_interval)
            .keep_alive_timeout(config.http2_keep_alive_timeout);
        Protocols {
            http1,
            http2,
            auto,
            header_read_timeout: config.header_read_timeout,
            keep_alive_timeout: config.keep_alive_timeout,
            write_timeout: config.write_timeout,
        }
    }
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq)]
enum Spoken {
    Http1,
    /// HTTP/2 with prior knowledge: the connection preface.
    Http2,
    /// Only part of the preface so far: left to hyper's
    /// own detection, which reads until it knows.
    Unsure,
}

/// How long a connection that has sent nothing yet may still start a request
/// once the worker is stopping.
pub(super) const SILENT_GRACE: Duration = Duration::from_millis(500);

const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn spoken(first: &[u8]) -> Spoken {
    let n = first.len().min(HTTP2_PREFACE.len());
    if first[..n] != HTTP2_PREFACE[..n] {
        Spoken::Http1
    } else if n == HTTP2_PREFACE.len() {
        Spoken::Http2
    } else {
        Spoken::Unsure
    }
}

/// Serves one caller's connection with the protocol it speaks: `known`
/// (told by TLS's ALPN), or else told by its first bytes.
///
/// Why not hyper-util's automatic builder for every connection (as
/// `axum::serve` does): it reads the first bytes itself to tell HTTP/1.1 from
/// HTTP/2 and hands them back to hyper as a separate short read, and hyper's
/// HTTP/1.1 reader, finding its 8 KB buffer no longer empty, grows it to
/// 16 KB for every connection (heaptrack: 16 KB per open stream, the largest
/// single allocation of an HTTP/1.1 stream). Peeking leaves the bytes in the
/// socket, so hyper reads the request head in one go into 8 KB.
async fn serve_connection<S: Socket>(
    stream: S,
    known: Option<Spoken>,
    service: CallerService,
    protocols: Arc<Protocols>,
    closing: CancellationToken,
    ending: GraceEnd,
) {
    let spoken = match known {
        Some(spoken) => spoken,
        None => match first_bytes(stream.socket(), &protocols, &closing).await {
            Some(spoken) => spoken,
            None => return,
        },
    };
    let conn_state = service.conn_state();
    let (io, head) = match spoken {
        Spoken::Http1 => (
            Stalled::new(stream, protocols.write_timeout).noting_reads(Arc::clone(&conn_state)),
            Some(protocols.header_read_timeout),
        ),
        // HTTP/2 has no heads to time; hyper times an undecided one itself.
        Spoken::Http2 => (Stalled::new(stream, protocols.write_timeout), None),
        // Undecided (the first bytes were a prefix of HTTP/2's preface, e.g.
        // a lone `P`): still scanned, or a client could split its first
        // segment to slip an ambiguous framing past `super::framing`.
        // HTTP/2 requests are never refused by the scan.
        Spoken::Unsure => (Stalled::new(stream, protocols.write_timeout).noting_reads(Arc::clone(&conn_state)), None),
    };
    let io = TokioIo::new(io);
    let idle = || Dormant::new(conn_state.until_quiet(protocols.keep_alive_timeout, head));
    let ending = &ending;
    // HTTP/1.1's connection is kept inline and the others boxed, so that the
    // task of each HTTP/1.1 connection (one per open stream) is no larger
    // than it needs. Each connection is built where it stays (pinned in
    // place, never in a named local moved into another future): a moved
    // local keeps its own slot in the task beside the copy it was moved to
    // (rust-lang/rust#62958): 1.25 KB more per HTTP/1.1 stream, measured.
    let served: Result<(), BoxError> = match spoken {
        Spoken::Http1 => {
            let conn = pin!(protocols.http1.serve_connection(io, service));
            until_closed(conn, &closing, ending, idle(), |c| c.graceful_shutdown()).await.map_err(Into::into)
        }
        Spoken::Http2 => {
            let conn = Box::pin(protocols.http2.serve_connection(io, service));
            until_closed(conn, &closing, ending, idle(), |c| c.graceful_shutdown()).await.map_err(Into::into)
        }
        Spoken::Unsure => {
            let conn = Box::pin(protocols.auto.serve_connection(io, service));
            until_closed(conn, &closing, ending, idle(), |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What a plain connection speaks, told by its first bytes (peeked, so they
/// stay in the socket); `None` when it is to be closed unheard.
async fn first_bytes(stream: &TcpStream, protocols: &Protocols, closing: &CancellationToken) -> Option<Spoken> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    let peeked = tokio::select! {
        biased;
        peeked = stream.peek(&mut first) => peeked,
        // A connection that says nothing is closed like one whose head is slow.
        _ = tokio::time::sleep(protocols.header_read_timeout) => {
            tracing::debug!("a connection sent nothing within server.header_read_timeout; closed");
            return None;
        }
        // Stopping: a connection handed over with its request already sent
        // is still served (its bytes show at the runtime's next look at the
        // socket); one that says nothing within the grace is closed, so a
        // silent client cannot hold the shutdown up.
        _ = closing.cancelled() => match tokio::time::timeout(SILENT_GRACE, stream.peek(&mut first)).await {
            Ok(peeked) => peeked,
            Err(_) => return None,
        },
    };
    match peeked {
        Ok(0) => None,
        Ok(n) => Some(spoken(&first[..n])),
        Err(e) => {
            tracing::debug!(error = %e, "connection failed before its first request");
            None
        }
    }
}

/// Serves a connection through the `front`: its PROXY header read and its
/// TLS established (each bounded like a request head), then served as any
/// other, with the caller the PROXY header named. Under TLS, ALPN tells
/// the protocol, and an HTTP/1.1 head's clock starts at the handshake's end
/// (as a plain connection's at its accept).
#[allow(clippy::too_many_arguments)]
async fn serve_fronted(
    front: Arc<Front>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    pacing: Arc<Pacing>,
    protocols: Arc<Protocols>,
    closing: CancellationToken,
    ending: GraceEnd,
) {
    let Some((opened, caller)) = front.open(stream, peer, protocols.header_read_timeout, &closing).await else {
        return;
    };
    drop(front);
    let service = CallerService::new(router, Arc::new(ConnState::new()), pacing, caller);
    match opened {
        Opened::Plain(stream) => serve_connection(stream, None, service, protocols, closing, ending).await,
        Opened::Tls(stream) => {
            let spoken = if stream.get_ref().1.alpn_protocol() == Some(super::tls::H2) {
                Spoken::Http2
            } else {
                service.conn_state().bytes_read(&[]);
                Spoken::Http1
            };
            serve_connection(stream, Some(spoken), service, protocols, closing, ending).await
        }
    }
}

/// Drives a connection to its end; once `closing` is cancelled or the
/// connection has been `idle` long enough, asks it to finish gracefully (no
/// new requests; those in flight complete); a head too slow to arrive
/// closes it at once. When the stop's grace `ending` passes, the connection
/// is polled once more, so what it serves sees that (an HTTP/1.1 request
/// waits for nothing else: CallerService).
///
/// The connection is polled several times a request, and each poll here
/// polls every branch: the waits are [`Dormant`], so they cost an atomic
/// swap until their own wake.
async fn until_closed<C, E, P>(
    mut conn: Pin<P>,
    closing: &CancellationToken,
    ending: &GraceEnd,
    idle: impl Future<Output = Quiet>,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    P: std::ops::DerefMut<Target = C>,
    C: Future<Output = Result<(), E>>,
{
    tokio::select! {
        // The connection first: polled once before a shutdown, it reads the
        // request already waiting and answers it instead of closing unread.
        biased;
        served = conn.as_mut() => return served,
        _ = Dormant::new(closing.clone().cancelled_owned()) => {}
        quiet = idle => match quiet {
            Quiet::Idle => tracing::debug!("a connection was idle for server.keep_alive_timeout; closing it"),
            Quiet::SlowHead => {
                tracing::debug!("a request head took longer than server.header_read_timeout; connection closed");
                return Ok(());
            }
        },
    }
    shutdown(conn.as_mut());
    tokio::select! {
        biased;
        served = conn.as_mut() => return served,
        _ = ending.passed() => {}
    }
    conn.await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::*;
    use axum::routing::get;

    /// Answers with the name of the thread that served the request.
    fn thread_name_router() -> Result<Router, io::Error> {
        Ok(Router::new().route("/", get(|| async { std::thread::current().name().unwrap_or("unnamed").to_owned() })))
    }

    /// Serves the routers `make` builds on `workers` workers, on a free port.
    async fn start<F>(workers: usize, make: F) -> (SocketAddr, CancellationToken, JoinHandle<io::Result<()>>)
    where
        F: FnMut() -> Result<Router, io::Error>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = serve(listener, workers, make, stop.clone(), Edge::default()).unwrap();
        (addr, stop, server)
    }

    async fn get_on_new_connection(addr: SocketAddr) -> String {
        // A client per request: each request on its own connection.
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        client.get(format!("http://{addr}/")).send().await.unwrap().text().await.unwrap()
    }

    #[tokio::test]
    async fn connections_are_served_by_the_workers_in_turn() {
        let (addr, stop, server) = start(3, thread_name_router).await;
        let mut served = Vec::new();
        for _ in 0..6 {
            served.push(get_on_new_connection(addr).await);
        }
        assert_eq!(
            served,
            ["keypool-worker-0", "keypool-worker-1", "keypool-worker-2"].repeat(2),
            "one connection to each worker in turn"
        );
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the port is closed once stopped");
    }

    #[test]
    fn the_first_bytes_tell_the_protocol() {
        assert_eq!(spoken(b"POST /v1/chat/completions HTTP/1.1\r\n"), Spoken::Http1);
        assert_eq!(spoken(b"GET / HTTP/1.1\r\n"), Spoken::Http1);
        assert_eq!(spoken(b"PUT"), Spoken::Http1, "PU is no preface");
        assert_eq!(spoken(HTTP2_PREFACE), Spoken::Http2);
        assert_eq!(spoken(b"P"), Spoken::Unsure);
        assert_eq!(spoken(b"PRI * HTTP/2.0\r\n"), Spoken::Unsure);
    }

    /// A request whose first byte arrives alone could still be an HTTP/2
    /// preface; it is served all the same (by hyper's own detection).
    #[tokio::test]
    async fn a_request_that_arrives_byte_by_byte_is_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let make =
            || -> Result<Router, io::Error> { Ok(Router::new().route("/", axum::routing::any(|| async { "ok" }))) };
        let (addr, stop, server) = start(1, make).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        conn.write_all(b"P").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write_all(b"UT / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// A client that connects and says nothing does not hold up a stop.
    #[tokio::test]
    async fn a_silent_connection_does_not_hold_up_a_stop() {
        let (addr, stop, server) = start(1, thread_name_router).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        // Served first, so the silent connection has surely been handed over.
        assert_eq!(get_on_new_connection(addr).await, "keypool-worker-0");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops despite the silent connection")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_in_flight_finishes_after_stop() {
        let entered = Arc::new(tokio::sync::Notify::new());
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let make = {
            let entered = Arc::clone(&entered);
            move || -> Result<Router, io::Error> {
                let (entered, release) = (Arc::clone(&entered), release_rx.clone());
                Ok(Router::new().route(
                    "/",
                    get(move || {
                        let (entered, mut release) = (Arc::clone(&entered), release.clone());
                        async move {
                            entered.notify_one();
                            let _ = release.wait_for(|go| *go).await;
                            "done"
                        }
                    }),
                ))
            }
        };
        let (addr, stop, server) = start(2, make).await;
        let request = tokio::spawn(get_on_new_connection(addr));
        entered.notified().await;
        stop.cancel();
        // New connections are refused once the acceptor has stopped...
        tokio::time::timeout(Duration::from_secs(5), async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the listener closes");
        // ...while the request in flight is still answered.
        assert!(!server.is_finished(), "the server waits for the request in flight");
        release_tx.send(true).unwrap();
        assert_eq!(request.await.unwrap(), "done");
        server.await.unwrap().unwrap();
    }
}
