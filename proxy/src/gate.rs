//! The transaction-boundary gate. While it is closed, a session that is
//! between transactions waits before its next request goes to Postgres;
//! sessions inside a transaction are never held. Each hold is capped and
//! then fails open. Waiters queue on a fair lock, so reopening lets them
//! through in the order they arrived.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    /// Closes and opens so far: odd while the gate is closed.
    changes: AtomicU64,
    lock: Arc<RwLock<()>>,
    guard: Mutex<Option<OwnedRwLockWriteGuard<()>>>,
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The gate opened.
    Released,
    /// The cap ran out; the request went through anyway.
    TimedOut,
}

impl Gate {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many times the gate has closed or opened so far (odd while it is
    /// closed): a window of time at whose start and end this is the same
    /// even number saw no hold.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Close the gate (idempotent). Returns once new requests are held.
    pub async fn close(&self) {
        if self.is_closed() {
            return;
        }
        let g = self.lock.clone().write_owned().await;
        let mut slot = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(g);
            self.changes.fetch_add(1, Ordering::AcqRel);
            self.closed.store(true, Ordering::Release);
            metrics::gauge!("pgshift_gate_closed").set(1.0);
        }
    }

    /// Open the gate; held sessions go on in arrival order.
    pub fn open(&self) {
        let mut slot = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(false, Ordering::Release);
        if slot.take().is_some() {
            self.changes.fetch_add(1, Ordering::AcqRel);
            metrics::gauge!("pgshift_gate_closed").set(0.0);
        }
    }

    /// Wait until the gate opens, at most `max`.
    pub async fn hold(&self, max: Duration) -> Hold {
        let began = Instant::now();
        let outcome = match tokio::time::timeout(max, self.lock.read()).await {
            Ok(_guard) => Hold::Released,
            Err(_) => Hold::TimedOut,
        };
        let label = match outcome {
            Hold::Released => "released",
            Hold::TimedOut => "timed_out",
        };
        metrics::counter!("pgshift_gate_holds_total", "outcome" => label).increment(1);
        metrics::histogram!("pgshift_gate_hold_seconds").record(began.elapsed().as_secs_f64());
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_until_open_and_times_out_open() {
        let g = Arc::new(Gate::default());
        g.close().await;
        assert!(g.is_closed());
        assert_eq!(g.hold(Duration::from_millis(20)).await, Hold::TimedOut);
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.hold(Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        g.open();
        assert_eq!(waiter.await.unwrap(), Hold::Released);
        assert!(!g.is_closed());
        g.open(); // idempotent
        assert_eq!(g.changes(), 2, "one close and one open");
        g.close().await;
        g.close().await; // idempotent
        assert_eq!(g.changes() % 2, 1, "odd while closed");
    }

    #[tokio::test]
    async fn reopening_releases_waiters_in_arrival_order() {
        let g = Arc::new(Gate::default());
        g.close().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (g, order) = (g.clone(), order.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(async move {
                let hold = g.hold(Duration::from_secs(60));
                tokio::pin!(hold);
                // Queue on the lock before telling the test we are waiting.
                assert!(futures_poll_once(hold.as_mut()).await.is_none());
                let _ = tx.send(());
                hold.await;
                order.lock().unwrap().push(i);
            }));
            rx.await.unwrap();
        }
        g.open();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
