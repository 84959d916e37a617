//! A download's output: accepting the manifest (path, space, the `.part`),
//! re-checking what an earlier run left, recording progress durably, and
//! publishing the verified file under its final name; or, when a download
//! fails with nothing verified, removing what it created.
//!
//! Persistence order (docs/DESIGN.md): the partial record before the `.part`
//! exists; then, once a second, fdatasync of the `.part` before the record of
//! held pieces; at the end, fdatasync, then link to the final name. Every
//! system call here that may block (fsync, fallocate, hashing, record writes)
//! runs on a blocking thread.

use super::blobs::Blobs;
use super::download::{Download, Lists, Phase, Pieces, Sink};
use super::stream::Stream;
use super::{blocking, Content, FetchError, FetchOutcome};
use crate::bitfield::{self, Bits};
use crate::datadir::{PartialRecord, SeedRecord};
use crate::hash::Hash;
use crate::manifest::{hash_pieces_at, FileInfo, Manifest};
use crate::picker::Picker;
use crate::store::{free_space, PartFile, StoreError};
use bitvec::prelude::*;
use bytes::Bytes;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest file name most file systems accept, in bytes.
const NAME_MAX: usize = 255;

/// Where verified pieces go, and the state of their records.
pub(super) struct Output {
    /// The final path.
    pub path: PathBuf,
    /// The `.part` being written; `None` when a file was already at the output path.
    pub part: Option<Arc<PartFile>>,
    /// Absolute path of the `.part`, as recorded.
    pub part_abs: PathBuf,
    /// This run created the `.part` (no earlier run's pieces are in it).
    pub created: bool,
    /// A `.part` found without a record of ours (another data directory's), re-checked whole.
    pub adopted: bool,
    /// Streaming to standard output: no path, no `.part`, no records.
    pub stream: bool,
    /// A flush-then-record of the partial state in progress.
    persisting: Option<JoinHandle<io::Result<()>>>,
    /// Pieces completed since the last record.
    unpersisted: usize,
    last_persist: Instant,
}

#[cfg(test)]
impl Output {
    /// An output over an open `.part`, for tests that drive a download by hand.
    pub(super) fn for_tests(path: PathBuf, part: Arc<PartFile>) -> Output {
        Output {
            part_abs: path.clone(),
            path,
            part: Some(part),
            stream: false,
            created: true,
            adopted: false,
            persisting: None,
            unpersisted: 0,
            last_persist: Instant::now(),
        }
    }
}

impl Output {
    /// Whether pieces completed since the last record and `every` has passed.
    pub fn persist_due(&self, every: Duration) -> bool {
        self.unpersisted > 0 && self.last_persist.elapsed() >= every
    }

    /// One more piece is held.
    pub fn note_progress(&mut self) {
        self.unpersisted += 1;
    }
}

