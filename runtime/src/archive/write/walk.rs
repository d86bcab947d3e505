//! The walk of the source trees: depth-first, names sorted, so that archives of the same
//! tree are laid out alike, with a look-ahead so that reuse can compare the next entries
//! with a frame of the previous archive before any of them is written.

use std::collections::VecDeque;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::Skip;
use crate::archive::ArchiveError;

/// One thing the walk met.
pub(super) enum Item {
    /// A directory (its children follow).
    Dir(PathBuf, Metadata),
    /// A regular file, as listed.
    File(PathBuf, Metadata),
    /// A symbolic link.
    Symlink(PathBuf, Metadata),
    /// Something left out, with the warning that says so.
    Skipped(String),
}

pub(super) struct Walk {
    sources: VecDeque<PathBuf>,
    root: PathBuf,
    stack: Vec<PathBuf>,
    ahead: VecDeque<Result<Item, ArchiveError>>,
}

const LIST: &str = "list (fix its permissions or add it to source.exclude)";

impl Walk {
    pub(super) fn new(sources: &[PathBuf]) -> Walk {
        Walk {
            sources: sources.iter().cloned().collect(),
            root: PathBuf::new(),
            stack: Vec::new(),
            ahead: VecDeque::new(),
        }
    }

    /// The next item, `None` at the end.
    pub(super) fn next(&mut self, skip: &Skip) -> Option<Result<Item, ArchiveError>> {
        if self.ahead.is_empty() {
            self.produce(skip);
        }
        self.ahead.pop_front()
    }

    /// The next `n` items (fewer at the end), without taking them.
    pub(super) fn peek(&mut self, skip: &Skip, n: usize) -> &VecDeque<Result<Item, ArchiveError>> {
        while self.ahead.len() < n && self.produce(skip) {}
        &self.ahead
    }

    /// Queues the next item(s); false at the end of the walk.
    fn produce(&mut self, skip: &Skip) -> bool {
        loop {
            let Some(path) = self.stack.pop() else {
                let Some(root) = self.sources.pop_front() else {
                    return false;
                };
                self.root.clone_from(&root);
                self.stack.push(root);
                continue;
            };
            if skip.by_name(&path) {
                continue;
            }
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound && path != self.root => {
                    self.ahead.push_back(Ok(Item::Skipped(format!(
                        "{}: vanished before it was read",
                        path.display()
                    ))));
                    return true;
                }
                Err(e) => {
                    self.ahead
                        .push_back(Err(ArchiveError::io("stat", &path, e)));
                    return true;
                }
            };
            if skip.by_identity(&md) {
                continue;
            }
            let ft = md.file_type();
            if ft.is_dir() {
                let listed = fs::read_dir(&path).and_then(|rd| {
                    rd.map(|e| e.map(|e| e.path()))
                        .collect::<Result<Vec<_>, _>>()
                });
                self.ahead.push_back(Ok(Item::Dir(path.clone(), md)));
                match listed {
                    Ok(mut children) => {
                        children.sort_by(|a, b| b.as_os_str().cmp(a.as_os_str()));
                        self.stack.extend(children);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.ahead.push_back(Ok(Item::Skipped(format!(
                            "{}: vanished while it was read",
                            path.display()
                        ))));
                    }
                    Err(e) => self.ahead.push_back(Err(ArchiveError::io(LIST, &path, e))),
                }
            } else if ft.is_file() {
                self.ahead.push_back(Ok(Item::File(path, md)));
            } else if ft.is_symlink() {
                self.ahead.push_back(Ok(Item::Symlink(path, md)));
            } else {
                let what = if ft.is_socket() {
                    "socket"
                } else if ft.is_fifo() {
                    "FIFO"
                } else {
                    "device node"
                };
                self.ahead.push_back(Ok(Item::Skipped(format!(
                    "{}: skipped ({what})",
                    path.display()
                ))));
            }
            return true;
        }
    }
}
