//! Validation of the raw configuration into [`Settings`]: every key checked, defaults
//! filled in, relative paths resolved, and each problem reported with the key it concerns.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::magic::RelativePathBuf;

use super::{
    DEFAULT_MIN_FREE, EncryptionConfig, EncryptionSettings, Hooks, MAX_AGING, RawConfig, Settings,
    SizeValue, ZoneSettings, normalize,
};
use crate::decision::{MAX_INTERVAL, MIN_INTERVAL};
use crate::domain::{
    Capacity, Schedule, Zone, format_duration, parse_duration, parse_size, validate_host_id,
};
use crate::store::ZoneUrl;

fn default_host_id() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| validate_host_id(s).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn resolve(p: &RelativePathBuf) -> PathBuf {
    let rel = p.relative();
    let abs = if rel.is_absolute() {
        rel
    } else {
        std::env::current_dir().map(|d| d.join(&rel)).unwrap_or(rel)
    };
    normalize(&abs)
}

pub(super) fn validate(
    raw: RawConfig,
    file: Option<PathBuf>,
    deep: bool,
) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let host_id = raw.host_id.clone().unwrap_or_else(default_host_id);
    if let Err(e) = validate_host_id(&host_id) {
        problems.push(format!("host_id `{host_id}` {e}"));
    }
    let data_dir = raw
        .data_dir
        .as_ref()
        .map(resolve)
        .unwrap_or_else(|| PathBuf::from("/var/lib/tierkeep"));

    let policy = raw.policy.name.clone().unwrap_or_else(|| "default".into());
    if policy != "default" && raw.policy.dir.is_none() {
        problems.push(format!(
            "policy.name `{policy}`: set policy.dir to the folder holding {policy}.wasm \
             (the built-in policy is `default`)"
        ));
    }
    if policy.is_empty() || policy.contains(['/', '\\']) || policy.starts_with('.') {
        problems.push(format!(
            "policy.name `{policy}`: a policy name, not a path (the file is <policy.dir>/<name>.wasm)"
        ));
    }
    let builtin = policy == "default";

    let dur = |key: &str, v: &Option<String>, default: &str, problems: &mut Vec<String>| {
        let text = v.clone().unwrap_or_else(|| default.to_owned());
        match parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                problems.push(format!("{key} must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                None
            }
        }
    };
    let interval = dur(
        "schedule.interval",
        &raw.schedule.interval,
        "1h",
        &mut problems,
    );
    let aging = dur("schedule.aging", &raw.schedule.aging, "3h", &mut problems);
    // The host refuses an interval outside these bounds from any policy, the built-in
    // rules included (T1 is their interval): refuse it here rather than at run time.
    if let Some(t1) = interval
        && !(MIN_INTERVAL..=MAX_INTERVAL).contains(&t1)
    {
        problems.push(format!(
            "schedule.interval ({}): the host allows {} to {} between scheduled backups",
            format_duration(t1),
            format_duration(MIN_INTERVAL),
            format_duration(MAX_INTERVAL)
        ));
    }
    if let Some(t2) = aging
        && t2 > MAX_AGING
    {
        problems.push(format!(
            "schedule.aging ({}): at most {} (the host computes from it when each backup \
             is due to age)",
            format_duration(t2),
            format_duration(MAX_AGING)
        ));
    }
    if let (Some(t1), Some(t2)) = (interval, aging)
        && builtin
        && (t2 < t1 || t2 > t1 * 10)
    {
        problems.push(format!(
            "schedule.aging ({}) must lie between schedule.interval ({}) and 10 times it ({}) \
             for the default policy (T1 ≤ T2 ≤ 10·T1)",
            format_duration(t2),
            format_duration(t1),
            format_duration(t1 * 10)
        ));
    }

    let bb_max = raw.zones.black_box.max_backups.unwrap_or(3);
    if builtin && !(1..=10).contains(&bb_max) {
        problems.push(format!(
            "zones.black_box.max_backups = {bb_max}: the black box holds 1 to 10 backups"
        ));
    } else if bb_max == 0 {
        problems.push("zones.black_box.max_backups must be at least 1".into());
    }
    let mut zones = Vec::new();
    let mut url_texts = Vec::new();
    for (zone, zc) in [
        (Zone::BlackBox, &raw.zones.black_box),
        (Zone::Deletion, &raw.zones.deletion),
        (Zone::Reserved, &raw.zones.reserved),
    ] {
        let key = match zone {
            Zone::BlackBox => "zones.black_box",
            Zone::Deletion => "zones.deletion",
            Zone::Reserved => "zones.reserved",
        };
        let max_backups = match zone {
            Zone::BlackBox => bb_max,
            _ => zc.max_backups.unwrap_or(bb_max.saturating_mul(10)),
        };
        if max_backups == 0 {
            problems.push(format!("{key}.max_backups must be at least 1"));
        }
        let max_bytes = match &zc.max_bytes {
            None => None,
            Some(SizeValue::Bytes(0)) => {
                problems.push(format!("{key}.max_bytes must be more than zero"));
                None
            }
            Some(SizeValue::Bytes(b)) => Some(*b),
            Some(SizeValue::Text(t)) => match parse_size(t) {
                Ok(0) => {
                    problems.push(format!("{key}.max_bytes must be more than zero"));
                    None
                }
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(format!("{key}.max_bytes: {e}"));
                    None
                }
            },
        };
        let text = match &zc.url {
            Some(u) => u.clone(),
            None => format!("file://{}", data_dir.join(zone.as_str()).display()),
        };
        let parsed = text.parse::<ZoneUrl>();
        let on_s3 = match &parsed {
            Ok(u) => u.is_s3(),
            Err(e) => e.is_s3(),
        };
        let url = match parsed {
            // Checked first: `s3://` in the black box is refused for what it is.
            _ if on_s3 && zone == Zone::BlackBox => {
                problems.push(format!(
                    "{key}.url `{text}`: the black box is a local directory (on SSD); only the \
                     deletion and reserved zones can be S3 buckets"
                ));
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{key}.url `{text}`: {e}"));
                None
            }
        };
        // The duplicate check below compares what was written (normalized when valid).
        url_texts.push(url.as_ref().map_or(text, ToString::to_string));
        let lock_retention = match &zc.lock_retention {
            None => None,
            Some(_) if zone != Zone::Reserved || !on_s3 => {
                problems.push(format!(
                    "{key}.lock_retention: S3 Object Lock applies only to a reserved zone on S3"
                ));
                None
            }
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    problems.push(format!("{key}.lock_retention must be longer than zero"));
                    None
                }
                Err(e) => {
                    problems.push(format!("{key}.lock_retention: {e}"));
                    None
                }
            },
        };
        let min_free = match (&zc.min_free, zone) {
            (None, _) => DEFAULT_MIN_FREE,
            (Some(_), Zone::Deletion | Zone::Reserved) => {
                problems.push(format!(
                    "{key}.min_free applies only to the black box (zones.black_box.min_free)"
                ));
                0
            }
            (Some(SizeValue::Bytes(b)), Zone::BlackBox) => *b,
            (Some(SizeValue::Text(t)), Zone::BlackBox) => parse_size(t).unwrap_or_else(|e| {
                problems.push(format!("{key}.min_free: {e}"));
                DEFAULT_MIN_FREE
            }),
        };
        // Without a usable URL there are problems, and no settings are built.
        if let Some(url) = url {
            zones.push(ZoneSettings {
                zone,
                url,
                capacity: Capacity {
                    max_backups,
                    max_bytes,
                },
                lock_retention,
                min_free: if zone == Zone::BlackBox { min_free } else { 0 },
            });
        }
    }
    {
        let mut urls: Vec<&str> = url_texts.iter().map(|u| u.trim_end_matches('/')).collect();
        urls.sort_unstable();
        if urls.windows(2).any(|w| w[0] == w[1]) {
            problems.push("two zones have the same url: every zone needs its own place".into());
        }
    }
    if let (Some(t1), Some(t2)) = (interval, aging) {
        let needed = (t2.as_secs() / t1.as_secs().max(1)).max(1);
        if needed > bb_max {
            warnings.push(format!(
                "the black box holds {bb_max} backups but T2/T1 = {needed}: backups will \
                 normally age out early, when the black box is full, rather than after T2"
            ));
        }
    }

    let mut sources: Vec<PathBuf> = raw.source.paths.iter().map(resolve).collect();
    // A source inside another is already covered by it.
    sources.sort();
    sources.dedup();
    let all = sources.clone();
    sources.retain(|s| {
        let outer = all.iter().find(|o| *o != s && s.starts_with(o));
        if let Some(o) = outer {
            warnings.push(format!(
                "source.paths: {} lies inside {} and is backed up with it",
                s.display(),
                o.display()
            ));
        }
        outer.is_none()
    });
    if sources.is_empty() {
        problems.push("source.paths is empty: name at least one directory to back up".into());
    }
    if let Err(e) = crate::archive::write::compile_excludes(&raw.source.exclude) {
        problems.push(format!("source.exclude: {e}"));
    }

    let level = raw.backup.compression_level.unwrap_or(3);
    if !(1..=19).contains(&level) {
        problems.push(format!(
            "backup.compression_level = {level}: zstd levels 1 to 19 are supported"
        ));
    }
    let threads = raw.backup.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });

    let full_read_every = dur(
        "backup.full_read_every",
        &raw.backup.full_read_every,
        "7d",
        &mut problems,
    )
    .unwrap_or(Duration::from_secs(7 * 86_400));
    let shutdown_grace = dur(
        "daemon.shutdown_grace",
        &raw.daemon.shutdown_grace,
        "30s",
        &mut problems,
    )
    .unwrap_or(Duration::from_secs(30));
    let metrics_addr = raw
        .daemon
        .metrics_addr
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9187".into());
    match metrics_addr.parse::<std::net::SocketAddr>() {
        Err(_) if metrics_addr != "off" => problems.push(format!(
            "daemon.metrics_addr `{metrics_addr}` is not an address such as 127.0.0.1:9187 \
             (or `off`)"
        )),
        Ok(a) if !a.ip().is_loopback() => warnings.push(format!(
            "daemon.metrics_addr {a} is not a loopback address: /metrics and /healthz will \
             answer anyone who can reach it (they carry no secrets, but put a firewall or a \
             proxy in front)"
        )),
        _ => {}
    }
    let hook_timeout = dur("hooks.timeout", &raw.hooks.timeout, "5m", &mut problems)
        .unwrap_or(Duration::from_secs(300));
    let hook = |key: &str, cmd: &Option<String>, problems: &mut Vec<String>| match cmd {
        Some(c) if c.trim().is_empty() => {
            problems.push(format!(
                "hooks.{key} is empty: remove the key or give a command"
            ));
            None
        }
        other => other.clone(),
    };
    let hooks = Hooks {
        pre_backup: hook("pre_backup", &raw.hooks.pre_backup, &mut problems),
        post_backup: hook("post_backup", &raw.hooks.post_backup, &mut problems),
        timeout: hook_timeout,
    };

    if deep && problems.is_empty() {
        for src in &sources {
            if fs::symlink_metadata(src).is_ok_and(|m| m.file_type().is_symlink()) {
                problems.push(format!(
                    "source.paths: {} is a symlink{}; only the link itself would be backed \
                     up: name the real path instead",
                    src.display(),
                    fs::canonicalize(src)
                        .map(|r| format!(" to {}", r.display()))
                        .unwrap_or_default()
                ));
                continue;
            }
            match fs::metadata(src) {
                Ok(md) if md.is_dir() => {
                    if let Err(e) = fs::read_dir(src) {
                        problems.push(format!(
                            "source.paths: {} cannot be read: {e}",
                            src.display()
                        ));
                    }
                }
                Ok(_) => {
                    if let Err(e) = fs::File::open(src) {
                        problems.push(format!(
                            "source.paths: {} cannot be read: {e}",
                            src.display()
                        ));
                    }
                }
                Err(e) => problems.push(format!("source.paths: {}: {e}", src.display())),
            }
        }
        let mut dirs = vec![("data_dir".to_owned(), data_dir.clone())];
        for z in &zones {
            if let Some(p) = z.url.local_dir() {
                dirs.push((format!("zone {} ({})", z.zone, z.url), p.to_path_buf()));
            }
        }
        for (what, dir) in dirs {
            if let Err(e) = probe_writable(&dir) {
                problems.push(format!("{what}: {} is not writable: {e}", dir.display()));
            }
        }
        for z in &zones {
            if let Some(zp) = z.url.local_dir() {
                for src in &sources {
                    if zp.starts_with(src) {
                        warnings.push(format!(
                            "zone {} lies inside source {}: it is left out of backups",
                            z.zone,
                            src.display()
                        ));
                    }
                }
            }
        }
    }

    if raw.s3.access_key_id.is_some() != raw.s3.secret_access_key.is_some() {
        problems.push(
            "s3.access_key_id and s3.secret_access_key go together: set both, or neither to \
             use the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE, instance role)"
                .into(),
        );
    }
    if let Some(ep) = &raw.s3.endpoint
        && !(ep.starts_with("http://") || ep.starts_with("https://"))
    {
        problems.push(format!(
            "s3.endpoint `{ep}`: expected a URL such as http://127.0.0.1:9000"
        ));
    }
    let encryption = encryption(&raw.encryption, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let [bb, del, res]: [ZoneSettings; 3] = match zones.try_into() {
        Ok(z) => z,
        Err(_) => return Err(vec!["internal: zone list".into()]),
    };
    Ok(Settings {
        host_id,
        data_dir,
        sources,
        exclude: raw.source.exclude,
        schedule: Schedule {
            interval: interval.unwrap_or(Duration::from_secs(3600)),
            aging: aging.unwrap_or(Duration::from_secs(3 * 3600)),
        },
        policy,
        policy_dir: raw.policy.dir.as_ref().map(resolve),
        policy_settings: raw.policy.settings,
        zones: [bb, del, res],
        s3: raw.s3,
        metrics_addr,
        shutdown_grace,
        hooks,
        compression_level: level,
        threads,
        reuse: raw.backup.reuse.unwrap_or(true),
        full_read_every,
        encryption,
        warnings,
        file,
    })
}