impl Download {
    /// The manifest arrived: pick the output path, check space, open the `.part`.
    pub(super) async fn accept_manifest(&mut self, blob: Bytes, manifest: Manifest) -> Result<(), FetchError> {
        if self.opts.stdout {
            let out = Output {
                path: "-".into(),
                part: None,
                part_abs: "-".into(),
                created: false,
                adopted: false,
                stream: true,
                persisting: None,
                unpersisted: 0,
                last_persist: Instant::now(),
            };
            return self.enter_lists(blob, manifest, out, None).await;
        }
        let name = crate::manifest::sanitize_name(&manifest.name);
        let path = match &self.opts.output {
            // An existing directory: save into it under the manifest's name, as `cp` does.
            Some(p) if p.is_dir() => p.join(&name),
            Some(p) => p.clone(),
            None => PathBuf::from(&name),
        };
        // A file already there is either this very file, complete (checked once
        // the piece hashes are known), or in the way.
        let existing = path.exists();
        let part_path = part_path(&path);
        let resuming = part_path.exists() && !existing;
        let (earlier, adopted) = if resuming {
            match self.earlier_run(&part_path).await? {
                Some(record) => (Some(record), false),
                // No record of ours, but of this file's size: perhaps this root's `.part`
                // left by another data directory. Every piece is re-checked; if none
                // verifies, it is someone else's and is refused untouched.
                None if std::fs::metadata(&part_path).is_ok_and(|m| m.len() == manifest.size) => (None, true),
                None => return Err(FetchError::ForeignPart(part_path)),
            }
        } else {
            (None, false)
        };
        if !resuming && !existing {
            let free = free_space(&part_path).unwrap_or(u64::MAX);
            if free < manifest.size {
                return Err(StoreError::NoSpace { path: part_path, need: manifest.size, free }.into());
            }
        }
        let abs = std::path::absolute(&part_path).unwrap_or(part_path.clone());
        let (dd, root, size) = (self.env.data_dir.clone(), self.root, manifest.size);
        let (record_abs, fresh) = (abs.clone(), !resuming && !existing);
        let part = if existing {
            None
        } else {
            let part = blocking(move || {
                if let (Some(dd), true) = (dd, fresh) {
                    // Written before the .part exists, so a .part is never left without an owner.
                    dd.save_partial(&root, &record_abs, None).map_err(FetchError::DataDir)?;
                }
                Ok(Arc::new(PartFile::open(&part_path, size)?))
            })
            .await?;
            Some(part)
        };
        let pieces = manifest.piece_count() as usize;
        let claimed = match (earlier, adopted) {
            (_, true) => Some(bitfield::to_bytes(bitvec![u8, Msb0; 1; pieces]).to_vec()),
            (Some(r), false) => r.claimed(pieces),
            (None, false) => None,
        };
        let out = Output {
            path,
            part: part.clone(),
            part_abs: abs,
            created: fresh,
            adopted,
            stream: false,
            persisting: None,
            unpersisted: 0,
            last_persist: Instant::now(),
        };
        self.enter_lists(blob, manifest, out, claimed).await
    }

    /// Serves the manifest and asks for the hash lists (pieces at once if there are none).
    async fn enter_lists(
        &mut self,
        blob: Bytes,
        manifest: Manifest,
        out: Output,
        claimed: Option<Vec<u8>>,
    ) -> Result<(), FetchError> {
        self.env.store.add_blob(self.root, blob.clone());
        let shown_part = out.part.as_ref().map(|_| out.part_abs.clone());
        self.progress.send_modify(|p| {
            p.name = Some(manifest.name.clone());
            p.total_bytes = manifest.size;
            p.part = shown_part;
        });
        let lists = vec![None; manifest.lists.len()];
        let no_lists = lists.is_empty();
        self.phase = Phase::Lists(Lists { blob, manifest, lists, out, claimed });
        if no_lists {
            self.start_pieces().await?;
        }
        Ok(())
    }

    /// The record of an earlier run of this download at `part_path`, if there is one.
    async fn earlier_run(&self, part_path: &Path) -> Result<Option<PartialRecord>, FetchError> {
        let Some(dd) = self.env.data_dir.clone() else { return Ok(None) };
        let abs = std::path::absolute(part_path).unwrap_or(part_path.to_owned());
        let root = self.root;
        let record =
            blocking(move || dd.load_partial(&root).map_err(|e| FetchError::DataDir(io::Error::other(e.to_string()))))
                .await?;
        Ok(record.filter(|r| r.part == abs))
    }

