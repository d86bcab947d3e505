use std::io::Read;

use age::secrecy::ExposeSecret;

use super::ranged::{Ranged, head_len, tail_len};
use super::stream::{CHUNK, Encrypting, header_len, sealed_range, sealed_size};
use super::*;

fn key() -> (age::x25519::Identity, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    (id, public)
}

fn identities_for(id: &age::x25519::Identity) -> (tempfile::TempDir, Identities) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("key.txt");
    std::fs::write(
        &path,
        format!("# a test key\n{}\n", id.to_string().expose_secret()),
    )
    .expect("write key");
    let ids = Identities::load(&IdentitySource {
        file: Some(path),
        ..IdentitySource::default()
    })
    .expect("load")
    .expect("some");
    (dir, ids)
}

fn seal(plain: &[u8], recipients: &Recipients) -> (Vec<u8>, stream::Sealed) {
    let (mut enc, done) =
        Encrypting::new(std::io::Cursor::new(plain.to_vec()), recipients).expect("encryptor");
    let mut out = Vec::new();
    enc.read_to_end(&mut out).expect("encrypt");
    (out, done.get().expect("finished").clone())
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn encrypting_reader_makes_an_age_file_of_the_predicted_size() {
    let (id, public) = key();
    let recipients = Recipients::parse(&[public], None, None).expect("recipients");
    for n in [
        0usize,
        1,
        CHUNK as usize,
        CHUNK as usize + 1,
        3 * CHUNK as usize + 17,
    ] {
        let plain = pattern(n);
        let (sealed, done) = seal(&plain, &recipients);
        let header = header_len(&sealed).expect("a header");
        assert_eq!(
            sealed.len() as u64,
            sealed_size(header, n as u64),
            "size of {n}"
        );
        assert_eq!(done.plain_bytes, n as u64);
        assert_eq!(done.sealed_bytes, sealed.len() as u64);
        assert_eq!(
            done.sealed_sha256,
            hex::encode(Sha256::digest(&sealed)),
            "hash of what was yielded"
        );
        assert_eq!(done.plain_sha256, hex::encode(Sha256::digest(&plain)));
        let mut back = Vec::new();
        age::Decryptor::new(&sealed[..])
            .expect("header")
            .decrypt(std::iter::once(&id as &dyn age::Identity))
            .expect("decrypt")
            .read_to_end(&mut back)
            .expect("read");
        assert_eq!(back, plain);
    }
}

#[test]
fn ranged_reads_decrypt_only_the_chunks_fetched() {
    let (id, public) = key();
    let (_dir, ids) = identities_for(&id);
    let recipients = Recipients::parse(&[public], None, None).expect("recipients");
    let plain = pattern(40 * CHUNK as usize + 1234);
    let (sealed, _) = seal(&plain, &recipients);
    let size = sealed.len() as u64;
    let head = sealed[..head_len(size) as usize].to_vec();
    let tail = sealed[(size - tail_len(size)) as usize..].to_vec();
    let no = |reason: String| CryptError::Encrypt(reason);
    let ranged = Ranged::open(head, tail, size, &ids, &no).expect("open");
    for (offset, len) in [
        (20 * CHUNK + 5, 3 * CHUNK),
        (7, 100),
        (plain.len() as u64 - 9, 9),
    ] {
        if let Some((at, n)) = ranged.needed(offset, len) {
            ranged.add(at, sealed[at as usize..(at + n) as usize].to_vec());
        }
        assert!(ranged.needed(offset, len).is_none(), "held once added");
        let got = ranged.read(offset, len).expect("read");
        assert_eq!(got, &plain[offset as usize..(offset + len) as usize]);
    }
    // A range never fetched is an error, not zeros.
    assert!(ranged.read(30 * CHUNK, 10).is_err());
    // A flipped byte in a fetched chunk fails that read.
    let (at, n) = sealed_range(header_len(&sealed).expect("header"), size, 33 * CHUNK, 10);
    let mut bad = sealed[at as usize..(at + n) as usize].to_vec();
    bad[100] ^= 1;
    ranged.add(at, bad);
    assert!(ranged.read(33 * CHUNK, 10).is_err());
}

#[test]
fn a_wrong_identity_is_named() {
    let (_, public) = key();
    let (other, _) = key();
    let (_dir, ids) = identities_for(&other);
    let recipients = Recipients::parse(&[public], None, None).expect("recipients");
    let (sealed, _) = seal(b"secret", &recipients);
    let size = sealed.len() as u64;
    let err = Ranged::open(sealed.clone(), sealed, size, &ids, &|reason| {
        CryptError::Decrypt {
            id: "b".into(),
            recipients: recipients.fingerprints().join(", "),
            reason,
        }
    })
    .expect_err("wrong key");
    let text = err.to_string();
    assert!(text.contains("none of the identities"), "{text}");
    assert!(text.contains(&recipients.fingerprints()[0]), "{text}");
}

#[test]
fn malformed_recipients_are_each_reported() {
    let (_, public) = key();
    let err = Recipients::parse(
        &[
            public,
            "age1notakey".into(),
            "AGE-SECRET-KEY-1ABC".into(),
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP".into(),
        ],
        None,
        None,
    )
    .expect_err("bad ones");
    assert_eq!(err.len(), 3, "{err:?}");
    assert!(err[0].contains("encryption.recipients[1]"), "{err:?}");
    assert!(err[1].contains("secret key"), "{err:?}");
    assert!(err[2].contains("encryption.recipients[3]"), "{err:?}");
    let mixed = Recipients::parse(&[key().1], None, Some(SecretString::from("pw".to_owned())))
        .expect_err("mixed");
    assert!(mixed[0].contains("cannot be combined"), "{mixed:?}");
    assert!(
        Recipients::parse(&[], None, None).is_err(),
        "no recipient at all"
    );
}

#[test]
fn ssh_recipients_parse_and_fingerprint_without_their_comment() {
    let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN";
    let a = Recipients::parse(&[format!("{line} alice@host")], None, None).expect("ssh");
    let b = Recipients::parse(&[line.to_owned()], None, None).expect("ssh");
    assert_eq!(a.fingerprints(), b.fingerprints());
    assert!(a.fingerprints()[0].starts_with("ssh-ed25519:"));
}

#[test]
fn header_len_needs_the_whole_header() {
    let (_, public) = key();
    let recipients = Recipients::parse(&[public], None, None).expect("recipients");
    let (sealed, _) = seal(b"x", &recipients);
    let h = header_len(&sealed).expect("header") as usize;
    assert!(sealed[..h].ends_with(b"\n"));
    assert!(header_len(&sealed[..h - 1]).is_none());
    assert!(header_len(b"\x28\xb5\x2f\xfd not age").is_none());
}

#[test]
fn a_passphrase_protected_identity_file_is_the_break_glass_key() {
    let (id, public) = key();
    let dir = tempfile::tempdir().expect("tempdir");
    // `age -p identity.txt > identity.txt.age`, with a cheap work factor for the test.
    let mut lock = age::scrypt::Recipient::new(SecretString::from("open sesame".to_owned()));
    lock.set_work_factor(10);
    let mut sealed_key = Vec::new();
    let mut w = age::Encryptor::with_recipients(std::iter::once(&lock as &dyn age::Recipient))
        .expect("encryptor")
        .wrap_output(&mut sealed_key)
        .expect("wrap");
    std::io::Write::write_all(
        &mut w,
        format!("{}\n", id.to_string().expose_secret()).as_bytes(),
    )
    .expect("write");
    w.finish().expect("finish");
    let path = dir.path().join("identity.txt.age");
    std::fs::write(&path, &sealed_key).expect("write");

    let source = |pass: Option<&str>| IdentitySource {
        file: Some(path.clone()),
        passphrase: pass.map(str::to_owned),
        ..IdentitySource::default()
    };
    let err = Identities::load(&source(None)).expect_err("needs the passphrase");
    assert!(err.to_string().contains("TIERKEEP_PASSPHRASE"), "{err}");
    let err = Identities::load(&source(Some("wrong"))).expect_err("a wrong passphrase");
    assert!(err.to_string().contains("does not unlock"), "{err}");
    let ids = Identities::load(&source(Some("open sesame")))
        .expect("unlocked")
        .expect("some");
    let recipients = Recipients::parse(&[public], None, None).expect("recipients");
    let (sealed, _) = seal(b"the data", &recipients);
    let mut back = Vec::new();
    age::Decryptor::new(&sealed[..])
        .expect("header")
        .decrypt(ids.iter())
        .expect("decrypts")
        .read_to_end(&mut back)
        .expect("read");
    assert_eq!(back, b"the data");
}

/// A source that yields some bytes, then fails.
struct FailsAfter(usize);

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_read_never_turns_into_an_end_of_file() {
    let (_, public) = key();
    let recipients = Recipients::parse(&[public], None, None).expect("recipients");
    let (mut enc, done) = Encrypting::new(FailsAfter(3 << 20), &recipients).expect("encryptor");
    let mut buf = vec![0u8; 256 << 10];
    let first_err = loop {
        match enc.read(&mut buf) {
            Ok(0) => panic!("an end of file from a source that failed"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        first_err.to_string().contains("the disk went away"),
        "{first_err}"
    );
    for _ in 0..3 {
        let again = enc.read(&mut buf).expect_err("still failed");
        assert_eq!(again.to_string(), first_err.to_string());
    }
    assert!(done.get().is_none(), "no totals for a failed stream");
}

#[test]
fn recipients_whose_header_would_not_fit_are_refused() {
    let one: Vec<String> = (0..2).map(|_| key().1).collect();
    Recipients::parse(&one, None, None).expect("two keys fit");
    // An X25519 stanza is about 100 bytes: 800 of them make a header over 64 KiB.
    let many: Vec<String> = (0..800).map(|_| key().1).collect();
    let problems = Recipients::parse(&many, None, None).expect_err("too many");
    assert!(
        problems.iter().any(|p| p.contains("800 recipients")),
        "{problems:?}"
    );
}
