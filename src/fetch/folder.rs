//! Planning a folder fetch before anything is written: which entries `--only`
//! selects, where each goes, that nothing on disk is in the way (no file where
//! a directory goes, no symbolic link to follow out of the tree), and that the
//! disk has room. The files themselves are then fetched one root at a time by
//! the node (`node::folder`).

use super::FetchError;
use crate::hash::Hash;
use crate::manifest::{Entry, FolderInfo};
use crate::store::{free_space, StoreError};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// The `--only` patterns: shell globs (`*`, `?`, `[…]`, `**`). A pattern
/// without `/` matches a file's name or the name of any directory above it; one
/// with `/` matches the whole relative path or any directory above it. No
/// pattern selects everything.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    patterns: Vec<(glob::Pattern, bool)>,
}

impl Selection {
    /// Compiles the patterns; the error names the first that is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<Selection, FetchError> {
        let patterns = patterns
            .iter()
            .map(|p| {
                let pat = glob::Pattern::new(p.trim_end_matches('/'))
                    .map_err(|e| FetchError::BadPattern(format!("{}: {}", crate::text::clean(p, 64), e.msg)))?;
                Ok((pat, p.contains('/')))
            })
            .collect::<Result<_, FetchError>>()?;
        Ok(Selection { patterns })
    }

    /// Whether the entry at `path` is selected.
    pub fn selects(&self, path: &str) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.patterns.is_empty()
            || self.patterns.iter().any(|(p, whole)| {
                if *whole {
                    // The path, or any directory above it.
                    std::iter::once(path)
                        .chain(path.match_indices('/').map(|(i, _)| &path[..i]))
                        .any(|prefix| p.matches_with(prefix, opts))
                } else {
                    path.split('/').any(|name| p.matches_with(name, opts))
                }
            })
    }
}

/// One file to fetch: its root and every selected path with those contents
/// (fetched once, copied to the others).
#[derive(Clone, Debug)]
pub struct PlannedFile {
    /// The file's own root.
    pub root: Hash,
    /// Its size.
    pub size: u64,
    /// The entries (paths under the destination) that get it; the first is fetched.
    pub entries: Vec<Entry>,
}

/// What a folder fetch will do.
#[derive(Debug)]
pub struct Plan {
    /// Where the folder goes.
    pub dest: PathBuf,
    /// Directories to create (the destination, parents of files, empty directories).
    pub dirs: Vec<PathBuf>,
    /// The files, one per distinct root, in the folder's order.
    pub files: Vec<PlannedFile>,
    /// Bytes of the selected files (copies included).
    pub total_bytes: u64,
    /// Selected file entries (copies included).
    pub file_count: usize,
}

/// Plans the fetch of `folder` into `dest`: everything checked, nothing written.
pub fn plan(folder: &FolderInfo, dest: &Path, only: &Selection) -> Result<Plan, FetchError> {
    let selected: Vec<&Entry> = folder.entries.iter().filter(|e| only.selects(&e.path)).collect();
    let mut checked: HashSet<PathBuf> = HashSet::new();
    let mut dirs = vec![dest.to_owned()];
    check_dir(dest, &mut checked)?;
    let (mut need, mut total_bytes, mut file_count) = (0u64, 0u64, 0usize);
    let mut by_root: HashMap<Hash, usize> = HashMap::new();
    let mut files: Vec<PlannedFile> = Vec::new();
    for e in selected {
        let target = dest.join(&e.path);
        // Every directory on the way must be a directory (or not exist yet).
        let mut dir = dest.to_owned();
        let parts: Vec<&str> = e.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            dir.push(part);
            if check_dir(&dir, &mut checked)? {
                dirs.push(dir.clone());
            }
        }
        if !e.is_file() {
            if check_dir(&target, &mut checked)? {
                dirs.push(target);
            }
            continue;
        }
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() && m.len() == e.size => {}
            Ok(m) if m.is_file() => return Err(FetchError::OutputExists(target)),
            Ok(_) => return Err(blocked(&target, "not a regular file")),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let part = super::part_path(&target);
                let reserved = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                need = need.saturating_add(e.size.saturating_sub(reserved));
            }
            Err(err) => return Err(StoreError::Io { path: target, source: err }.into()),
        }
        total_bytes += e.size;
        file_count += 1;
        match by_root.get(&e.root) {
            Some(&i) => files[i].entries.push(e.clone()),
            None => {
                by_root.insert(e.root, files.len());
                files.push(PlannedFile { root: e.root, size: e.size, entries: vec![e.clone()] });
            }
        }
    }
    let existing = dest.ancestors().find(|a| a.exists()).unwrap_or(Path::new("."));
    let free = free_space(existing).unwrap_or(u64::MAX);
    if need > free {
        return Err(StoreError::NoSpace { path: dest.to_owned(), need, free }.into());
    }
    Ok(Plan { dest: dest.to_owned(), dirs, files, total_bytes, file_count })
}

/// Checks that `dir` is a directory or does not exist (never a symbolic link);
/// true if it is to be created and was not seen before.
fn check_dir(dir: &Path, checked: &mut HashSet<PathBuf>) -> Result<bool, FetchError> {
    if !checked.insert(dir.to_owned()) {
        return Ok(false);
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(m) if m.file_type().is_symlink() => Err(blocked(dir, "a symbolic link (never followed)")),
        Ok(_) => Err(blocked(dir, "a file where the folder has a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StoreError::Io { path: dir.to_owned(), source: e }.into()),
    }
}

/// Puts a copy of `from` (a verified file with `info`'s contents) at `to`,
/// through a `.part` and without replacing anything; a file already at `to`
/// is kept if it has exactly those contents.
pub fn copy_into_place(from: &Path, to: &Path, info: &crate::manifest::FileInfo) -> Result<(), FetchError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Store(StoreError::Io { path, source })
    };
    if let Ok(f) = std::fs::File::open(to) {
        let size = f.metadata().map_err(err(to))?.len();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let same = size == info.manifest.size
            && crate::manifest::hash_pieces(&f, size, threads, &|_| {}).map_err(err(to))? == info.pieces;
        return if same { Ok(()) } else { Err(FetchError::OutputExists(to.to_owned())) };
    }
    let part = super::part_path(to);
    std::fs::copy(from, &part).map_err(err(&part))?;
    std::fs::File::open(&part).and_then(|f| f.sync_all()).map_err(err(&part))?;
    super::output::publish_file(&part, to)
}

fn blocked(path: &Path, why: &'static str) -> FetchError {
    FetchError::Blocked { path: path.to_owned(), why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(p: &[&str]) -> Selection {
        Selection::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_match_names_or_paths() {
        assert!(sel(&[]).selects("a/b/c.txt"));
        let s = sel(&["*.txt"]);
        assert!(s.selects("c.txt") && s.selects("a/b/c.txt") && !s.selects("a/b/c.bin"));
        let s = sel(&["docs"]);
        assert!(s.selects("docs/x/y.md") && s.selects("src/docs/y.rs") && !s.selects("docsy/a"));
        let s = sel(&["a/*.txt"]);
        assert!(s.selects("a/c.txt") && !s.selects("a/b/c.txt") && !s.selects("x/a/c.txt"));
        let s = sel(&["a/**/*.txt", "src/"]);
        assert!(s.selects("a/b/c/d.txt") && s.selects("src/main.rs") && !s.selects("b/c.txt"));
        assert!(Selection::new(&["[".to_string()]).is_err());
    }
}
