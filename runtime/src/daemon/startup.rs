//! What may stop the daemon from starting: the one-daemon-per-host lock and the
//! metrics listener.

use tokio::net::TcpListener;

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon runs for this host.
    #[error(
        "another tierkeep daemon is already running for host {host} (pid {pid}, lock {}): \
         stop it first (one daemon per host and data_dir)",
        path.display()
    )]
    AlreadyRunning {
        /// The host.
        host: String,
        /// The pid written in the lock file.
        pid: String,
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// The lock file cannot be used.
    #[error("cannot use the daemon lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics address cannot be used.
    #[error("cannot listen on daemon.metrics_addr {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Held while a daemon runs for a host: a second `tierkeep run` for the same host (and
/// data_dir) refuses to start instead of doubling the schedule.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

/// Claims the daemon lock of the host (`data_dir/locks/<host>.daemon.lock`, holding the
/// pid of the daemon that has it).
pub fn claim(settings: &crate::config::Settings) -> Result<DaemonLock, DaemonError> {
    use std::io::{Read, Seek, Write};
    let dir = settings.data_dir.join("locks");
    let path = dir.join(format!("{}.daemon.lock", settings.host_id));
    let io = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            Ok(DaemonLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(DaemonError::AlreadyRunning {
                host: settings.host_id.clone(),
                pid: pid.trim().to_owned(),
                path,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The pid of the daemon running for this host, if one is (read from its lock).
pub fn running(settings: &crate::config::Settings) -> Option<u32> {
    use std::io::Read;
    let path = settings
        .data_dir
        .join("locks")
        .join(format!("{}.daemon.lock", settings.host_id));
    let mut file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => {
            let mut pid = String::new();
            file.read_to_string(&mut pid).ok()?;
            pid.trim().parse().ok()
        }
    }
}

/// Binds the metrics listener of `settings` (`None` when `daemon.metrics_addr = "off"`).
pub async fn bind_metrics(addr: &str) -> Result<Option<TcpListener>, DaemonError> {
    if addr == "off" {
        return Ok(None);
    }
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| DaemonError::Listen {
            addr: addr.to_owned(),
            source,
        })
}
