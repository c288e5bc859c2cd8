//! Which chunk to ask which peer for next: the pure bookkeeping of a swarm
//! download, with time passed in. States and transitions are in `STATE.md`
//! beside this file; each transition has a unit test below, and
//! `tests/swarm_sim.rs` drives whole swarms through it from random seeds.
//!
//! Policy, in the order `poll_request` applies it:
//!
//! 1. A peer gets nothing while it is dropped or its window is full. Its
//!    window (requests in flight) follows its measured throughput: about
//!    `window_horizon` worth of its own rate, within `min_window..=max_window`,
//!    starting at `initial_window` and growing by one per delivery until
//!    the first rate sample (slow start).
//! 2. A chunk that failed or was taken back from a lost peer comes first,
//!    once its backoff has passed, preferably from another peer than the
//!    one that failed it.
//! 3. Then the rarest chunk the peer holds that nobody was asked for yet
//!    (fewest live peers holding it), first in the download's *fresh order*
//!    among equals; with only whole-file peers every chunk is equally rare
//!    and this is the fresh order itself, found in amortised constant time.
//!    The fresh order is index order, or a permutation of the chunks drawn
//!    from a seed the caller passes ([`Scheduler::shuffled`]). The engine
//!    shuffles every download with a seed of its own, so that nodes
//!    fetching the same file at once from one seeder ask it for different
//!    chunks and have something to trade among themselves; in index order
//!    they would all hold the same chunks and could only wait for the
//!    seeder. (A random start with index order after it is not enough: a
//!    node that catches up with another's range then walks in step with
//!    it, asking the seeder for the same chunks.)
//! 4. Endgame: when no chunk held by a live peer is left unrequested, a peer
//!    with room in its window duplicates a chunk in flight elsewhere (the
//!    one with fewest copies, oldest first), at most `endgame_copies` copies
//!    per chunk; a peer with nothing in flight at all may add a copy past
//!    that cap, so chunks whose copies all sit at slow peers are still
//!    taken by whoever is idle (in practice: fast). The first verified copy
//!    wins; the others are returned to the caller to cancel. An
//!    `endgame_copies` below 2 turns endgame off.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::bitmap::Bitmap;
use crate::wire::Holding;

/// A peer as the scheduler knows it: an index handed out by
/// [`Scheduler::add_peer`].
pub type PeerKey = usize;

/// Tuning knobs; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Window of a new peer, requests.
    pub initial_window: u32,
    /// The window never shrinks below this, requests.
    pub min_window: u32,
    /// The window never grows past this, requests. The caller derives it
    /// from a memory budget per peer.
    pub max_window: u32,
    /// A peer's window holds about this long of its measured throughput.
    pub window_horizon: Duration,
    /// Length of one throughput sample.
    pub rate_sample: Duration,
    /// Most peers one chunk is in flight to at once (endgame only), except
    /// that a peer with nothing in flight may always add a copy; below 2,
    /// no endgame.
    pub endgame_copies: u32,
    /// Failed chunks after which a peer is dropped from this download.
    pub max_peer_failures: u32,
    /// Delay before a failed chunk is asked for again; doubles per attempt.
    pub retry_backoff: Duration,
    /// Cap on that delay.
    pub max_retry_backoff: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            initial_window: 4,
            min_window: 2,
            max_window: 64,
            window_horizon: Duration::from_millis(500),
            rate_sample: Duration::from_millis(250),
            endgame_copies: 2,
            max_peer_failures: 3,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Never asked for yet (only at or past `fresh_cursor` in fresh order).
    Fresh,
    /// Failed or taken back; in the `waiting` list.
    Waiting,
    /// Requested from the peers in its `flights` entry.
    InFlight,
    Done,
}

/// Why a chunk came back without verified data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The data did not match the manifest's hash.
    Corrupt,
    /// The peer answered with an error instead of data.
    Refused,
}

/// Why a peer no longer takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It sent data that failed verification `max_peer_failures` times.
    CorruptData,
    /// It refused or failed requests `max_peer_failures` times.
    TooManyErrors,
    /// Its connection ended.
    Disconnected,
    /// It claimed to hold a file of another chunk count.
    BadHave,
}

#[derive(Debug, Clone)]
struct Peer {
    /// `None`: holds every chunk (a seeder).
    holding: Option<Bitmap>,
    in_flight: u32,
    window: u32,
    /// Bytes per second, smoothed; `None` before the first sample.
    rate: Option<f64>,
    sample_start: Duration,
    sample_bytes: u64,
    failures: u32,
    corrupt: u32,
    dropped: Option<DropReason>,
}

impl Peer {
    fn holds(&self, i: u32) -> bool {
        self.holding.as_ref().is_none_or(|b| b.get(i))
    }
    fn live(&self) -> bool {
        self.dropped.is_none()
    }
}

#[derive(Debug, Clone)]
struct Flight {
    /// Requested at this time from the first peer in `peers`.
    since: Duration,
    /// Distinct, non-empty; more than one only in endgame.
    peers: Vec<PeerKey>,
}

#[derive(Debug, Clone)]
struct WaitEntry {
    index: u32,
    not_before: Duration,
    /// The peer that failed it last; another peer is preferred.
    avoid: Option<PeerKey>,
}

/// Where the download as a whole stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Complete,
    /// Chunks are missing and no live peer is left to ask.
    Stuck,
    /// Chunks are missing, live peers are left but none holds any of them
    /// and nothing is in flight or waiting: only a `Have` update or a new
    /// peer can help.
    Starved,
}

/// Per-chunk and per-peer bookkeeping. Invariants (`check_invariants`):
///
/// 1. every chunk is in exactly one state; `done` counts `Done` chunks and
///    `fresh` counts `Fresh` ones, all of them at or past `fresh_cursor`
///    in fresh order (positions from `origin`, wrapping round);
/// 2. a `Waiting` chunk is in `waiting` exactly once, and nothing else is;
/// 3. an `InFlight` chunk has a `flights` entry and nothing else does; its
///    peers are distinct, hold the chunk, and number at least one (more
///    only with `endgame_copies` of 2 or more);
/// 4. a peer's `in_flight` is the number of flights it is in; a dropped
///    peer is in none, and no peer is in more than `max_window`;
/// 5. `seeders` counts live peers holding every chunk and `avail[i]` the
///    live peers with a bitmap holding chunk `i`.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    chunk_size: u32,
    file_size: u64,
    chunks: Vec<Chunk>,
    attempts: Vec<u8>,
    avail: Vec<u32>,
    seeders: u32,
    /// Live peers with a bitmap (not holding every chunk).
    partial_peers: u32,
    /// The fresh order: `order[pos]` is the chunk at position `pos`; empty
    /// for index order.
    order: Vec<u32>,
    /// A position in fresh order: the chunk is `at(fresh_cursor)`.
    fresh_cursor: u32,
    fresh: u32,
    flights: BTreeMap<u32, Flight>,
    waiting: Vec<WaitEntry>,
    peers: Vec<Peer>,
    done: u32,
    duplicates: u64,
}

