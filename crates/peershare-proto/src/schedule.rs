//! Which chunk to ask which peer for next: the pure bookkeeping of a
//! download, with time passed in. States and transitions are in `STATE.md`
//! beside this file; each transition has a unit test below.
//!
//! This is the core issue's deliberately simple policy (in index order, a
//! fixed window per peer, retry elsewhere with backoff); the swarm issue
//! replaces the policy behind the same inputs and outputs.

use std::collections::VecDeque;
use std::time::Duration;

/// A peer as the scheduler knows it: an index handed out by
/// [`Scheduler::add_peer`].
pub type PeerKey = usize;

/// Tuning knobs; plain data with sane defaults.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Requests in flight per peer.
    pub window: u32,
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
            window: 8,
            max_peer_failures: 3,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Never asked for yet (only at or past `fresh_cursor`).
    Fresh,
    /// Waiting in the retry queue.
    Retry,
    InFlight(PeerKey),
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
}

#[derive(Debug, Clone)]
struct Peer {
    in_flight: u32,
    failures: u32,
    corrupt: u32,
    dropped: Option<DropReason>,
}

#[derive(Debug, Clone)]
struct RetryEntry {
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
}

/// Per-chunk and per-peer bookkeeping. Invariants (checked in tests):
/// every chunk is in exactly one state; a `Retry` chunk is in `retry`
/// exactly once; `Fresh` chunks are exactly those at or past `fresh_cursor`
/// that are not `Done`; a peer's `in_flight` equals the number of chunks
/// `InFlight` to it; `done` counts `Done` chunks.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    chunks: Vec<Chunk>,
    attempts: Vec<u8>,
    fresh_cursor: u32,
    retry: VecDeque<RetryEntry>,
    peers: Vec<Peer>,
    done: u32,
}

