//! Waiting for rare events (a stop, a connection gone quiet) at the price of
//! an atomic swap per poll.
//!
//! A connection's task is polled several times for every request, and
//! `tokio::select!` polls each branch on each wake: a
//! [`CancellationToken`]'s future takes the token's mutex (one mutex shared
//! by every worker thread) and its notifier's lock on every poll, and a
//! timer re-registers its waker. Waiting for a stop and for the idle timeout
//! that way cost about 900 instructions a request (callgrind,
//! docs/benchmarks.md). Neither tokio nor futures-util has a combinator that
//! leaves a future unpolled until its own waker fires, so it is written here.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The signal that a stop's grace has passed: checked with one atomic load
/// (answers still streaming then end with an error event, requests still
/// waiting get 503), awaited through its token.
#[derive(Debug, Clone, Default)]
pub struct GraceEnd {
    passed: Arc<AtomicBool>,
    token: CancellationToken,
}

impl GraceEnd {
    /// Ends the grace: the flag is set before anyone waiting is woken, so a
    /// woken task that checks [`GraceEnd::has_passed`] sees it.
    pub fn end(&self) {
        self.passed.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether [`GraceEnd::end`] has been called.
    pub fn has_passed(&self) -> bool {
        self.passed.load(Ordering::Acquire)
    }

    /// The token cancelled when the grace ends (for waiting, or child tokens).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves when the grace ends; polled only when that may have happened.
    pub fn passed(&self) -> Dormant<WaitForCancellationFutureOwned> {
        Dormant::new(self.token.clone().cancelled_owned())
    }
}

/// A future polled only when its own waker has fired, or when the task
/// polling it has a new waker (so the contract that the latest waker is the
/// one woken still holds). Between those, a poll costs one atomic swap and a
/// waker comparison. For futures that stay pending across many polls of a
/// busy task: a stop signal, a timer far away.
pub struct Dormant<F> {
    inner: Pin<Box<F>>,
    woken: Arc<Woken>,
    /// The task's waker when `inner` was last polled.
    polled_with: Option<Waker>,
}

/// What the inner future wakes: a flag, then the task.
struct Woken {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Dormant<F> {
    /// Boxes `inner` (once), so the waiting future's size stays out of the
    /// task that holds this.
    pub fn new(inner: F) -> Dormant<F> {
        Dormant {
            inner: Box::pin(inner),
            woken: Arc::new(Woken { flag: AtomicBool::new(false), task: AtomicWaker::new() }),
            polled_with: None,
        }
    }
}

impl<F: Future> Future for Dormant<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let woken = this.woken.flag.swap(false, Ordering::Acquire);
        let same_task = this.polled_with.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !woken && same_task {
            return Poll::Pending;
        }
        // Registered again after every wake too: a wake takes the waker out.
        this.woken.task.register(cx.waker());
        if !same_task {
            this.polled_with = Some(cx.waker().clone());
        }
        let waker = Waker::from(Arc::clone(&this.woken));
        this.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; pending until `ready` is set, and wakes its last
    /// waker when told to.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: LastWaker,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    type LastWaker = Arc<std::sync::Mutex<Option<Waker>>>;

    fn counted() -> (Counted, Arc<AtomicUsize>, Arc<AtomicBool>, LastWaker) {
        let (polls, ready, waker) = Default::default();
        let c = Counted { polls: Arc::clone(&polls), ready: Arc::clone(&ready), waker: Arc::clone(&waker) };
        (c, polls, ready, waker)
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_when_it_woke_or_the_task_changed() {
        let (inner, polls, ready, inner_waker) = counted();
        let mut dormant = Box::pin(Dormant::new(inner));
        let task = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(dormant.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled again though nothing woke it");
        // Its own waker fires: the task is woken and the next poll reaches it.
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(dormant.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // And again: a second wake reaches the task as the first did.
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
        assert!(dormant.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_new_task_waker_is_registered_and_woken() {
        let (inner, polls, _ready, inner_waker) = counted();
        let mut dormant = Box::pin(Dormant::new(inner));
        let first = Arc::new(CountWakes(AtomicUsize::new(0)));
        let second = Arc::new(CountWakes(AtomicUsize::new(0)));
        let w1 = Waker::from(Arc::clone(&first));
        let w2 = Waker::from(Arc::clone(&second));
        assert!(dormant.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
        assert!(dormant.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!((first.0.load(Ordering::SeqCst), second.0.load(Ordering::SeqCst)), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_end_wakes_a_dormant_waiter_and_sets_the_flag_first() {
        let grace = GraceEnd::default();
        assert!(!grace.has_passed());
        let waiting = tokio::spawn({
            let grace = grace.clone();
            async move {
                grace.passed().await;
                grace.has_passed()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        grace.end();
        assert!(tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dormant_timer_still_fires() {
        let started = tokio::time::Instant::now();
        Dormant::new(tokio::time::sleep(Duration::from_secs(3))).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