impl Scheduler {
    /// A download of a `file_size`-byte file in chunks of `chunk_size`
    /// bytes, of which those where `already_done(i)` holds are verified on
    /// disk (resume).
    pub fn new(
        config: SchedulerConfig,
        file_size: u64,
        chunk_size: u32,
        already_done: impl Fn(u32) -> bool,
    ) -> Self {
        let n = file_size.div_ceil(chunk_size.max(1) as u64) as u32;
        let chunks: Vec<Chunk> = (0..n)
            .map(|i| {
                if already_done(i) {
                    Chunk::Done
                } else {
                    Chunk::Fresh
                }
            })
            .collect();
        let done = chunks.iter().filter(|c| **c == Chunk::Done).count() as u32;
        let mut s = Self {
            config,
            chunk_size: chunk_size.max(1),
            file_size,
            attempts: vec![0; chunks.len()],
            avail: vec![0; chunks.len()],
            fresh: n - done,
            chunks,
            seeders: 0,
            partial_peers: 0,
            order: Vec::new(),
            fresh_cursor: 0,
            flights: BTreeMap::new(),
            waiting: Vec::new(),
            peers: Vec::new(),
            done,
            duplicates: 0,
        };
        s.skip_not_fresh();
        s
    }

    /// The same download with its fresh order a permutation of the chunks
    /// drawn from `seed` (see the policy above) instead of index order; the
    /// same seed gives the same order. Meant for right after
    /// [`Scheduler::new`]; chunks already asked for keep their state. Costs
    /// four bytes per chunk.
    pub fn shuffled(mut self, seed: u64) -> Self {
        let mut order: Vec<u32> = (0..self.chunk_count()).collect();
        let mut rng = SplitMix64(seed);
        // Fisher–Yates: each permutation equally likely (up to the bias of
        // `below`, negligible for chunk counts).
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        self.order = order;
        self.fresh_cursor = 0;
        self.skip_not_fresh();
        self
    }

    fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// The chunk at position `pos` (`< chunk count`) of the fresh order.
    fn at(&self, pos: u32) -> u32 {
        if self.order.is_empty() {
            pos
        } else {
            self.order[pos as usize]
        }
    }

