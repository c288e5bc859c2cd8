//! The library's database: `<data-dir>/library.db`, SQLite in WAL mode.
//!
//! ```text
//! meta(key, value)          'revision': bumped by every commit that changes a row
//!                           'listed':   the catalog's length (Snapshot::listed), kept per edit
//!                           'imported': 1 when a library.json was imported
//! files(path PK, id, fid, name, size, mtime_ns, unlisted, class)      index (fid, class)
//! downloads(output PK, id, fid, name, size, part, state, unlisted, class)  index (fid, class)
//! ```
//!
//! Paths are stored as their bytes (BLOB), `fid` is the file ID's 32 bytes
//! (NULL when `id` does not parse), `mtime_ns` the i128 in 16 big-endian
//! bytes (nanoseconds need more than 64 bits past 2262), `class` how the
//! row counts in the catalog ([`FILE_LISTED`], [`FILE_HIDES`], ...), so
//! that the catalog's length is kept with index lookups of the file IDs an
//! edit touches, never a walk over the library.
//!
//! Invariants: every edit is one `BEGIN IMMEDIATE` transaction (writers
//! serialize on SQLite's lock, waiting up to [`BUSY_TIMEOUT`]; WAL readers
//! never wait for them and see whole commits only) touching the rows it
//! changes, the `meta` rows and nothing else; `meta.listed` equals
//! [`Snapshot::listed`] of the rows after every commit; the schema version
//! is `PRAGMA user_version`, and a database of a later version than
//! [`SCHEMA_VERSION`] is refused before anything is written to it.
//!
//! Durability: `synchronous=FULL`. In WAL mode, `NORMAL` syncs only at
//! checkpoints, so a commit may be lost on a power cut after the call that
//! made it returned; `FULL` syncs the log at every commit (one `fsync`,
//! where `library.json` took two), so an edit is on disk when the call
//! returns, as it was before.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use peershare_proto::FileId;
use peershare_proto::wire::check_shared_name;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use super::{Download, Entry, LIBRARY_FORMAT, Snapshot, remedy};
use crate::error::StoreError;

/// The database's file name in the data dir.
pub(super) const DB_FILE: &str = "library.db";
/// The schema this build reads and writes (`PRAGMA user_version`). A
/// database of a later one is refused ([`StoreError::NewerLibrary`]).
pub const SCHEMA_VERSION: u32 = 1;
/// How long an edit waits for another writer (another process sharing
/// into the same data dir) before it fails: a share of a whole library
/// holds the lock for about a second.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections kept open for reuse per [`super::Library`] (its clones
/// share them); more may be open at once, and are closed after use.
const MAX_IDLE_CONNECTIONS: usize = 4;
/// File IDs an edit may touch whose catalog status is looked up one by
/// one (three index lookups each); an edit touching more (a share of a
/// large folder) counts the whole catalog once instead, which is cheaper
/// then.
pub(super) const INCREMENTAL_LISTED_MAX: usize = 1024;

/// `files.class`: not in the catalog and hides nothing (the ID does not
/// parse).
const FILE_NONE: i64 = 0;
/// `files.class`: listed under its name.
const FILE_LISTED: i64 = 1;
/// `files.class`: not listed (unlisted, or a name no peer accepts). Every
/// file of a content (this class or `FILE_LISTED`) keeps downloads of that
/// content out of the catalog.
const FILE_HIDES: i64 = 2;
/// `downloads.class`: not counted.
const DOWNLOAD_NONE: i64 = 0;
/// `downloads.class`: listed under its name unless a file shares its
/// content.
const DOWNLOAD_LISTED: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('revision', 0), ('listed', 0), ('imported', 0);
CREATE TABLE files (
    path BLOB PRIMARY KEY NOT NULL,
    id TEXT NOT NULL,
    fid BLOB,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns BLOB NOT NULL,
    unlisted INTEGER NOT NULL,
    class INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX files_by_id ON files (fid, class);
CREATE TABLE downloads (
    output BLOB PRIMARY KEY NOT NULL,
    id TEXT NOT NULL,
    fid BLOB,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    part BLOB NOT NULL,
    state BLOB NOT NULL,
    unlisted INTEGER NOT NULL,
    class INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX downloads_by_id ON downloads (fid, class);
";

/// The catalog's rule ([`Snapshot::listed`]) for one file.
fn file_class(e: &Entry) -> i64 {
    match (e.file_id(), check_shared_name(&e.name).is_ok(), e.unlisted) {
        (Some(_), true, false) => FILE_LISTED,
        (Some(_), _, _) => FILE_HIDES,
        (None, _, _) => FILE_NONE,
    }
}

/// The catalog's rule for one download in progress.
fn download_class(d: &Download) -> i64 {
    match (d.file_id(), check_shared_name(&d.name).is_ok(), d.unlisted) {
        (Some(_), true, false) => DOWNLOAD_LISTED,
        _ => DOWNLOAD_NONE,
    }
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn path(b: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(b))
}

fn fid(id: &str) -> Option<[u8; 32]> {
    id.parse::<FileId>().ok().map(|f| f.0)
}

/// The connections to one database, opened on demand and kept for reuse.
pub(super) struct Db {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// A connection taken from [`Db`]; goes back to it when dropped.
pub(super) struct Conn<'a> {
    db: &'a Db,
    conn: Option<Connection>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a connection until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("a connection until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.db.idle.lock().expect("idle connections lock");
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(c);
            }
        }
    }
}

