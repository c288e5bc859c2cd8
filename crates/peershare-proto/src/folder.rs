//! Folders: the content-addressed description of a shared folder's tree,
//! and its validation against hostile input.
//!
//! A folder is described by its entries: every file, by its path inside the
//! folder, its size and its [`FileId`], and every *empty* directory (all
//! other directories are implied by the file paths). The description has one
//! canonical binary encoding, specified in `docs/PROTOCOL.md` ("Folders"):
//!
//! ```text
//! u8        version (= FOLDER_VERSION)
//! u32       entry count N
//! N entries, in strictly increasing byte order of their paths:
//!   u8        kind: 0 = file, 1 = empty directory
//!   u16       path length in bytes, then the path (UTF-8, `/`-separated)
//!   (file only) u64 size, [u8; 32] file ID
//! ```
//!
//! The encoding travels like a file: it has an ordinary file [`Manifest`]
//! (its chunk hashes), and the [`FolderId`] is the SHA-256 of
//! [`FOLDER_ID_DOMAIN`] followed by that manifest's encoding
//! ([`folder_id_of`]). A receiver checks the manifest against the folder ID
//! ([`verify_folder_manifest`]), fetches the encoding chunk by chunk,
//! verifying each against the manifest, decodes it ([`FolderManifest::decode`])
//! and then fetches each distinct file by its own file ID
//! ([`FolderManifest::distinct_files`]).
//!
//! Everything a peer sends is checked before it is used: every path
//! ([`check_folder_path`]: nothing that could leave the download directory
//! or mean something else on another file system), and across entries, no
//! two paths that one file system would take for the same (equal once
//! normalised to NFC and lowercased), no file that is also a directory, no
//! size over the limits. One bad entry refuses the whole folder, with an
//! error naming it (escaped with `{:?}`, so no control character reaches a
//! terminal). Decoding allocates no more than the input justifies, never
//! panics, and runs in time linear in the input: the collision check keeps,
//! for each directory on the current path, a hash map of its children's
//! keys, so it never compares paths pairwise.
//!
//! A sharer builds a folder from the entries it finds with
//! [`FolderManifest::build`], which leaves out (and reports) what cannot be
//! in a folder instead of refusing the folder; [`FolderManifest::new`] is
//! the strict form.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use unicode_normalization::UnicodeNormalization;

use crate::id::{FileId, FolderId, ID_LEN, sha256_parts};
use crate::manifest::{MAX_FILE_SIZE, Manifest, ManifestError};
use crate::ticket::is_reserved_device;

/// Version byte that opens every folder encoding.
pub const FOLDER_VERSION: u8 = 1;
/// Prefix of the hashed bytes of every folder ID (see [`folder_id_of`]), so
/// that a folder ID is never the file ID of the same bytes.
pub const FOLDER_ID_DOMAIN: &[u8; 20] = b"peershare folder v1\0";
/// Bytes of the encoding before the first entry (version and count).
pub const FOLDER_HEADER_LEN: usize = 1 + 4;
/// Most entries (files and empty directories) in one folder.
pub const MAX_FOLDER_ENTRIES: usize = 1 << 18;
/// Longest folder encoding, bytes.
pub const MAX_FOLDER_MANIFEST_LEN: usize = 32 << 20;
/// Longest path of an entry, bytes of UTF-8.
pub const MAX_FOLDER_PATH_LEN: usize = 1024;
/// Longest component (file or directory name) of a path, bytes of UTF-8:
/// the usual file-system limit.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most components in a path (directories and the name together).
pub const MAX_FOLDER_DEPTH: usize = 64;
/// Largest total size of a folder's files, bytes (duplicates counted).
pub const MAX_FOLDER_SIZE: u64 = 1 << 46;

/// The kind byte of each entry.
pub mod entry_kind {
    /// A file: its size and file ID follow the path.
    pub const FILE: u8 = 0;
    /// An empty directory: nothing follows the path.
    pub const DIR: u8 = 1;
}

/// Bytes of the smallest entry: a directory with a one-byte name. A count
/// larger than the bytes left could hold at this size is refused before any
/// allocation.
const MIN_ENTRY_LEN: usize = 1 + 2 + 1;
/// Bytes of a file entry besides its path: kind, path length, size, ID.
const FILE_ENTRY_OVERHEAD: usize = 1 + 2 + 8 + ID_LEN;
/// Bytes of a directory entry besides its path: kind, path length.
const DIR_ENTRY_OVERHEAD: usize = 1 + 2;

/// Why a path cannot be the path of a folder entry ([`check_folder_path`]).
/// Each reads after "the path".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes, longer than {MAX_FOLDER_PATH_LEN}")]
    TooLong { len: usize },
    #[error("is not valid UTF-8")]
    NotUtf8,
    #[error("contains a NUL character")]
    Nul,
    #[error("contains a control character (a newline, an escape sequence...)")]
    Control,
    #[error("contains a backslash (a separator on Windows)")]
    Backslash,
    #[error("is absolute (starts with /)")]
    Absolute,
    #[error("has an empty component (// or a trailing /)")]
    EmptyComponent,
    #[error("has a \".\" or \"..\" component")]
    DotComponent,
    #[error("has a component of {len} bytes, longer than {MAX_COMPONENT_LEN}")]
    ComponentTooLong { len: usize },
    #[error("has a component that starts with a Windows drive letter (like C:)")]
    DriveLetter,
    #[error("has a component that is a reserved device name on Windows (CON, NUL, COM1, ...)")]
    ReservedName,
    #[error("is {depth} components deep, more than {MAX_FOLDER_DEPTH}")]
    TooDeep { depth: usize },
    #[error("has more than one component (a folder's name is a single one)")]
    NotOneComponent,
}

/// Checks one path of a folder entry: one or more `/`-separated components,
/// relative, at most [`MAX_FOLDER_PATH_LEN`] bytes and [`MAX_FOLDER_DEPTH`]
/// components; no NUL, control character (U+0000 to U+001F, U+007F to
/// U+009F) or backslash anywhere; no component empty, `.`, `..`, over
/// [`MAX_COMPONENT_LEN`] bytes, starting with a drive letter (`C:`), or a
/// Windows device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`–`COM9`,
/// `LPT1`–`LPT9`, in any case, with or without an extension).
///
/// A path that passes names a place inside the download directory on every
/// common file system, and is safe to show on one line. Whether two paths
/// are one place is a question about the whole folder (see
/// [`FolderManifest::decode`]).
pub fn check_folder_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_FOLDER_PATH_LEN {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for (depth, component) in path.split('/').enumerate() {
        if depth == MAX_FOLDER_DEPTH {
            return Err(PathError::TooDeep {
                depth: path.split('/').count(),
            });
        }
        check_component(component)?;
    }
    Ok(())
}

/// Checks the name of a folder itself (its catalog entry, its ticket): one
/// component that [`check_folder_path`] accepts.
pub fn check_folder_name(name: &str) -> Result<(), PathError> {
    check_folder_path(name)?;
    if name.contains('/') {
        return Err(PathError::NotOneComponent);
    }
    Ok(())
}

fn check_component(c: &str) -> Result<(), PathError> {
    if c.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if c == "." || c == ".." {
        return Err(PathError::DotComponent);
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err(PathError::ComponentTooLong { len: c.len() });
    }
    let b = c.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(PathError::DriveLetter);
    }
    if is_reserved_device(c) {
        return Err(PathError::ReservedName);
    }
    Ok(())
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FolderEntry {
    /// A file: fetched by its file ID, and `size` bytes long (which its
    /// manifest must confirm).
    File { path: String, size: u64, id: FileId },
    /// An empty directory. Directories that hold anything are implied by
    /// the paths of what they hold, and are not entries.
    Dir { path: String },
}

