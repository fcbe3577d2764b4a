//! The copier's throttle. Four times a second the daemon compares the p99
//! of the requests its proxy served in the last second with the latency
//! bound, and a replica's replay lag with its bound. The latency bound is
//! absolute (`max_p99_ms`), relative to the application's own p99
//! (`max_p99_ratio`), or the lower of the two. The application's own p99 is
//! measured by resting the copier for a moment every half minute, so the
//! bound follows the application's latency as it drifts.

use super::Live;
use crate::backfill::{next_slowdown, MAX_SLOWDOWN};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The throttle's bounds, from the live settings (zero: none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Bounds {
    /// `max_p99_ms`.
    pub max_p99: Duration,
    /// `max_replica_lag_ms`.
    pub max_lag: Duration,
    /// `max_p99_ratio`: the bound is this times the application's own p99.
    pub p99_ratio: f64,
}

/// How often the copier rests to measure the application's own p99.
const PROBE_EVERY: Duration = Duration::from_secs(30);
/// Rest before measuring: the last batch commits and its effects pass.
const PROBE_SETTLE: Duration = Duration::from_millis(500);
/// The measurement itself.
const PROBE_WINDOW: Duration = Duration::from_secs(2);
/// The application's own p99 is the median of this many recent probes.
const PROBE_SAMPLES: usize = 5;
/// Fewer requests than this in a window say nothing about a p99.
const MIN_REQUESTS: usize = 20;

/// The application's own p99, from probes with the copier resting.
#[derive(Debug)]
pub(super) struct Baseline {
    samples: VecDeque<Duration>,
    probing_since: Option<Instant>,
    next_probe: Instant,
}

impl Baseline {
    pub fn new(now: Instant) -> Baseline {
        Baseline {
            samples: VecDeque::with_capacity(PROBE_SAMPLES),
            probing_since: None,
            next_probe: now,
        }
    }

    /// Advance to `now`; true while the copier must rest for a probe.
    /// `p99` answers the p99 and count of the requests that ended within a
    /// window up to now.
    pub fn tick(
        &mut self,
        now: Instant,
        p99: impl FnOnce(Duration) -> Option<(Duration, usize)>,
    ) -> bool {
        match self.probing_since {
            None if now >= self.next_probe => {
                self.probing_since = Some(now);
                true
            }
            None => false,
            Some(since) if now.duration_since(since) >= PROBE_SETTLE + PROBE_WINDOW => {
                if let Some((d, _)) = p99(PROBE_WINDOW).filter(|(_, n)| *n >= MIN_REQUESTS) {
                    if self.samples.len() == PROBE_SAMPLES {
                        self.samples.pop_front();
                    }
                    self.samples.push_back(d);
                }
                self.probing_since = None;
                self.next_probe = now + PROBE_EVERY;
                false
            }
            Some(_) => true,
        }
    }

    /// True while a probe rests the copier.
    pub fn probing(&self) -> bool {
        self.probing_since.is_some()
    }