impl Db {
    /// Opens (creating, or importing `json` into, when it has no schema
    /// yet) the database at `path`. `json` is `library.json`, renamed to
    /// `library.json.migrated` once its content is committed.
    pub(super) fn open(path: PathBuf, json: &Path) -> Result<Self, StoreError> {
        let db = Self {
            path,
            idle: Mutex::new(Vec::new()),
        };
        let mut conn = db.connect(true)?;
        let version = db.version(&conn)?;
        if version == 0 {
            db.create(&mut conn, json)?;
        } else {
            db.check_version(version)?;
        }
        let imported: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'imported'", [], |r| {
                r.get(0)
            })
            .map_err(|e| db.error(e))?;
        if imported == 1 && json.exists() && !migrated(json).exists() {
            // Committed, but the rename did not happen (killed between).
            rename_migrated(json)?;
        } else if json.exists() {
            tracing::warn!(
                "{} is ignored: this library is kept in {}",
                json.display(),
                db.path.display()
            );
        }
        drop(conn);
        Ok(db)
    }

    /// A connection, from the idle ones or new.
    pub(super) fn conn(&self) -> Result<Conn<'_>, StoreError> {
        let idle = self.idle.lock().expect("idle connections lock").pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = self.connect(false)?;
                // Another process may have upgraded it since it was opened.
                self.check_version(self.version(&c)?)?;
                c
            }
        };
        Ok(Conn {
            db: self,
            conn: Some(conn),
        })
    }

    fn connect(&self, create: bool) -> Result<Connection, StoreError> {
        // Never created by a later connection: a database removed while
        // the library is open is an error, not a new empty library.
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| self.error(e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.error(e))?;
        // (The module docs say why FULL.)
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.error(e))?;
        Ok(conn)
    }

    fn version(&self, conn: &Connection) -> Result<u32, StoreError> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.error(e))
    }

    fn check_version(&self, found: u32) -> Result<(), StoreError> {
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerLibrary {
                path: self.path.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// Creates the schema, importing `json` if there is one, in one
    /// transaction: a damaged `library.json` leaves the database without a
    /// schema (the next open tries again) and the file where it is.
    fn create(&self, conn: &mut Connection, json: &Path) -> Result<(), StoreError> {
        // Outside a transaction, as SQLite requires; kept in the file.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| self.error(e))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        // Another process may have created it while this one waited.
        let version = self.version(&tx)?;
        if version != 0 {
            return self.check_version(version);
        }
        tx.execute_batch(SCHEMA).map_err(|e| self.error(e))?;
        let imported = match read_json(json)? {
            None => false,
            Some(snap) => {
                for e in snap.files.values() {
                    put_file(&tx, e).map_err(|e| self.error(e))?;
                }
                for (out, d) in &snap.downloads {
                    put_download(&tx, out, d).map_err(|e| self.error(e))?;
                }
                let listed = count_listed(&tx).map_err(|e| self.error(e))?;
                tx.execute(
                    "UPDATE meta SET value = CASE key WHEN 'revision' THEN ?1 \
                     WHEN 'listed' THEN ?2 ELSE 1 END",
                    params![snap.revision.saturating_add(1) as i64, listed as i64],
                )
                .map_err(|e| self.error(e))?;
                true
            }
        };
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        if imported {
            rename_migrated(json)?;
        }
        Ok(())
    }

    /// A SQLite error, as the store reports it: a file that is not a
    /// database, or a damaged one, is [`StoreError::Corrupt`].
    pub(super) fn error(&self, e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
                remedy: remedy::LIBRARY,
            },
            _ => StoreError::Database {
                path: self.path.clone(),
                source: e,
            },
        }
    }

    /// The library's revision: one indexed read.
    pub(super) fn revision(&self) -> Result<u64, StoreError> {
        let conn = self.conn()?;
        meta(&conn, "revision").map_err(|e| self.error(e))
    }

    /// The whole library, read in one transaction.
    pub(super) fn load(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let load = || -> rusqlite::Result<Snapshot> {
            let mut snap = Snapshot {
                format: LIBRARY_FORMAT,
                revision: meta(&tx, "revision")?,
                ..Snapshot::default()
            };
            let mut st = tx.prepare(&format!("SELECT {FILE_COLUMNS} FROM files"))?;
            for e in st.query_map([], file_row)? {
                let e = e?;
                snap.files.insert(e.path.clone(), e);
            }
            let mut st =
                tx.prepare(&format!("SELECT output, {DOWNLOAD_COLUMNS} FROM downloads"))?;
            for d in st.query_map([], |r| Ok((path(r.get(0)?), download_row(r, 1)?)))? {
                let (out, d) = d?;
                snap.downloads.insert(out, d);
            }
            Ok(snap)
        };
        load().map_err(|e| self.error(e))
    }

    /// The shared entries of `id`, by the index.
    pub(super) fn entries_by_id(&self, id: &FileId) -> Result<Vec<Entry>, StoreError> {
        let conn = self.conn()?;
        let run = || -> rusqlite::Result<Vec<Entry>> {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files WHERE fid = ?1 ORDER BY path"
            ))?;
            st.query_map([&id.0[..]], file_row)?.collect()
        };
        run().map_err(|e| self.error(e))
    }

    /// The downloads in progress of `id`, by the index, with their outputs.
    pub(super) fn downloads_by_id(
        &self,
        id: &FileId,
    ) -> Result<Vec<(PathBuf, Download)>, StoreError> {
        let conn = self.conn()?;
        let run = || -> rusqlite::Result<Vec<(PathBuf, Download)>> {
            let mut st = conn.prepare_cached(&format!(
                "SELECT output, {DOWNLOAD_COLUMNS} FROM downloads WHERE fid = ?1 ORDER BY output"
            ))?;
            st.query_map([&id.0[..]], |r| Ok((path(r.get(0)?), download_row(r, 1)?)))?
                .collect()
        };
        run().map_err(|e| self.error(e))
    }

    /// The entries at `paths` (those shared), by the primary key.
    pub(super) fn files_at<'p>(
        &self,
        paths: impl Iterator<Item = &'p Path>,
    ) -> Result<HashMap<PathBuf, Entry>, StoreError> {
        let conn = self.conn()?;
        let tx = conn.unchecked_transaction().map_err(|e| self.error(e))?;
        let mut found = HashMap::new();
        for p in paths {
            if let Some(e) = file_at(&tx, p).map_err(|e| self.error(e))? {
                found.insert(e.path.clone(), e);
            }
        }
        Ok(found)
    }

    /// The download recorded for `output`, by the primary key.
    pub(super) fn download_at(&self, output: &Path) -> Result<Option<Download>, StoreError> {
        let conn = self.conn()?;
        download_at(&conn, output).map_err(|e| self.error(e))
    }

    /// Runs `edit` in one write transaction, then (unless it changed
    /// nothing) bumps the revision and keeps the catalog's length. With
    /// `check`, an edit that made the catalog longer than
    /// `MAX_CATALOG_ENTRIES` (and longer than it was) is rolled back:
    /// [`StoreError::CatalogFull`].
    pub(super) fn edit<T>(
        &self,
        check: bool,
        edit: impl FnOnce(&mut Edit<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        use peershare_proto::wire::MAX_CATALOG_ENTRIES;
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let mut ed = Edit {
            db: self,
            tx: &tx,
            before: HashMap::new(),
            whole: false,
            changed: false,
        };
        let out = edit(&mut ed)?;
        let Edit {
            before,
            whole,
            changed,
            ..
        } = ed;
        if !changed {
            return Ok(out);
        }
        let counted = || -> rusqlite::Result<(u64, u64)> {
            let was = meta(&tx, "listed")?;
            let now = if whole {
                count_listed(&tx)?
            } else {
                let mut now = was as i64;
                for (id, was_listed) in &before {
                    now += listed_of(&tx, id)? as i64 - *was_listed as i64;
                }
                now.max(0) as u64
            };
            Ok((was, now))
        };
        let (was, now) = counted().map_err(|e| self.error(e))?;
        if check && now > MAX_CATALOG_ENTRIES as u64 && now > was {
            // Dropping `tx` rolls the edit back.
            return Err(StoreError::CatalogFull {
                listed: now as usize,
                max: MAX_CATALOG_ENTRIES,
            });
        }
        let publish = || -> rusqlite::Result<()> {
            tx.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'revision'",
                [],
            )?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'listed'",
                [now as i64],
            )?;
            Ok(())
        };
        publish().map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(out)
    }
}

