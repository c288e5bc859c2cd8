//! Finding what `share` shares: the regular files at or under the paths
//! given, with their shared names, and for each folder given its root and
//! its empty directories (what a folder's tree needs besides its files).
//!
//! Symbolic links are never followed (a link in a shared folder could lead
//! anywhere, the data dir included): they are skipped and counted, and the
//! caller reports them once. A file whose shared name no peer would accept
//! is skipped with a warning naming it.

use std::fs;
use std::path::{Path, PathBuf};

use peershare_proto::wire::check_shared_name;

use crate::error::StoreError;

/// What [`find`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Every regular file: its absolute path and shared name (a file given
    /// directly is named by its file name; a file in a folder by the
    /// folder's name and its path inside it, `/`-separated).
    pub files: Vec<(PathBuf, String)>,
    /// Every folder given, in the order given.
    pub folders: Vec<FoundFolder>,
    /// Symbolic links skipped, and the first of them.
    pub symlinks: usize,
    pub first_symlink: Option<PathBuf>,
}

/// A folder given to [`find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFolder {
    /// Its absolute path, resolved.
    pub root: PathBuf,
    /// Its name (the last component of `root`).
    pub name: String,
    /// Paths inside it (relative, `/`-separated) of the directories that
    /// hold no file or directory [`find`] keeps.
    pub empty_dirs: Vec<String>,
}

impl Found {
    /// Logs the skipped symbolic links, once for all of them.
    pub fn warn_symlinks(&self) {
        if let Some(first) = &self.first_symlink {
            tracing::warn!(
                "skipping {} symbolic link(s) (links are never followed), the first {}",
                self.symlinks,
                first.display()
            );
        }
    }
}

/// Finds the files and folders at `paths`. `valid_name` refuses a path
/// given directly whose name cannot be shared.
pub fn find(
    paths: &[PathBuf],
    valid_name: impl Fn(&str) -> Result<(), StoreError>,
) -> Result<Found, StoreError> {
    let mut found = Found::default();
    for p in paths {
        let abs = fs::canonicalize(p).map_err(StoreError::io(p))?;
        let meta = fs::metadata(&abs).map_err(StoreError::io(&abs))?;
        let base = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        // Named directly: refused. (In a folder, a file is skipped: walk.)
        valid_name(&base)?;
        if meta.is_file() {
            found.files.push((abs, base));
        } else if meta.is_dir() {
            let mut folder = FoundFolder {
                root: abs.clone(),
                name: base.clone(),
                empty_dirs: Vec::new(),
            };
            walk(&abs, &base, "", &mut found, &mut folder)?;
            found.folders.push(folder);
        } else {
            return Err(StoreError::NotAFile(abs));
        }
    }
    Ok(found)
}

/// Walks `dir` (shared name `prefix`, path `rel` inside its folder);
/// returns whether it holds anything kept.
fn walk(
    dir: &Path,
    prefix: &str,
    rel: &str,
    found: &mut Found,
    folder: &mut FoundFolder,
) -> Result<bool, StoreError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(StoreError::io(dir))?
        .collect::<Result<_, _>>()
        .map_err(StoreError::io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    let mut holds = false;
    for e in entries {
        let ft = e.file_type().map_err(StoreError::io(e.path()))?;
        let file_name = e.file_name().to_string_lossy().into_owned();
        let name = format!("{prefix}/{file_name}");
        let inner = if rel.is_empty() {
            file_name
        } else {
            format!("{rel}/{file_name}")
        };
        if ft.is_symlink() {
            found.symlinks += 1;
            found.first_symlink.get_or_insert_with(|| e.path());
        } else if ft.is_dir() {
            let sub_holds = walk(&e.path(), &name, &inner, found, folder)?;
            if !sub_holds {
                folder.empty_dirs.push(inner);
            }
            holds = true;
        } else if ft.is_file() {
            if let Err(why) = check_shared_name(&name) {
                // Peers could not be told its name (one too long broke
                // the whole catalog): leave it out, loudly.
                tracing::warn!(path = ?e.path(), "skipping: its shared name {name:?} {why}");
                continue;
            }
            found.files.push((e.path(), name));
            holds = true;
        }
    }
    Ok(holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_empty_dirs_and_counts_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("top");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("empty/inner")).unwrap();
        fs::write(root.join("a/b/f.txt"), b"x").unwrap();
        fs::write(root.join("g.txt"), b"").unwrap();
        std::os::unix::fs::symlink(root.join("g.txt"), root.join("l1")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/l2")).unwrap();
        let found = find(std::slice::from_ref(&root), |_| Ok(())).unwrap();
        let names: Vec<_> = found.files.iter().map(|f| f.1.as_str()).collect();
        assert_eq!(names, ["top/a/b/f.txt", "top/g.txt"]);
        assert_eq!(found.symlinks, 2);
        assert_eq!(found.folders.len(), 1);
        let root = fs::canonicalize(&root).unwrap();
        assert_eq!(found.folders[0].root, root);
        assert_eq!(found.folders[0].name, "top");
        // Only the innermost empty directory: "empty" holds "inner".
        assert_eq!(found.folders[0].empty_dirs, ["empty/inner"]);
    }
}
