//! Stopping on a signal (SIGTERM or SIGINT): stop accepting, let requests in
//! flight finish for at most `server.shutdown_grace`, end what is still open
//! (event streams with an OpenAI-shaped error event and `data: [DONE]`,
//! requests still waiting with 503), then write the request records still
//! queued and the usage totals. A second signal stops at once: open answers
//! end, and at most [`HURRY`] is spent writing records and totals.
//!
//! The grace defaults to 25 s so that the whole stop fits inside
//! Kubernetes' default 30 s between SIGTERM and SIGKILL.

use std::time::Duration;

use crate::app::Running;

/// The most a second signal leaves for writing what must be saved.
pub const HURRY: Duration = Duration::from_secs(1);

/// Serves until a stop signal, then stops as described above.
pub async fn serve_until_signalled(running: Running) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    signals.next().await;
    tracing::info!(
        grace = ?running.grace(),
        "shutting down: no new connections; requests in flight may finish within the grace \
         (server.shutdown_grace); a second signal stops at once"
    );
    let hurry = running.hurry();
    let shutdown = running.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        done = &mut shutdown => return done,
        _ = signals.next() => {}
    }
    tracing::warn!(within = ?HURRY, "second signal: ending open requests and writing the usage totals");
    hurry.cancel();
    match tokio::time::timeout(HURRY, shutdown).await {
        Ok(done) => done,
        Err(_) => {
            tracing::error!(within = ?HURRY, "the usage totals could not be written in time; stopping anyway");
            Ok(())
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), registered once so that a second one is
/// caught too.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
