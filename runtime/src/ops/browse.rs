//! Reading parts of a backup through its entry index (format 2): `ls`, and
//! `restore --path` from only the frames that hold the path — positioned reads in a
//! local zone, ranged GETs in a bucket, never the whole archive. A backup without a
//! usable index (format 1, or an index that is damaged) is read as a stream instead,
//! and the operator is told so.

use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use super::{OpsError, Tierkeep};
use crate::archive::ArchiveError;
use crate::archive::index::{self, Entry, Index, Kind};
use crate::archive::read::frames::{self, Selection};
use crate::archive::read::{
    ArchiveSource, ExtractOptions, ExtractSummary, list_archive, running_as_root,
};
use crate::catalog::Record;
use crate::domain::Zone;
use crate::progress::Progress;
use crate::store;

/// A partial restore reads frames only while they are at most this share of the
/// archive (in percent); beyond, reading the whole archive once costs about the same.
const PARTIAL_SHARE: u64 = 50;

/// The frames of a partial restore are held in memory: beyond this many compressed
/// bytes the whole archive is read (as a stream) instead.
const PARTIAL_MAX: u64 = 256 << 20;

/// What `ls` shows of one entry.
#[derive(Debug, Clone, Serialize)]
pub struct ListedEntry {
    /// The original absolute path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `hardlink`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Bytes of data (files).
    pub size: u64,
    /// Modification time (RFC 3339, to the nanosecond).
    #[serde(with = "time::serde::rfc3339")]
    pub mtime: OffsetDateTime,
    /// Permission bits, octal.
    pub mode: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Symlink target, or the path a hard link shares its data with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The result of `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The backup.
    pub id: String,
    /// Its zone.
    pub zone: Zone,
    /// Whether the entries came from the index (`false`: the archive was read whole).
    pub from_index: bool,
    /// Archive bytes read to list them.
    pub archive_bytes_read: u64,
    /// The entries, in archive order.
    pub entries: Vec<ListedEntry>,
}

fn listed(e: &Entry) -> ListedEntry {
    let show = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
    let name = e.name.0.strip_suffix(b"/").unwrap_or(&e.name.0);
    let mtime = OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(e.mtime) * 1_000_000_000 + i128::from(e.mtime_nsec),
    )
    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    ListedEntry {
        path: format!("/{}", show(name)),
        kind: e.kind.as_str(),
        size: e.size,
        mtime,
        mode: format!("{:04o}", e.mode),
        uid: e.uid,
        gid: e.gid,
        link: e.link.as_ref().map(|l| match e.kind {
            Kind::Hardlink => format!("/{}", show(&l.0)),
            _ => show(&l.0),
        }),
    }
}

/// The stored form of an original absolute path given on the command line.
pub(super) fn stored_path(flag: &str, p: &Path) -> Result<PathBuf, OpsError> {
    if !p.is_absolute() {
        return Err(OpsError::Usage(format!(
            "{flag} {}: give the original absolute path, e.g. /srv/app/config",
            p.display()
        )));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        || p.to_string_lossy().trim_matches('/').is_empty()
    {
        return Err(OpsError::Usage(format!(
            "{flag} {}: give the absolute path of a file or directory inside the backup, \
             without `..`",
            p.display()
        )));
    }
    Ok(PathBuf::from(
        p.to_string_lossy().trim_start_matches('/').to_owned(),
    ))
}

impl Tierkeep {
    /// The entry index of `rec`, read with one ranged read (three for an encrypted
    /// backup: its header, its last chunk and the index's chunks), and the stored bytes
    /// read: `Ok(None)` for a format 1 backup, [`ArchiveError::Index`] when it cannot be
    /// read or is damaged.
    pub(super) async fn read_index(&self, rec: &Record) -> Result<Option<(Index, u64)>, OpsError> {
        let Some(reference) = rec.manifest.index.as_ref() else {
            return Ok(None);
        };
        let (mut bytes, read) = self
            .read_plain_ranges(rec, &[(reference.offset, reference.bytes)], None)
            .await?;
        let bytes = bytes.pop().unwrap_or_default();
        index::decode_index(&bytes, reference)
            .map(|index| Some((index, read)))
            .map_err(|e| OpsError::Archive(ArchiveError::Index(e)))
    }

    /// `tierkeep ls ID [PATH]`: the entries of a backup (at or under `path`, an original
    /// absolute path), from its index.
    pub async fn ls(&self, id: &str, path: Option<&Path>) -> Result<Listing, OpsError> {
        let only = path.map(|p| stored_path("ls", p)).transpose()?;
        let only_bytes = only.as_ref().map(|p| p.to_string_lossy().into_owned());
        let (rec, _pin) = self.resolve_pinned(id).await?;
        let wanted = |e: &Entry| {
            only_bytes
                .as_deref()
                .is_none_or(|o| frames::under(&e.name.0, o.as_bytes()))
        };
        let (entries, from_index, read) = match self.read_index(&rec).await {
            Ok(Some((index, read))) => {
                let listed: Vec<ListedEntry> = index
                    .entries
                    .iter()
                    .filter(|e| wanted(e))
                    .map(listed)
                    .collect();
                (listed, true, read)
            }
            unusable @ (Ok(None) | Err(OpsError::Archive(ArchiveError::Index(_)))) => {
                let why = match unusable {
                    Err(OpsError::Archive(ArchiveError::Index(e))) => {
                        format!("the backup's index is damaged ({e})")
                    }
                    _ => "a format 1 backup has no index".to_owned(),
                };
                tracing::warn!(id = %rec.id, "{why}: listing by reading the whole archive");
                let all = self.list_by_stream(&rec).await?;
                let listed = all.iter().filter(|e| wanted(e)).map(listed).collect();
                (listed, false, rec.size_bytes)
            }
            Err(e) => return Err(e),
        };
        if entries.is_empty()
            && let Some(p) = path
        {
            return Err(OpsError::Archive(ArchiveError::PathNotInBackup(
                p.display().to_string(),
            )));
        }
        Ok(Listing {
            id: rec.id.to_string(),
            zone: rec.zone,
            from_index,
            archive_bytes_read: read,
            entries,
        })
    }

    /// Every entry of `rec`, read from its whole archive (fetched when remote).
    async fn list_by_stream(&self, rec: &Record) -> Result<Vec<Entry>, OpsError> {
        let store = self.store(rec.zone);
        let dest = self
            .staging()?
            .join(format!("{}.ls-{}.tar.zst", rec.id, std::process::id()));
        // Before the download: an encrypted backup without an identity reads nothing.
        let decrypt = self.decrypt_for(rec)?;
        let copy = store::readable_copy(
            store.as_ref(),
            &self.key(rec),
            rec.manifest.archive_name(),
            &dest,
            Progress::hidden().callback(),
        )
        .await?;
        let source = ArchiveSource {
            path: copy.path().to_path_buf(),
            decrypt,
        };
        let all = tokio::task::spawn_blocking(move || list_archive(&source))
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))??;
        drop(copy);
        Ok(all)
    }

    /// Restores only the entries at or under `only` (stored form) from the frames that
    /// hold them. `Ok(None)`: the index cannot serve this restore (damaged, or the
    /// frames are most of the archive); the caller reads the whole archive instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn restore_frames(
        &self,
        rec: &Record,
        only: &Path,
        target: &Path,
        force: bool,
        keep_setuid: bool,
        progress: &Progress,
    ) -> Result<Option<(ExtractSummary, u64)>, OpsError> {
        let (index, index_read) = match self.read_index(rec).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(OpsError::Archive(ArchiveError::Index(e))) => {
                tracing::warn!(
                    id = %rec.id,
                    "the backup's index is damaged ({e}): restoring by reading the whole archive"
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let only_text = only.to_string_lossy().into_owned();
        let sel = frames::select(&index, Some(only_text.as_bytes()));
        if !sel
            .entries
            .iter()
            .any(|&n| frames::under(&index.entries[n].name.0, only_text.as_bytes()))
        {
            return Err(OpsError::Archive(ArchiveError::PathNotInBackup(
                only.display().to_string(),
            )));
        }
        if sel.bytes * 100 > rec.size_bytes * PARTIAL_SHARE || sel.bytes > PARTIAL_MAX {
            tracing::info!(
                id = %rec.id,
                frames_bytes = sel.bytes,
                "the path is in most of the archive's frames, or in more than 256 MiB of \
                 them: reading the whole archive"
            );
            return Ok(None);
        }
        progress.phase("restore", sel.bytes);
        let (runs, runs_read) = self.read_runs(rec, &index, &sel, progress).await?;
        let read = index_read + runs_read;
        let opts = ExtractOptions {
            target: target.to_path_buf(),
            force,
            only: Some(only.to_path_buf()),
            expected: None,
            owners: running_as_root(),
            keep_setuid,
        };
        let summary =
            tokio::task::spawn_blocking(move || -> Result<ExtractSummary, ArchiveError> {
                let decoded = sel
                    .runs
                    .iter()
                    .zip(&runs)
                    .map(|(run, data)| frames::decode_run(&index, run.clone(), data))
                    .collect::<Result<Vec<_>, _>>()?;
                let tar = frames::assemble(&index, &sel, &decoded)?;
                let expected: Vec<&Entry> =
                    sel.entries.iter().map(|&n| &index.entries[n]).collect();
                frames::check_headers(&tar, &expected)?;
                frames::extract_assembled(&tar, &opts, &mut |_| {})
            })
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))??;
        progress.finish();
        Ok(Some((summary, read)))
    }

    /// Reads the selected runs of frames, several at once, in order; and the stored
    /// bytes read.
    async fn read_runs(
        &self,
        rec: &Record,
        index: &Index,
        sel: &Selection,
        progress: &Progress,
    ) -> Result<(Vec<Vec<u8>>, u64), OpsError> {
        let ranges: Vec<(u64, u64)> = sel
            .runs
            .iter()
            .map(|r| {
                let first = &index.frames[r.start];
                let last = &index.frames[r.end - 1];
                (first.offset, last.offset + last.bytes - first.offset)
            })
            .collect();
        self.read_plain_ranges(rec, &ranges, Some(progress)).await
    }
}