impl Scheduler {
    /// A download of `chunk_count` chunks of which those where
    /// `already_done(i)` holds are verified on disk (resume).
    pub fn new(
        config: SchedulerConfig,
        chunk_count: u32,
        already_done: impl Fn(u32) -> bool,
    ) -> Self {
        let chunks: Vec<Chunk> = (0..chunk_count)
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
            attempts: vec![0; chunks.len()],
            chunks,
            fresh_cursor: 0,
            retry: VecDeque::new(),
            peers: Vec::new(),
            done,
        };
        s.skip_done();
        s
    }

    fn skip_done(&mut self) {
        while (self.fresh_cursor as usize) < self.chunks.len()
            && self.chunks[self.fresh_cursor as usize] == Chunk::Done
        {
            self.fresh_cursor += 1;
        }
    }

    /// A new source joins; it may be asked at once.
    pub fn add_peer(&mut self) -> PeerKey {
        self.peers.push(Peer {
            in_flight: 0,
            failures: 0,
            corrupt: 0,
            dropped: None,
        });
        self.peers.len() - 1
    }

    fn live_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.dropped.is_none()).count()
    }

    /// The next chunk to request from `peer` at time `now`, or `None` when
    /// its window is full, it is dropped, or nothing is ready for it.
    pub fn poll_request(&mut self, peer: PeerKey, now: Duration) -> Option<u32> {
        let p = self.peers.get(peer)?;
        if p.dropped.is_some() || p.in_flight >= self.config.window {
            return None;
        }
        let alone = self.live_peers() <= 1;
        let pos = self
            .retry
            .iter()
            .position(|e| e.not_before <= now && (alone || e.avoid != Some(peer)));
        let index = if let Some(pos) = pos {
            self.retry.remove(pos).expect("position is in range").index
        } else if (self.fresh_cursor as usize) < self.chunks.len() {
            let i = self.fresh_cursor;
            self.fresh_cursor += 1;
            i
        } else {
            return None;
        };
        debug_assert!(matches!(
            self.chunks[index as usize],
            Chunk::Fresh | Chunk::Retry
        ));
        self.chunks[index as usize] = Chunk::InFlight(peer);
        self.peers[peer].in_flight += 1;
        // Chunks past the cursor may already be done (resume): skip them.
        self.skip_done();
        Some(index)
    }

    fn take_in_flight(&mut self, peer: PeerKey, index: u32) -> bool {
        match self.chunks.get(index as usize) {
            Some(Chunk::InFlight(p)) if *p == peer => {
                self.peers[peer].in_flight -= 1;
                true
            }
            _ => false,
        }
    }

    /// `peer` delivered chunk `index` and it verified. Returns false (and
    /// changes nothing) if that chunk was not in flight to that peer.
    pub fn handle_verified(&mut self, peer: PeerKey, index: u32) -> bool {
        if !self.take_in_flight(peer, index) {
            return false;
        }
        self.chunks[index as usize] = Chunk::Done;
        self.done += 1;
        true
    }

    fn requeue(&mut self, index: u32, not_before: Duration, avoid: Option<PeerKey>) {
        self.chunks[index as usize] = Chunk::Retry;
        self.retry.push_back(RetryEntry {
            index,
            not_before,
            avoid,
        });
    }

    /// `peer` failed chunk `index`. The chunk waits a backoff and goes
    /// preferably to another peer; the peer is dropped after too many
    /// failures (and its other chunks are re-queued at once).
    pub fn handle_failed(
        &mut self,
        peer: PeerKey,
        index: u32,
        why: Failure,
        now: Duration,
    ) -> bool {
        if !self.take_in_flight(peer, index) {
            return false;
        }
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
        // With no other live peer, waiting for the backoff is the only way
        // to avoid hammering the same source.
        self.requeue(index, now + backoff, Some(peer));
        if drop_now {
            self.drop_peer(peer, reason, now);
        }
        true
    }

    /// `peer`'s connection ended: every chunk in flight to it is handed to
    /// the others at once.
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
        for i in 0..self.chunks.len() {
            if self.chunks[i] == Chunk::InFlight(peer) {
                self.peers[peer].in_flight -= 1;
                self.requeue(i as u32, now, Some(peer));
            }
        }
    }

    /// Why `peer` was dropped, if it was.
    pub fn dropped(&self, peer: PeerKey) -> Option<DropReason> {
        self.peers.get(peer).and_then(|p| p.dropped)
    }

    /// Earliest time after `now` at which a waiting retry becomes ready.
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        self.retry
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
        let done = self.chunks.iter().filter(|c| **c == Chunk::Done).count();
        assert_eq!(done as u32, self.done);
        for (i, c) in self.chunks.iter().enumerate() {
            let queued = self.retry.iter().filter(|e| e.index as usize == i).count();
            assert_eq!(
                queued,
                usize::from(*c == Chunk::Retry),
                "chunk {i} retry queue"
            );
            if *c == Chunk::Fresh {
                assert!(
                    i >= self.fresh_cursor as usize,
                    "fresh chunk {i} before cursor"
                );
            }
            if i >= self.fresh_cursor as usize {
                assert!(
                    matches!(c, Chunk::Fresh | Chunk::Done),
                    "chunk {i} past the cursor is {c:?}"
                );
            }
        }
        for (k, p) in self.peers.iter().enumerate() {
            let n = self
                .chunks
                .iter()
                .filter(|c| **c == Chunk::InFlight(k))
                .count();
            assert_eq!(n as u32, p.in_flight, "peer {k} in-flight count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;

    fn cfg(window: u32) -> SchedulerConfig {
        SchedulerConfig {
            window,
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn fresh_to_in_flight_in_index_order_within_window() {
        let mut s = Scheduler::new(cfg(2), 5, |_| false);
        let p = s.add_peer();
        assert_eq!(s.poll_request(p, T0), Some(0));
        assert_eq!(s.poll_request(p, T0), Some(1));
        assert_eq!(s.poll_request(p, T0), None, "window of 2 is full");
        s.check_invariants();
    }

    #[test]
    fn resume_skips_done_chunks() {
        let mut s = Scheduler::new(cfg(8), 5, |i| i % 2 == 0);
        assert_eq!(s.done_count(), 3);
        let p = s.add_peer();
        assert_eq!(s.poll_request(p, T0), Some(1));
        assert_eq!(s.poll_request(p, T0), Some(3));
        assert_eq!(s.poll_request(p, T0), None);
        s.check_invariants();
    }

    #[test]
    fn in_flight_to_done_on_verified() {
        let mut s = Scheduler::new(cfg(8), 1, |_| false);
        let p = s.add_peer();
        assert_eq!(s.poll_request(p, T0), Some(0));
        assert!(s.handle_verified(p, 0));
        assert!(s.is_done(0));
        assert_eq!(s.status(), Status::Complete);
        // A second delivery of the same chunk changes nothing.
        assert!(!s.handle_verified(p, 0));
        s.check_invariants();
    }

    #[test]
    fn verified_from_wrong_peer_is_ignored() {
        let mut s = Scheduler::new(cfg(8), 1, |_| false);
        let a = s.add_peer();
        let b = s.add_peer();
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert!(!s.handle_verified(b, 0));
        assert!(!s.is_done(0));
        s.check_invariants();
    }

    #[test]
    fn in_flight_to_retry_on_failure_prefers_another_peer_after_backoff() {
        let mut s = Scheduler::new(cfg(8), 2, |_| false);
        let a = s.add_peer();
        let b = s.add_peer();
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert!(s.handle_failed(a, 0, Failure::Corrupt, T0));
        s.check_invariants();
        // a is avoided for chunk 0 and gets the fresh chunk 1 instead.
        assert_eq!(s.poll_request(a, T0), Some(1));
        // b must wait for the backoff.
        assert_eq!(s.poll_request(b, T0), None);
        let ready = s.poll_timeout(T0).expect("a retry is waiting");
        assert_eq!(ready, SchedulerConfig::default().retry_backoff);
        assert_eq!(s.poll_request(b, ready), Some(0));
        s.check_invariants();
    }

    #[test]
    fn lone_peer_gets_its_failed_chunk_back_after_backoff() {
        let mut s = Scheduler::new(cfg(8), 1, |_| false);
        let a = s.add_peer();
        assert_eq!(s.poll_request(a, T0), Some(0));
        s.handle_failed(a, 0, Failure::Refused, T0);
        assert_eq!(s.poll_request(a, T0), None);
        let t = s.poll_timeout(T0).unwrap();
        assert_eq!(s.poll_request(a, t), Some(0));
        // Second failure doubles the backoff.
        s.handle_failed(a, 0, Failure::Refused, t);
        assert_eq!(
            s.poll_timeout(t).unwrap() - t,
            2 * SchedulerConfig::default().retry_backoff
        );
    }

    #[test]
    fn peer_dropped_after_max_failures_and_its_chunks_requeued() {
        let mut s = Scheduler::new(cfg(8), 6, |_| false);
        let a = s.add_peer();
        let b = s.add_peer();
        for _ in 0..5 {
            s.poll_request(a, T0).unwrap();
        }
        s.handle_failed(a, 0, Failure::Corrupt, T0);
        s.handle_failed(a, 1, Failure::Corrupt, T0);
        assert_eq!(s.dropped(a), None);
        s.handle_failed(a, 2, Failure::Corrupt, T0);
        assert_eq!(s.dropped(a), Some(DropReason::CorruptData));
        s.check_invariants();
        // Chunks 3 and 4 (in flight to a) are ready for b at once.
        assert_eq!(s.poll_request(a, T0), None, "dropped peer gets nothing");
        let got: Vec<_> = std::iter::from_fn(|| s.poll_request(b, T0)).collect();
        assert_eq!(got, vec![3, 4, 5]);
        s.check_invariants();
    }

    #[test]
    fn refusals_drop_with_too_many_errors() {
        let mut s = Scheduler::new(cfg(8), 3, |_| false);
        let a = s.add_peer();
        for i in 0..3 {
            assert_eq!(s.poll_request(a, T0), Some(i));
        }
        for i in 0..3 {
            s.handle_failed(a, i, Failure::Refused, T0);
        }
        assert_eq!(s.dropped(a), Some(DropReason::TooManyErrors));
        assert_eq!(s.status(), Status::Stuck);
    }

    #[test]
    fn peer_lost_hands_chunks_to_others_at_once() {
        let mut s = Scheduler::new(cfg(8), 2, |_| false);
        let a = s.add_peer();
        let b = s.add_peer();
        assert_eq!(s.poll_request(a, T0), Some(0));
        assert_eq!(s.poll_request(a, T0), Some(1));
        s.handle_peer_lost(a, T0);
        assert_eq!(s.dropped(a), Some(DropReason::Disconnected));
        s.check_invariants();
        assert_eq!(s.poll_request(b, T0), Some(0));
        assert_eq!(s.poll_request(b, T0), Some(1));
        assert!(s.handle_verified(b, 0) && s.handle_verified(b, 1));
        assert_eq!(s.status(), Status::Complete);
    }

    #[test]
    fn stuck_when_no_live_peers() {
        let mut s = Scheduler::new(cfg(8), 1, |_| false);
        assert_eq!(s.status(), Status::Stuck);
        let a = s.add_peer();
        assert_eq!(s.status(), Status::InProgress);
        s.handle_peer_lost(a, T0);
        assert_eq!(s.status(), Status::Stuck);
    }

    #[test]
    fn empty_download_is_complete() {
        let s = Scheduler::new(cfg(8), 0, |_| false);
        assert_eq!(s.status(), Status::Complete);
    }
}
