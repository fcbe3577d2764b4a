//! Recent request latencies, for the copier's throttle: the p99 the
//! application sees through the proxy over the last few seconds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const CAPACITY: usize = 4096;

/// A ring of the last [`CAPACITY`] request durations with their end times.
#[derive(Debug)]
pub struct LatencyWindow {
    ring: Mutex<(Vec<(Instant, Duration)>, usize)>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            ring: Mutex::new((Vec::with_capacity(CAPACITY), 0)),
        }
    }
}

impl LatencyWindow {
    pub fn record(&self, took: Duration) {
        let mut g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let (buf, next) = &mut *g;
        if buf.len() < CAPACITY {
            buf.push((Instant::now(), took));
        } else {
            buf[*next] = (Instant::now(), took);
            *next = (*next + 1) % CAPACITY;
        }
    }

    /// The 99th percentile of requests that ended within `window`, and how
    /// many there were; `None` without any.
    pub fn p99(&self, window: Duration) -> Option<(Duration, usize)> {
        let mut recent: Vec<Duration> = {
            let g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            g.0.iter()
                .filter(|(at, _)| at.elapsed() <= window)
                .map(|(_, d)| *d)
                .collect()
        };
        if recent.is_empty() {
            return None;
        }
        recent.sort_unstable();
        let i = ((recent.len() as f64) * 0.99).ceil() as usize;
        Some((
            recent[i.saturating_sub(1).min(recent.len() - 1)],
            recent.len(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_of_recent_requests() {
        let w = LatencyWindow::default();
        assert_eq!(w.p99(Duration::from_secs(5)), None);
        for i in 1..=100u64 {
            w.record(Duration::from_millis(i));
        }
        assert_eq!(
            w.p99(Duration::from_secs(5)),
            Some((Duration::from_millis(99), 100))
        );
        for _ in 0..5000 {
            w.record(Duration::from_millis(1));
        }
        assert_eq!(
            w.p99(Duration::from_secs(5)).unwrap().0,
            Duration::from_millis(1)
        );
    }
}
