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
    let pid = child.id();
    // Both pipes are drained concurrently with the wait, so a chatty hook cannot block.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        out.extend_from_slice(&err);
        out
    };
    let waited = tokio::time::timeout(timeout, async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    })
    .await;
    match waited {
        Ok((_, Ok(status))) if status.success() => {
            tracing::info!(
                hook,
                command,
                seconds = started.elapsed().as_secs_f64(),
                "hook finished"
            );
            Ok(())
        }
        Ok((output, Ok(status))) => Err(HookError::Failed {
            hook,
            command: command.to_owned(),
            status: status.to_string(),
            output: tail(&output),
        }),
        Ok((_, Err(source))) => Err(HookError::Spawn {
            hook,
            command: command.to_owned(),
            source,
        }),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Err(HookError::TimedOut {
                hook,
                command: command.to_owned(),
                timeout,
                output: String::new(),
            })
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