/// One write transaction of [`Db::edit`]: every change goes through it, so
/// that the file IDs whose catalog status may change are known.
pub(super) struct Edit<'a> {
    db: &'a Db,
    tx: &'a rusqlite::Transaction<'a>,
    /// Each touched file ID, and how many catalog entries it had before.
    before: HashMap<[u8; 32], u64>,
    /// Too many touched to count one by one: count the whole catalog.
    whole: bool,
    changed: bool,
}

impl Edit<'_> {
    /// Notes that rows of `id` are about to change.
    fn touch(&mut self, id: Option<[u8; 32]>) -> Result<(), StoreError> {
        let Some(id) = id else { return Ok(()) };
        if self.whole || self.before.contains_key(&id) {
            return Ok(());
        }
        if self.before.len() >= INCREMENTAL_LISTED_MAX {
            self.whole = true;
            self.before.clear();
            return Ok(());
        }
        let listed = listed_of(self.tx, &id).map_err(|e| self.db.error(e))?;
        self.before.insert(id, listed);
        Ok(())
    }

    /// Shares `e` (replacing any entry at its path).
    pub(super) fn put_file(&mut self, e: &Entry) -> Result<(), StoreError> {
        if self.whole {
            // Counted whole anyway: no need to know what was there.
            put_file(self.tx, e).map_err(|e| self.db.error(e))?;
            self.changed = true;
            return Ok(());
        }
        let old = file_at(self.tx, &e.path).map_err(|e| self.db.error(e))?;
        if old.as_ref() == Some(e) {
            return Ok(());
        }
        self.touch(old.and_then(|o| fid(&o.id)))?;
        self.touch(fid(&e.id))?;
        put_file(self.tx, e).map_err(|e| self.db.error(e))?;
        self.changed = true;
        Ok(())
    }

    /// Records `d` as the download to `output` (replacing any). False when
    /// that very record was there already.
    pub(super) fn put_download(&mut self, output: &Path, d: &Download) -> Result<bool, StoreError> {
        let old = download_at(self.tx, output).map_err(|e| self.db.error(e))?;
        if old.as_ref() == Some(d) {
            return Ok(false);
        }
        self.touch(old.and_then(|o| fid(&o.id)))?;
        self.touch(fid(&d.id))?;
        put_download(self.tx, output, d).map_err(|e| self.db.error(e))?;
        self.changed = true;
        Ok(true)
    }

    /// Forgets the download to `output`, returning it.
    pub(super) fn take_download(&mut self, output: &Path) -> Result<Option<Download>, StoreError> {
        let Some(d) = download_at(self.tx, output).map_err(|e| self.db.error(e))? else {
            return Ok(None);
        };
        self.touch(fid(&d.id))?;
        self.tx
            .execute("DELETE FROM downloads WHERE output = ?1", [bytes(output)])
            .map_err(|e| self.db.error(e))?;
        self.changed = true;
        Ok(Some(d))
    }

    /// True when an entry or a download is named by `sel`.
    pub(super) fn any(&self, sel: &Selector) -> Result<bool, StoreError> {
        let run = || -> rusqlite::Result<bool> {
            Ok(match sel {
                Selector::Id(id) => self.tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM files WHERE fid = ?1) \
                     OR EXISTS (SELECT 1 FROM downloads WHERE fid = ?1)",
                    [&id[..]],
                    |r| r.get(0),
                )?,
                Selector::Path(p) => {
                    let (exact, lo, hi) = range(p);
                    self.tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM files WHERE path = ?1 \
                         OR (path >= ?2 AND path < ?3)) \
                         OR EXISTS (SELECT 1 FROM downloads WHERE output = ?1 \
                         OR (output >= ?2 AND output < ?3))",
                        params![exact, lo, hi],
                        |r| r.get(0),
                    )?
                }
            })
        };
        run().map_err(|e| self.db.error(e))
    }

    /// Removes every entry and download named by `sel`, returning them.
    pub(super) fn remove(&mut self, sel: &Selector) -> Result<Removed, StoreError> {
        let found = || -> rusqlite::Result<Removed> {
            let (files, downloads) = match sel {
                Selector::Id(id) => {
                    let mut st = self.tx.prepare_cached(&format!(
                        "SELECT {FILE_COLUMNS} FROM files WHERE fid = ?1"
                    ))?;
                    let files = st
                        .query_map([&id[..]], file_row)?
                        .collect::<Result<_, _>>()?;
                    let mut st = self.tx.prepare_cached(&format!(
                        "SELECT output, {DOWNLOAD_COLUMNS} FROM downloads WHERE fid = ?1"
                    ))?;
                    let downloads = st
                        .query_map([&id[..]], |r| Ok((path(r.get(0)?), download_row(r, 1)?)))?
                        .collect::<Result<_, _>>()?;
                    (files, downloads)
                }
                Selector::Path(p) => {
                    let (exact, lo, hi) = range(p);
                    let mut st = self.tx.prepare_cached(&format!(
                        "SELECT {FILE_COLUMNS} FROM files \
                         WHERE path = ?1 OR (path >= ?2 AND path < ?3)"
                    ))?;
                    let files = st
                        .query_map(params![exact, lo, hi], file_row)?
                        .collect::<Result<_, _>>()?;
                    let mut st = self.tx.prepare_cached(&format!(
                        "SELECT output, {DOWNLOAD_COLUMNS} FROM downloads \
                         WHERE output = ?1 OR (output >= ?2 AND output < ?3)"
                    ))?;
                    let downloads = st
                        .query_map(params![exact, lo, hi], |r| {
                            Ok((path(r.get(0)?), download_row(r, 1)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    (files, downloads)
                }
            };
            Ok((files, downloads))
        };
        let (files, downloads): Removed = found().map_err(|e| self.db.error(e))?;
        for e in &files {
            self.touch(fid(&e.id))?;
            self.tx
                .execute("DELETE FROM files WHERE path = ?1", [bytes(&e.path)])
                .map_err(|e| self.db.error(e))?;
            self.changed = true;
        }
        for (out, d) in &downloads {
            self.touch(fid(&d.id))?;
            self.tx
                .execute("DELETE FROM downloads WHERE output = ?1", [bytes(out)])
                .map_err(|e| self.db.error(e))?;
            self.changed = true;
        }
        Ok((files, downloads))
    }
}

/// Entries, and downloads with their outputs, that an edit removed.
type Removed = (Vec<Entry>, Vec<(PathBuf, Download)>);

/// What `unshare` names: a file ID, or a path (that file, or everything
/// under that folder).
pub(super) enum Selector {
    Id([u8; 32]),
    Path(PathBuf),
}

/// `p` itself, and the byte range of the paths under it: `p/` up to (not
/// including) `p0` (`'0'` follows `'/'`), which is `Path::starts_with` for
/// the absolute, normalized paths the library holds.
fn range(p: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let exact = bytes(p).to_vec();
    let mut lo = exact.clone();
    if lo.last() != Some(&b'/') {
        lo.push(b'/');
    }
    let mut hi = lo.clone();
    *hi.last_mut().expect("ends with a slash") = b'/' + 1;
    (exact, lo, hi)
}

const FILE_COLUMNS: &str = "path, id, name, size, mtime_ns, unlisted";
const DOWNLOAD_COLUMNS: &str = "id, name, size, part, state, unlisted";

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let mtime: Vec<u8> = r.get(4)?;
    let mtime: [u8; 16] = mtime.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            "mtime_ns is not 16 bytes".into(),
        )
    })?;
    Ok(Entry {
        path: path(r.get(0)?),
        id: r.get(1)?,
        name: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        mtime_ns: i128::from_be_bytes(mtime),
        unlisted: r.get(5)?,
    })
}

