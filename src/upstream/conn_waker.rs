//! The waker a pooled HTTP/1 connection is polled with.
//!
//! hyper's body channel has no room to spare: after handing the response body's chunk over,
//! the connection parks its sender on the waker it was polled with, and reading the chunk
//! wakes that waker. Both happen in the one task holding the connection, so the task wakes
//! itself while it runs; tokio re-queues such a task as a yield and wakes a parked sibling
//! worker to steal it (perf: one futex wake and one context switch per passthrough at one
//! connection). This waker forwards to the task's waker except while the body is read, when a
//! wake is only noted: the reader then drives the connection itself, or passes the wake on.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use atomic_waker::AtomicWaker;

/// Wakes go to the task.
const FORWARD: u8 = 0;
/// The body is being read in the task: wakes are noted.
const HOLD: u8 = 1;
/// The body is being read and a wake was noted.
const HELD: u8 = 2;

/// A connection's waker: the task polling it now, and whether wakes are held.
#[derive(Default)]
pub struct ConnWaker {
    state: AtomicU8,
    task: AtomicWaker,
}

impl ConnWaker {
    /// A new waker (one per connection) and the handle that steers it.
    pub fn new() -> (Arc<ConnWaker>, Waker) {
        let shared = Arc::new(ConnWaker::default());
        let waker = Waker::from(Arc::clone(&shared));
        (shared, waker)
    }

    /// The task that will poll the connection next, which wakes go to.
    pub fn register(&self, task: &Waker) {
        self.task.register(task);
    }

    /// Forgets the task (the connection goes idle, polled by nobody).
    pub fn clear(&self) {
        drop(self.task.take());
    }

    /// Notes wakes instead of passing them on, until [`ConnWaker::release`].
    pub fn hold(&self) {
        self.state.store(HOLD, Ordering::Release);
    }

    /// Passes wakes on again; `true` when one was noted meanwhile.
    pub fn release(&self) -> bool {
        self.state.swap(FORWARD, Ordering::AcqRel) == HELD
    }
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(HOLD, HELD, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(HELD) => {}
            Err(_) => self.task.wake(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_are_forwarded_unless_held_and_reported_on_release() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&count));
        let (conn, waker) = ConnWaker::new();
        conn.register(&task);
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        conn.register(&task);
        conn.hold();
        assert!(!conn.release(), "nothing was noted");
        conn.hold();
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "held, not forwarded");
        assert!(conn.release());
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "forwarded again");

        conn.register(&task);
        conn.clear();
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "no task once cleared");
    }
}
