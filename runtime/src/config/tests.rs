//! Unit tests of loading and validating configurations.

use super::*;

fn load_str(text: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.toml");
    fs::write(&f, text).unwrap();
    load(
        &Sources {
            file: Some(f),
            flags: vec![],
            env: false,
        },
        false,
    )
    .map(|l| l.settings)
}

#[test]
fn defaults_follow_the_patent() {
    let s = load_str("source.paths = [\"/srv\"]\ndata_dir = \"/d\"\n").unwrap();
    assert_eq!(s.zone(Zone::BlackBox).capacity.max_backups, 3);
    assert_eq!(s.zone(Zone::Deletion).capacity.max_backups, 30);
    assert_eq!(s.zone(Zone::Reserved).capacity.max_backups, 30);
    assert_eq!(s.zone(Zone::Reserved).url.to_string(), "file:///d/reserved");
}

#[test]
fn zone_urls_are_parsed_once_and_explained() {
    let s = load_str(
        "source.paths = [\"/srv\"]\ndata_dir = \"/d\"\n\
         [zones.black_box]\nurl = \"file:///d/./bb/\"\n\
         [zones.deletion]\nurl = \"s3://bucket/zone/\"\n\
         [zones.reserved]\nurl = \"s3://bucket\"\nlock_retention = \"1d\"\n",
    )
    .unwrap();
    let bb = &s.zone(Zone::BlackBox).url;
    assert_eq!(bb.local_dir(), Some(Path::new("/d/bb")));
    assert_eq!(bb.to_string(), "file:///d/bb");
    let del = &s.zone(Zone::Deletion).url;
    assert_eq!(
        (del.bucket(), del.key_prefix().as_str()),
        (Some("bucket"), "zone/")
    );
    assert_eq!(del.to_string(), "s3://bucket/zone/", "as written");
    assert_eq!(s.zone(Zone::Reserved).url.to_string(), "s3://bucket");

    let e = load_str(
        "source.paths = [\"/srv\"]\n\
         [zones.black_box]\nurl = \"s3://\"\n\
         [zones.deletion]\nurl = \"file://relative\"\n\
         [zones.reserved]\nurl = \"/plain/path\"\nlock_retention = \"1d\"\n",
    )
    .unwrap_err()
    .to_string();
    for problem in [
        "zones.black_box.url `s3://`: the black box is a local directory (on SSD); only \
         the deletion and reserved zones can be S3 buckets",
        "zones.deletion.url `file://relative`: a file URL needs an absolute path \
         (file:///var/lib/...)",
        "zones.reserved.url `/plain/path`: expected file:///path or s3://bucket/prefix",
        "zones.reserved.lock_retention: S3 Object Lock applies only to a reserved zone on S3",
    ] {
        assert!(e.contains(problem), "{problem}\n in: {e}");
    }
    let e = load_str(
        "source.paths = [\"/srv\"]\n[zones.deletion]\nurl = \"s3:///zone\"\n\
         [zones.reserved]\nurl = \"s3://b/x/\"\n[zones.black_box]\nurl = \"file:///bb\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "zones.deletion.url `s3:///zone`: no bucket name (expected s3://bucket or \
             s3://bucket/prefix)"
        ),
        "{e}"
    );
    let e = load_str(
        "source.paths = [\"/srv\"]\n[zones.deletion]\nurl = \"s3://b/x\"\n\
         [zones.reserved]\nurl = \"s3://b/x/\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("two zones have the same url"), "{e}");
}

#[test]
fn bounds_and_unknown_keys_are_explained() {
    let e = load_str(
        "source.paths = [\"/srv\"]\n[schedule]\ninterval = \"1h\"\naging = \"11h\"\n\
         [zones.black_box]\nmax_backups = 11\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("schedule.aging"), "{e}");
    assert!(e.contains("1 to 10 backups"), "{e}");
    let e = load_str("source.paths = [\"/srv\"]\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bogus"), "{e}");
    let e = load_str("[zones.black_box]\nmax_bakcups = 2\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_bakcups"), "{e}");
}

#[test]
fn intervals_the_host_would_refuse_are_refused_here() {
    let e =
        load_str("source.paths = [\"/srv\"]\n[schedule]\ninterval = \"40d\"\naging = \"40d\"\n")
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("schedule.interval (40d)") && e.contains("1s to 31d"),
        "{e}"
    );
    load_str("source.paths = [\"/srv\"]\n[schedule]\ninterval = \"31d\"\naging = \"31d\"\n")
        .unwrap();
    let e = load_str(
        "source.paths = [\"/srv\"]\n[policy]\nname = \"gfs\"\ndir = \"/p\"\n\
         [schedule]\naging = \"4000d\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("schedule.aging (4000d): at most 3650d"), "{e}");
}

#[test]
fn every_example_config_the_repo_ships_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/examples");
    let mut seen = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let loaded = load(
                &Sources {
                    file: Some(p.clone()),
                    flags: vec![],
                    env: false,
                },
                false,
            );
            assert!(loaded.is_ok(), "{}: {}", p.display(), loaded.unwrap_err());
            seen += 1;
        }
    }
    assert!(seen > 0, "no example configs found in {}", dir.display());
}

#[test]
fn nested_sources_are_merged() {
    let s = load_str("source.paths = [\"/srv/app\", \"/srv\", \"/srv\"]\n").unwrap();
    assert_eq!(s.sources, vec![PathBuf::from("/srv")]);
    assert!(s.warnings.iter().any(|w| w.contains("/srv/app")));
}

#[test]
fn small_reserved_zone_is_allowed() {
    let s = load_str("source.paths = [\"/srv\"]\n[zones.reserved]\nmax_backups = 1\n").unwrap();
    assert_eq!(s.zone(Zone::Reserved).capacity.max_backups, 1);
}

#[test]
fn relative_paths_follow_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.toml");
    fs::write(&f, "source.paths = [\"data\"]\ndata_dir = \"state\"\n").unwrap();
    let s = load(
        &Sources {
            file: Some(f),
            flags: vec![],
            env: false,
        },
        false,
    )
    .unwrap()
    .settings;
    let root = fs::canonicalize(dir.path()).unwrap();
    assert_eq!(s.sources, vec![root.join("data")]);
    assert_eq!(s.data_dir, root.join("state"));
}
