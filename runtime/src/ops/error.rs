//! The errors of the engine's operations, each mapped to an exit status.

use std::path::{Path, PathBuf};

use crate::archive::ArchiveError;
use crate::catalog::CatalogError;
use crate::domain::Zone;
use crate::store::StoreError;

/// Errors of operations, each mapped to an exit status.
///
/// As in [`ArchiveError`], a message includes its cause and no variant returns it from
/// `source()` (the transparent ones forward their inner error, which follows the same
/// rule), so `{:#}` prints each cause once.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Catalog trouble.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Zone store trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Archive trouble.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A zone is full; nothing was written.
    #[error("refused: the {zone} zone is full ({fullness}); nothing was written. {advice}")]
    ZoneFull {
        /// The zone.
        zone: Zone,
        /// How full, in words.
        fullness: String,
        /// What to do.
        advice: String,
    },
    /// No backup has that id.
    #[error(
        "no backup {0} in the catalog; see `tierkeep list` (or `tierkeep catalog rebuild` after restoring a host)"
    )]
    NotFound(String),
    /// A prefix matched several backups.
    #[error("`{0}` matches several backups: {1}; give more of the id")]
    Ambiguous(String, String),
    /// Bad request (relative --path, existing export file).
    #[error("{0}")]
    Usage(String),
    /// Something in the local filesystem failed.
    #[error("{what} {path}: {cause}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// A background task died, or an internal rule was about to be broken.
    #[error("internal error: {0}")]
    Internal(String),
    /// A fault injected by a test (`TIERKEEP_FAULTS`).
    #[error(transparent)]
    Fault(#[from] crate::faults::InjectedFault),
    /// A source consistency hook failed; the backup was not taken.
    #[error("backup aborted, nothing was written: {0}")]
    Hook(crate::hooks::HookError),
    /// A zone does not answer: work that needs it is skipped until a cheap probe finds
    /// it answering again (see [`crate::health`]).
    #[error(
        "the {zone} zone ({url}) is unreachable since {since}: {error}; work that needs it \
         is skipped until a probe finds it answering again"
    )]
    ZoneUnreachable {
        /// The zone.
        zone: Zone,
        /// Its URL.
        url: String,
        /// When it stopped answering (RFC 3339).
        since: String,
        /// The last error it gave.
        error: String,
    },
    /// A backup's copy does not match its manifest: it is left where it is.
    #[error(
        "backup {id}: its {zone} copy is damaged ({reason}); it stays where it is and is not \
         moved: check it with `tierkeep verify {id}`, and delete it with `tierkeep delete {id} \
         --yes` once another good backup exists"
    )]
    Damaged {
        /// The backup.
        id: String,
        /// The zone of the damaged copy.
        zone: Zone,
        /// What the check found.
        reason: String,
    },
    /// Writing the backup could fill the black box's disk; nothing was written.
    #[error("refused: {reason}; nothing was written. {advice}")]
    NoRoom {
        /// Why.
        reason: String,
        /// What to do.
        advice: String,
    },
}

impl OpsError {
    /// The process exit status for this error (1 failure, 2 usage, 3 refused; see the
    /// README's command-line section).
    pub fn exit_code(&self) -> u8 {
        match self {
            OpsError::ZoneFull { .. } | OpsError::NotFound(_) | OpsError::NoRoom { .. } => 3,
            OpsError::Store(StoreError::NotFound { .. } | StoreError::Locked { .. }) => 3,
            OpsError::Store(StoreError::NoObjectLock { .. }) => 2,
            OpsError::Archive(ArchiveError::TargetNotEmpty(_)) => 3,
            OpsError::Archive(ArchiveError::PathNotInBackup(_)) => 3,
            OpsError::Ambiguous(..) | OpsError::Usage(_) => 2,
            OpsError::Store(StoreError::Unsupported(_)) => 2,
            // No identity given, or an identity file that cannot be used: usage.
            OpsError::Archive(ArchiveError::Crypt(
                crate::crypt::CryptError::NoIdentity { .. } | crate::crypt::CryptError::Identity(_),
            )) => 2,
            _ => 1,
        }
    }
}

impl From<crate::hooks::HookError> for OpsError {
    fn from(e: crate::hooks::HookError) -> Self {
        OpsError::Hook(e)
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> OpsError + 'a {
    move |cause| OpsError::Io {
        what,
        path: path.to_path_buf(),
        cause,
    }
}

/// How the black box gets back within capacity after aging failed with `e`: the words
/// of a pressure message, naming the real cause.
pub(crate) fn catch_up(e: &OpsError) -> String {
    match e {
        OpsError::ZoneUnreachable { zone, .. } => {
            format!("aging catches up once the {zone} zone answers")
        }
        OpsError::Damaged { id, .. } => format!(
            "damaged backups never move: check them and remove them with `tierkeep delete ID \
             --yes` ({id})"
        ),
        _ => "aging is tried again by every pass (`tierkeep tick`, or the daemon)".into(),
    }
}