impl FolderEntry {
    pub fn file(path: impl Into<String>, size: u64, id: FileId) -> Self {
        FolderEntry::File {
            path: path.into(),
            size,
            id,
        }
    }
    pub fn dir(path: impl Into<String>) -> Self {
        FolderEntry::Dir { path: path.into() }
    }
    /// The path inside the folder, `/`-separated.
    pub fn path(&self) -> &str {
        match self {
            FolderEntry::File { path, .. } | FolderEntry::Dir { path } => path,
        }
    }
    pub fn is_file(&self) -> bool {
        matches!(self, FolderEntry::File { .. })
    }
    /// The file's size; 0 for a directory.
    pub fn size(&self) -> u64 {
        match self {
            FolderEntry::File { size, .. } => *size,
            FolderEntry::Dir { .. } => 0,
        }
    }
    /// The file's ID; `None` for a directory.
    pub fn file_id(&self) -> Option<FileId> {
        match self {
            FolderEntry::File { id, .. } => Some(*id),
            FolderEntry::Dir { .. } => None,
        }
    }
    /// Bytes this entry takes in the encoding.
    pub fn encoded_len(&self) -> usize {
        let overhead = if self.is_file() {
            FILE_ENTRY_OVERHEAD
        } else {
            DIR_ENTRY_OVERHEAD
        };
        overhead + self.path().len()
    }
}

/// Why bytes are not a canonical folder encoding, or entries cannot make a
/// folder, or a manifest is not the one a folder ID names. Paths are shown
/// escaped (`{:?}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("folder encoding is truncated")]
    Truncated,
    #[error(
        "folder encoding version {0} is not supported (this build reads version {FOLDER_VERSION})"
    )]
    Version(u8),
    #[error("folder encoding is {len} bytes, more than the limit of {MAX_FOLDER_MANIFEST_LEN}")]
    TooLong { len: usize },
    #[error("folder has {count} entries, more than the limit of {MAX_FOLDER_ENTRIES}")]
    TooManyEntries { count: usize },
    #[error("folder entry {index} has the unknown kind {kind}")]
    UnknownKind { index: usize, kind: u8 },
    #[error("folder encoding has {len} bytes after its last entry")]
    TrailingBytes { len: usize },
    #[error("folder entry {path:?}: the path {error}")]
    BadPath { path: String, error: PathError },
    #[error("folder lists {path:?} twice")]
    Duplicate { path: String },
    #[error("folder entries are out of order: {path:?} comes after {previous:?}")]
    OutOfOrder { previous: String, path: String },
    #[error("folder lists {dir:?} as an empty directory, and {entry:?} inside it")]
    DirNotEmpty { dir: String, entry: String },
    #[error("folder lists {file:?} as a file, and {entry:?} inside it")]
    FileIsDir { file: String, entry: String },
    #[error(
        "folder entries {first:?} and {second:?} differ only in case or Unicode normalisation: many file systems take them for one"
    )]
    Collision { first: String, second: String },
    #[error("folder file {path:?} is {size} bytes, more than the largest shareable file")]
    FileTooLarge { path: String, size: u64 },
    #[error("folder files add up to more than {MAX_FOLDER_SIZE} bytes")]
    FolderTooLarge,
    #[error("folder lists file ID {id} with two sizes, at {first:?} and {second:?}")]
    SizeMismatch {
        id: FileId,
        first: String,
        second: String,
    },
    #[error("folder file {path:?} is empty but does not have the empty file's ID")]
    EmptyFileId { path: String },
    #[error("folder manifest does not match folder ID {expected} (it hashes to {actual})")]
    IdMismatch {
        expected: FolderId,
        actual: FolderId,
    },
    #[error("folder manifest: {0}")]
    Manifest(#[from] ManifestError),
}

/// The folder ID of the folder whose encoding has `manifest`:
/// SHA-256([`FOLDER_ID_DOMAIN`] ‖ `manifest.encode()`). A file ID is the
/// SHA-256 of a manifest with no prefix, so the folder ID of some bytes is
/// never the file ID of the same bytes.
pub fn folder_id_of(manifest: &Manifest) -> FolderId {
    FolderId(sha256_parts(&[FOLDER_ID_DOMAIN, &manifest.encode()]))
}

/// What a receiver does with the manifest a peer sent for folder `id`:
/// checks that it is the one `id` names, decodes it, and checks that the
/// encoding it describes is not over [`MAX_FOLDER_MANIFEST_LEN`]. The
/// encoding's chunks are then verified against it like a file's
/// ([`Manifest::verify_chunk`]).
pub fn verify_folder_manifest(
    id: &FolderId,
    manifest_bytes: &[u8],
) -> Result<Manifest, FolderError> {
    let actual = FolderId(sha256_parts(&[FOLDER_ID_DOMAIN, manifest_bytes]));
    if actual != *id {
        return Err(FolderError::IdMismatch {
            expected: *id,
            actual,
        });
    }
    let manifest = Manifest::decode(manifest_bytes)?;
    if manifest.size() > MAX_FOLDER_MANIFEST_LEN as u64 {
        return Err(FolderError::TooLong {
            len: usize::try_from(manifest.size()).unwrap_or(usize::MAX),
        });
    }
    Ok(manifest)
}

/// A folder's validated tree. Invariant (every constructor checks it): the
/// entries are in strictly increasing byte order of their paths, every path
/// passes [`check_folder_path`], no two paths (or directory prefixes) are
/// equal once normalised and lowercased unless they are equal, no file is
/// also a directory, no empty directory holds anything, every file is at
/// most [`MAX_FILE_SIZE`] and an empty one has the empty file's ID, one file
/// ID has one size, and the limits on entries, total size and encoded
/// length hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderManifest {
    entries: Vec<FolderEntry>,
    file_count: usize,
    total_size: u64,
    encoded_len: usize,
}

/// One distinct content of a folder: a file ID, its size and every path
/// that holds it. A downloader fetches each once and copies it to the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinctFile<'a> {
    pub id: FileId,
    pub size: u64,
    /// In the folder's order; never empty.
    pub paths: Vec<&'a str>,
}

/// Why [`FolderManifest::build`] left an entry out. Each reads after the
/// entry's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("cannot be in a folder: the path {0}")]
    BadPath(PathError),
    #[error("is larger than the largest shareable file")]
    FileTooLarge,
    #[error("is listed twice")]
    Duplicate,
    #[error("differs from {with:?} only in case or Unicode normalisation")]
    Collision { with: String },
    #[error("is inside {file:?}, which is a file")]
    UnderFile { file: String },
    #[error("is empty but does not have the empty file's ID")]
    EmptyFileId,
    #[error("has the file ID of {with:?} but another size")]
    SizeMismatch { with: String },
    #[error("would make the folder more than {MAX_FOLDER_ENTRIES} entries")]
    TooManyEntries,
    #[error("would make the folder larger than {MAX_FOLDER_SIZE} bytes")]
    FolderTooLarge,
    #[error("would make the folder's encoding longer than {MAX_FOLDER_MANIFEST_LEN} bytes")]
    TooLong,
}

/// An entry [`FolderManifest::build`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{:?} {reason}", entry.path())]
pub struct Skipped {
    pub entry: FolderEntry,
    pub reason: SkipReason,
}

/// What [`FolderManifest::build`] made of a sharer's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderBuild {
    pub manifest: FolderManifest,
    /// In byte order of their paths.
    pub skipped: Vec<Skipped>,
}

impl FolderManifest {
    /// Makes a folder of `entries`, in any order (they are sorted). Refuses
    /// anything [`FolderManifest::decode`] would refuse, including an empty
    /// directory entry with entries inside it.
    pub fn new(mut entries: Vec<FolderEntry>) -> Result<Self, FolderError> {
        if entries.len() > MAX_FOLDER_ENTRIES {
            return Err(FolderError::TooManyEntries {
                count: entries.len(),
            });
        }
        entries.sort_unstable_by(|a, b| a.path().cmp(b.path()));
        let mut check = Checker::new();
        for i in 0..entries.len() {
            check.entry(&entries, i)?;
        }
        check.finish(entries)
    }