    /// Every hash list is here: check what the `.part` (or a file already at
    /// the output path) holds, then fetch pieces.
    pub(super) async fn start_pieces(&mut self) -> Result<(), FetchError> {
        let Phase::Lists(l) = &self.phase else { return Ok(()) };
        let lists: Vec<Bytes> = l.lists.iter().flatten().cloned().collect();
        let info = FileInfo::from_parts(l.blob.clone(), lists)
            .map_err(|error| FetchError::BadManifest { root: self.root, error })?;
        let info = Arc::new(info);
        let blobs = Blobs::new(&info).map_err(|(index, reason)| FetchError::BadPiece { index, reason })?;
        if l.out.stream {
            let held = bitvec![u8, Msb0; 0; info.pieces.len()];
            let Phase::Lists(l) = std::mem::replace(&mut self.phase, Phase::Manifest) else { return Ok(()) };
            let picker = Picker::new(blobs.held_blobs(&held));
            let sink = Sink::Stream(Box::new(Stream::new()));
            self.phase = Phase::Pieces(Pieces { info, blobs, picker, out: l.out, sink, verifying: HashSet::new() });
            return self.enter_pieces(held);
        }
        let (dd, record) = (self.env.data_dir.clone(), info.clone());
        let (part, claimed, path) = (l.out.part.clone(), l.claimed.clone(), l.out.path.clone());
        let (check, progress) = (info.clone(), self.progress.clone());
        let total = match (&part, &claimed) {
            (None, _) => info.manifest.size,
            (Some(_), Some(c)) => BitSlice::<u8, Msb0>::from_slice(c)
                .iter_ones()
                .take_while(|i| *i < info.pieces.len())
                .map(|i| info.manifest.piece_len(i as u64) as u64)
                .sum(),
            (Some(_), None) => 0,
        };
        if total > 0 {
            self.progress.send_modify(|p| {
                p.stage = super::Stage::Checking;
                p.checking_bytes = total;
                p.checked_bytes = 0;
            });
        }
        let held = blocking(move || {
            if let Some(dd) = dd {
                dd.save_info(&record).map_err(FetchError::DataDir)?;
            }
            let tick = |n: u64| progress.send_modify(|p| p.checked_bytes += n);
            match (part, claimed) {
                (None, _) => verify_existing(&path, &check, &tick),
                (Some(part), Some(claimed)) => {
                    verify_claimed(part.file(), part.path(), &check, BitSlice::from_slice(&claimed), &tick)
                }
                (Some(_), None) => Ok(bitvec![u8, Msb0; 0; check.pieces.len()]),
            }
        })
        .await?;
        let Phase::Lists(l) = std::mem::replace(&mut self.phase, Phase::Manifest) else { return Ok(()) };
        let Some(part) = l.out.part.clone() else {
            // A file was at the output path: it is this file, complete, or in the way.
            if held.all() {
                self.phase = Phase::Complete { info, out: l.out };
                return Ok(());
            }
            return Err(FetchError::OutputExists(l.out.path));
        };
        if l.out.adopted {
            if held.not_any() && !info.pieces.is_empty() && !self.opts.folder_member {
                return Err(FetchError::ForeignPart(l.out.part_abs));
            }
            if let Some(dd) = self.env.data_dir.clone() {
                let (root, abs, bits) = (self.root, l.out.part_abs.clone(), bitfield::to_bytes(held.clone()));
                blocking(move || dd.save_partial(&root, &abs, Some(&bits)).map_err(FetchError::DataDir)).await?;
            }
        }
        self.resumed_bytes = held.iter_ones().map(|p| info.manifest.piece_len(p as u64) as u64).sum();
        self.have_bytes = self.resumed_bytes;
        let entry = self.env.store.add_partial(info.clone(), part.clone(), held.clone());
        let picker = Picker::new(blobs.held_blobs(&held));
        let (verifying, sink) = (HashSet::new(), Sink::Part { part, entry });
        self.phase = Phase::Pieces(Pieces { info, blobs, picker, out: l.out, sink, verifying });
        self.enter_pieces(held)
    }

    /// Tells the peers what is held, applies what they said before, and starts asking for pieces.
    fn enter_pieces(&mut self, held: Bits) -> Result<(), FetchError> {
        let bits = bitfield::to_bytes(held);
        for p in self.peers.values() {
            p.conn.send_bitfield_once(self.root, bits.clone());
        }
        for (conn, bits) in std::mem::take(&mut self.pending_bits) {
            self.apply_bitfield(conn, &bits);
        }
        for (conn, index) in std::mem::take(&mut self.pending_haves) {
            self.apply_have(conn, index);
        }
        let resumed = self.resumed_bytes;
        self.progress.send_modify(|p| {
            p.resumed_bytes = resumed;
            p.have_bytes = resumed;
            p.stage = super::Stage::Pieces;
        });
        self.clock.last_progress = Instant::now();
        Ok(())
    }

