//! Downloads running in this process, offered to peers straight from
//! memory: which chunks are verified is known at once (no state file to
//! wait for, as [`crate::partials`] must for a download in another
//! process), and a finished download stays offered while the process runs
//! (what `get --seed` keeps serving).
//!
//! A download registers its offer when its part file is open
//! ([`LiveOffers::offer`]) and updates it as chunks are verified; the
//! server reads it on every request. An offer a download drops unfinished
//! goes with it; a finished one stays, pointing at the final file, and is
//! served only while that file is unchanged (size and mtime).
//!
//! Invariant: an offer lists only chunks verified and written to its part
//! file; the server checks each against the manifest again as it reads
//! it, so a part file that changed under us is refused, not served.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use peershare_proto::bitmap::Bitmap;
use peershare_proto::{FileId, Manifest};

use crate::partials::View;
use crate::store::Entry;

/// Offers held at once, at most (a node runs a handful of downloads; a
/// finished one stays until the process ends): the oldest finished ones
/// make room.
pub const MAX_LIVE_OFFERS: usize = 1024;

/// The registry of this process's downloads; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LiveOffers {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    offers: HashMap<FileId, Arc<LiveOffer>>,
    /// Incremented by every change: lets the catalog cache notice.
    revision: u64,
}

/// One download's offer.
#[derive(Debug)]
pub struct LiveOffer {
    pub id: FileId,
    /// The shared name (for catalogs).
    pub name: String,
    pub unlisted: bool,
    pub manifest: Arc<Manifest>,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// In progress: the part file, opened on first use, and the chunks
    /// verified and written so far.
    Partial {
        part: PathBuf,
        file: Option<Arc<File>>,
        have: Arc<Bitmap>,
    },
    /// Finished: the file under its final name, as it was when finished.
    Complete { entry: Entry },
}

/// What a request may be served from.
pub enum Servable {
    /// Chunks of a download in progress (each to be checked as read).
    Partial(View),
    /// A finished file, to be served while unchanged.
    Complete(Entry),
}

impl LiveOffers {
    /// Registers a download of `manifest` whose part file is `part`, with
    /// nothing verified yet (or `have`, resumed); replaces any offer of the
    /// same file. The returned handle updates it; dropped unfinished, it
    /// withdraws it.
    pub fn offer(
        &self,
        manifest: Arc<Manifest>,
        name: String,
        unlisted: bool,
        part: &Path,
        have: Bitmap,
    ) -> LiveHandle {
        let offer = Arc::new(LiveOffer {
            id: manifest.id(),
            name,
            unlisted,
            manifest,
            state: Mutex::new(State::Partial {
                part: part.to_path_buf(),
                file: None,
                have: Arc::new(have),
            }),
        });
        let mut reg = self.inner.lock().expect("live offers lock");
        if reg.offers.len() >= MAX_LIVE_OFFERS && !reg.offers.contains_key(&offer.id) {
            // Make room: finished offers first (their files are shared
            // otherwise too, or were only kept for --seed).
            let done: Vec<FileId> = reg
                .offers
                .iter()
                .filter(|(_, o)| o.is_complete())
                .map(|(id, _)| *id)
                .collect();
            for id in done
                .into_iter()
                .take(reg.offers.len() + 1 - MAX_LIVE_OFFERS)
            {
                reg.offers.remove(&id);
            }
        }
        reg.offers.insert(offer.id, offer.clone());
        reg.revision += 1;
        LiveHandle {
            registry: self.clone(),
            offer,
        }
    }

    /// The offer of `id`, if any.
    pub fn get(&self, id: &FileId) -> Option<Arc<LiveOffer>> {
        self.inner
            .lock()
            .expect("live offers lock")
            .offers
            .get(id)
            .cloned()
    }

    /// Every offer, and the registry's revision.
    pub fn list(&self) -> (u64, Vec<Arc<LiveOffer>>) {
        let reg = self.inner.lock().expect("live offers lock");
        (reg.revision, reg.offers.values().cloned().collect())
    }

    fn touch(&self) {
        self.inner.lock().expect("live offers lock").revision += 1;
    }

    fn withdraw(&self, offer: &Arc<LiveOffer>) {
        let mut reg = self.inner.lock().expect("live offers lock");
        if reg
            .offers
            .get(&offer.id)
            .is_some_and(|o| Arc::ptr_eq(o, offer))
        {
            reg.offers.remove(&offer.id);
            reg.revision += 1;
        }
    }
}

impl LiveOffer {
    pub fn size(&self) -> u64 {
        self.manifest.size()
    }

    pub fn is_complete(&self) -> bool {
        matches!(
            *self.state.lock().expect("live offer lock"),
            State::Complete { .. }
        )
    }

