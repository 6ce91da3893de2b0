//! Worker threads for blocking work a handler hands off ([`super::Ctx::spawn_blocking`]); answers go back through the asking core's mailbox.

use crossbeam_channel::{Sender, TrySendError};

/// One unit of blocking work, already bound to the way its answer goes back.
pub type Task = Box<dyn FnOnce() + Send>;

/// Tasks waiting per worker thread before new ones are refused (503).
const QUEUE_PER_THREAD: usize = 256;

/// A fixed set of plain threads draining one bounded queue. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    tx: Sender<Task>,
}

/// The queue is full: the work was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Pool {
    /// Starts `threads` worker threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Task>(threads * QUEUE_PER_THREAD);
        for n in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("percore-blocking-{n}"))
                .spawn(move || {
                    for task in rx {
                        task();
                    }
                })?;
        }
        Ok(Self { tx })
    }

    /// Queues a task; refuses it when the queue is full rather than wait on an io core.
    pub fn spawn(&self, task: Task) -> Result<(), Busy> {
        match self.tx.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}