    /// Flushes the `.part` and then records which pieces it holds, so a crash
    /// loses at most the pieces since the last record. Runs off the actor; with
    /// `wait`, waits for it (used when the download ends early).
    pub(super) async fn persist(&mut self, wait: bool) {
        let (dd, root) = (self.env.data_dir.clone(), self.root);
        let Phase::Pieces(p) = &mut self.phase else { return };
        let out = &mut p.out;
        if out.persisting.as_ref().is_some_and(|h| !h.is_finished()) && !wait {
            return;
        }
        if let Some(h) = out.persisting.take() {
            match h.await {
                Ok(Err(e)) => tracing::warn!("could not record download progress: {}", crate::text::io_message(&e)),
                Err(e) => tracing::warn!("could not record download progress: {e}"),
                Ok(Ok(())) => {}
            }
        }
        let Some(dd) = dd else { return };
        if out.unpersisted == 0 {
            return;
        }
        let Sink::Part { part, entry } = &p.sink else { return };
        let held = bitfield::to_bytes(entry.held());
        let (part, path) = (part.clone(), out.part_abs.clone());
        out.unpersisted = 0;
        out.last_persist = Instant::now();
        let job = tokio::task::spawn_blocking(move || -> io::Result<()> {
            part.sync().map_err(|e| io::Error::other(e.to_string()))?;
            dd.save_partial(&root, &path, Some(&held))
        });
        if wait {
            let _ = job.await;
        } else {
            out.persisting = Some(job);
        }
    }

    /// When every piece is verified: flush, move into place without overwriting,
    /// record. A file found complete at the output path is simply recorded.
    pub(super) async fn try_finish(&mut self) -> Result<Option<FetchOutcome>, FetchError> {
        let (info, part, path) = match &mut self.phase {
            Phase::Pieces(p) if p.picker.remaining() == 0 && p.verifying.is_empty() => {
                if let Some(h) = p.out.persisting.take() {
                    let _ = h.await;
                }
                match &p.sink {
                    Sink::Part { part, .. } => (p.info.clone(), Some(part.clone()), p.out.path.clone()),
                    Sink::Stream(s) if s.is_drained() => {
                        let (root, info) = (self.root, p.info.clone());
                        let file_bytes = info.manifest.size;
                        self.publish();
                        let path = "-".into();
                        return Ok(Some(FetchOutcome {
                            root,
                            path,
                            file_bytes,
                            resumed_bytes: 0,
                            already_complete: false,
                            content: Content::File(info),
                        }));
                    }
                    Sink::Stream(_) => return Ok(None),
                }
            }
            Phase::Complete { info, out } => (info.clone(), None, out.path.clone()),
            Phase::Done(content) => {
                let file_bytes = match content {
                    Content::Listed(m) => m.size,
                    Content::Folder(f) => f.manifest.total_size,
                    Content::File(f) => f.manifest.size,
                };
                let content = content.clone();
                self.publish();
                return Ok(Some(FetchOutcome {
                    root: self.root,
                    path: PathBuf::new(),
                    file_bytes,
                    resumed_bytes: 0,
                    already_complete: false,
                    content,
                }));
            }
            _ => return Ok(None),
        };
        let already_complete = part.is_none();
        let (dd, root) = (self.env.data_dir.clone(), self.root);
        let abs = std::path::absolute(&path).unwrap_or(path.clone());
        let (record_path, size) = (abs.clone(), info.manifest.size);
        blocking(move || {
            if let Some(part) = part {
                part.sync()?;
                publish_file(part.path(), &path)?;
            }
            if let Some(dd) = dd {
                let meta = std::fs::metadata(&record_path)
                    .map_err(|source| StoreError::Io { path: record_path.clone(), source })?;
                dd.save_seed(&root, &SeedRecord::of(record_path, &meta)).map_err(FetchError::DataDir)?;
                let _ = dd.remove_partial(&root);
            }
            Ok(())
        })
        .await?;
        if already_complete {
            self.have_bytes = size;
            self.resumed_bytes = size;
        }
        let outcome = FetchOutcome {
            root: self.root,
            path: abs,
            file_bytes: size,
            resumed_bytes: self.resumed_bytes,
            already_complete,
            content: Content::File(info),
        };
        self.publish();
        Ok(Some(outcome))
    }