    /// Which chunks it holds now (`None`: all of them).
    pub fn have(&self) -> Option<Arc<Bitmap>> {
        match &*self.state.lock().expect("live offer lock") {
            State::Partial { have, .. } if !have.is_full() => Some(have.clone()),
            _ => None,
        }
    }

    /// What to serve from, opening the part file on first use (a blocking
    /// call: the server makes it on its blocking pool). `None` when the
    /// part file cannot be opened.
    pub fn servable(&self) -> Option<Servable> {
        let mut state = self.state.lock().expect("live offer lock");
        match &mut *state {
            State::Complete { entry } => Some(Servable::Complete(entry.clone())),
            State::Partial { part, file, have } => {
                let f = match file {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(File::open(&*part).ok()?);
                        *file = Some(f.clone());
                        f
                    }
                };
                Some(Servable::Partial(View {
                    part: f,
                    have: have.clone(),
                    manifest: self.manifest.clone(),
                    size: self.manifest.size(),
                }))
            }
        }
    }
}

/// A download's hold on its offer.
#[derive(Debug)]
pub struct LiveHandle {
    registry: LiveOffers,
    offer: Arc<LiveOffer>,
}

impl LiveHandle {
    /// The chunks verified and written now.
    pub fn update(&self, have: &Bitmap) {
        if let State::Partial { have: h, .. } =
            &mut *self.offer.state.lock().expect("live offer lock")
        {
            *h = Arc::new(have.clone());
        }
    }

    /// The download finished: `entry` is the file under its final name;
    /// the offer stays (served while that file is unchanged).
    pub fn complete(self, entry: Entry) {
        *self.offer.state.lock().expect("live offer lock") = State::Complete { entry };
        self.registry.touch();
        std::mem::forget(self);
    }
}

impl Drop for LiveHandle {
    fn drop(&mut self) {
        // Unfinished: the part file may go; never offer it past the run.
        self.registry.withdraw(&self.offer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(n: u8) -> Arc<Manifest> {
        Arc::new(Manifest::from_bytes(&vec![n; 200_000]))
    }

    #[test]
    fn an_unfinished_offer_goes_with_its_download_and_a_finished_one_stays() {
        let live = LiveOffers::default();
        let (a, b) = (manifest(1), manifest(2));
        let dir = tempfile::tempdir().unwrap();
        let ha = live.offer(
            a.clone(),
            "a".into(),
            false,
            &dir.path().join("a"),
            Bitmap::new(4),
        );
        let hb = live.offer(
            b.clone(),
            "b".into(),
            false,
            &dir.path().join("b"),
            Bitmap::new(4),
        );
        let mut have = Bitmap::new(a.chunk_count());
        have.set(1);
        ha.update(&have);
        assert_eq!(live.get(&a.id()).unwrap().have().unwrap().count(), 1);
        drop(ha);
        assert!(live.get(&a.id()).is_none(), "withdrawn with its download");
        let entry = Entry {
            id: b.id().to_string(),
            name: "b".into(),
            path: dir.path().join("b"),
            size: b.size(),
            mtime_ns: 0,
            unlisted: false,
        };
        hb.complete(entry);
        let kept = live.get(&b.id()).expect("kept");
        assert!(kept.is_complete() && kept.have().is_none());
    }

    #[test]
    fn a_replaced_offer_is_not_withdrawn_by_its_predecessor() {
        let live = LiveOffers::default();
        let m = manifest(3);
        let dir = tempfile::tempdir().unwrap();
        let first = live.offer(
            m.clone(),
            "x".into(),
            false,
            &dir.path().join("1"),
            Bitmap::new(4),
        );
        let _second = live.offer(
            m.clone(),
            "x".into(),
            false,
            &dir.path().join("2"),
            Bitmap::new(4),
        );
        drop(first);
        assert!(live.get(&m.id()).is_some());
    }

    #[test]
    fn offers_are_bounded_finished_ones_making_room() {
        let live = LiveOffers::default();
        let dir = tempfile::tempdir().unwrap();
        for i in 0..MAX_LIVE_OFFERS + 10 {
            let m = Arc::new(Manifest::from_bytes(format!("file {i}").as_bytes()));
            let h = live.offer(
                m.clone(),
                format!("f{i}"),
                false,
                &dir.path().join("p"),
                Bitmap::new(1),
            );
            h.complete(Entry {
                id: m.id().to_string(),
                name: format!("f{i}"),
                path: dir.path().join("p"),
                size: m.size(),
                mtime_ns: 0,
                unlisted: false,
            });
            assert!(live.list().1.len() <= MAX_LIVE_OFFERS);
        }
    }
}
