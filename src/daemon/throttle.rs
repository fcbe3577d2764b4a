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
/// Probes taken back to back before the first reference is set: the copier
/// has not run yet, and the median of a few is not one burst of the host.
const INITIAL_PROBES: usize = 3;
/// Fewer requests than this in a window say nothing about a p99.
const MIN_REQUESTS: usize = 20;
/// One-second p99s kept from the minutes before a backfill (no copier).
const HISTORY: usize = 300;
/// Enough of them to stand for the application's own p99 without probes.
const MIN_HISTORY: usize = 30;
/// A copier idle this long ends a backfill's reference: the next one starts
/// from the history again.
const IDLE_RESET: Duration = Duration::from_secs(60);

/// Working seconds of the copier's pace its cap looks back on.
const PACE_WINDOW: usize = 300;
/// Fewer working seconds than this say too little to cap the pace.
const PACE_MIN: usize = 10;
/// Under a latency bound the copier goes at most this many times its mean
/// pace of its last working minutes.
const PACE_GROWTH: f64 = 2.0;
/// The pace cap never goes under this many rows per second.
const PACE_FLOOR: u64 = 1000;

/// The copier's recent pace, for a cap on how fast it may speed up under a
/// latency bound. The harm of a burst of writes shows in the application's
/// latency only later (the kernel writes dirty pages out half a minute on,
/// autovacuum follows the dead rows), after a one-second p99 has let the
/// copier run flat out: in one 10M-row run a copier throttled to 3,300
/// rows/s went to 120,000 rows/s within seconds when its bound rose, and the
/// application's p99 was 6x its baseline for minutes after the backfill.
/// With the cap, its pace can at most double over a few minutes.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Rows per second of each recent working second.
    seconds: VecDeque<f64>,
    /// The second being counted: when it began, the rows then, and whether
    /// the copier was held (paused, stopped, resting for a probe) in it.
    current: Option<(Instant, u64, bool)>,
}

impl Pace {
    /// Called every tick with the copier's row count and whether it may
    /// work now; a second in which it was held at any tick is left out.
    pub fn tick(&mut self, now: Instant, rows: u64, working: bool) {
        let Some((at, from, held)) = self.current else {
            self.current = Some((now, rows, !working));
            return;
        };
        let elapsed = now.duration_since(at);
        if elapsed < Duration::from_secs(1) {
            self.current = Some((at, from, held || !working));
            return;
        }
        if !held && working {
            let rate = rows.saturating_sub(from) as f64 / elapsed.as_secs_f64();
            push_recent(&mut self.seconds, rate, PACE_WINDOW);
        }
        self.current = Some((now, rows, !working));
    }

    /// The most rows per second the copier may go now, once known.
    pub fn cap(&self) -> Option<u64> {
        if self.seconds.len() < PACE_MIN {
            return None;
        }
        let mean = self.seconds.iter().sum::<f64>() / self.seconds.len() as f64;
        Some(((mean * PACE_GROWTH) as u64).max(PACE_FLOOR))
    }

    /// A backfill is over: the next one starts without a cap.
    pub fn reset(&mut self) {
        self.seconds.clear();
        self.current = None;
    }
}

/// Append `v` to `q`, dropping the oldest entry once `q` holds `max`.
fn push_recent<T>(q: &mut VecDeque<T>, v: T, max: usize) {
    if q.len() == max {
        q.pop_front();
    }
    q.push_back(v);
}

/// The sample at `num / den` of the way up the sorted `samples`.
fn quantile(samples: &VecDeque<Duration>, num: usize, den: usize) -> Option<Duration> {
    let mut v: Vec<Duration> = samples.iter().copied().collect();
    v.sort_unstable();
    v.get(v.len() * num / den).copied()
}

/// The proxy's one-second p99s while no backfill runs: what the application
/// sees without the copier, the best first reference there is (probes right
/// after `start` measure a few seconds, and the DDL's aftermath with them).
#[derive(Debug, Default)]
pub(super) struct History {
    samples: VecDeque<Duration>,
    last_second: Option<(Instant, u64)>,
}