    /// The download failed or was interrupted: record the freshest resumable
    /// state, or, if this run created the `.part` and no piece was verified,
    /// remove the `.part` and its record (nothing in them is worth keeping).
    pub(super) async fn abandon(&mut self) {
        if let Phase::Pieces(Pieces { sink: Sink::Stream(s), blobs, .. }) = &self.phase {
            for hash in s.held(blobs) {
                self.env.store.remove_blob(&hash);
            }
        }
        self.persist(true).await;
        let Some(out) = self.phase.output() else { return };
        if !out.created || self.have_bytes > 0 {
            return;
        }
        let Some(part) = &out.part else { return };
        self.env.store.remove_file(&self.root);
        let (part, dd, root) = (part.path().to_owned(), self.env.data_dir.clone(), self.root);
        let _ = blocking(move || {
            let _ = std::fs::remove_file(&part);
            if let Some(dd) = dd {
                let _ = dd.remove_partial(&root);
            }
            Ok(())
        })
        .await;
    }
}

/// The temporary name a download is written under: `<output>.part`, or, when
/// that would exceed NAME_MAX, the name cut short (on a character boundary)
/// plus `~` and 16 hex digits of its SHA-256, so it stays unique and the same
/// on every run.
pub fn part_path(output: &Path) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name = output.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    if name.len() + ".part".len() <= NAME_MAX {
        let mut s = output.as_os_str().to_owned();
        s.push(".part");
        return PathBuf::from(s);
    }
    let tag = Hash::of(name).to_hex();
    let mut keep = NAME_MAX - ".part".len() - 17;
    while keep > 0 && name[keep] & 0xC0 == 0x80 {
        keep -= 1;
    }
    let mut short = name[..keep].to_vec();
    short.extend_from_slice(format!("~{}.part", &tag[..16]).as_bytes());
    output.with_file_name(std::ffi::OsString::from_vec(short))
}

/// Which of the pieces an earlier run claims really are in the `.part`, by
/// hashing them on all cores: a crash can leave the record ahead of the data.
fn verify_claimed(
    file: &std::fs::File,
    path: &Path,
    info: &FileInfo,
    claimed: &BitSlice<u8, Msb0>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Bits, FetchError> {
    let n = info.pieces.len();
    let mut held = bitvec![u8, Msb0; 0; n];
    let todo: Vec<u64> = claimed.iter_ones().filter(|i| *i < n).map(|i| i as u64).collect();
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let hashes = hash_pieces_at(file, info.manifest.size, &todo, threads, progress)
        .map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
    for (i, h) in hashes {
        if h == info.pieces[i as usize] {
            held.set(i as usize, true);
        }
    }
    Ok(held)
}

/// Which pieces a file already at the output path holds: all of them when it
/// is this very file, complete (then the fetch has nothing to do).
fn verify_existing(path: &Path, info: &FileInfo, progress: &(dyn Fn(u64) + Sync)) -> Result<Bits, FetchError> {
    let none = || bitvec![u8, Msb0; 0; info.pieces.len()];
    let Ok(file) = std::fs::File::open(path) else { return Ok(none()) };
    match file.metadata() {
        Ok(m) if m.is_file() && m.len() == info.manifest.size => {}
        _ => return Ok(none()),
    }
    let all = bitvec![u8, Msb0; 1; info.pieces.len()];
    verify_claimed(&file, path, info, &all, progress)
}

/// Moves a complete `.part` to its final name, never replacing an existing file.
pub(super) fn publish_file(part: &Path, path: &Path) -> Result<(), FetchError> {
    match std::fs::hard_link(part, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(part);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(FetchError::OutputExists(path.to_owned())),
        Err(_) => {
            // File systems without hard links: check, then rename.
            if path.exists() {
                return Err(FetchError::OutputExists(path.to_owned()));
            }
            std::fs::rename(part, path).map_err(|source| StoreError::Io { path: path.to_owned(), source }.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_stay_within_name_max() {
        assert_eq!(part_path(Path::new("d/f.bin")), PathBuf::from("d/f.bin.part"));
        let long = "é".repeat(127); // 254 bytes
        let p = part_path(&Path::new("d").join(&long));
        let name = p.file_name().unwrap().to_str().expect("cut on a character boundary");
        assert!(name.len() <= NAME_MAX && name.ends_with(".part"), "{name}");
        assert_eq!(p, part_path(&Path::new("d").join(&long)), "the same on every run");
        assert_ne!(p, part_path(&Path::new("d").join(format!("{long}x"))));
    }
}
