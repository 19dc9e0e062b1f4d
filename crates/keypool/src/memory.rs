//! Giving memory the process no longer uses back to the system.
//!
//! mimalloc returns a page that has become free only after its purge delay
//! (1 s), and only when the thread that owns the heap next goes through a
//! slow path of the allocator. After a burst of requests a worker often has
//! nothing left to allocate slowly (its streams only forward chunks), so the
//! pages the burst freed stay resident for as long as the streams are open.
//! Each worker therefore asks its heap to collect now and then.

use std::time::Duration;

/// How often a worker collects: the purge delay, so a freed page is resident
/// at most about twice as long as mimalloc means it to be.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Collects the calling thread's heap and purges what has been free for the
/// purge delay, every [`COLLECT_EVERY`], for as long as the runtime runs.
pub async fn collect_periodically() {
    let mut tick = tokio::time::interval(COLLECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect();
    }
}

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; it only walks and trims the allocator's own state.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// glibc's malloc trims on its own (and heap profilers want it untouched).
#[cfg(not(feature = "mimalloc"))]
fn collect() {}