    /// Fresh chunks from the cursor on, in fresh order (with others mixed
    /// in: callers check the state).
    fn fresh_onwards(&self) -> impl Iterator<Item = u32> + '_ {
        (self.fresh_cursor..self.chunk_count()).map(|pos| self.at(pos))
    }

    fn chunk_len(&self, i: u32) -> u64 {
        let start = i as u64 * self.chunk_size as u64;
        (self.chunk_size as u64).min(self.file_size.saturating_sub(start))
    }

    fn skip_not_fresh(&mut self) {
        while self.fresh_cursor < self.chunk_count()
            && self.chunks[self.at(self.fresh_cursor) as usize] != Chunk::Fresh
        {
            self.fresh_cursor += 1;
        }
    }

    /// A new source joins with what it holds; it may be asked at once.
    /// A bitmap of the wrong length makes it join already dropped
    /// ([`DropReason::BadHave`]).
    pub fn add_peer(&mut self, holding: Holding, now: Duration) -> PeerKey {
        let key = self.peers.len();
        self.peers.push(Peer {
            holding: Some(Bitmap::new(self.chunk_count())),
            in_flight: 0,
            window: self.config.initial_window.clamp(1, self.max_window()),
            rate: None,
            sample_start: now,
            sample_bytes: 0,
            failures: 0,
            corrupt: 0,
            dropped: None,
        });
        // Starts as a partial peer holding nothing, then learns its set.
        self.partial_peers += 1;
        self.handle_holding(key, holding, now);
        key
    }

    /// A peer comes back (a reconnection) with what it holds now: a new key
    /// that inherits `previous`'s failures, so trust spans the whole
    /// download however often a peer reconnects.
    pub fn rejoin(&mut self, previous: PeerKey, holding: Holding, now: Duration) -> PeerKey {
        let key = self.add_peer(holding, now);
        if let Some(old) = self.peers.get(previous).cloned() {
            let p = &mut self.peers[key];
            p.failures = old.failures;
            p.corrupt = old.corrupt;
        }
        key
    }

    fn max_window(&self) -> u32 {
        self.config.max_window.max(1)
    }

    /// `peer` now holds chunk `index` (a have-announcement). Returns false
    /// if the peer is unknown or dropped, or the index is out of range.
    pub fn handle_have(&mut self, peer: PeerKey, index: u32) -> bool {
        if index >= self.chunk_count() || !self.peers.get(peer).is_some_and(Peer::live) {
            return false;
        }
        let p = &mut self.peers[peer];
        let Some(bits) = p.holding.as_mut() else {
            return true;
        };
        if bits.set(index) {
            self.avail[index as usize] += 1;
        }
        if bits.is_full() {
            self.become_seeder(peer);
        }
        true
    }

    /// `peer` holds (at least) `holding`: its set only ever grows. Returns
    /// false, changing nothing, for an unknown or dropped peer; false, and
    /// the peer dropped ([`DropReason::BadHave`]), for a bitmap whose length
    /// is not this file's chunk count.
    pub fn handle_holding(&mut self, peer: PeerKey, holding: Holding, now: Duration) -> bool {
        if !self.peers.get(peer).is_some_and(Peer::live) {
            return false;
        }
        match holding {
            Holding::All => {
                self.become_seeder(peer);
                true
            }
            Holding::Some(b) => {
                if b.len() != self.chunk_count() {
                    self.drop_peer(peer, DropReason::BadHave, now);
                    return false;
                }
                for i in b.iter() {
                    self.handle_have(peer, i);
                }
                true
            }
        }
    }

    fn become_seeder(&mut self, peer: PeerKey) {
        let p = &mut self.peers[peer];
        if let Some(bits) = p.holding.take() {
            for i in bits.iter() {
                self.avail[i as usize] -= 1;
            }
            self.partial_peers -= 1;
            self.seeders += 1;
        }
    }

    fn availability(&self, i: u32) -> u32 {
        self.seeders + self.avail[i as usize]
    }

    /// Live peers, the dropped excluded.
    pub fn live_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.live()).count()
    }

    /// The next chunk to request from `peer` at time `now`, or `None` when
    /// its window is full, it is dropped, or nothing is ready for it.
    pub fn poll_request(&mut self, peer: PeerKey, now: Duration) -> Option<u32> {
        let p = self.peers.get(peer)?;
        if !p.live() || p.in_flight >= p.window {
            return None;
        }
        if let Some(index) = self.pick_waiting(peer, now) {
            self.start_flight(peer, index, now);
            return Some(index);
        }
        if let Some(index) = self.pick_fresh(peer) {
            self.fresh -= 1;
            self.start_flight(peer, index, now);
            self.skip_not_fresh();
            return Some(index);
        }
        let index = self.pick_endgame(peer)?;
        self.duplicates += 1;
        let f = self
            .flights
            .get_mut(&index)
            .expect("endgame picks a flight");
        f.peers.push(peer);
        self.count_request(peer, now);
        Some(index)
    }

    fn pick_waiting(&mut self, peer: PeerKey, now: Duration) -> Option<u32> {
        let p = &self.peers[peer];
        let pos = self.waiting.iter().position(|e| {
            e.not_before <= now
                && p.holds(e.index)
                // Another peer is preferred, if any live one holds it.
                && (e.avoid != Some(peer) || self.availability(e.index) <= 1)
        })?;
        Some(self.waiting.remove(pos).index)
    }

    fn pick_fresh(&self, peer: PeerKey) -> Option<u32> {
        let p = &self.peers[peer];
        if self.partial_peers == 0 {
            // Every live holder holds everything: all equally rare.
            return (self.fresh_cursor < self.chunk_count()).then(|| self.at(self.fresh_cursor));
        }
        let mut best: Option<(u32, u32)> = None;
        for i in self.fresh_onwards() {
            if self.chunks[i as usize] != Chunk::Fresh || !p.holds(i) {
                continue;
            }
            let a = self.availability(i);
            if best.is_none_or(|(ba, _)| a < ba) {
                best = Some((a, i));
                if a == 1 {
                    break; // nothing is rarer than held by this peer alone
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// True when no chunk that a live peer holds is still unrequested:
    /// what is missing is in flight, waiting for a retry, or held by nobody.
    pub fn in_endgame(&self) -> bool {
        self.fresh == 0
            || self
                .fresh_onwards()
                .all(|i| self.chunks[i as usize] != Chunk::Fresh || self.availability(i) == 0)
    }

    fn pick_endgame(&self, peer: PeerKey) -> Option<u32> {
        let copies = self.config.endgame_copies as usize;
        if copies < 2 || self.flights.is_empty() || !self.in_endgame() {
            return None;
        }
        let p = &self.peers[peer];
        // An idle peer is not held to the cap: when every copy of a chunk
        // sits at a slow peer, whoever has nothing to do takes it too.
        let cap = if p.in_flight == 0 { usize::MAX } else { copies };
        self.flights
            .iter()
            .filter(|(i, f)| f.peers.len() < cap && !f.peers.contains(&peer) && p.holds(**i))
            .min_by_key(|(i, f)| (f.peers.len(), f.since, **i))
            .map(|(i, _)| *i)
    }

    fn start_flight(&mut self, peer: PeerKey, index: u32, now: Duration) {
        debug_assert!(matches!(
            self.chunks[index as usize],
            Chunk::Fresh | Chunk::Waiting
        ));
        self.chunks[index as usize] = Chunk::InFlight;
        self.flights.insert(
            index,
            Flight {
                since: now,
                peers: vec![peer],
            },
        );
        self.count_request(peer, now);
    }

    fn count_request(&mut self, peer: PeerKey, now: Duration) {
        let p = &mut self.peers[peer];
        if p.in_flight == 0 {
            // It was idle: measure its rate from now, not across the gap.
            p.sample_start = now;
            p.sample_bytes = 0;
        }
        p.in_flight += 1;
    }

    /// Takes `peer` off chunk `index`'s flight. `Some(others still asked)`
    /// if it was on it.
    fn leave_flight(&mut self, peer: PeerKey, index: u32) -> Option<usize> {
        let f = self.flights.get_mut(&index)?;
        let pos = f.peers.iter().position(|&q| q == peer)?;
        f.peers.remove(pos);
        self.peers[peer].in_flight -= 1;
        Some(f.peers.len())
    }

    /// `peer` delivered chunk `index` and it verified, at `now`. Returns the
    /// other peers the same chunk is still requested from (endgame losers,
    /// whose requests the caller should cancel), or `None`, changing
    /// nothing, if that chunk was not in flight to that peer (a late or
    /// cancelled answer).
    pub fn handle_verified(
        &mut self,
        peer: PeerKey,
        index: u32,
        now: Duration,
    ) -> Option<Vec<PeerKey>> {
        self.leave_flight(peer, index)?;
        let losers = self
            .flights
            .remove(&index)
            .expect("flight exists while a peer is on it")
            .peers;
        for &q in &losers {
            self.peers[q].in_flight -= 1;
        }
        self.chunks[index as usize] = Chunk::Done;
        self.done += 1;
        let len = self.chunk_len(index);
        self.measure(peer, len, now);
        Some(losers)
    }

    /// Throughput bookkeeping for one delivery, and the window that follows.
    fn measure(&mut self, peer: PeerKey, bytes: u64, now: Duration) {
        let max = self.max_window();
        let min = self.config.min_window.clamp(1, max);
        let chunk = self.chunk_size as f64;
        let (horizon, sample) = (self.config.window_horizon, self.config.rate_sample);
        let p = &mut self.peers[peer];
        p.sample_bytes += bytes;
        let elapsed = now.saturating_sub(p.sample_start);
        if elapsed >= sample && !elapsed.is_zero() {
            let r = p.sample_bytes as f64 / elapsed.as_secs_f64();
            let rate = p.rate.map_or(r, |old| 0.5 * old + 0.5 * r);
            p.rate = Some(rate);
            p.sample_start = now;
            p.sample_bytes = 0;
            let target = (rate * horizon.as_secs_f64() / chunk).ceil();
            p.window = (target.min(max as f64) as u32).clamp(min, max);
        } else if p.rate.is_none() {
            p.window = (p.window + 1).min(max);
        }
    }

    fn wait(&mut self, index: u32, not_before: Duration, avoid: Option<PeerKey>) {
        self.chunks[index as usize] = Chunk::Waiting;
        self.flights.remove(&index);
        self.waiting.push(WaitEntry {
            index,
            not_before,
            avoid,
        });
    }

    /// `peer` failed chunk `index`. Unless another peer still has the chunk
    /// in flight (endgame), it waits a backoff and goes preferably to
    /// another peer. The peer is dropped after too many failures, and its
    /// other chunks go to the others at once. False, changing nothing, if
    /// the chunk was not in flight to that peer.
    pub fn handle_failed(
        &mut self,
        peer: PeerKey,
        index: u32,
        why: Failure,
        now: Duration,
    ) -> bool {
        let Some(others) = self.leave_flight(peer, index) else {
            return false;
        };
        let attempts = &mut self.attempts[index as usize];
        *attempts = attempts.saturating_add(1);
        let shift = (*attempts - 1).min(16) as u32;
        let backoff = self
            .config
            .retry_backoff
            .saturating_mul(1 << shift)
            .min(self.config.max_retry_backoff);
        let p = &mut self.peers[peer];
        p.failures += 1;
        if why == Failure::Corrupt {
            p.corrupt += 1;
        }
        let drop_now = p.failures >= self.config.max_peer_failures;
        let reason = if p.corrupt > 0 {
            DropReason::CorruptData
        } else {
            DropReason::TooManyErrors
        };
        if others == 0 {
            self.wait(index, now + backoff, Some(peer));
        }
        if drop_now {
            self.drop_peer(peer, reason, now);
        }
        true
    }

    /// `peer`'s connection ended: every chunk in flight to it alone is
    /// handed to the others at once.
    pub fn handle_peer_lost(&mut self, peer: PeerKey, now: Duration) {
        self.drop_peer(peer, DropReason::Disconnected, now);
    }

    fn drop_peer(&mut self, peer: PeerKey, reason: DropReason, now: Duration) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.dropped.is_some() {
            return;
        }
        p.dropped = Some(reason);
        match p.holding.take() {
            None => self.seeders -= 1,
            Some(bits) => {
                for i in bits.iter() {
                    self.avail[i as usize] -= 1;
                }
                self.partial_peers -= 1;
            }
        }
        let mine: Vec<u32> = self
            .flights
            .iter()
            .filter(|(_, f)| f.peers.contains(&peer))
            .map(|(i, _)| *i)
            .collect();
        for i in mine {
            if self.leave_flight(peer, i) == Some(0) {
                self.wait(i, now, Some(peer));
            }
        }
    }

    /// Why `peer` was dropped, if it was.
    pub fn dropped(&self, peer: PeerKey) -> Option<DropReason> {
        self.peers.get(peer).and_then(|p| p.dropped)
    }

    /// `peer`'s current window, requests.
    pub fn window(&self, peer: PeerKey) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.window)
    }

    /// `peer`'s measured throughput, bytes/s, once sampled.
    pub fn rate(&self, peer: PeerKey) -> Option<f64> {
        self.peers.get(peer).and_then(|p| p.rate)
    }

    /// Requests in flight to `peer`.
    pub fn in_flight(&self, peer: PeerKey) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.in_flight)
    }

    /// Endgame requests made so far: requests for a chunk already in flight
    /// to another peer.
    pub fn duplicate_requests(&self) -> u64 {
        self.duplicates
    }

    /// Earliest time after `now` at which a waiting retry becomes ready.
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        self.waiting
            .iter()
            .map(|e| e.not_before)
            .filter(|t| *t > now)
            .min()
    }

    pub fn status(&self) -> Status {
        if self.done as usize == self.chunks.len() {
            Status::Complete
        } else if self.live_peers() == 0 {
            Status::Stuck
        } else if self.flights.is_empty()
            && self.waiting.iter().all(|e| self.availability(e.index) == 0)
            && self
                .fresh_onwards()
                .all(|i| self.chunks[i as usize] != Chunk::Fresh || self.availability(i) == 0)
        {
            Status::Starved
        } else {
            Status::InProgress
        }
    }

    /// Number of verified chunks.
    pub fn done_count(&self) -> u32 {
        self.done
    }

    pub fn is_done(&self, index: u32) -> bool {
        self.chunks.get(index as usize) == Some(&Chunk::Done)
    }

    /// Checks every invariant listed on the type; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let count = |s: Chunk| self.chunks.iter().filter(|c| **c == s).count() as u32;
        assert_eq!(count(Chunk::Done), self.done, "done count");
        assert_eq!(count(Chunk::Fresh), self.fresh, "fresh count");
        let mut position = vec![u32::MAX; self.chunks.len()];
        for pos in 0..self.chunk_count() {
            position[self.at(pos) as usize] = pos;
        }
        assert!(
            self.order.is_empty() || !position.contains(&u32::MAX),
            "the fresh order is a permutation of the chunks"
        );
        for (i, c) in self.chunks.iter().enumerate() {
            let queued = self
                .waiting
                .iter()
                .filter(|e| e.index as usize == i)
                .count();
            assert_eq!(
                queued,
                usize::from(*c == Chunk::Waiting),
                "chunk {i} waiting"
            );
            if *c == Chunk::Fresh {
                assert!(
                    position[i] >= self.fresh_cursor,
                    "fresh chunk {i} before cursor"
                );
            }
            let flight = self.flights.get(&(i as u32));
            assert_eq!(flight.is_some(), *c == Chunk::InFlight, "chunk {i} flight");
            if let Some(f) = flight {
                assert!(!f.peers.is_empty(), "chunk {i} has no copy");
                if self.config.endgame_copies < 2 {
                    assert_eq!(f.peers.len(), 1, "chunk {i} copied without endgame");
                }
                let mut distinct = f.peers.clone();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), f.peers.len(), "chunk {i} peers distinct");
                for &q in &f.peers {
                    assert!(
                        self.peers[q].holds(i as u32),
                        "chunk {i} asked of {q} who lacks it"
                    );
                }
            }
        }
        let mut seeders = 0;
        let mut avail = vec![0u32; self.chunks.len()];
        for (k, p) in self.peers.iter().enumerate() {
            let n = self
                .flights
                .values()
                .filter(|f| f.peers.contains(&k))
                .count();
            assert_eq!(n as u32, p.in_flight, "peer {k} in-flight count");
            assert!(p.in_flight <= self.max_window(), "peer {k} over max window");
            if !p.live() {
                assert_eq!(p.in_flight, 0, "dropped peer {k} has requests");
                continue;
            }
            match &p.holding {
                None => seeders += 1,
                Some(b) => b.iter().for_each(|i| avail[i as usize] += 1),
            }
        }
        assert_eq!(seeders, self.seeders, "seeder count");
        assert_eq!(avail, self.avail, "availability counts");
        let partial = self
            .peers
            .iter()
            .filter(|p| p.live() && p.holding.is_some())
            .count();
        assert_eq!(partial as u32, self.partial_peers, "partial peer count");
    }
}

