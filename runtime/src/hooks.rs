//! Source consistency hooks: operator commands run around the reading of a backup's
//! sources (`hooks.pre_backup`, `hooks.post_backup`), such as `fsfreeze --freeze` and
//! `--unfreeze`, or a database flush and its release.
//!
//! A hook runs with `sh -c` in its own process group, with its output collected, and is
//! bounded by `hooks.timeout`: when the time is up the whole group is killed (SIGKILL),
//! so a hung command cannot hold a backup forever. A pre-hook that fails or times out
//! aborts the backup before any data is read; the post-hook runs whenever the pre-hook
//! was started, whether the reading succeeded or not.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// A hook that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The command could not be started.
    #[error("hooks.{hook} `{command}` could not be started: {source}")]
    Spawn {
        /// `pre_backup` or `post_backup`.
        hook: &'static str,
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("hooks.{hook} `{command}` failed ({status}){output}")]
    Failed {
        /// `pre_backup` or `post_backup`.
        hook: &'static str,
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its output, prefixed with ": ", or empty.
        output: String,
    },
    /// The command ran out of time and was killed with its process group.
    #[error(
        "hooks.{hook} `{command}` did not finish within hooks.timeout ({timeout:?}) and was \
         killed{output}"
    )]
    TimedOut {
        /// `pre_backup` or `post_backup`.
        hook: &'static str,
        /// The command.
        command: String,
        /// The limit.
        timeout: Duration,
        /// The end of its output, prefixed with ": ", or empty.
        output: String,
    },
}

/// The last few hundred bytes of a hook's output, for an error message.
fn tail(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text.char_indices().rev().nth(400).map_or(0, |(i, _)| i);
    format!(": {}", text[start..].replace('\n', " | "))
}

/// Runs `command` with `sh -c`, with `env` added, within `timeout`.
pub async fn run(
    hook: &'static str,
    command: &str,
    timeout: Duration,
    env: &[(&str, String)],
) -> Result<(), HookError> {
    let started = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        hook,
        command: command.to_owned(),
        source,
    })?;
    // Until the hook has exited, dropping this run (a daemon stopped mid-hook) or a
    // timeout kills its whole process group, not only `sh`.
    let mut group = GroupGuard(
        child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32)),
    );
    // Both pipes are drained beside the wait, so a chatty hook cannot block; a hook that
    // leaves a process in the background holding them is not waited for past its exit.
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(tokio::spawn(drain(s, output.clone())));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(tokio::spawn(drain(s, output.clone())));
    }
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let finish_reading = async {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            for r in &mut readers {
                let _ = r.await;
            }
        })
        .await;
        for r in &readers {
            r.abort();
        }
        output.lock().unwrap_or_else(|p| p.into_inner()).clone()
    };
    match waited {
        Ok(Ok(status)) => {
            // It exited: what it left in the background is its business (a lock holder).
            group.0 = None;
            let out = finish_reading.await;
            if status.success() {
                tracing::info!(
                    hook,
                    command,
                    seconds = started.elapsed().as_secs_f64(),
                    "hook finished"
                );
                Ok(())
            } else {
                Err(HookError::Failed {
                    hook,
                    command: command.to_owned(),
                    status: status.to_string(),
                    output: tail(&out),
                })
            }
        }
        Ok(Err(source)) => Err(HookError::Spawn {
            hook,
            command: command.to_owned(),
            source,
        }),
        Err(_) => {
            drop(group);
            let _ = child.kill().await;
            let out = finish_reading.await;
            Err(HookError::TimedOut {
                hook,
                command: command.to_owned(),
                timeout,
                output: tail(&out),
            })
        }
    }
}

/// Kills a hook's process group when dropped, unless emptied.
struct GroupGuard(Option<rustix::process::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Reads a pipe into `out`, keeping at most the last 64 KiB.
async fn drain(mut pipe: impl tokio::io::AsyncRead + Unpin, out: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
        o.extend_from_slice(&buf[..n]);
        if o.len() > 64 * 1024 {
            let cut = o.len() - 64 * 1024;
            o.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_failure_and_timeout() {
        run(
            "pre_backup",
            "test \"$X\" = yes",
            Duration::from_secs(5),
            &[("X", "yes".into())],
        )
        .await
        .expect("a succeeding hook");
        let e = run(
            "pre_backup",
            "echo flush failed >&2; exit 3",
            Duration::from_secs(5),
            &[],
        )
        .await
        .expect_err("a failing hook");
        let text = e.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("flush failed"), "{text}");

        // A hook that leaves a process in the background holding its output is done when
        // it exits (a lock holder), not when the pipes close.
        let started = std::time::Instant::now();
        run(
            "pre_backup",
            "sleep 20 & echo started",
            Duration::from_secs(10),
            &[],
        )
        .await
        .expect("a hook that backgrounds a process");
        assert!(started.elapsed() < Duration::from_secs(5));

        // The timeout kills the whole group: the background sleep must not outlive it.
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let e = run("post_backup", &cmd, Duration::from_millis(300), &[])
            .await
            .expect_err("a hook that hangs");
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a child of the hook outlived the timeout");
    }
}
