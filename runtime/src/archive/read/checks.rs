//! The checks every entry passes before anything is written: entry and link names
//! (relative, no `..`, no NUL, no over-long component), and the model of the tree the
//! archive has created so far, against which links, symlinks, types and replaced
//! directories are judged (see the safety rules in the module documentation).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::archive::ArchiveError;

/// Splits an entry name into its normal components, refusing absolute names, `..` and
/// components no Linux filesystem stores (over 255 bytes).
pub fn safe_components(name: &[u8]) -> Result<Vec<&[u8]>, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.contains(&0) {
        return Err("name contains a NUL byte".into());
    }
    if name[0] == b'/' {
        return Err("absolute path".into());
    }
    let mut out = Vec::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains `..`".into()),
            c if c.len() > 255 => {
                return Err("a component of the name is longer than 255 bytes".into());
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err("name has no components".into());
    }
    Ok(out)
}

/// `./` and the like: the target directory itself, as `tar -C dir .` writes it.
pub(super) fn is_dot(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .split(|&b| b == b'/')
            .all(|c| c.is_empty() || c == b".")
}

/// The original path of a normalized name: `srv/app/x` is `/srv/app/x`.
pub(super) fn original(normalized: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(normalized))
}

/// An entry as the operator knows it: its original path, or the raw name in backticks
/// when that is not a safe relative name.
pub(super) fn shown_name(raw: &[u8]) -> String {
    match safe_components(raw) {
        Ok(comps) => original(&comps.join(&b'/')),
        Err(_) => format!("`{}`", String::from_utf8_lossy(raw)),
    }
}

pub(super) fn hostile(name: &[u8], reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Hostile {
        entry: String::from_utf8_lossy(name).into_owned(),
        reason: reason.into(),
    }
}

/// What an earlier entry left at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// Whether the restore writes it (not for entries outside `--path`, nor in a check).
    written: bool,
}

/// A name in the model: the first 16 bytes of the SHA-256 of its components joined with
/// `/` (a component holds no `/`, so the joining is unambiguous).
type Key = [u8; 16];

fn digest(hasher: Sha256) -> Key {
    let mut key = [0u8; 16];
    key.copy_from_slice(&hasher.finalize()[..16]);
    key
}

fn key_of<'a>(comps: impl IntoIterator<Item = &'a [u8]>) -> Key {
    let mut hasher = Sha256::new();
    for (i, comp) in comps.into_iter().enumerate() {
        if i > 0 {
            hasher.update(b"/");
        }
        hasher.update(comp);
    }
    digest(hasher)
}

/// What an accepted entry asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    Dir,
    File,
    /// A symlink with this target.
    Symlink(Vec<u8>),
    /// A hard link to this earlier entry (its normalized name).
    HardLink(Vec<u8>),
    /// A hard link to itself (a path archived twice): already there.
    Nothing,
    /// Not restored, with this warning.
    Skip(String),
}

/// The tree the archive has created so far. Every safety rule is checked against it, not
/// against the disk, so that a check writing nothing refuses what a restore refuses.
#[derive(Debug, Default)]
pub(super) struct Tree {
    nodes: HashMap<Key, Node>,
}

impl Tree {
    /// Whether an earlier entry created `leaf` in the directory `dir`.
    pub(super) fn holds(&self, dir: &[&[u8]], leaf: &[u8]) -> bool {
        let key = key_of(dir.iter().copied().chain([leaf]));
        self.nodes.contains_key(&key)
    }

    /// Checks the directories above `comps`: none may be a symlink or a file an earlier
    /// entry created. With `create`, records missing ones as directories (written by the
    /// restore or not) and returns true; without, returns whether they all exist.
    fn parents(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        create: Option<bool>,
    ) -> Result<bool, ArchiveError> {
        let mut hasher = Sha256::new();
        for (i, comp) in comps[..comps.len() - 1].iter().enumerate() {
            if i > 0 {
                hasher.update(b"/");
            }
            hasher.update(comp);
            let key = digest(hasher.clone());
            let shown = || original(&comps[..=i].join(&b'/'));
            match self.nodes.get(&key).map(|n| n.kind) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(hostile(
                        name,
                        format!(
                            "{} is a symlink that an earlier entry created, and nothing is \
                             written or linked through a symlink",
                            shown()
                        ),
                    ));
                }
                Some(Kind::File) => {
                    return Err(hostile(
                        name,
                        format!(
                            "{} is a file that an earlier entry created, not a directory",
                            shown()
                        ),
                    ));
                }
                None => match create {
                    Some(written) => {
                        self.nodes.insert(
                            key,
                            Node {
                                kind: Kind::Dir,
                                written,
                            },
                        );
                    }
                    None => return Ok(false),
                },
            }
        }
        Ok(true)
    }

    /// Applies the safety rules to the entry `name` (split into `comps`) of type `kind`
    /// and, if it passes, records what it creates. `write`: whether the restore writes it.
    pub(super) fn admit(
        &mut self,
        name: &[u8],
        comps: &[&[u8]],
        kind: EntryType,
        link: Option<&[u8]>,
        write: bool,
    ) -> Result<Action, ArchiveError> {
        self.parents(name, comps, Some(write))?;
        let key = key_of(comps.iter().copied());
        let normalized = comps.join(&b'/');
        let is_dir = self.nodes.get(&key).is_some_and(|n| n.kind == Kind::Dir);
        let over_dir = |what: &str| {
            if is_dir {
                return Err(hostile(
                    name,
                    format!(
                        "an earlier entry made {} a directory, which a {what} does not replace",
                        original(&normalized)
                    ),
                ));
            }
            Ok(())
        };
        let (action, made) = match kind {
            EntryType::Directory => (Action::Dir, Kind::Dir),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                over_dir("file")?;
                (Action::File, Kind::File)
            }
            EntryType::Symlink => {
                let target = link.ok_or_else(|| hostile(name, "symlink without a target"))?;
                over_dir("symlink")?;
                (Action::Symlink(target.to_vec()), Kind::Symlink)
            }
            EntryType::Link => {
                let target = link.ok_or_else(|| hostile(name, "hard link without a target"))?;
                let shown = String::from_utf8_lossy(target);
                let tcomps = safe_components(target)
                    .map_err(|r| hostile(name, format!("hard link target `{shown}`: {r}")))?;
                let tkey = key_of(tcomps.iter().copied());
                let found = if self.parents(name, &tcomps, None)? {
                    self.nodes.get(&tkey).copied()
                } else {
                    None
                };
                let source = match found {
                    Some(n) if n.kind != Kind::Dir => n,
                    _ => {
                        return Err(hostile(
                            name,
                            format!(
                                "hard link to `{shown}`, which the archive did not restore \
                                 before it"
                            ),
                        ));
                    }
                };
                if tkey == key {
                    return Ok(Action::Nothing);
                }
                over_dir("hard link")?;
                let tnormalized = tcomps.join(&b'/');
                if write && !source.written {
                    return Ok(Action::Skip(format!(
                        "{}: hard link to {} which is outside the restored path; skipped",
                        original(&normalized),
                        original(&tnormalized)
                    )));
                }
                (Action::HardLink(tnormalized), source.kind)
            }
            other => {
                return Ok(Action::Skip(format!(
                    "{}: skipped entry of type {other:?}",
                    original(&normalized)
                )));
            }
        };
        self.nodes.insert(
            key,
            Node {
                kind: made,
                written: write,
            },
        );
        Ok(action)
    }
}
