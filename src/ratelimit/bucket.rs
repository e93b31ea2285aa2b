//! One (limit, tenant) bucket of the local limiter: its rolling windows, counted in slots of
//! 1/120 of the window, its pause, and the reservations that give their slots back when the
//! request is not sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{HOLD_SLOTS, LimitSpec, Refused, SLOTS, Windows};

#[derive(Debug)]
pub(super) struct Window {
    pub(super) slot: Duration,
    pub(super) limit: u32,
    /// (slot index, admissions), oldest first.
    pub(super) entries: VecDeque<(u64, u32)>,
    /// The latest slot reserved: later reservations never go before it.
    pub(super) last: u64,
}

impl Window {
    pub(super) fn new(span: Duration, limit: u32) -> Self {
        Window {
            slot: span / SLOTS as u32,
            limit,
            entries: VecDeque::new(),
            last: 0,
        }
    }

    pub(super) fn slot_of(&self, epoch: Instant, t: Instant) -> u64 {
        (t.saturating_duration_since(epoch).as_nanos() / self.slot.as_nanos().max(1)) as u64
    }

    pub(super) fn slot_start(&self, epoch: Instant, s: u64) -> Instant {
        epoch + self.slot * u32::try_from(s).unwrap_or(u32::MAX)
    }

    pub(super) fn prune(&mut self, current: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(s, _)| s + HOLD_SLOTS < current)
        {
            self.entries.pop_front();
        }
    }

    /// The earliest time at or after `start` this window admits one more.
    pub(super) fn earliest(&self, epoch: Instant, start: Instant) -> Instant {
        let s0 = self.slot_of(epoch, start).max(self.last);
        let mut seen = 0u32;
        let mut slot = s0;
        for (s, n) in self.entries.iter().rev() {
            seen = seen.saturating_add(*n);
            if seen >= self.limit {
                slot = s0.max(s + HOLD_SLOTS + 1);
                break;
            }
        }
        if slot == self.slot_of(epoch, start) {
            start
        } else {
            self.slot_start(epoch, slot).max(start)
        }
    }

    pub(super) fn add(&mut self, s: u64) {
        match self.entries.back_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => self.entries.push_back((s, 1)),
        }
        self.last = self.last.max(s);
    }

    pub(super) fn remove(&mut self, s: u64) {
        if let Some(i) = self.entries.iter().position(|(slot, _)| *slot == s) {
            self.entries[i].1 -= 1;
            if self.entries[i].1 == 0 {
                self.entries.remove(i);
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) epoch: Instant,
    /// The generation of the newest spec seen.
    pub(super) generation: u64,
    /// Times the windows were rebuilt for changed numbers (a reservation's slots are only
    /// given back to the windows they were taken from).
    pub(super) rebuilds: u64,
    pub(super) limits: (Option<u32>, Option<u32>),
    pub(super) windows: Vec<Window>,
    pub(super) paused_until: Option<Instant>,
}

impl Bucket {
    pub(super) fn new(spec: &LimitSpec, spans: Windows, now: Instant) -> Self {
        let mut windows = Vec::with_capacity(2);
        if let Some(n) = spec.per_minute {
            windows.push(Window::new(spans.minute, n));
        }
        if let Some(n) = spec.per_hour {
            windows.push(Window::new(spans.hour, n));
        }
        Bucket {
            epoch: now,
            generation: spec.generation,
            rebuilds: 0,
            limits: (spec.per_minute, spec.per_hour),
            windows,
            paused_until: None,
        }
    }

    /// Reserves the earliest admission within `budget`, returning its time and slots.
    pub(super) fn reserve(
        &mut self,
        now: Instant,
        budget: Duration,
    ) -> Result<(Instant, Vec<u64>), Refused> {
        let start = self.paused_until.filter(|p| *p > now).unwrap_or(now);
        let epoch = self.epoch;
        for w in &mut self.windows {
            let current = w.slot_of(epoch, now);
            w.prune(current);
        }
        let at = self
            .windows
            .iter()
            .map(|w| w.earliest(epoch, start))
            .fold(start, Instant::max);
        let wait = at - now;
        if wait > budget {
            return Err(Refused { retry_after: wait });
        }
        let slots = self
            .windows
            .iter_mut()
            .map(|w| {
                let s = w.slot_of(epoch, at);
                w.add(s);
                s
            })
            .collect();
        Ok((at, slots))
    }

    /// Gives back the slots reserved when the windows had been rebuilt `rebuilds` times
    /// (nothing when they have been rebuilt since: their slots mean other times).
    pub(super) fn release(&mut self, rebuilds: u64, slots: &[u64]) {
        if rebuilds != self.rebuilds {
            return;
        }
        for (w, s) in self.windows.iter_mut().zip(slots) {
            w.remove(*s);
        }
    }
}

pub(super) fn lock(b: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives a reservation back unless the request was sent.
pub(super) struct Reservation {
    pub(super) bucket: Arc<Mutex<Bucket>>,
    pub(super) rebuilds: u64,
    pub(super) slots: Vec<u64>,
    pub(super) armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.bucket).release(self.rebuilds, &self.slots);
        }
    }
}
