//! Keys ordered for choosing: those with room now sorted by the strategy's
//! score, and those that regain room at a known instant sorted by it. Every
//! change to a key moves it with [`Index::place`]; choosing takes from the front.

use std::collections::BTreeSet;

use tokio::time::Instant;

use super::key::Placement;
use super::strategy::Score;

#[derive(Debug, Default)]
pub struct Index {
    ready: BTreeSet<Score>,
    parked: BTreeSet<(Instant, i64)>,
}

impl Index {
    /// Moves a key from `old` to `new`.
    pub fn place(&mut self, id: i64, old: Placement, new: Placement) {
        if old == new {
            return;
        }
        match old {
            Placement::Ready(score) => {
                self.ready.remove(&score);
            }
            Placement::Parked(at) => {
                self.parked.remove(&(at, id));
            }
            Placement::Off | Placement::Blocked => {}
        }
        match new {
            Placement::Ready(score) => {
                self.ready.insert(score);
            }
            Placement::Parked(at) => {
                self.parked.insert((at, id));
            }
            Placement::Off | Placement::Blocked => {}
        }
    }

    /// Keys whose parking instant has come.
    pub fn due(&self, now: Instant) -> impl Iterator<Item = (Instant, i64)> + '_ {
        self.parked.iter().take_while(move |(at, _)| *at <= now).copied()
    }

    /// The next instant a parked key regains room.
    pub fn next_unpark(&self) -> Option<Instant> {
        self.parked.first().map(|&(at, _)| at)
    }

    /// Ids of keys with room, best first.
    pub fn ready(&self) -> impl Iterator<Item = i64> + '_ {
        self.ready.iter().map(|s| s.3)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }
}
