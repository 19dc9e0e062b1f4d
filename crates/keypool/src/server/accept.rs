//! The acceptor: takes connections from the listener, under the cap on open
//! connections, and deals them to the workers in turn.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::workers::{Conn, Queue};

/// Takes connections until `stop`, handing them to the workers in turn; with
/// a `cap`, only while fewer than that many are open.
pub(super) async fn accept(
    listener: TcpListener,
    mut queues: Vec<Queue>,
    stop: CancellationToken,
    cap: Option<(Arc<Semaphore>, usize)>,
) {
    let mut next = 0usize;
    // When the cap was last reported: said at most once a minute.
    let mut reported: Option<tokio::time::Instant> = None;
    loop {
        let permit = match &cap {
            None => None,
            Some((cap, max)) => match Arc::clone(cap).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    if reported.is_none_or(|at| at.elapsed() >= CAP_REPORT_EVERY) {
                        reported = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            open = max,
                            "open connection cap (server.max_connections) reached: new connections wait in the \
                             listen backlog until one closes"
                        );
                    }
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return,
                        permit = Arc::clone(cap).acquire_owned() => match permit {
                            Ok(permit) => Some(permit),
                            Err(_) => return,
                        },
                    }
                }
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        // Answers are written in small pieces (a status line, then stream
        // chunks): send each at once rather than letting Nagle hold it.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // Deregistered here, registered again with the worker's own reactor.
        let mut conn = match stream.into_std() {
            Ok(stream) => (stream, peer, permit),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a connection to a worker");
                continue;
            }
        };
        loop {
            match try_hand_off(&mut queues, &mut next, conn) {
                Ok(()) => break,
                Err(_) if queues.is_empty() => {
                    tracing::error!("every worker has stopped: no longer accepting connections");
                    return;
                }
                Err(back) => {
                    // Every worker has a full queue: wait for room (new
                    // connections wait in the listen backlog meanwhile).
                    conn = back;
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }
            }
        }
    }
}

/// How often a reached connection cap is said again while it lasts.
const CAP_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Gives `conn` to the next worker with room, skipping full queues and taking
/// stopped workers out of the rotation; gives it back when none has room.
fn try_hand_off(queues: &mut Vec<Queue>, next: &mut usize, mut conn: Conn) -> Result<(), Conn> {
    let mut full = 0;
    while full < queues.len() {
        let i = *next % queues.len();
        match queues[i].try_send(conn) {
            Ok(()) => {
                *next = i + 1;
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Full(back)) => {
                conn = back;
                full += 1;
                *next = i + 1;
            }
            Err(mpsc::error::TrySendError::Closed(back)) => {
                conn = back;
                queues.remove(i);
                tracing::warn!(left = queues.len(), "a stopped worker is out of the rotation");
            }
        }
    }
    Err(conn)
}

/// Errors from `accept` concern one connection (it was reset before being
/// taken) or the process (out of descriptors); for the latter, pause so the
/// loop does not spin while requests in flight give some back.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
