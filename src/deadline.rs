//! A request's upstream deadline, kept by the HTTP/1 connection that serves it.
//!
//! A timer of its own per request cost about eleven locked instructions (taking a reused timer
//! from the worker's list and giving it back, moving it in the timer wheel, registering the
//! task's waker on it) and some 400 instructions more: more than all the proxy's own clock
//! and counter work. The front's connection already has a timer, registered with the same
//! task, for the wait for the next head. So while the front polls a request, the upstream
//! send says through this thread's slot when it must give up; the front keeps its timer at or
//! before that time and, once it has passed, polls the request once more with the deadline
//! marked expired. The event loop polls one task at a time on its thread, so the slot is only
//! ever read and written inside one poll of one request.
//!
//! Outside the front (HTTP/2, tests), no keeper is polling and the send uses a timer of its own.

use std::cell::Cell;
use std::task::Poll;

use tokio::time::Instant;

thread_local! {
    /// `Some` while a keeper polls a request: the earliest deadline its send wants, and whether
    /// the one wanted in the poll before has passed.
    static SLOT: Cell<Option<Kept>> = const { Cell::new(None) };
}

#[derive(Clone, Copy)]
struct Kept {
    wanted: Option<Instant>,
    expired: bool,
}

/// Puts the slot back when a poll ends, even by a panic.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        SLOT.with(|s| s.set(None));
    }
}

/// Polls a request as its deadlines' keeper: `expired` says that the deadline wanted in the
/// previous poll has passed. Gives back the poll's result and the deadline wanted in this one
/// (`None`: the request is waiting on something else, a token or the rate limit, which keep
/// their own time).
pub(crate) fn poll_kept<T>(
    expired: bool,
    poll: impl FnOnce() -> Poll<T>,
) -> (Poll<T>, Option<Instant>) {
    SLOT.with(|s| {
        s.set(Some(Kept {
            wanted: None,
            expired,
        }))
    });
    let reset = Reset;
    let r = poll();
    let wanted = SLOT.with(|s| s.get()).and_then(|k| k.wanted);
    drop(reset);
    (r, wanted)
}

/// What a send waiting for an answer until `at` learns: `Some(true)` the deadline has passed
/// (give up), `Some(false)` it is kept (wait), `None` no one keeps it (use a timer of its own).
pub(crate) fn wait_until(at: Instant) -> Option<bool> {
    SLOT.with(|s| {
        let mut kept = s.get()?;
        if kept.expired {
            return Some(true);
        }
        kept.wanted = Some(kept.wanted.map_or(at, |w| w.min(at)));
        s.set(Some(kept));
        Some(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_send_outside_a_keeper_keeps_its_own_time() {
        assert_eq!(wait_until(Instant::now()), None);
    }

    #[test]
    fn the_keeper_learns_the_earliest_deadline_and_tells_when_it_passed() {
        let t = Instant::now();
        let (r, wanted) = poll_kept(false, || {
            assert_eq!(wait_until(t + Duration::from_secs(9)), Some(false));
            assert_eq!(wait_until(t + Duration::from_secs(5)), Some(false));
            Poll::<()>::Pending
        });
        assert!(r.is_pending());
        assert_eq!(wanted, Some(t + Duration::from_secs(5)));
        let (r, wanted) = poll_kept(true, || match wait_until(t) {
            Some(true) => Poll::Ready("timed out"),
            _ => Poll::Pending,
        });
        assert_eq!(r, Poll::Ready("timed out"));
        assert_eq!(wanted, None);
        // Nothing kept once the poll is over, even one that panicked.
        assert_eq!(wait_until(t), None);
        let _ = std::panic::catch_unwind(|| poll_kept(false, || -> Poll<()> { panic!("boom") }));
        assert_eq!(wait_until(t), None);
    }

    #[test]
    fn a_poll_waiting_on_something_else_wants_no_deadline() {
        let (_, wanted) = poll_kept(false, || Poll::<()>::Pending);
        assert_eq!(wanted, None);
    }
}