impl History {
    /// Record the last second's p99 once a second; a second in which the
    /// gate was closed (a DDL step held requests) is left out.
    pub fn tick(
        &mut self,
        now: Instant,
        gate: u64,
        p99: impl FnOnce(Duration) -> Option<(Duration, usize)>,
    ) {
        match self.last_second {
            Some((at, _)) if now.duration_since(at) < Duration::from_secs(1) => return,
            Some((_, g)) if g == gate && gate % 2 == 0 => {
                if let Some((d, _)) =
                    p99(Duration::from_secs(1)).filter(|(_, n)| *n >= MIN_REQUESTS)
                {
                    push_recent(&mut self.samples, d, HISTORY);
                }
            }
            _ => {}
        }
        self.last_second = Some((now, gate));
    }

    /// The 90th percentile of the one-second p99s (what the application's
    /// own one-second p99 stays under 9 seconds in 10), once there are enough.
    pub fn high(&self) -> Option<Duration> {
        if self.samples.len() < MIN_HISTORY {
            return None;
        }
        quantile(&self.samples, 9, 10)
    }

    /// A backfill runs: the next second starts afresh when it is over.
    pub fn pause(&mut self) {
        self.last_second = None;
    }
}

/// The application's own p99, from probes with the copier resting.
///
/// The reference is the median of the recent probes, but never above its
/// ceiling: the first reference, taken before the copier ran. A short rest
/// measures the copier's aftermath too (autovacuum of the rows it rewrote,
/// dirty pages, its last batches' WAL); a reference that rose with it would
/// loosen the bound, let the copier go faster, and measure more of its
/// aftermath the next time. Nor is the reference the lowest median seen: over
/// an hour of probes that is the application's luckiest minute, and a bound
/// under its ordinary latency would stall the copier. The ceiling rises only
/// through [`Baseline::reanchor`], once the copier has been stopped long
/// enough for its effects to pass.
#[derive(Debug)]
pub(super) struct Baseline {
    samples: VecDeque<Duration>,
    reference: Option<Duration>,
    /// What the reference may not exceed: before the first reference, the
    /// cap from the minutes before the backfill; then the first reference,
    /// or the application's p99 after a long stop.
    ceiling: Option<Duration>,
    probing_since: Option<Instant>,
    /// The gate's change count when the probe began.
    gate_at_start: u64,
    next_probe: Instant,
}

impl Baseline {
    /// A reference for a backfill starting now, from probes back to back
    /// before the copier runs, but never above `cap` (what the application's
    /// one-second p99 stayed under in the minutes before, if known): a few
    /// seconds right after `start` are a thin sample.
    pub fn new(now: Instant, cap: Option<Duration>) -> Baseline {
        Baseline {
            samples: VecDeque::with_capacity(PROBE_SAMPLES),
            reference: None,
            ceiling: cap,
            probing_since: None,
            gate_at_start: 0,
            next_probe: now,
        }
    }

    /// Advance to `now`; true while the copier must rest for a probe.
    /// `gate` is the proxy's gate's change count (`Gate::changes`: a probe
    /// in which the gate was closed at any time measured the holds of a DDL
    /// step, not the application, and counts for nothing); `p99` answers the p99 and
    /// count of the requests that ended within a window up to now.
    pub fn tick(
        &mut self,
        now: Instant,
        gate: u64,
        p99: impl FnOnce(Duration) -> Option<(Duration, usize)>,
    ) -> bool {
        match self.probing_since {
            None if now >= self.next_probe => {
                self.probing_since = Some(now);
                self.gate_at_start = gate;
                true
            }
            None => false,
            Some(since) if now.duration_since(since) >= PROBE_SETTLE + PROBE_WINDOW => {
                let held = gate != self.gate_at_start || gate % 2 == 1;
                let reading = p99(PROBE_WINDOW)
                    .filter(|(_, n)| *n >= MIN_REQUESTS)
                    .map(|(d, _)| d);
                match (held, reading) {
                    (true, _) if self.reference.is_none() => return self.probe_again(now, gate),
                    (true, _) | (false, None) => {}
                    (false, Some(d)) => {
                        push_recent(&mut self.samples, d, PROBE_SAMPLES);
                        let median = self.median();
                        let first = self.reference.is_none();
                        if first && self.samples.len() < INITIAL_PROBES {
                            return self.probe_again(now, gate);
                        }
                        self.reference = match (median, self.ceiling) {
                            (Some(m), Some(c)) => Some(m.min(c)),
                            (m, _) => m,
                        };
                        if first {
                            self.ceiling = self.reference;
                        }
                    }
                }
                self.probing_since = None;
                self.next_probe = now + PROBE_EVERY;
                false
            }
            Some(_) => true,
        }
    }