fn download_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Download> {
    Ok(Download {
        id: r.get(at)?,
        name: r.get(at + 1)?,
        size: r.get::<_, i64>(at + 2)? as u64,
        part: path(r.get(at + 3)?),
        state: path(r.get(at + 4)?),
        unlisted: r.get(at + 5)?,
    })
}

fn file_at(c: &Connection, p: &Path) -> rusqlite::Result<Option<Entry>> {
    c.prepare_cached(&format!("SELECT {FILE_COLUMNS} FROM files WHERE path = ?1"))?
        .query_row([bytes(p)], file_row)
        .optional()
}

fn download_at(c: &Connection, output: &Path) -> rusqlite::Result<Option<Download>> {
    c.prepare_cached(&format!(
        "SELECT {DOWNLOAD_COLUMNS} FROM downloads WHERE output = ?1"
    ))?
    .query_row([bytes(output)], |r| download_row(r, 0))
    .optional()
}

fn put_file(c: &Connection, e: &Entry) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO files (path, id, fid, name, size, mtime_ns, unlisted, class) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        bytes(&e.path),
        e.id,
        fid(&e.id).map(|f| f.to_vec()),
        e.name,
        e.size as i64,
        &e.mtime_ns.to_be_bytes()[..],
        e.unlisted,
        file_class(e),
    ])?;
    Ok(())
}