    /// The median of the recent probes; `None` before the first.
    pub fn own_p99(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// The latency bound in force (zero: none), and how to name it to
/// operators.
fn p99_bound(bounds: &Bounds, own: Option<Duration>) -> (Duration, String) {
    let absolute = format!("max_p99_ms {:.2}", ms(bounds.max_p99));
    let relative = own.filter(|_| bounds.p99_ratio > 0.0).map(|own| {
        let b = own.mul_f64(bounds.p99_ratio);
        let name = format!(
            "{:.2} ms (max_p99_ratio {} x the application's own p99 {:.2} ms)",
            ms(b),
            bounds.p99_ratio,
            ms(own)
        );
        (b, name)
    });
    match relative {
        Some((b, name)) if bounds.max_p99.is_zero() || b < bounds.max_p99 => (b, name),
        _ => (bounds.max_p99, absolute),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Throttle the copier while the proxy's recent p99 or a replica's replay
/// lag is above its bound.
pub(super) async fn run(live: Arc<Live>, proxy: Arc<pgshift_proxy::Proxy>) {
    let mut lag_client: Option<Client> = None;
    // Graded throttle on the application's p99: the copier rests this many
    // times each batch's duration; past MAX_SLOWDOWN it stops.
    let mut slowdown = 0.0;
    // Since when the copier has been stopped by the p99 bound.
    let mut stopped_since: Option<Instant> = None;
    let mut baseline: Option<Baseline> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let bounds = live.bounds();
        if bounds.p99_ratio > 0.0 {
            let b = baseline.get_or_insert_with(|| Baseline::new(Instant::now()));
            let was = b.probing();
            let probing = b.tick(Instant::now(), |w| proxy.latency.p99(w));
            if probing && !was {
                tracing::debug!("copier resting to measure the application's own p99");
            } else if was && !probing {
                match b.own_p99() {
                    Some(own) => tracing::info!(
                        "application's own p99 {:.2} ms (median of recent probes): latency bound {:.2} ms",
                        ms(own),
                        ms(own.mul_f64(bounds.p99_ratio))
                    ),
                    None => tracing::debug!("too few requests to measure the application's own p99"),
                }
            }
            if probing {
                live.control.set_throttle(Some(
                    "resting for a few seconds to measure the application's own p99 (max_p99_ratio)"
                        .into(),
                ));
                continue;
            }
            if let Some(own) = b.own_p99() {
                metrics::gauge!("pgshift_proxy_own_p99_seconds").set(own.as_secs_f64());
            }
        } else {
            baseline = None;
        }
        let (max_p99, bound_name) =
            p99_bound(&bounds, baseline.as_ref().and_then(Baseline::own_p99));
        let mut reason = None;
        let mut slow_reason = None;
        if max_p99.is_zero() {
            slowdown = 0.0;
        } else if let Some((p99, _)) = proxy
            .latency
            .p99(Duration::from_secs(1))
            .filter(|(_, n)| *n >= MIN_REQUESTS)
        {
            metrics::gauge!("pgshift_proxy_p99_seconds").set(p99.as_secs_f64());
            let was = slowdown;
            slowdown = next_slowdown(slowdown, p99, max_p99);
            if p99 > max_p99 && was >= MAX_SLOWDOWN {
                let since = *stopped_since.get_or_insert_with(Instant::now);
                reason = Some(stopped_reason(ms(p99), &bound_name, since.elapsed()));
            } else if slowdown > 0.0 {
                slow_reason = Some(format!(
                    "proxy p99 latency {:.2} ms against {bound_name}: copier rests {slowdown:.1}x each batch",
                    ms(p99)
                ));
            }
        } else {
            // (Almost) no traffic: nobody to protect, let the copier speed up.
            slowdown = next_slowdown(slowdown, Duration::ZERO, max_p99);
        }
        if reason.is_none() && !bounds.max_lag.is_zero() {
            if lag_client.as_ref().is_none_or(|c| c.is_closed()) {
                lag_client = crate::engine::connect(&live.get().postgres_url).await.ok();
            }
            if let Some(c) = &lag_client {
                let lag: Option<f64> = c
                    .query_one("SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication", &[])
                    .await
                    .ok()
                    .and_then(|r| r.get(0));
                if let Some(lag) = lag {
                    metrics::gauge!("pgshift_replica_lag_seconds").set(lag);
                    if lag * 1000.0 > bounds.max_lag.as_millis() as f64 {
                        reason = Some(format!(
                            "replica replay lag {:.0} ms above max_replica_lag_ms {}",
                            lag * 1000.0,
                            bounds.max_lag.as_millis()
                        ));
                    }
                }
            }
        }
        if reason.is_none() {
            stopped_since = None;
        }
        live.control.set_slowdown(slowdown, slow_reason);
        live.control.set_throttle(reason);
    }
}

/// After this long stopped with the p99 still above its bound, the latency
/// is the application's own, not the copier's: say so.
const IDLE_BLAME: Duration = Duration::from_secs(30);

/// Why the p99 bound stops the copier; after `IDLE_BLAME` the reason tells
/// the operator that the bound sits under the application's own p99.
fn stopped_reason(p99_ms: f64, bound: &str, stopped: Duration) -> String {
    let mut reason = format!("proxy p99 latency {p99_ms:.2} ms above {bound}");
    if stopped >= IDLE_BLAME {
        let setting = if bound.contains("max_p99_ratio") {
            "max_p99_ratio"
        } else {
            "max_p99_ms"
        };
        reason.push_str(&format!(
            " with the copier stopped for {} s: the bound is under the application's own p99; raise {setting}",
            stopped.as_secs()
        ));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_stop_blames_the_bound_not_the_copier() {
        let short = stopped_reason(3.0, "max_p99_ms 2.00", Duration::from_secs(5));
        assert_eq!(short, "proxy p99 latency 3.00 ms above max_p99_ms 2.00");
        let long = stopped_reason(3.0, "max_p99_ms 2.00", Duration::from_secs(45));
        assert!(
            long.contains("copier stopped for 45 s") && long.contains("raise max_p99_ms"),
            "{long}"
        );
    }

    #[test]
    fn probes_rest_the_copier_and_keep_the_median_of_recent_p99s() {
        let t0 = Instant::now();
        let mut b = Baseline::new(t0);
        let ms = Duration::from_millis;
        let none = |_| None;
        // The first probe starts at once and lasts settle + window.
        assert!(b.tick(t0, none));
        assert!(b.tick(t0 + ms(2000), none));
        assert!(!b.tick(t0 + ms(2500), |w| {
            assert_eq!(w, PROBE_WINDOW);
            Some((ms(4), 100))
        }));
        assert_eq!(b.own_p99(), Some(ms(4)));
        // No probe until PROBE_EVERY has passed.
        assert!(!b.tick(t0 + ms(20_000), none));
        // Too few requests: the probe counts for nothing.
        let at = t0 + ms(2500) + PROBE_EVERY;
        assert!(b.tick(at, none));
        assert!(!b.tick(at + ms(2500), |_| Some((ms(50), 3))));
        assert_eq!(b.own_p99(), Some(ms(4)));
        // The median of the last PROBE_SAMPLES probes: one outlier moves nothing.
        let mut at = at + ms(2500) + PROBE_EVERY;
        for p in [2, 3, 90, 3, 2, 3] {
            assert!(b.tick(at, none));
            assert!(!b.tick(at + ms(2500), |_| Some((ms(p), 100))));
            at += ms(2500) + PROBE_EVERY;
        }
        assert_eq!(b.own_p99(), Some(ms(3)));
    }

    #[test]
    fn the_lower_of_the_absolute_and_relative_bounds_holds() {
        let ms = Duration::from_millis;
        let abs = Bounds {
            max_p99: ms(10),
            ..Bounds::default()
        };
        assert_eq!(p99_bound(&abs, Some(ms(2))).0, ms(10));
        let rel = Bounds {
            p99_ratio: 1.5,
            ..Bounds::default()
        };
        assert_eq!(p99_bound(&rel, None).0, Duration::ZERO);
        let (b, name) = p99_bound(&rel, Some(ms(2)));
        assert_eq!(b, ms(3));
        assert!(
            name.contains("max_p99_ratio 1.5 x the application's own p99 2.00 ms"),
            "{name}"
        );
        let both = Bounds {
            max_p99: ms(10),
            ..rel
        };
        assert_eq!(p99_bound(&both, Some(ms(2))).0, ms(3));
        assert_eq!(p99_bound(&both, Some(ms(8))).0, ms(10));
        assert!(stopped_reason(9.0, &name, Duration::from_secs(60)).contains("raise max_p99_ratio"));
    }
}