    /// Measure another window at once (the copier keeps resting; it has
    /// just rested for the settle time).
    fn probe_again(&mut self, now: Instant, gate: u64) -> bool {
        self.probing_since = Some(now.checked_sub(PROBE_SETTLE).unwrap_or(now));
        self.gate_at_start = gate;
        true
    }

    fn median(&self) -> Option<Duration> {
        quantile(&self.samples, 1, 2)
    }

    /// True while a probe rests the copier.
    pub fn probing(&self) -> bool {
        self.probing_since.is_some()
    }

    /// The application's own p99 in force; `None` before the first probes.
    pub fn own_p99(&self) -> Option<Duration> {
        self.reference
    }

    /// The copier has been stopped for a long while and the p99 is still
    /// `p99`: that is the application's own now. Recent probes are dropped,
    /// so older, lower ones do not pull the reference back under it; it is
    /// the new ceiling.
    pub fn reanchor(&mut self, p99: Duration) {
        self.samples.clear();
        self.samples.push_back(p99);
        self.reference = Some(p99);
        self.ceiling = Some(p99);
    }
}

/// The latency bound in force.
#[derive(Debug)]
struct P99Bound {
    /// Zero: none.
    max: Duration,
    /// How to name it to operators.
    name: String,
    /// `max_p99_ratio` times the application's own p99 (else `max_p99_ms`).
    relative: bool,
}