    /// The sharer's form of [`FolderManifest::new`]: makes a folder of
    /// those of `candidates` that can be in one, and lists the others with
    /// why. Candidates are taken in byte order of their paths, so where two
    /// collide the first in that order stays, whatever order they came in.
    /// A directory candidate with entries inside it is implied by them and
    /// is not an entry (nor reported); one whose contents were all left out
    /// stays, as an empty directory.
    pub fn build(candidates: impl IntoIterator<Item = FolderEntry>) -> FolderBuild {
        let mut entries: Vec<FolderEntry> = candidates.into_iter().collect();
        // Stable: of two candidates with one path, the first given stays.
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        let empty_id = empty_file_id();
        let mut tree = Tree::default();
        let mut sizes: HashMap<FileId, usize> = HashMap::new();
        // Per candidate: kept (for now). Directory candidates made implied
        // by later ones are unkept again.
        let mut kept = vec![false; entries.len()];
        let mut reasons: Vec<(usize, SkipReason)> = Vec::new();
        let (mut count, mut len, mut total) = (0usize, FOLDER_HEADER_LEN, 0u64);
        for i in 0..entries.len() {
            let e = &entries[i];
            let reason = 'check: {
                if let Err(error) = check_folder_path(e.path()) {
                    break 'check Some(SkipReason::BadPath(error));
                }
                if i > 0 && entries[i - 1].path() == e.path() {
                    break 'check Some(SkipReason::Duplicate);
                }
                if let FolderEntry::File { size, id, .. } = e {
                    if *size > MAX_FILE_SIZE {
                        break 'check Some(SkipReason::FileTooLarge);
                    }
                    if *size == 0 && *id != empty_id {
                        break 'check Some(SkipReason::EmptyFileId);
                    }
                    if let Some(&first) = sizes.get(id)
                        && entries[first].size() != *size
                    {
                        break 'check Some(SkipReason::SizeMismatch {
                            with: entries[first].path().to_owned(),
                        });
                    }
                }
                if count == MAX_FOLDER_ENTRIES {
                    break 'check Some(SkipReason::TooManyEntries);
                }
                if total + e.size() > MAX_FOLDER_SIZE {
                    break 'check Some(SkipReason::FolderTooLarge);
                }
                if len + e.encoded_len() > MAX_FOLDER_MANIFEST_LEN {
                    break 'check Some(SkipReason::TooLong);
                }
                // Last, as it changes the tree when it accepts.
                match tree.insert(&entries, i, true) {
                    Ok(implied) => {
                        if let Some(d) = implied {
                            kept[d] = false;
                            count -= 1;
                            len -= entries[d].encoded_len();
                        }
                        None
                    }
                    Err(conflict) => Some(match conflict {
                        Conflict::Collision { with } => SkipReason::Collision {
                            with: entries[with].path().to_owned(),
                        },
                        Conflict::UnderFile { file } => SkipReason::UnderFile {
                            file: entries[file].path().to_owned(),
                        },
                        // Not met when lenient (the directory becomes
                        // implied), nor in sorted order (a directory is
                        // never entered twice); told as a duplicate.
                        Conflict::UnderEmptyDir { .. } | Conflict::Duplicate { .. } => {
                            SkipReason::Duplicate
                        }
                    }),
                }
            };
            match reason {
                Some(reason) => reasons.push((i, reason)),
                None => {
                    kept[i] = true;
                    count += 1;
                    len += e.encoded_len();
                    total += e.size();
                    if let FolderEntry::File { id, .. } = e {
                        sizes.entry(*id).or_insert(i);
                    }
                }
            }
        }
        let mut skipped = Vec::with_capacity(reasons.len());
        let mut reasons = reasons.into_iter().peekable();
        let mut chosen = Vec::with_capacity(count);
        for (i, e) in entries.into_iter().enumerate() {
            if kept[i] {
                chosen.push(e);
            } else if reasons.peek().is_some_and(|(at, _)| *at == i) {
                let (_, reason) = reasons.next().expect("peeked");
                skipped.push(Skipped { entry: e, reason });
            }
        }
        let file_count = chosen.iter().filter(|e| e.is_file()).count();
        let manifest = FolderManifest {
            entries: chosen,
            file_count,
            total_size: total,
            encoded_len: len,
        };
        debug_assert_eq!(
            FolderManifest::new(manifest.entries.clone()).as_ref(),
            Ok(&manifest)
        );
        FolderBuild { manifest, skipped }
    }

    /// Decodes a canonical folder encoding; anything that
    /// [`FolderManifest::encode`] would not produce is an error, and so is
    /// any entry that breaks the rules of a folder (see the type's
    /// invariant). The first problem found is the one reported.
    pub fn decode(bytes: &[u8]) -> Result<Self, FolderError> {
        if bytes.len() > MAX_FOLDER_MANIFEST_LEN {
            return Err(FolderError::TooLong { len: bytes.len() });
        }
        let mut r = bytes;
        let version = take(&mut r, 1)?[0];
        if version != FOLDER_VERSION {
            return Err(FolderError::Version(version));
        }
        let count = u32::from_be_bytes(take(&mut r, 4)?.try_into().expect("4 bytes")) as usize;
        if count > MAX_FOLDER_ENTRIES {
            return Err(FolderError::TooManyEntries { count });
        }
        // Checked before the allocation sized by it: a count the bytes
        // cannot hold means the encoding is cut short.
        if count > r.len() / MIN_ENTRY_LEN {
            return Err(FolderError::Truncated);
        }
        let mut entries = Vec::with_capacity(count);
        let mut check = Checker::new();
        for index in 0..count {
            let kind = take(&mut r, 1)?[0];
            if kind != entry_kind::FILE && kind != entry_kind::DIR {
                return Err(FolderError::UnknownKind { index, kind });
            }
            let len = u16::from_be_bytes(take(&mut r, 2)?.try_into().expect("2 bytes")) as usize;
            if len > MAX_FOLDER_PATH_LEN {
                // Named by what of it is there, not read further.
                let shown = &r[..r.len().min(MAX_FOLDER_PATH_LEN)];
                return Err(FolderError::BadPath {
                    path: String::from_utf8_lossy(shown).into_owned(),
                    error: PathError::TooLong { len },
                });
            }
            let raw = take(&mut r, len)?;
            let Ok(path) = std::str::from_utf8(raw) else {
                return Err(FolderError::BadPath {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    error: PathError::NotUtf8,
                });
            };
            let path = path.to_owned();
            entries.push(if kind == entry_kind::FILE {
                let size = u64::from_be_bytes(take(&mut r, 8)?.try_into().expect("8 bytes"));
                let id = FileId(take(&mut r, ID_LEN)?.try_into().expect("ID_LEN bytes"));
                FolderEntry::File { path, size, id }
            } else {
                FolderEntry::Dir { path }
            });
            check.entry(&entries, index)?;
        }
        if !r.is_empty() {
            return Err(FolderError::TrailingBytes { len: r.len() });
        }
        check.finish(entries)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len);
        out.push(FOLDER_VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            let path = e.path();
            out.push(if e.is_file() {
                entry_kind::FILE
            } else {
                entry_kind::DIR
            });
            out.extend_from_slice(&(path.len() as u16).to_be_bytes());
            out.extend_from_slice(path.as_bytes());
            if let FolderEntry::File { size, id, .. } = e {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(id.as_bytes());
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len);
        out
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// The file manifest of the encoding: what a peer serves for the
    /// folder ID, and what its chunks are checked against.
    pub fn manifest(&self) -> Manifest {
        Manifest::from_bytes(&self.encode())
    }

    /// The folder ID: [`folder_id_of`] the manifest of the encoding.
    pub fn id(&self) -> FolderId {
        folder_id_of(&self.manifest())
    }

    /// Every entry, in byte order of their paths.
    pub fn entries(&self) -> &[FolderEntry] {
        &self.entries
    }

    /// Number of entries (files and empty directories).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of file entries (a content listed at two paths counts twice).
    pub fn file_count(&self) -> usize {
        self.file_count
    }

    /// Sum of the sizes of every file entry, bytes: what the folder takes
    /// on disk once downloaded.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// The folder's files grouped by content, in the order of each one's
    /// first path: what a downloader fetches (each once).
    pub fn distinct_files(&self) -> Vec<DistinctFile<'_>> {
        let mut at: HashMap<FileId, usize> = HashMap::new();
        let mut out: Vec<DistinctFile<'_>> = Vec::new();
        for e in &self.entries {
            if let FolderEntry::File { path, size, id } = e {
                match at.entry(*id) {
                    Entry::Occupied(o) => out[*o.get()].paths.push(path),
                    Entry::Vacant(v) => {
                        v.insert(out.len());
                        out.push(DistinctFile {
                            id: *id,
                            size: *size,
                            paths: vec![path],
                        });
                    }
                }
            }
        }
        out
    }
}