fn put_download(c: &Connection, output: &Path, d: &Download) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO downloads \
         (output, id, fid, name, size, part, state, unlisted, class) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        bytes(output),
        d.id,
        fid(&d.id).map(|f| f.to_vec()),
        d.name,
        d.size as i64,
        bytes(&d.part),
        bytes(&d.state),
        d.unlisted,
        download_class(d),
    ])?;
    Ok(())
}

fn meta(c: &Connection, key: &str) -> rusqlite::Result<u64> {
    c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// How many catalog entries content `id` has ([`Snapshot::listed`]'s
/// rule): one per name among its listed files, and one per name among its
/// listed downloads unless a file shares it. Lookups in the `(fid, class)`
/// indexes; entries of distinct IDs never coincide, so the catalog's
/// length changes by the difference of this for each ID an edit touched.
fn listed_of(c: &Connection, id: &[u8; 32]) -> rusqlite::Result<u64> {
    c.prepare_cached(&format!(
        "SELECT COUNT(*) FROM (\
         SELECT name FROM files WHERE fid = ?1 AND class = {FILE_LISTED} \
         UNION SELECT name FROM downloads WHERE fid = ?1 AND class = {DOWNLOAD_LISTED} \
         AND NOT EXISTS (SELECT 1 FROM files WHERE fid = ?1 AND class != {FILE_NONE}))"
    ))?
    .query_row([&id[..]], |r| r.get::<_, i64>(0))
    .map(|v| v as u64)
}

/// The catalog's length, counted over the whole library (the indexes).
pub(super) fn count_listed(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row(
        &format!(
            "SELECT COUNT(*) FROM (\
             SELECT name, fid FROM files WHERE class = {FILE_LISTED} \
             UNION SELECT name, fid FROM downloads WHERE class = {DOWNLOAD_LISTED} \
             AND fid NOT IN (SELECT fid FROM files WHERE class != {FILE_NONE}))"
        ),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

/// `library.json` (format 1) as it was stored, if there is one.
fn read_json(path: &Path) -> Result<Option<Snapshot>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
        remedy: remedy::LIBRARY,
    };
    let snap: Snapshot = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if snap.format != LIBRARY_FORMAT {
        return Err(corrupt(format!("unknown format {}", snap.format)));
    }
    Ok(Some(snap))
}

/// Keeps an imported `library.json` as `library.json.migrated`.
fn rename_migrated(json: &Path) -> Result<(), StoreError> {
    match std::fs::rename(json, migrated(json)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(json)(e)),
    }
}

/// Where an imported `library.json` is kept.
pub(super) fn migrated(json: &Path) -> PathBuf {
    let mut to = json.as_os_str().to_owned();
    to.push(".migrated");
    PathBuf::from(to)
}

#[cfg(test)]
impl Db {
    /// `meta.listed`: the catalog's length as kept per edit.
    pub(super) fn listed_kept(&self) -> u64 {
        meta(&self.conn().unwrap(), "listed").unwrap()
    }

    /// The catalog's length counted over the whole library.
    pub(super) fn listed_counted(&self) -> u64 {
        count_listed(&self.conn().unwrap()).unwrap()
    }

    /// Rows the connections this handle keeps have written, in all.
    pub(super) fn rows_written(&self) -> u64 {
        let idle = self.idle.lock().unwrap();
        idle.iter().map(|c| c.total_changes()).sum()
    }

    /// Moves the log into the database and empties it.
    pub(super) fn checkpoint(&self) {
        self.conn()
            .unwrap()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}