/// A small deterministic generator for [`Scheduler::shuffled`]: the
/// scheduler reads no randomness of its own, its caller passes a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;
    const CHUNK: u32 = 1000;

    fn cfg(window: u32) -> SchedulerConfig {
        SchedulerConfig {
            initial_window: window,
            max_window: window,
            ..SchedulerConfig::default()
        }
    }

    fn sched(config: SchedulerConfig, chunks: u32) -> Scheduler {
        Scheduler::new(config, chunks as u64 * CHUNK as u64, CHUNK, |_| false)
    }

    fn seeder(s: &mut Scheduler) -> PeerKey {
        s.add_peer(Holding::All, T0)
    }

    fn partial(s: &mut Scheduler, n: u32, held: &[u32]) -> PeerKey {
        let mut b = Bitmap::new(n);
        held.iter().for_each(|&i| {
            b.set(i);
        });
        s.add_peer(Holding::Some(b), T0)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fresh_to_in_flight_in_index_order_within_window() {
        let mut s = sched(cfg(2), 5);
        let p = seeder(&mut s);
        assert_eq!(s.poll_request(p, T0), Some(0));
        assert_eq!(s.poll_request(p, T0), Some(1));
        assert_eq!(s.poll_request(p, T0), None, "window of 2 is full");
        s.check_invariants();
    }

    #[test]
    fn resume_skips_done_chunks() {
        let mut s = Scheduler::new(cfg(8), 5 * CHUNK as u64, CHUNK, |i| i % 2 == 0);
        assert_eq!(s.done_count(), 3);
        let p = seeder(&mut s);
        assert_eq!(s.poll_request(p, T0), Some(1));
        assert_eq!(s.poll_request(p, T0), Some(3));
        assert_eq!(s.poll_request(p, T0), None);
        s.check_invariants();
    }

    /// Every fresh chunk a lone seeder is asked for, in order, each
    /// delivered at once so the window never fills.
    fn fresh_order(mut s: Scheduler) -> Vec<u32> {
        let p = seeder(&mut s);
        let mut asked = Vec::new();
        while let Some(i) = s.poll_request(p, T0) {
            assert!(s.handle_verified(p, i, T0).is_some());
            asked.push(i);
        }
        s.check_invariants();
        asked
    }

    #[test]
    fn shuffled_fresh_order_is_a_permutation_fixed_by_its_seed() {
        let order = fresh_order(sched(cfg(8), 100).shuffled(7));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "each chunk once");
        assert_ne!(order, sorted, "not index order");
        assert_eq!(
            order,
            fresh_order(sched(cfg(8), 100).shuffled(7)),
            "same seed"
        );
        assert_ne!(
            order,
            fresh_order(sched(cfg(8), 100).shuffled(8)),
            "other seed"
        );
        assert_eq!(
            fresh_order(sched(cfg(8), 100)),
            sorted,
            "unshuffled: index order"
        );
        // Tiny and empty files shuffle too.
        assert_eq!(fresh_order(sched(cfg(8), 1).shuffled(3)), [0]);
        let s = sched(cfg(8), 0).shuffled(3);
        s.check_invariants();
        assert_eq!(s.status(), Status::Complete);
    }

    #[test]
    fn shuffled_order_skips_done_chunks() {
        let resumed = |i: u32| i.is_multiple_of(3);
        let s = Scheduler::new(cfg(8), 30 * CHUNK as u64, CHUNK, resumed).shuffled(11);
        let mut order = fresh_order(s);
        order.sort_unstable();
        assert_eq!(order, (0..30).filter(|i| !resumed(*i)).collect::<Vec<_>>());
    }

    #[test]
    fn downloads_with_their_own_seeds_ask_one_seeder_for_different_chunks() {
        // Two nodes fetching the same file at once: their first requests
        // to the seeder are different chunks, which each can then fetch
        // from the other instead of from the seeder.
        let (mut a, mut b) = (
            sched(cfg(8), 1000).shuffled(1),
            sched(cfg(8), 1000).shuffled(2),
        );
        let (sa, sb) = (seeder(&mut a), seeder(&mut b));
        let first_a: Vec<_> = std::iter::from_fn(|| a.poll_request(sa, T0)).collect();
        let first_b: Vec<_> = std::iter::from_fn(|| b.poll_request(sb, T0)).collect();
        assert_eq!((first_a.len(), first_b.len()), (8, 8));
        assert!(
            first_a.iter().all(|i| !first_b.contains(i)),
            "{first_a:?} {first_b:?}"
        );
        // Once a learns what b holds, it asks b for that and the seeder for
        // chunks held by the seeder alone.
        let mut held = Bitmap::new(1000);
        for &i in &first_b {
            held.set(i);
        }
        let pb = a.add_peer(Holding::Some(held), T0);
        for &i in &first_a {
            assert!(a.handle_verified(sa, i, ms(10)).is_some());
        }
        let from_b: Vec<_> = std::iter::from_fn(|| a.poll_request(pb, ms(10))).collect();
        assert_eq!(from_b.len(), 8, "b's window");
        assert!(from_b.iter().all(|i| first_b.contains(i)));
        let from_seeder: Vec<_> = std::iter::from_fn(|| a.poll_request(sa, ms(10))).collect();
        assert!(!from_seeder.is_empty());
        assert!(
            from_seeder
                .iter()
                .all(|i| !first_b.contains(i) && !first_a.contains(i))
        );
        a.check_invariants();
    }

    #[test]
    fn rarest_first_breaks_ties_in_fresh_order() {
        let reference = fresh_order(sched(cfg(8), 12).shuffled(5));
        let mut s = sched(cfg(64), 12).shuffled(5);
        let a = seeder(&mut s);
        let common = [0, 1, 2, 3, 4, 5];
        partial(&mut s, 12, &common);
        // First the chunks the seeder alone holds, then the rest, each
        // group in the fresh order.
        let (mut expected, rest): (Vec<u32>, Vec<u32>) =
            reference.into_iter().partition(|i| !common.contains(i));
        expected.extend(rest);
        let asked: Vec<_> = std::iter::from_fn(|| s.poll_request(a, T0)).collect();
        assert_eq!(asked, expected);
        s.check_invariants();
    }

    #[test]
    fn fresh_rarest_first_among_what_the_peer_holds() {
        let mut s = sched(cfg(8), 4);
        // Chunks 0 and 1 are held by the seeder and both partial peers,
        // chunk 2 by the seeder and one partial peer, chunk 3 by the seeder.
        let a = seeder(&mut s);
        partial(&mut s, 4, &[0, 1, 2]);
        partial(&mut s, 4, &[0, 1]);
        assert_eq!(s.poll_request(a, T0), Some(3), "held by one peer");
        assert_eq!(s.poll_request(a, T0), Some(2), "held by two");
        assert_eq!(s.poll_request(a, T0), Some(0), "equally rare: lowest index");
        s.check_invariants();
    }

    #[test]
    fn partial_peer_is_only_asked_for_chunks_it_holds() {
        let mut s = sched(cfg(8), 4);
        let p = partial(&mut s, 4, &[2]);
        assert_eq!(s.poll_request(p, T0), Some(2));
        assert_eq!(s.poll_request(p, T0), None);
        s.check_invariants();
    }

    #[test]
    fn have_announcement_makes_a_chunk_requestable() {
        let mut s = sched(cfg(8), 3);
        let p = partial(&mut s, 3, &[]);
        assert_eq!(s.status(), Status::Starved);
        assert_eq!(s.poll_request(p, T0), None);
        assert!(s.handle_have(p, 1));
        assert!(!s.handle_have(p, 3), "out of range");
        s.check_invariants();
        assert_eq!(s.status(), Status::InProgress);
        assert_eq!(s.poll_request(p, T0), Some(1));
    }

    #[test]
    fn partial_peer_holding_everything_becomes_a_seeder() {
        let mut s = sched(cfg(8), 2);
        let p = partial(&mut s, 2, &[0]);
        assert!(s.handle_have(p, 1));
        s.check_invariants();
        assert_eq!((s.seeders, s.partial_peers), (1, 0));
        // Holding messages only add: a later smaller set changes nothing.
        assert!(s.handle_holding(p, Holding::Some(Bitmap::new(2)), T0));
        assert_eq!(s.poll_request(p, T0), Some(0));
        assert_eq!(s.poll_request(p, T0), Some(1));
        s.check_invariants();
    }

    #[test]
    fn later_bitmap_of_the_wrong_length_drops_the_peer_and_hands_its_chunks_over() {
        let mut s = sched(cfg(8), 4);
        let p = partial(&mut s, 4, &[0, 1]);
        let q = seeder(&mut s);
        assert_eq!(s.poll_request(p, T0), Some(0));
        assert!(!s.handle_holding(p, Holding::Some(Bitmap::new(3)), ms(5)));
        assert_eq!(s.dropped(p), Some(DropReason::BadHave));
        assert_eq!(s.poll_request(q, ms(5)), Some(0), "its chunk, at once");
        s.check_invariants();
    }

    #[test]
    fn rejoining_peer_keeps_its_failures() {
        let mut s = sched(cfg(8), 8);
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        for i in 0..2 {
            assert_eq!(s.poll_request(a, T0), Some(i));
            s.handle_failed(a, i, Failure::Corrupt, T0);
        }
        s.handle_peer_lost(a, T0);
        let a2 = s.rejoin(a, Holding::All, T0);
        assert_eq!(s.dropped(a2), None);
        // One more failure is its third in this download.
        let c = s.poll_request(a2, T0).unwrap();
        s.handle_failed(a2, c, Failure::Corrupt, T0);
        assert_eq!(s.dropped(a2), Some(DropReason::CorruptData));
        assert!(s.poll_request(b, T0).is_some());
        s.check_invariants();
    }

    #[test]
    fn bitmap_of_the_wrong_length_drops_the_peer() {
        let mut s = sched(cfg(8), 4);
        let p = s.add_peer(Holding::Some(Bitmap::new(5)), T0);
        assert_eq!(s.dropped(p), Some(DropReason::BadHave));
        assert_eq!(s.poll_request(p, T0), None);
        assert_eq!(s.status(), Status::Stuck);
        s.check_invariants();
    }

    #[test]
    fn in_flight_to_done_on_verified() {
        let mut s = sched(cfg(8), 1);
        let p = seeder(&mut s);
        assert_eq!(s.poll_request(p, T0), Some(0));
        assert_eq!(s.handle_verified(p, 0, T0), Some(vec![]));
        assert!(s.is_done(0));
        assert_eq!(s.status(), Status::Complete);
        // A second delivery of the same chunk changes nothing.
        assert_eq!(s.handle_verified(p, 0, T0), None);
        s.check_invariants();
    }

    #[test]
    fn verified_from_wrong_peer_is_ignored() {
        let mut s = sched(cfg(8), 1);
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert_eq!(s.handle_verified(b, 0, T0), None);
        assert!(!s.is_done(0));
        s.check_invariants();
    }

    #[test]
    fn in_flight_to_waiting_on_failure_prefers_another_peer_after_backoff() {
        let mut s = sched(cfg(8), 2);
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert!(s.handle_failed(a, 0, Failure::Corrupt, T0));
        assert!(
            !s.handle_failed(a, 0, Failure::Corrupt, T0),
            "no longer in flight"
        );
        s.check_invariants();
        // a is avoided for chunk 0 and gets the fresh chunk 1 instead.
        assert_eq!(s.poll_request(a, T0), Some(1));
        // b may not have chunk 0 before the backoff; every chunk has been
        // asked for, so it duplicates a's (endgame) meanwhile.
        assert_eq!(s.poll_request(b, T0), Some(1));
        assert_eq!(s.poll_request(b, T0), None);
        let ready = s.poll_timeout(T0).expect("a retry is waiting");
        assert_eq!(ready, SchedulerConfig::default().retry_backoff);
        assert_eq!(s.poll_request(b, ready), Some(0));
        s.check_invariants();
    }

    #[test]
    fn lone_peer_gets_its_failed_chunk_back_after_backoff_doubling_to_a_cap() {
        let config = SchedulerConfig {
            max_peer_failures: 100,
            max_retry_backoff: ms(350),
            ..cfg(8)
        };
        let mut s = sched(config, 1);
        let a = seeder(&mut s);
        let mut t = T0;
        for expected in [100, 200, 350, 350] {
            assert_eq!(s.poll_request(a, t), Some(0));
            s.handle_failed(a, 0, Failure::Refused, t);
            assert_eq!(s.poll_request(a, t), None, "not before the backoff");
            let next = s.poll_timeout(t).unwrap();
            assert_eq!(next - t, ms(expected));
            t = next;
        }
        s.check_invariants();
    }

    #[test]
    fn peer_dropped_after_max_failures_and_its_chunks_handed_over() {
        let mut s = sched(cfg(8), 6);
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        for _ in 0..5 {
            s.poll_request(a, T0).unwrap();
        }
        s.handle_failed(a, 0, Failure::Corrupt, T0);
        s.handle_failed(a, 1, Failure::Refused, T0);
        assert_eq!(s.dropped(a), None);
        s.handle_failed(a, 2, Failure::Refused, T0);
        assert_eq!(
            s.dropped(a),
            Some(DropReason::CorruptData),
            "one corrupt is enough"
        );
        s.check_invariants();
        // Chunks 3 and 4 (in flight to a) are ready for b at once.
        assert_eq!(s.poll_request(a, T0), None, "dropped peer gets nothing");
        let got: Vec<_> = std::iter::from_fn(|| s.poll_request(b, T0)).collect();
        assert_eq!(got, vec![3, 4, 5]);
        // The first reason stays.
        s.handle_peer_lost(a, T0);
        assert_eq!(s.dropped(a), Some(DropReason::CorruptData));
        s.check_invariants();
    }

    #[test]
    fn refusals_drop_with_too_many_errors() {
        let mut s = sched(cfg(8), 3);
        let a = seeder(&mut s);
        for i in 0..3 {
            assert_eq!(s.poll_request(a, T0), Some(i));
        }
        for i in 0..3 {
            s.handle_failed(a, i, Failure::Refused, T0);
        }
        assert_eq!(s.dropped(a), Some(DropReason::TooManyErrors));
        assert_eq!(s.status(), Status::Stuck);
        s.check_invariants();
    }

    #[test]
    fn peer_lost_hands_chunks_to_others_at_once() {
        let mut s = sched(cfg(8), 2);
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert_eq!(s.poll_request(a, T0), Some(1));
        s.handle_peer_lost(a, T0);
        assert_eq!(s.dropped(a), Some(DropReason::Disconnected));
        s.check_invariants();
        assert_eq!(s.poll_request(b, T0), Some(0));
        assert_eq!(s.poll_request(b, T0), Some(1));
        assert!(s.handle_verified(b, 0, T0).is_some());
        assert!(s.handle_verified(b, 1, T0).is_some());
        // A late answer of the lost peer changes nothing.
        assert_eq!(s.handle_verified(a, 0, T0), None);
        assert_eq!(s.status(), Status::Complete);
        s.check_invariants();
    }

    #[test]
    fn stuck_when_no_live_peers() {
        let mut s = sched(cfg(8), 1);
        assert_eq!(s.status(), Status::Stuck);
        let a = seeder(&mut s);
        assert_eq!(s.status(), Status::InProgress);
        s.handle_peer_lost(a, T0);
        assert_eq!(s.status(), Status::Stuck);
    }

    #[test]
    fn starved_when_live_peers_hold_nothing_missing() {
        let mut s = sched(cfg(8), 2);
        let a = partial(&mut s, 2, &[0]);
        assert_eq!(s.status(), Status::InProgress);
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert_eq!(s.status(), Status::InProgress, "a request is in flight");
        s.handle_verified(a, 0, T0);
        assert_eq!(s.status(), Status::Starved);
        seeder(&mut s);
        assert_eq!(s.status(), Status::InProgress);
    }

    #[test]
    fn empty_download_is_complete() {
        let s = sched(cfg(8), 0);
        assert_eq!(s.status(), Status::Complete);
    }

    #[test]
    fn endgame_duplicates_the_oldest_request_and_returns_the_losers() {
        let mut s = sched(cfg(2), 3);
        let slow = seeder(&mut s);
        let fast = seeder(&mut s);
        assert_eq!(s.poll_request(slow, T0), Some(0));
        assert_eq!(s.poll_request(slow, ms(1)), Some(1));
        assert!(!s.in_endgame());
        assert_eq!(s.poll_request(fast, ms(2)), Some(2));
        assert!(s.in_endgame(), "every chunk has been asked for");
        // fast has room for one more: the oldest chunk in flight elsewhere.
        assert_eq!(s.poll_request(fast, ms(3)), Some(0));
        assert_eq!(s.duplicate_requests(), 1);
        s.check_invariants();
        assert_eq!(s.handle_verified(fast, 0, ms(4)), Some(vec![slow]));
        assert_eq!(s.in_flight(slow), 1, "the loser's request was taken back");
        // The loser's late answer changes nothing.
        assert_eq!(s.handle_verified(slow, 0, ms(5)), None);
        s.check_invariants();
    }

    #[test]
    fn endgame_copies_are_capped_for_busy_peers() {
        let mut s = sched(
            SchedulerConfig {
                endgame_copies: 2,
                ..cfg(4)
            },
            2,
        );
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        let c = seeder(&mut s);
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert_eq!(s.poll_request(b, T0), Some(1));
        assert_eq!(s.poll_request(b, T0), Some(0), "endgame copy");
        assert_eq!(s.poll_request(b, T0), None, "never twice from one peer");
        assert_eq!(s.poll_request(a, T0), Some(1), "endgame copy");
        // c is idle: it may add a third copy (the oldest chunk first), and
        // then, busy, no more.
        assert_eq!(s.poll_request(c, T0), Some(0));
        assert_eq!(s.poll_request(c, T0), None, "busy peers keep the cap");
        assert_eq!(s.duplicate_requests(), 3);
        s.check_invariants();
    }

    #[test]
    fn idle_fast_peer_takes_chunks_whose_copies_sit_at_slow_peers() {
        // The simulation's case: 6 chunks; two slow peers polled first take
        // every chunk and both copies of chunks 0 and 1.
        let mut s = sched(cfg(4), 6);
        let (slow_a, slow_b) = (seeder(&mut s), seeder(&mut s));
        let fast = seeder(&mut s);
        let a: Vec<u32> = std::iter::from_fn(|| s.poll_request(slow_a, T0)).collect();
        let b: Vec<u32> = std::iter::from_fn(|| s.poll_request(slow_b, T0)).collect();
        assert_eq!((a, b), (vec![0, 1, 2, 3], vec![4, 5, 0, 1]));
        let f: Vec<u32> = std::iter::from_fn(|| s.poll_request(fast, T0)).collect();
        assert_eq!(f, vec![2, 3, 4, 5]);
        for i in f {
            assert!(s.handle_verified(fast, i, ms(1)).is_some());
        }
        // Idle now: past the cap, it takes the oldest of 0 and 1, then,
        // once that is done, the other.
        assert_eq!(s.poll_request(fast, ms(1)), Some(0));
        assert_eq!(s.poll_request(fast, ms(1)), None);
        assert_eq!(s.handle_verified(fast, 0, ms(2)).map(|l| l.len()), Some(2));
        assert_eq!(s.poll_request(fast, ms(2)), Some(1));
        assert_eq!(s.handle_verified(fast, 1, ms(3)).map(|l| l.len()), Some(2));
        assert_eq!(s.status(), Status::Complete);
        s.check_invariants();
    }

    #[test]
    fn endgame_off_below_two_copies() {
        let mut s = sched(
            SchedulerConfig {
                endgame_copies: 1,
                ..cfg(4)
            },
            1,
        );
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert_eq!(s.poll_request(b, T0), None, "idle, but no endgame");
        s.check_invariants();
    }

    #[test]
    fn endgame_failure_of_one_copy_leaves_the_other_in_flight() {
        let mut s = sched(cfg(4), 1);
        let a = seeder(&mut s);
        let b = seeder(&mut s);
        s.poll_request(a, T0);
        s.poll_request(b, T0);
        assert!(s.handle_failed(a, 0, Failure::Corrupt, T0));
        assert_eq!(s.poll_timeout(T0), None, "not waiting: b still has it");
        s.check_invariants();
        s.handle_peer_lost(b, T0);
        assert_eq!(s.poll_request(a, T0), Some(0), "a is the only one left");
        s.check_invariants();
    }

    #[test]
    fn no_duplicates_while_unrequested_chunks_remain() {
        let mut s = sched(cfg(1), 3);
        let a = partial(&mut s, 3, &[0]);
        let b = partial(&mut s, 3, &[0, 1]);
        assert_eq!(s.poll_request(a, T0), Some(0));
        // b holds chunk 1, unrequested: not endgame.
        assert!(!s.in_endgame());
        assert_eq!(s.poll_request(b, T0), Some(1));
        // Chunk 2 is held by nobody: it does not hold the endgame back.
        assert!(s.in_endgame());
        s.handle_verified(b, 1, T0);
        assert_eq!(s.poll_request(b, T0), Some(0), "duplicate of a's chunk");
        assert_eq!(s.duplicate_requests(), 1);
        s.check_invariants();
    }

    #[test]
    fn window_grows_in_slow_start_then_follows_throughput() {
        let config = SchedulerConfig {
            initial_window: 2,
            min_window: 2,
            max_window: 64,
            window_horizon: ms(500),
            rate_sample: ms(250),
            ..SchedulerConfig::default()
        };
        // 1000 chunks of 1000 bytes.
        let mut s = sched(config, 1000);
        let p = seeder(&mut s);
        assert_eq!(s.window(p), 2);
        let (c0, c1) = (
            s.poll_request(p, T0).unwrap(),
            s.poll_request(p, T0).unwrap(),
        );
        s.handle_verified(p, c0, ms(10));
        assert_eq!(s.window(p), 3, "slow start: one more per delivery");
        s.handle_verified(p, c1, ms(20));
        assert_eq!(s.window(p), 4);
        assert!(s.rate(p).is_none(), "no sample yet");
        // A chunk every 7 ms: the sample closes at 251 ms after 35 chunks,
        // about 139 kB/s, so half a second's worth is about 70 chunks,
        // capped at 64.
        let mut t = 20;
        for _ in 0..38 {
            while s.poll_request(p, ms(t)).is_some() {}
            let c = *s.flights.keys().next().unwrap();
            t += 7;
            s.handle_verified(p, c, ms(t));
        }
        assert!(s.rate(p).is_some());
        assert_eq!(s.window(p), 64);
        s.check_invariants();
    }

    #[test]
    fn window_shrinks_when_throughput_drops() {
        let config = SchedulerConfig {
            initial_window: 8,
            min_window: 2,
            max_window: 8,
            ..SchedulerConfig::default()
        };
        let mut s = sched(config, 100);
        let p = seeder(&mut s);
        let first: Vec<u32> = std::iter::from_fn(|| s.poll_request(p, T0)).collect();
        assert_eq!(first.len(), 8);
        // One 1000-byte chunk per second: 500 bytes per half second, under a
        // chunk: the window falls to the minimum.
        let mut t = T0;
        for c in first.iter().take(2) {
            t += Duration::from_secs(1);
            s.handle_verified(p, *c, t);
        }
        assert_eq!(s.window(p), 2);
        assert_eq!(s.poll_request(p, t), None, "6 in flight, window 2");
        s.check_invariants();
    }

    #[test]
    fn dropped_partial_peer_no_longer_counts_for_rarity() {
        let mut s = sched(cfg(8), 2);
        let a = seeder(&mut s);
        let p = partial(&mut s, 2, &[0]);
        s.handle_peer_lost(p, T0);
        s.check_invariants();
        assert_eq!(s.poll_request(a, T0), Some(0), "index order again");
    }
}