/// The file ID of every empty file.
fn empty_file_id() -> FileId {
    Manifest::from_bytes(b"").id()
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], FolderError> {
    if r.len() < n {
        return Err(FolderError::Truncated);
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

/// The strict checks, entry by entry in byte order: shared by
/// [`FolderManifest::decode`] and [`FolderManifest::new`].
struct Checker {
    tree: Tree,
    /// The first entry of each file ID.
    sizes: HashMap<FileId, usize>,
    empty_id: FileId,
    file_count: usize,
    total_size: u64,
    encoded_len: usize,
}

impl Checker {
    fn new() -> Self {
        Checker {
            tree: Tree::default(),
            sizes: HashMap::new(),
            empty_id: empty_file_id(),
            file_count: 0,
            total_size: 0,
            encoded_len: FOLDER_HEADER_LEN,
        }
    }

    /// Checks `entries[index]`, which follows every entry checked before.
    fn entry(&mut self, entries: &[FolderEntry], index: usize) -> Result<(), FolderError> {
        let e = &entries[index];
        let path = e.path();
        check_folder_path(path).map_err(|error| FolderError::BadPath {
            path: path.to_owned(),
            error,
        })?;
        if let FolderEntry::File { size, id, .. } = e {
            if *size > MAX_FILE_SIZE {
                return Err(FolderError::FileTooLarge {
                    path: path.to_owned(),
                    size: *size,
                });
            }
            if *size == 0 && *id != self.empty_id {
                return Err(FolderError::EmptyFileId {
                    path: path.to_owned(),
                });
            }
        }
        if let Some(previous) = index.checked_sub(1).map(|p| entries[p].path()) {
            if previous == path {
                return Err(FolderError::Duplicate {
                    path: path.to_owned(),
                });
            }
            if previous > path {
                return Err(FolderError::OutOfOrder {
                    previous: previous.to_owned(),
                    path: path.to_owned(),
                });
            }
        }
        self.tree
            .insert(entries, index, false)
            .map_err(|conflict| {
                let other = |i: usize| entries[i].path().to_owned();
                match conflict {
                    Conflict::Collision { with } => FolderError::Collision {
                        first: other(with),
                        second: path.to_owned(),
                    },
                    Conflict::UnderFile { file } => FolderError::FileIsDir {
                        file: other(file),
                        entry: path.to_owned(),
                    },
                    Conflict::UnderEmptyDir { dir } => FolderError::DirNotEmpty {
                        dir: other(dir),
                        entry: path.to_owned(),
                    },
                    // Entries in order never meet it: a directory's entries
                    // are contiguous.
                    Conflict::Duplicate { with } => FolderError::OutOfOrder {
                        previous: other(with),
                        path: path.to_owned(),
                    },
                }
            })?;
        self.encoded_len += e.encoded_len();
        if self.encoded_len > MAX_FOLDER_MANIFEST_LEN {
            return Err(FolderError::TooLong {
                len: self.encoded_len,
            });
        }
        if let FolderEntry::File { size, id, .. } = e {
            self.file_count += 1;
            // Each size is at most MAX_FILE_SIZE and the count at most
            // MAX_FOLDER_ENTRIES: no overflow.
            self.total_size += size;
            if self.total_size > MAX_FOLDER_SIZE {
                return Err(FolderError::FolderTooLarge);
            }
            match self.sizes.entry(*id) {
                Entry::Vacant(v) => {
                    v.insert(index);
                }
                Entry::Occupied(o) => {
                    let first = &entries[*o.get()];
                    if first.size() != *size {
                        return Err(FolderError::SizeMismatch {
                            id: *id,
                            first: first.path().to_owned(),
                            second: path.to_owned(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self, entries: Vec<FolderEntry>) -> Result<FolderManifest, FolderError> {
        Ok(FolderManifest {
            entries,
            file_count: self.file_count,
            total_size: self.total_size,
            encoded_len: self.encoded_len,
        })
    }
}

/// The key under which a name is unique in its directory: NFC, lowercased
/// character by character (context-free, so a path's key is its
/// components' keys joined by `/`), then NFC again (lowercasing can undo
/// the canonical order of combining marks, as `İ` does). ASCII needs
/// neither pass beyond lowercasing.
fn fold_key(name: &str) -> Box<str> {
    if name.is_ascii() {
        return name.to_ascii_lowercase().into_boxed_str();
    }
    name.nfc()
        .flat_map(char::to_lowercase)
        .nfc()
        .collect::<String>()
        .into_boxed_str()
}

/// The collision check, fed entries in byte order of their paths.
///
/// Two paths differ only in case or normalisation exactly when, at the
/// first component where their bytes differ, the two components have one
/// [`fold_key`] (the components before are equal, so they are siblings in
/// one directory; keys hold no `/`, so keys of later components cannot make
/// up for a difference). So each directory needs the keys of its own
/// children only. Entries under one directory are contiguous in byte order,
/// so the directories of the current path form a stack, and a directory's
/// keys are dropped when the entries leave it: memory stays within the
/// children of the directories on the current path, and time is a hash of
/// each new component, linear in the input.
///
/// The one exception to contiguity is an empty directory entry `d`: other
/// names can sort between `d` and `d/...` (`d x`, `d.txt`: bytes below
/// `/`), so it is found again by its key, as a child of kind `EmptyDir`.
#[derive(Default)]
struct Tree {
    /// The directories of the current path below the root.
    open: Vec<OpenDir>,
    /// The root's children.
    root: HashMap<Box<str>, Child>,
}

struct OpenDir {
    /// Its exact name.
    name: Box<str>,
    children: HashMap<Box<str>, Child>,
}

/// A name in a directory: the first entry that has it, and at which depth.
#[derive(Clone, Copy)]
struct Child {
    entry: usize,
    depth: usize,
    kind: ChildKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChildKind {
    /// A directory implied by an entry inside it.
    Dir,
    File,
    /// An empty directory entry.
    EmptyDir,
}

/// Why an entry cannot join the tree; the indices are of the other entry.
enum Conflict {
    Collision { with: usize },
    UnderFile { file: usize },
    UnderEmptyDir { dir: usize },
    Duplicate { with: usize },
}

impl Child {
    /// The exact name this child has in the entry that introduced it.
    fn name<'a>(&self, entries: &'a [FolderEntry]) -> &'a str {
        entries[self.entry]
            .path()
            .split('/')
            .nth(self.depth)
            .expect("a child's depth is within its entry's path")
    }
}

impl Tree {
    /// Adds `entries[index]`, a valid path after every path added before in
    /// byte order. On a conflict nothing but the stack of open directories
    /// has changed (and that only by what any later entry would close too).
    /// `lenient`: an entry inside an empty directory entry makes it an
    /// implied directory instead of a conflict; its index is returned.
    fn insert(
        &mut self,
        entries: &[FolderEntry],
        index: usize,
        lenient: bool,
    ) -> Result<Option<usize>, Conflict> {
        let path = entries[index].path();
        let (dirs, leaf) = match path.rsplit_once('/') {
            Some((dirs, leaf)) => (Some(dirs), leaf),
            None => (None, path),
        };
        let mut implied = None;
        let mut matching = true;
        for (depth, name) in dirs.into_iter().flat_map(|d| d.split('/')).enumerate() {
            if matching {
                if self.open.get(depth).is_some_and(|d| *d.name == *name) {
                    continue;
                }
                matching = false;
                self.open.truncate(depth);
            }
            let key = fold_key(name);
            let children = match self.open.last_mut() {
                Some(d) => &mut d.children,
                None => &mut self.root,
            };
            match children.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(Child {
                        entry: index,
                        depth,
                        kind: ChildKind::Dir,
                    });
                }
                Entry::Occupied(mut o) => {
                    let child = *o.get();
                    if child.name(entries) != name {
                        return Err(Conflict::Collision { with: child.entry });
                    }
                    match child.kind {
                        ChildKind::File => return Err(Conflict::UnderFile { file: child.entry }),
                        ChildKind::EmptyDir if lenient => {
                            o.get_mut().kind = ChildKind::Dir;
                            implied = Some(child.entry);
                        }
                        ChildKind::EmptyDir => {
                            return Err(Conflict::UnderEmptyDir { dir: child.entry });
                        }
                        ChildKind::Dir => return Err(Conflict::Duplicate { with: child.entry }),
                    }
                }
            }
            self.open.push(OpenDir {
                name: name.into(),
                children: HashMap::new(),
            });
        }
        let depth = path.split('/').count() - 1;
        if matching {
            self.open.truncate(depth);
        }
        let children = match self.open.last_mut() {
            Some(d) => &mut d.children,
            None => &mut self.root,
        };
        match children.entry(fold_key(leaf)) {
            Entry::Vacant(v) => {
                v.insert(Child {
                    entry: index,
                    depth,
                    kind: if entries[index].is_file() {
                        ChildKind::File
                    } else {
                        ChildKind::EmptyDir
                    },
                });
                Ok(implied)
            }
            Entry::Occupied(o) => {
                let child = *o.get();
                if child.name(entries) != leaf {
                    Err(Conflict::Collision { with: child.entry })
                } else {
                    Err(Conflict::Duplicate { with: child.entry })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::sha256;

    fn id(n: u8) -> FileId {
        FileId([n; ID_LEN])
    }

    fn file(path: &str, size: u64, n: u8) -> FolderEntry {
        FolderEntry::file(path, size, id(n))
    }

    fn dir(path: &str) -> FolderEntry {
        FolderEntry::dir(path)
    }

    fn empty(path: &str) -> FolderEntry {
        FolderEntry::file(path, 0, empty_file_id())
    }

    /// Encodes entries as given, in that order, without any check: how a
    /// hostile peer makes an encoding.
    fn raw(entries: &[FolderEntry]) -> Vec<u8> {
        let mut out = vec![FOLDER_VERSION];
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for e in entries {
            out.push(if e.is_file() {
                entry_kind::FILE
            } else {
                entry_kind::DIR
            });
            out.extend_from_slice(&(e.path().len() as u16).to_be_bytes());
            out.extend_from_slice(e.path().as_bytes());
            if let FolderEntry::File { size, id, .. } = e {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(id.as_bytes());
            }
        }
        out
    }

    fn sample() -> FolderManifest {
        FolderManifest::new(vec![
            file("src/main.rs", 120, 1),
            file("README", 10, 2),
            dir("target"),
            file("src/lib/mod.rs", 9, 3),
            file("copy/README", 10, 2),
            empty("src/.keep"),
            file("ünïcödé/ñ.txt", 1, 4),
        ])
        .unwrap()
    }

    #[test]
    fn folder_paths() {
        use PathError::*;
        let longest_component = "c".repeat(MAX_COMPONENT_LEN);
        let too_long_component = "c".repeat(MAX_COMPONENT_LEN + 1);
        let longest = path_of_len(1, MAX_FOLDER_PATH_LEN);
        let too_long = format!("{longest}y");
        let deepest = vec!["d"; MAX_FOLDER_DEPTH].join("/");
        let too_deep = vec!["d"; MAX_FOLDER_DEPTH + 1].join("/");
        for (path, want) in [
            ("a", Ok(())),
            ("a/b/c.txt", Ok(())),
            ("été/ü.txt", Ok(())),
            (".hidden/.x", Ok(())),
            ("..a/b..", Ok(())),
            ("console.log", Ok(())),
            ("COM10", Ok(())),
            ("COM0", Ok(())),
            ("lpt", Ok(())),
            ("ab:c", Ok(())),
            ("1:x", Ok(())),
            ("trailing. ", Ok(())),
            ("right\u{202e}to-left", Ok(())), // a format character, not a control
            (longest_component.as_str(), Ok(())),
            (longest.as_str(), Ok(())),
            (deepest.as_str(), Ok(())),
            ("", Err(Empty)),
            (too_long.as_str(), Err(TooLong { len: 1025 })),
            ("a\0b", Err(Nul)),
            ("\0", Err(Nul)),
            ("line\nbreak", Err(Control)),
            ("title\u{1b}]0;pwned\u{7}", Err(Control)),
            ("tab\there", Err(Control)),
            ("del\u{7f}", Err(Control)),
            ("nel\u{85}", Err(Control)), // C1
            ("csi\u{9b}31m", Err(Control)),
            ("apc\u{9f}", Err(Control)),
            ("a\\b", Err(Backslash)),
            ("..\\..\\windows", Err(Backslash)),
            ("/etc/passwd", Err(Absolute)),
            ("/", Err(Absolute)),
            ("a//b", Err(EmptyComponent)),
            ("a/", Err(EmptyComponent)),
            (".", Err(DotComponent)),
            ("..", Err(DotComponent)),
            ("a/./b", Err(DotComponent)),
            ("a/../../b", Err(DotComponent)),
            ("../x", Err(DotComponent)),
            ("C:", Err(DriveLetter)),
            ("c:evil.exe", Err(DriveLetter)),
            ("dir/D:x", Err(DriveLetter)),
            ("CON", Err(ReservedName)),
            ("con.txt", Err(ReservedName)),
            ("a/Aux.tar.gz", Err(ReservedName)),
            ("nul", Err(ReservedName)),
            ("PRN .x", Err(ReservedName)),
            ("COM1", Err(ReservedName)),
            ("com9/x", Err(ReservedName)),
            ("LPT1", Err(ReservedName)),
            ("lpt9.log", Err(ReservedName)),
            (
                too_long_component.as_str(),
                Err(ComponentTooLong { len: 256 }),
            ),
            (too_deep.as_str(), Err(TooDeep { depth: 65 })),
            // The first reason found, in the order of the checks.
            ("/\n", Err(Control)),
            ("\\/", Err(Backslash)),
            ("a//CON", Err(EmptyComponent)),
        ] {
            assert_eq!(check_folder_path(path), want, "{path:?}");
        }
    }

    #[test]
    fn folder_names_are_one_component() {
        assert_eq!(check_folder_name("photos"), Ok(()));
        assert_eq!(check_folder_name("été 2024"), Ok(()));
        assert_eq!(check_folder_name("a/b"), Err(PathError::NotOneComponent));
        assert_eq!(check_folder_name(".."), Err(PathError::DotComponent));
        assert_eq!(check_folder_name(""), Err(PathError::Empty));
    }

    #[test]
    fn a_folder_round_trips_and_keeps_byte_order() {
        let f = sample();
        let paths: Vec<&str> = f.entries().iter().map(FolderEntry::path).collect();
        assert_eq!(
            paths,
            [
                "README",
                "copy/README",
                "src/.keep",
                "src/lib/mod.rs",
                "src/main.rs",
                "target",
                "ünïcödé/ñ.txt"
            ]
        );
        let enc = f.encode();
        assert_eq!(enc.len(), f.encoded_len());
        assert_eq!(FolderManifest::decode(&enc), Ok(f.clone()));
        assert_eq!(f.len(), 7);
        assert!(!f.is_empty());
        assert_eq!(f.file_count(), 6);
        assert_eq!(f.total_size(), 120 + 10 + 9 + 10 + 1);
        // Entries given in any order make the same folder.
        let mut reversed = f.entries().to_vec();
        reversed.reverse();
        assert_eq!(FolderManifest::new(reversed), Ok(f));
    }

    #[test]
    fn an_empty_folder_is_a_folder() {
        let f = FolderManifest::new(vec![]).unwrap();
        assert_eq!(f.encode(), [FOLDER_VERSION, 0, 0, 0, 0]);
        assert_eq!(FolderManifest::decode(&f.encode()), Ok(f.clone()));
        assert!(f.is_empty());
        assert_eq!(f.total_size(), 0);
    }

    #[test]
    fn duplicate_content_is_fetched_once() {
        let f = sample();
        let distinct = f.distinct_files();
        let ids: Vec<FileId> = distinct.iter().map(|d| d.id).collect();
        assert_eq!(ids, [id(2), empty_file_id(), id(3), id(1), id(4)]);
        assert_eq!(distinct[0].paths, ["README", "copy/README"]);
        assert_eq!(distinct[0].size, 10);
        assert!(distinct[1..].iter().all(|d| d.paths.len() == 1));
    }

    #[test]
    fn every_prefix_of_an_encoding_is_truncated() {
        let enc = sample().encode();
        for n in 0..enc.len() {
            assert_eq!(
                FolderManifest::decode(&enc[..n]),
                Err(FolderError::Truncated),
                "the first {n} bytes"
            );
        }
        assert!(FolderManifest::decode(&enc).is_ok());
    }

    #[test]
    fn decode_refuses_what_encode_would_not_produce() {
        let good = sample().encode();
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(FolderManifest::decode(&v), Err(FolderError::Version(2)));

        let mut v = good.clone();
        v.push(0);
        assert_eq!(
            FolderManifest::decode(&v),
            Err(FolderError::TrailingBytes { len: 1 })
        );

        // Entry 0's kind byte follows the header.
        let mut v = good.clone();
        v[FOLDER_HEADER_LEN] = 2;
        assert_eq!(
            FolderManifest::decode(&v),
            Err(FolderError::UnknownKind { index: 0, kind: 2 })
        );

        // A count the bytes cannot hold is refused before anything is
        // allocated for it, as cut short; a count over the limit as such.
        let mut v = good.clone();
        v[1..5].copy_from_slice(&(MAX_FOLDER_ENTRIES as u32).to_be_bytes());
        assert_eq!(FolderManifest::decode(&v), Err(FolderError::Truncated));
        let mut v = good.clone();
        v[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            FolderManifest::decode(&v),
            Err(FolderError::TooManyEntries {
                count: u32::MAX as usize
            })
        );
        // One entry fewer than the bytes hold: the last is left over.
        let mut v = good.clone();
        v[1..5].copy_from_slice(&6u32.to_be_bytes());
        assert!(matches!(
            FolderManifest::decode(&v),
            Err(FolderError::TrailingBytes { .. })
        ));

        assert_eq!(
            FolderManifest::decode(&raw(&[file("b", 1, 1), file("a", 1, 1)])),
            Err(FolderError::OutOfOrder {
                previous: "b".into(),
                path: "a".into()
            })
        );
        assert_eq!(
            FolderManifest::decode(&raw(&[file("a", 1, 1), file("a", 1, 1)])),
            Err(FolderError::Duplicate { path: "a".into() })
        );
        assert_eq!(
            FolderManifest::decode(&raw(&[file("a", 1, 1), dir("a")])),
            Err(FolderError::Duplicate { path: "a".into() })
        );
        // "a/b" sorts after "a.txt" ('/' is 0x2f, '.' 0x2e): byte order,
        // not component order.
        assert_eq!(
            FolderManifest::decode(&raw(&[file("a/b", 1, 1), file("a.txt", 1, 1)])),
            Err(FolderError::OutOfOrder {
                previous: "a/b".into(),
                path: "a.txt".into()
            })
        );
        assert!(FolderManifest::decode(&raw(&[file("a.txt", 1, 1), file("a/b", 1, 1)])).is_ok());
    }

    #[test]
    fn a_path_that_is_not_utf8_or_too_long_is_refused_by_name() {
        let mut v = raw(&[file("ab", 1, 1)]);
        v[FOLDER_HEADER_LEN + 3] = 0xff;
        assert_eq!(
            FolderManifest::decode(&v),
            Err(FolderError::BadPath {
                path: "\u{fffd}b".into(),
                error: PathError::NotUtf8
            })
        );
        // A declared length over the limit is refused from the length.
        let mut v = vec![FOLDER_VERSION, 0, 0, 0, 1, entry_kind::DIR];
        v.extend_from_slice(&(MAX_FOLDER_PATH_LEN as u16 + 1).to_be_bytes());
        v.extend_from_slice(b"abc");
        assert_eq!(
            FolderManifest::decode(&v),
            Err(FolderError::BadPath {
                path: "abc".into(),
                error: PathError::TooLong { len: 1025 }
            })
        );
    }

    /// Each hostile folder is refused whole, naming the entries at fault.
    #[test]
    fn hostile_folders_are_refused_whole() {
        let nfc = "\u{e9}"; // é
        let nfd = "e\u{301}"; // e + combining acute
        let cases: Vec<(Vec<FolderEntry>, FolderError)> = vec![
            (
                vec![file("ok", 1, 1), file("../../.ssh/authorized_keys", 1, 2)],
                FolderError::BadPath {
                    path: "../../.ssh/authorized_keys".into(),
                    error: PathError::DotComponent,
                },
            ),
            (
                vec![file("A/x", 1, 1), file("a/y", 1, 2)],
                FolderError::Collision {
                    first: "A/x".into(),
                    second: "a/y".into(),
                },
            ),
            (
                vec![file("d/README", 1, 1), file("d/readme", 1, 2)],
                FolderError::Collision {
                    first: "d/README".into(),
                    second: "d/readme".into(),
                },
            ),
            (
                vec![file("a/B/x", 1, 1), file("a/b/y", 1, 2)],
                FolderError::Collision {
                    first: "a/B/x".into(),
                    second: "a/b/y".into(),
                },
            ),
            (
                vec![
                    file(&format!("{nfc}/x"), 1, 1),
                    file(&format!("{nfd}/y"), 1, 2),
                ],
                FolderError::Collision {
                    first: format!("{nfd}/y"),
                    second: format!("{nfc}/x"),
                },
            ),
            (
                // Case and normalisation together: É (NFD) and é (NFC).
                vec![file(nfc, 1, 1), file("E\u{301}", 1, 2)],
                FolderError::Collision {
                    first: "E\u{301}".into(),
                    second: nfc.into(),
                },
            ),
            (
                // The Kelvin sign is K once normalised.
                vec![file("k", 1, 1), file("\u{212a}", 1, 2)],
                FolderError::Collision {
                    first: "k".into(),
                    second: "\u{212a}".into(),
                },
            ),
            (
                // A directory and a file: "D" (dir) and "d" (file).
                vec![file("D/x", 1, 1), file("d", 1, 2)],
                FolderError::Collision {
                    first: "D/x".into(),
                    second: "d".into(),
                },
            ),
            (
                vec![file("a", 1, 1), file("a/b", 1, 2)],
                FolderError::FileIsDir {
                    file: "a".into(),
                    entry: "a/b".into(),
                },
            ),
            (
                // Names between "a" and "a/" in byte order do not hide it.
                vec![
                    file("a", 1, 1),
                    file("a b", 1, 2),
                    file("a.txt", 1, 3),
                    file("a/b", 1, 4),
                ],
                FolderError::FileIsDir {
                    file: "a".into(),
                    entry: "a/b".into(),
                },
            ),
            (
                vec![dir("d"), file("d/x", 1, 1)],
                FolderError::DirNotEmpty {
                    dir: "d".into(),
                    entry: "d/x".into(),
                },
            ),
            (
                vec![dir("d"), file("d-old", 1, 1), dir("d/e")],
                FolderError::DirNotEmpty {
                    dir: "d".into(),
                    entry: "d/e".into(),
                },
            ),
            (
                vec![file("big", MAX_FILE_SIZE + 1, 1)],
                FolderError::FileTooLarge {
                    path: "big".into(),
                    size: MAX_FILE_SIZE + 1,
                },
            ),
            (
                vec![file("a", 1, 1), file("b", 2, 1)],
                FolderError::SizeMismatch {
                    id: id(1),
                    first: "a".into(),
                    second: "b".into(),
                },
            ),
            (
                vec![file("zero", 0, 1)],
                FolderError::EmptyFileId {
                    path: "zero".into(),
                },
            ),
        ];
        for (entries, want) in cases {
            // As entries (sorted by `new`) and as bytes from a peer (in
            // byte order, so that only the rule at stake is broken).
            assert_eq!(
                FolderManifest::new(entries.clone()),
                Err(want.clone()),
                "{entries:?}"
            );
            let mut sorted = entries.clone();
            sorted.sort_by(|a, b| a.path().cmp(b.path()));
            assert_eq!(
                FolderManifest::decode(&raw(&sorted)),
                Err(want.clone()),
                "{entries:?}"
            );
        }
    }

    #[test]
    fn case_and_normalisation_variants_in_different_directories_are_fine() {
        let f = FolderManifest::new(vec![
            file("a/X", 1, 1),
            file("b/x", 1, 2),
            file("a/x.txt", 1, 3),
            file("é/e\u{301}.txt", 1, 4),
            file("A.txt/B", 1, 5),
            file("a.txt/b/c", 1, 6),
        ]);
        // "A.txt" and "a.txt" collide, the rest does not.
        assert_eq!(
            f,
            Err(FolderError::Collision {
                first: "A.txt/B".into(),
                second: "a.txt/b/c".into()
            })
        );
        assert!(
            FolderManifest::new(vec![
                file("a/X", 1, 1),
                file("b/x", 1, 2),
                file("a/x.txt", 1, 3),
                file("é/e\u{301}.txt", 1, 4),
            ])
            .is_ok()
        );
    }

    #[test]
    fn errors_name_the_entry_escaped() {
        let evil = "x\u{1b}]0;pwned\u{7}";
        let err = FolderManifest::decode(&raw(&[file(evil, 1, 1)])).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(r#""x\u{1b}]0;pwned\u{7}""#), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        let err = FolderManifest::new(vec![file("A\n", 1, 1), file("a\n", 1, 2)]).unwrap_err();
        assert!(!err.to_string().chars().any(char::is_control));
    }

    #[test]
    fn build_leaves_out_and_reports_what_cannot_be_in_a_folder() {
        let built = FolderManifest::build(vec![
            file("photos/b.jpg", 3, 1),
            file("photos/CON.jpg", 3, 2),
            // "P" sorts before "p": this one stays, "photos/b.jpg" goes.
            file("Photos/c.jpg", 3, 3),
            file("notes.txt", 4, 4),
            file("notes.txt", 4, 5),
            file("line\nbreak", 1, 6),
            file("a", 1, 7),
            file("a/b", 1, 8),
            file("huge", MAX_FILE_SIZE + 1, 9),
            // Holds something: implied, not an entry.
            dir("docs"),
            file("docs/x", 1, 12),
            // Holds only what is left out: stays, empty.
            dir("bad"),
            file("bad/nul", 1, 10),
            dir("empty"),
            file("empty.txt", 0, 11),
        ]);
        let kept: Vec<&str> = built
            .manifest
            .entries()
            .iter()
            .map(FolderEntry::path)
            .collect();
        assert_eq!(
            kept,
            ["Photos/c.jpg", "a", "bad", "docs/x", "empty", "notes.txt"]
        );
        let skipped: Vec<(&str, SkipReason)> = built
            .skipped
            .iter()
            .map(|s| (s.entry.path(), s.reason.clone()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("a/b", SkipReason::UnderFile { file: "a".into() }),
                ("bad/nul", SkipReason::BadPath(PathError::ReservedName)),
                ("empty.txt", SkipReason::EmptyFileId),
                ("huge", SkipReason::FileTooLarge),
                ("line\nbreak", SkipReason::BadPath(PathError::Control)),
                ("notes.txt", SkipReason::Duplicate),
                (
                    "photos/CON.jpg",
                    SkipReason::BadPath(PathError::ReservedName)
                ),
                (
                    "photos/b.jpg",
                    SkipReason::Collision {
                        with: "Photos/c.jpg".into()
                    }
                ),
            ]
        );
        assert_eq!(built.manifest.file_count(), 4);
        assert_eq!(built.manifest.total_size(), 3 + 1 + 1 + 4);
        assert_eq!(
            built.skipped[7].to_string(),
            "\"photos/b.jpg\" differs from \"Photos/c.jpg\" only in case or Unicode normalisation"
        );
        assert_eq!(
            built.skipped[4].to_string(),
            "\"line\\nbreak\" cannot be in a folder: the path contains a control character (a newline, an escape sequence...)"
        );
        // What it makes is a folder `new` and `decode` accept as it is.
        assert_eq!(
            FolderManifest::new(built.manifest.entries().to_vec()),
            Ok(built.manifest.clone())
        );
        assert_eq!(
            FolderManifest::decode(&built.manifest.encode()),
            Ok(built.manifest.clone())
        );
    }

    #[test]
    fn build_keeps_the_first_in_byte_order_whatever_the_input_order() {
        let entries = vec![
            file("b/x", 1, 1),
            file("B/y", 1, 2),
            file("c", 1, 3),
            file("C", 1, 4),
            dir("d"),
            file("d x", 1, 5),
            file("d/y", 1, 6),
        ];
        let forward = FolderManifest::build(entries.clone());
        let mut reversed = entries;
        reversed.reverse();
        let backward = FolderManifest::build(reversed);
        assert_eq!(forward, backward);
        let kept: Vec<&str> = forward
            .manifest
            .entries()
            .iter()
            .map(FolderEntry::path)
            .collect();
        // "B" < "b" and "C" < "c"; "d" is implied by "d/y", past "d x".
        assert_eq!(kept, ["B/y", "C", "d x", "d/y"]);
    }

    #[test]
    fn build_stops_at_the_limits_and_says_so() {
        // Total size: 32 files of the largest size fill MAX_FOLDER_SIZE.
        let mut entries: Vec<FolderEntry> = (0..33u8)
            .map(|i| file(&format!("f{i:02}"), MAX_FILE_SIZE, i))
            .collect();
        entries.push(file("g", 1, 200));
        let built = FolderManifest::build(entries);
        assert_eq!(built.manifest.total_size(), MAX_FOLDER_SIZE);
        assert_eq!(built.manifest.file_count(), 32);
        let reasons: Vec<&SkipReason> = built.skipped.iter().map(|s| &s.reason).collect();
        assert_eq!(
            reasons,
            [&SkipReason::FolderTooLarge, &SkipReason::FolderTooLarge]
        );
        // Entries: one more than the limit.
        let built =
            FolderManifest::build((0..=MAX_FOLDER_ENTRIES).map(|i| dir(&format!("{i:06}"))));
        assert_eq!(built.manifest.len(), MAX_FOLDER_ENTRIES);
        assert_eq!(built.skipped.len(), 1);
        assert_eq!(
            built.skipped[0].entry.path(),
            format!("{MAX_FOLDER_ENTRIES:06}")
        );
        assert_eq!(built.skipped[0].reason, SkipReason::TooManyEntries);
    }

    /// A path of exactly `len` bytes, unique by `i`, of components within
    /// MAX_COMPONENT_LEN.
    fn path_of_len(i: usize, len: usize) -> String {
        let mut p = format!("{i:07}");
        assert!(len >= p.len());
        while p.len() < len {
            let room = len - p.len();
            if room == 1 {
                p.push('z');
            } else {
                p.push('/');
                let n = (room - 1).min(MAX_COMPONENT_LEN);
                // Leave no room of exactly one byte after this component.
                let n = if room - 1 - n == 1 { n - 1 } else { n };
                p.push_str(&"z".repeat(n));
            }
        }
        assert_eq!(p.len(), len);
        p
    }

    #[test]
    fn max_folder_manifest_len_is_taken_and_one_byte_more_refused() {
        // Files whose entries add up to exactly the limit.
        let room = MAX_FOLDER_MANIFEST_LEN - FOLDER_HEADER_LEN;
        let n = 32 * 1024;
        let each = room / n - FILE_ENTRY_OVERHEAD;
        let extra = room % n;
        let entries: Vec<FolderEntry> = (0..n)
            .map(|i| file(&path_of_len(i, each + usize::from(i < extra)), 1, 1))
            .collect();
        let f = FolderManifest::new(entries.clone()).unwrap();
        assert_eq!(f.encoded_len(), MAX_FOLDER_MANIFEST_LEN);
        let enc = f.encode();
        assert_eq!(enc.len(), MAX_FOLDER_MANIFEST_LEN);
        assert_eq!(FolderManifest::decode(&enc), Ok(f));
        // One byte more: refused from the length, as bytes and as entries.
        let mut longer = enc;
        longer.push(0);
        assert_eq!(
            FolderManifest::decode(&longer),
            Err(FolderError::TooLong {
                len: MAX_FOLDER_MANIFEST_LEN + 1
            })
        );
        let mut entries = entries;
        let last = entries.pop().unwrap();
        entries.push(file(&format!("{}z", last.path()), 1, 1));
        assert_eq!(
            FolderManifest::new(entries),
            Err(FolderError::TooLong {
                len: MAX_FOLDER_MANIFEST_LEN + 1
            })
        );
        // The manifest of the largest encoding is small, and a folder
        // manifest for more is refused.
        let big = Manifest::from_bytes(&vec![0; MAX_FOLDER_MANIFEST_LEN + 1]);
        assert_eq!(
            verify_folder_manifest(&folder_id_of(&big), &big.encode()),
            Err(FolderError::TooLong {
                len: MAX_FOLDER_MANIFEST_LEN + 1
            })
        );
    }

    /// `n` files with distinct short paths spread over directories.
    fn many(n: usize) -> Vec<FolderEntry> {
        (0..n)
            .map(|i| {
                file(
                    &format!("{:03}/{:05}", i % 512, i),
                    1 + (i % 7) as u64,
                    (i % 251) as u8,
                )
            })
            .map(|e| match e {
                FolderEntry::File { path, size, .. } => {
                    // One size per ID: the ID follows the size.
                    FolderEntry::file(path, size, id(size as u8))
                }
                d => d,
            })
            .collect()
    }

    #[test]
    fn max_folder_entries_decode_and_one_more_is_refused() {
        let entries = many(MAX_FOLDER_ENTRIES);
        let f = FolderManifest::new(entries.clone()).unwrap();
        assert_eq!(f.len(), MAX_FOLDER_ENTRIES);
        let enc = f.encode();
        assert!(enc.len() <= MAX_FOLDER_MANIFEST_LEN);
        assert_eq!(FolderManifest::decode(&enc).as_ref(), Ok(&f));

        let mut more = entries;
        more.push(file("zzz", 1, 1));
        assert_eq!(
            FolderManifest::new(more.clone()),
            Err(FolderError::TooManyEntries {
                count: MAX_FOLDER_ENTRIES + 1
            })
        );
        more.sort_by(|a, b| a.path().cmp(b.path()));
        assert_eq!(
            FolderManifest::decode(&raw(&more)),
            Err(FolderError::TooManyEntries {
                count: MAX_FOLDER_ENTRIES + 1
            })
        );
    }

    #[test]
    fn max_folder_size_is_taken_and_one_byte_more_refused() {
        let mut entries: Vec<FolderEntry> = (0..32u8)
            .map(|i| file(&format!("f{i:02}"), MAX_FILE_SIZE, i))
            .collect();
        let f = FolderManifest::new(entries.clone()).unwrap();
        assert_eq!(f.total_size(), MAX_FOLDER_SIZE);
        assert_eq!(FolderManifest::decode(&f.encode()), Ok(f));
        entries.push(file("g", 1, 99));
        assert_eq!(
            FolderManifest::new(entries.clone()),
            Err(FolderError::FolderTooLarge)
        );
        assert_eq!(
            FolderManifest::decode(&raw(&entries)),
            Err(FolderError::FolderTooLarge)
        );
        // The largest file is a file of a folder; one byte more is not.
        assert!(FolderManifest::new(vec![file("max", MAX_FILE_SIZE, 1)]).is_ok());
    }

    #[test]
    fn path_limits_hold_in_a_folder() {
        // Over the length limit, the path is not read further than it.
        let long = path_of_len(1, MAX_FOLDER_PATH_LEN + 1);
        let mut enc = raw(&[file(&long, 1, 1)]);
        enc.truncate(enc.len() - 8 - ID_LEN);
        assert_eq!(
            FolderManifest::decode(&enc),
            Err(FolderError::BadPath {
                path: long[..MAX_FOLDER_PATH_LEN].into(),
                error: PathError::TooLong { len: 1025 }
            })
        );
        for (path, error) in [
            (
                "c".repeat(MAX_COMPONENT_LEN + 1),
                PathError::ComponentTooLong { len: 256 },
            ),
            (
                vec!["d"; MAX_FOLDER_DEPTH + 1].join("/"),
                PathError::TooDeep { depth: 65 },
            ),
        ] {
            assert_eq!(
                FolderManifest::decode(&raw(&[file(&path, 1, 1)])),
                Err(FolderError::BadPath { path, error })
            );
        }
        let f = FolderManifest::new(vec![
            file(&path_of_len(1, MAX_FOLDER_PATH_LEN), 1, 1),
            file(&"c".repeat(MAX_COMPONENT_LEN), 1, 1),
            dir(&vec!["d"; MAX_FOLDER_DEPTH].join("/")),
        ])
        .unwrap();
        assert_eq!(FolderManifest::decode(&f.encode()), Ok(f));
    }

    #[test]
    fn a_folder_id_is_never_the_file_id_of_the_same_bytes() {
        let f = sample();
        let enc = f.encode();
        let m = f.manifest();
        assert_eq!(m, Manifest::from_bytes(&enc));
        assert_eq!(f.id(), folder_id_of(&m));
        assert_eq!(
            f.id().as_bytes(),
            &sha256(&[&FOLDER_ID_DOMAIN[..], &m.encode()].concat())
        );
        assert_ne!(
            f.id().as_bytes(),
            m.id().as_bytes(),
            "the encoding as a file"
        );
        for bytes in [&b""[..], b"hello", &enc] {
            let m = Manifest::from_bytes(bytes);
            assert_ne!(folder_id_of(&m).as_bytes(), m.id().as_bytes());
        }
    }

    #[test]
    fn verify_folder_manifest_checks_the_folder_id() {
        let f = sample();
        let m = f.manifest();
        assert_eq!(verify_folder_manifest(&f.id(), &m.encode()), Ok(m.clone()));
        // The file ID of the same manifest does not name the folder.
        let as_file = FolderId(*m.id().as_bytes());
        assert!(matches!(
            verify_folder_manifest(&as_file, &m.encode()),
            Err(FolderError::IdMismatch { .. })
        ));
        // Bytes that hash right but are no manifest.
        let junk = b"not a manifest";
        let junk_id = FolderId(sha256_parts(&[FOLDER_ID_DOMAIN, junk]));
        assert_eq!(
            verify_folder_manifest(&junk_id, junk),
            Err(FolderError::Manifest(ManifestError::Version(b'n')))
        );
        // The encoding's chunks check against it.
        let enc = f.encode();
        assert!(m.verify_chunk(0, &enc));
    }

    /// Decoding is linear in the input: eight times the entries take about
    /// eight times as long (a pairwise collision check would take 64 times).
    /// The bound is loose so a busy machine does not fail it.
    #[test]
    fn decode_time_is_linear_in_the_entries() {
        fn best_of_3(enc: &[u8]) -> std::time::Duration {
            (0..3)
                .map(|_| {
                    let t = std::time::Instant::now();
                    FolderManifest::decode(enc).unwrap();
                    t.elapsed()
                })
                .min()
                .unwrap()
        }
        let small = FolderManifest::new(many(MAX_FOLDER_ENTRIES / 8))
            .unwrap()
            .encode();
        let large = FolderManifest::new(many(MAX_FOLDER_ENTRIES))
            .unwrap()
            .encode();
        let (s, l) = (best_of_3(&small), best_of_3(&large));
        let ratio = l.as_secs_f64() / s.as_secs_f64();
        assert!(
            ratio < 24.0,
            "{s:?} for 1/8 of the entries, {l:?} for all: {ratio:.1}x"
        );
    }
}