/// `[encryption]`: every malformed recipient is reported, naming where it came from.
fn encryption(raw: &EncryptionConfig, problems: &mut Vec<String>) -> EncryptionSettings {
    let passphrase_file = raw.passphrase_file.as_ref().map(resolve);
    let recipients_file = raw.recipients_file.as_ref().map(resolve);
    let black_box = raw.black_box.unwrap_or(false);
    let on = !raw.recipients.is_empty() || recipients_file.is_some() || passphrase_file.is_some();
    let recipients = if on {
        let passphrase = match &passphrase_file {
            Some(p) => match crate::crypt::read_passphrase_file(p) {
                Ok(pass) => Some(pass),
                Err(e) => {
                    problems.push(format!("encryption.passphrase_file: {e}"));
                    None
                }
            },
            None => None,
        };
        if passphrase_file.is_some() && passphrase.is_none() {
            None
        } else {
            match crate::crypt::Recipients::parse(
                &raw.recipients,
                recipients_file.as_deref(),
                passphrase,
            ) {
                Ok(r) => Some(std::sync::Arc::new(r)),
                Err(list) => {
                    problems.extend(list);
                    None
                }
            }
        }
    } else {
        if black_box {
            problems.push(
                "encryption.black_box = true needs recipients: set encryption.recipients \
                 (or recipients_file, or passphrase_file)"
                    .into(),
            );
        }
        None
    };
    EncryptionSettings {
        recipients,
        identity_file: raw.identity_file.as_ref().map(resolve),
        passphrase_file,
        black_box,
    }
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".tierkeep-probe-{}", std::process::id()));
    fs::write(&probe, b"probe")?;
    fs::remove_file(&probe)
}
