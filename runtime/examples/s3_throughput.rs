//! Benchmark (not a test): upload and download throughput of tierkeep's S3 zone store
//! against `rclone copyto` of the same archive to the same server, in one run.
//!
//! ```sh
//! cargo run --release -p tierkeep --example s3_throughput -- [SIZE_MIB] [REPS]
//! ```
//!
//! It measures on Garage when a `garage` binary is found (`TIERKEEP_TEST_GARAGE` or
//! `PATH`), and on the in-process s3s-fs server, and prints MiB/s and the ratio to rclone
//! (> 1 means tierkeep is faster). rclone comes from Debian's `rclone` package; without
//! it only tierkeep's figures are printed. Timings are medians; nothing is asserted.

#[path = "../../tests/support/s3.rs"]
mod s3;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tierkeep::domain::BackupId;
use tierkeep::store::{ARCHIVE_NAME, BackupKey, S3Settings, S3Store, ZoneStore, ZoneUrl};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rclone_available() -> bool {
    Command::new("rclone")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn rclone(server: &s3::S3, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new("rclone")
        .args(args)
        // rclone's S3 backend fails on the AWS_CA_BUNDLE these machines export.
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG_TK_TYPE", "s3")
        .env("RCLONE_CONFIG_TK_PROVIDER", "Other")
        .env("RCLONE_CONFIG_TK_ENDPOINT", &server.endpoint)
        .env("RCLONE_CONFIG_TK_REGION", &server.region)
        .env("RCLONE_CONFIG_TK_ACCESS_KEY_ID", &server.access_key)
        .env("RCLONE_CONFIG_TK_SECRET_ACCESS_KEY", &server.secret_key)
        .env("RCLONE_CONFIG_TK_FORCE_PATH_STYLE", "true")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rclone {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed().as_secs_f64())
}

fn measure(server: &s3::S3, file: &Path, size_mib: f64, reps: usize) -> anyhow::Result<()> {
    let bucket = server.bucket("tk-bench");
    let store = S3Store::new(
        &ZoneUrl::S3 {
            bucket: bucket.to_string(),
            path: String::new(),
        },
        &S3Settings {
            endpoint: Some(server.endpoint.clone()),
            region: Some(server.region.clone()),
            force_path_style: true,
            credentials: Some((server.access_key.clone(), server.secret_key.clone())),
            lock_retention: None,
            upload_journal: None,
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let (mut up, mut down, mut rc_up, mut rc_down) = (vec![], vec![], vec![], vec![]);
    let has_rclone = rclone_available();
    for rep in 0..reps {
        let key = BackupKey {
            host: "bench".into(),
            id: BackupId::new(time::OffsetDateTime::now_utc(), rep as u64),
        };
        let noop: tierkeep::store::ProgressFn = Arc::new(|_| {});
        let t = Instant::now();
        rt.block_on(store.put_archive(&key, ARCHIVE_NAME, file, noop.clone()))?;
        up.push(t.elapsed().as_secs_f64());
        let dest = dir.path().join(format!("down-{rep}"));
        let t = Instant::now();
        rt.block_on(store.fetch_archive(&key, ARCHIVE_NAME, &dest, noop))?;
        down.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(
            std::fs::read(&dest)? == std::fs::read(file)?,
            "downloaded copy differs"
        );
        std::fs::remove_file(&dest)?;
        if has_rclone {
            let remote = format!("tk:{bucket}/rclone/obj-{rep}");
            rc_up.push(rclone(
                server,
                &["copyto", file.to_str().unwrap_or(""), &remote],
            )?);
            let dest = dir.path().join(format!("rclone-{rep}"));
            rc_down.push(rclone(
                server,
                &["copyto", &remote, dest.to_str().unwrap_or("")],
            )?);
            std::fs::remove_file(&dest)?;
        }
    }
    let show = |what: &str, tk: &[f64], rc: &[f64]| {
        let tkm = median(tk.to_vec());
        if rc.is_empty() {
            println!(
                "  {what:<9} tierkeep {:>8.1} MiB/s   (rclone not installed)",
                size_mib / tkm
            );
        } else {
            let rcm = median(rc.to_vec());
            println!(
                "  {what:<9} tierkeep {:>8.1} MiB/s   rclone {:>8.1} MiB/s   ratio {:.2}",
                size_mib / tkm,
                size_mib / rcm,
                rcm / tkm
            );
        }
    };
    println!(
        "{:?} at {} ({size_mib:.0} MiB archive, median of {reps}):",
        server.kind, server.endpoint
    );
    show("upload", &up, &rc_up);
    show("download", &down, &rc_down);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(256);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("archive.tar.zst");
    {
        // Incompressible, like a compressed archive.
        let mut f = std::fs::File::create(&file)?;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..size_mib {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 32) as u8;
            }
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    if !rclone_available() {
        eprintln!("rclone not found (apt-get install rclone): printing tierkeep's figures only");
    }
    if let Some(bin) = s3::find_garage() {
        let garage = s3::start_garage(bin);
        measure(&garage, &file, size_mib as f64, reps)?;
    } else {
        eprintln!("no garage binary (TIERKEEP_TEST_GARAGE or PATH): skipping Garage");
    }
    let local = s3::start_in_process();
    measure(&local, &file, size_mib as f64, reps)?;
    Ok(())
}
