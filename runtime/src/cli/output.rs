//! Every line the commands print goes through here (the `outln!` and `errln!` macros),
//! so that a closed stdout or stderr never panics.
//!
//! A reader that goes away (`tierkeep list | head -1`) is not an error: the first write
//! that meets a broken pipe stops all further output, quietly, and the command finishes
//! with its own exit status — a committed backup still exits 0. Any other failure to
//! write stdout (a full disk behind `> file`) is reported once on stderr when the command
//! ends; it turns a read-only command's success into exit 1 (its output is its result),
//! but never changes the status of a command that did its work (backup, restore, ...).
//! Writes to stderr (messages, logs) ignore every error: there is nowhere left to report
//! it, and the daemon must keep running without a terminal.

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed: nothing more is written.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// The first stdout error that was not a broken pipe.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Writes one line to stdout, unless stdout is already known to be gone.
pub fn line(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}") {
        stdout_failed(&e);
    }
}

/// Flushes stdout, so that a write error surfaces before the exit status is chosen.
pub fn flush() {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = io::stdout().lock().flush() {
        stdout_failed(&e);
    }
}

fn stdout_failed(e: &io::Error) {
    STDOUT_GONE.store(true, Ordering::Relaxed);
    if e.kind() != io::ErrorKind::BrokenPipe
        && let Ok(mut slot) = STDOUT_ERROR.lock()
    {
        slot.get_or_insert_with(|| e.to_string());
    }
}

/// The stdout error to report, if output was lost for another reason than a reader that
/// went away.
pub fn stdout_error() -> Option<String> {
    STDOUT_ERROR.lock().ok().and_then(|s| s.clone())
}

/// Writes one line to stderr, ignoring errors.
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// Stderr for the log: a write that fails is dropped instead of reported (the logger
/// would otherwise try to report it on the same closed stderr).
#[derive(Debug)]
pub struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}