/// The lower of the absolute and relative bounds that are set.
fn p99_bound(bounds: &Bounds, own: Option<Duration>) -> P99Bound {
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
        Some((max, name)) if bounds.max_p99.is_zero() || max < bounds.max_p99 => P99Bound {
            max,
            name,
            relative: true,
        },
        _ => P99Bound {
            max: bounds.max_p99,
            name: absolute,
            relative: false,
        },
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
    // Since when the graded throttle has held the copier to a crawl.
    let mut crawling_since: Option<Instant> = None;
    let mut baseline: Option<Baseline> = None;
    let mut history = History::default();
    let mut pace = Pace::default();
    let mut idle_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let bounds = live.bounds();
        let now = Instant::now();
        let backfilling = live.control.backfilling();
        if backfilling {
            history.pause();
            idle_since = now;
            let working = live.control.holding().is_none();
            pace.tick(now, live.control.rows(), working);
        } else {
            pace.reset();
            history.tick(now, proxy.gate.changes(), |w| proxy.latency.p99(w));
            if now.duration_since(idle_since) >= IDLE_RESET {
                baseline = None;
            }
        }
        // With no backfill yet there is nothing to rest: the reference comes
        // when a backfill does.
        if bounds.p99_ratio > 0.0 && (backfilling || baseline.is_some()) {
            let b = baseline.get_or_insert_with(|| {
                let cap = history.high();
                if let Some(h) = cap {
                    tracing::info!(
                        "before the backfill the application's one-second p99 stayed under {:.2} ms 9 seconds in 10: the first reference is at most that",
                        ms(h)
                    );
                }
                Baseline::new(now, cap)
            });
            let was = b.probing();
            let probing = b.tick(now, proxy.gate.changes(), |w| proxy.latency.p99(w));
            if probing && !was {
                tracing::debug!("copier resting to measure the application's own p99");
            } else if was && !probing {
                match b.own_p99() {
                    Some(own) => tracing::info!(
                        "application's own p99 {:.2} ms (median of recent probes, at most the first): latency bound {:.2} ms",
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
        let bound = p99_bound(&bounds, baseline.as_ref().and_then(Baseline::own_p99));
        let max_p99 = bound.max;
        let cap = pace.cap().filter(|_| !max_p99.is_zero()).unwrap_or(0);
        live.control.set_pace_cap(cap);
        metrics::gauge!("pgshift_backfill_pace_cap_rows_per_second").set(cap as f64);
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
            let crawled = if slowdown >= CRAWL {
                now.duration_since(*crawling_since.get_or_insert(now))
            } else {
                crawling_since = None;
                Duration::ZERO
            };
            // The relative bound binds and the copier has been held to a
            // crawl (or stopped) long enough for its effects to pass, yet
            // the p99 is still above the bound: that is the application's own.
            let own = (bound.relative && crawled >= IDLE_BLAME)
                .then(|| proxy.latency.p99(CRAWL_WINDOW))
                .flatten()
                .filter(|(d, n)| *d > max_p99 && *n >= MIN_REQUESTS);
            if let (Some(b), Some((own, _))) = (baseline.as_mut(), own) {
                b.reanchor(own);
                crawling_since = None;
                stopped_since = None;
                tracing::info!(
                    "copier held to a crawl for {} s and the p99 of the last {} s is still {:.2} ms: the application's own p99 has risen; latency bound {:.2} ms",
                    crawled.as_secs(),
                    CRAWL_WINDOW.as_secs(),
                    ms(own),
                    ms(own.mul_f64(bounds.p99_ratio))
                );
            } else if p99 > max_p99 && was >= MAX_SLOWDOWN {
                let since = *stopped_since.get_or_insert_with(Instant::now);
                reason = Some(stopped_reason(ms(p99), &bound, since.elapsed()));
            } else if slowdown > 0.0 {
                slow_reason = Some(format!(
                    "proxy p99 latency {:.2} ms against {}: copier rests {slowdown:.1}x each batch",
                    ms(p99),
                    bound.name
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
/// is the application's own, not the copier's: say so (absolute bound) or
/// take it as the application's own p99 (relative bound).
const IDLE_BLAME: Duration = Duration::from_secs(30);
/// A graded rest this high (the copier works at most 1 / 17 of the time)
/// is a crawl: its share of the application's latency is small.
const CRAWL: f64 = MAX_SLOWDOWN / 2.0;
/// The p99 that stands for the application's own after a long crawl.
const CRAWL_WINDOW: Duration = Duration::from_secs(5);

/// Why the p99 bound stops the copier; after `IDLE_BLAME` the reason tells
/// the operator that the bound sits under the application's own p99.
fn stopped_reason(p99_ms: f64, bound: &P99Bound, stopped: Duration) -> String {
    let mut reason = format!("proxy p99 latency {p99_ms:.2} ms above {}", bound.name);
    if stopped >= IDLE_BLAME {
        let setting = if bound.relative {
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
        let abs = p99_bound(
            &Bounds {
                max_p99: Duration::from_millis(2),
                ..Bounds::default()
            },
            None,
        );
        let short = stopped_reason(3.0, &abs, Duration::from_secs(5));
        assert_eq!(short, "proxy p99 latency 3.00 ms above max_p99_ms 2.00");
        let long = stopped_reason(3.0, &abs, Duration::from_secs(45));
        assert!(
            long.contains("copier stopped for 45 s") && long.contains("raise max_p99_ms"),
            "{long}"
        );
    }

    /// Runs one whole probe from `at` (settle + window) answering `p99`,
    /// the gate's change count `gate` at its end; whether the copier still
    /// rests after it.
    fn probe(b: &mut Baseline, at: Instant, gate: u64, p99: Option<(Duration, usize)>) -> bool {
        assert!(b.tick(at, 0, |_| None), "a probe begins");
        b.tick(at + PROBE_SETTLE + PROBE_WINDOW, gate, |w| {
            assert_eq!(w, PROBE_WINDOW);
            p99
        })
    }

    #[test]
    fn the_first_reference_is_the_median_of_back_to_back_probes_before_the_copier_runs() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Baseline::new(t0, None);
        assert!(b.tick(t0, 0, |_| None));
        assert!(b.tick(t0 + ms(2000), 0, |_| None));
        // A DDL step closed and reopened the gate during the window: it
        // measured the holds.
        assert!(b.tick(t0 + ms(2500), 2, |_| Some((ms(80), 100))));
        assert_eq!(b.own_p99(), None);
        // The gate closed again and stayed closed through the next window.
        let mut at = t0 + ms(2500);
        at += PROBE_WINDOW;
        assert!(b.tick(at, 3, |_| Some((ms(80), 100))));
        at += PROBE_WINDOW;
        assert!(b.tick(at, 3, |_| Some((ms(80), 100))));
        assert_eq!(b.own_p99(), None);
        // Reopened: three clean windows in a row, the copier resting throughout.
        at += PROBE_WINDOW;
        assert!(b.tick(at, 4, |_| Some((ms(80), 100))));
        for (i, p) in [4, 9, 3].into_iter().enumerate() {
            at += PROBE_WINDOW;
            let resting = b.tick(at, 4, |_| Some((ms(p), 100)));
            assert_eq!(resting, i < 2, "probe {i}");
        }
        assert_eq!(b.own_p99(), Some(ms(4)));
        // No probe until PROBE_EVERY has passed.
        assert!(!b.tick(at + ms(20_000), 4, |_| None));
    }

    #[test]
    fn probes_move_the_reference_under_its_first_value_and_only_a_long_stop_raises_that() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Baseline::new(t0, None);
        let mut at = t0;
        assert!(probe(&mut b, at, 0, Some((ms(4), 100))));
        for p in [4, 4] {
            at += PROBE_SETTLE + PROBE_WINDOW;
            b.tick(at + PROBE_WINDOW, 0, |_| Some((ms(p), 100)));
            at += PROBE_WINDOW;
        }
        assert_eq!(b.own_p99(), Some(ms(4)));
        let mut next = |b: &mut Baseline, p: Option<(Duration, usize)>| {
            at += PROBE_SETTLE + PROBE_WINDOW + PROBE_EVERY;
            assert!(!probe(b, at, 0, p));
        };
        // The copier's aftermath shows in every probe: the reference holds.
        for _ in 0..5 {
            next(&mut b, Some((ms(20), 100)));
        }
        assert_eq!(b.own_p99(), Some(ms(4)));
        // Too few requests: nothing learnt.
        next(&mut b, Some((ms(1), 3)));
        assert_eq!(b.own_p99(), Some(ms(4)));
        // Lower probes lower it, once they are the median of the recent ones.
        for (p, want) in [(2, 4), (2, 4), (2, 2)] {
            next(&mut b, Some((ms(p), 100)));
            assert_eq!(b.own_p99(), Some(ms(want)));
        }
        // One lucky stretch does not hold it down: ordinary probes bring it
        // back up, but never above the first reference.
        for (p, want) in [(3, 2), (3, 2), (3, 3), (9, 3), (9, 3), (9, 4)] {
            next(&mut b, Some((ms(p), 100)));
            assert_eq!(b.own_p99(), Some(ms(want)), "after {p} ms");
        }
        // After a long stop the p99 then is the application's own.
        b.reanchor(ms(7));
        assert_eq!(b.own_p99(), Some(ms(7)));
        next(&mut b, Some((ms(6), 100)));
        assert_eq!(b.own_p99(), Some(ms(7)));
        next(&mut b, Some((ms(6), 100)));
        assert_eq!(b.own_p99(), Some(ms(6)));
        next(&mut b, Some((ms(9), 100)));
        next(&mut b, Some((ms(9), 100)));
        assert_eq!(b.own_p99(), Some(ms(7)));
    }

    #[test]
    fn the_history_before_a_backfill_caps_its_first_reference() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let mut h = History::default();
        // Once a second, 40 seconds: p99s of 1..=4 ms; one second with the
        // gate closed for a DDL step (80 ms) and a quiet one are left out.
        for i in 0..40u64 {
            let at = t0 + s(i);
            let gate = if i == 20 {
                1
            } else if i > 20 {
                2
            } else {
                0
            };
            let p = if i == 21 { ms(80) } else { ms(1 + i % 4) };
            let n = if i == 30 { 3 } else { 100 };
            h.tick(at, gate, |w| {
                assert_eq!(w, s(1));
                Some((p, n))
            });
            // More ticks within the same second record nothing.
            h.tick(at + ms(250), gate, |_| Some((ms(500), 100)));
        }
        assert_eq!(h.samples.len(), 36);
        assert!(!h.samples.contains(&ms(80)));
        assert_eq!(h.high(), Some(ms(4)));
        // A backfill starting now probes first; three high readings right
        // after start are capped by what the minutes before showed.
        let mut b = Baseline::new(t0 + s(40), h.high());
        let mut at = t0 + s(40);
        assert!(b.tick(at, 0, |_| None));
        at += PROBE_SETTLE;
        for (i, p) in [9, 8, 9].into_iter().enumerate() {
            at += PROBE_WINDOW;
            assert_eq!(b.tick(at, 0, |_| Some((ms(p), 100))), i < 2);
        }
        assert_eq!(b.own_p99(), Some(ms(4)));
        // Lower readings come in under the cap.
        let mut low = Baseline::new(t0, h.high());
        let mut at = t0;
        assert!(low.tick(at, 0, |_| None));
        at += PROBE_SETTLE;
        for p in [2, 3, 2] {
            at += PROBE_WINDOW;
            low.tick(at, 0, |_| Some((ms(p), 100)));
        }
        assert_eq!(low.own_p99(), Some(ms(2)));
        // Too little history: no cap.
        let mut short = History::default();
        for i in 0..10u64 {
            short.tick(t0 + s(i), 0, |_| Some((ms(1), 100)));
        }
        assert_eq!(short.high(), None);
    }

    #[test]
    fn the_pace_cap_is_twice_the_mean_of_recent_working_seconds() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pace::default();
        let mut rows = 0;
        let mut at = t0;
        // Four ticks a second; the copier does 1,000 rows a second.
        let mut run = |p: &mut Pace, secs: u64, rate: u64, working: bool| {
            for _ in 0..secs * 4 {
                at += ms(250);
                rows += rate / 4;
                p.tick(at, rows, working);
            }
        };
        p.tick(t0, 0, true);
        run(&mut p, 5, 1000, true);
        assert_eq!(p.cap(), None, "too few seconds");
        run(&mut p, 10, 1000, true);
        assert_eq!(p.cap(), Some(2000));
        // Seconds in which the copier is held (stopped, paused, probing)
        // count for nothing, so a stop does not pull the cap to the floor.
        run(&mut p, 60, 0, false);
        assert_eq!(p.cap(), Some(2000));
        // Faster seconds raise it, by the mean.
        run(&mut p, 15, 4000, true);
        let cap = p.cap().unwrap_or(0);
        assert!((4500..=5500).contains(&cap), "{cap}");
        // A crawl keeps a floor.
        run(&mut p, 400, 100, true);
        assert_eq!(p.cap(), Some(PACE_FLOOR));
        p.reset();
        assert_eq!(p.cap(), None);
    }

    #[test]
    fn the_lower_of_the_absolute_and_relative_bounds_holds() {
        let ms = Duration::from_millis;
        let abs = Bounds {
            max_p99: ms(10),
            ..Bounds::default()
        };
        assert_eq!(p99_bound(&abs, Some(ms(2))).max, ms(10));
        let rel = Bounds {
            p99_ratio: 1.5,
            ..Bounds::default()
        };
        assert_eq!(p99_bound(&rel, None).max, Duration::ZERO);
        let b = p99_bound(&rel, Some(ms(2)));
        assert!(b.relative);
        assert_eq!(b.max, ms(3));
        assert!(
            b.name
                .contains("max_p99_ratio 1.5 x the application's own p99 2.00 ms"),
            "{}",
            b.name
        );
        let both = Bounds {
            max_p99: ms(10),
            ..rel
        };
        assert_eq!(p99_bound(&both, Some(ms(2))).max, ms(3));
        assert_eq!(p99_bound(&both, Some(ms(8))).max, ms(10));
        assert!(stopped_reason(9.0, &b, Duration::from_secs(60)).contains("raise max_p99_ratio"));
    }
}
