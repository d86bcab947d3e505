//! Encryption at rest: archives leave the host as age files (`archive.tar.zst.age`,
//! <https://age-encryption.org/v1>), so that `age -d -i KEY | zstd -d | tar -x` restores
//! them with standard tools.
//!
//! - [`Recipients`]: the public keys a backup is encrypted to (age X25519 `age1…`,
//!   `ssh-ed25519`, `ssh-rsa`), or one passphrase (age's scrypt recipient, which the age
//!   format allows only on its own). The host needs nothing more to back up and age.
//! - [`Identities`]: what decrypts (an age identity file, an SSH private key, a
//!   passphrase), needed only to read an encrypted backup's contents.
//! - [`stream`]: encrypting a plaintext archive as it is read (aging uploads it as it
//!   goes, with no temporary copy), and the ciphertext's layout: age's payload is 64 KiB
//!   chunks, each sealed on its own, so a plaintext range maps to a ciphertext range and
//!   [`ranged`] decrypts only the chunks a read needs (`ls` and `restore --path` of a
//!   backup in a bucket).

pub mod ranged;
pub mod stream;

use std::fmt;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use sha2::{Digest, Sha256};

/// The fingerprint recorded for a passphrase recipient (a hash of the passphrase would
/// let anyone holding the manifest test guesses offline, so none is kept).
pub const PASSPHRASE_FINGERPRINT: &str = "passphrase";

/// Errors of encryption and decryption. Messages name the backup's recipients by
/// fingerprint and never print key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// A configured recipient cannot be used.
    #[error("{0}")]
    Recipient(String),
    /// An identity file cannot be read or parsed.
    #[error("{0}")]
    Identity(String),
    /// An encrypted backup was to be read without any identity.
    #[error(
        "backup {id} is encrypted (to {recipients}) and no identity was given; nothing was \
         read. Pass --identity FILE, set TIERKEEP_IDENTITY or encryption.identity_file (an \
         age identity file or an SSH private key), or TIERKEEP_PASSPHRASE for a passphrase"
    )]
    NoIdentity {
        /// The backup.
        id: String,
        /// Its recipients' fingerprints.
        recipients: String,
    },
    /// The identities given do not decrypt the backup, or its ciphertext is damaged.
    #[error(
        "cannot decrypt backup {id}: {reason}; it was encrypted to {recipients}. Nothing was extracted"
    )]
    Decrypt {
        /// The backup.
        id: String,
        /// Its recipients' fingerprints.
        recipients: String,
        /// What age said.
        reason: String,
    },
    /// Encrypting failed.
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
}

/// A short, stable fingerprint of a recipient's canonical text: its type and the first
/// 16 hex digits of the text's SHA-256 (`age:3f1c…`, `ssh-ed25519:…`).
pub fn fingerprint(kind: &str, canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    format!("{kind}:{}", &hex::encode(digest)[..16])
}

/// One parsed public-key recipient.
struct Key {
    fingerprint: String,
    shown: String,
    key: Box<dyn age::Recipient + Send + Sync>,
}

/// The recipients new encrypted archives are made for.
pub struct Recipients {
    keys: Vec<Key>,
    passphrase: Option<SecretString>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipients")
            .field("fingerprints", &self.fingerprints())
            .finish_non_exhaustive()
    }
}

/// Parses one recipient line (`age1…`, `ssh-ed25519 AAAA… comment`, `ssh-rsa …`):
/// (fingerprint, text to show, key).
fn parse_recipient(
    line: &str,
) -> Result<(String, String, Box<dyn age::Recipient + Send + Sync>), String> {
    let line = line.trim();
    if line.starts_with("age1") {
        let key: age::x25519::Recipient = line
            .parse()
            .map_err(|e| format!("not an age X25519 public key ({e})"))?;
        let canonical = key.to_string();
        return Ok((fingerprint("age", &canonical), canonical, Box::new(key)));
    }
    if line.starts_with("ssh-") {
        let key: age::ssh::Recipient = line.parse().map_err(|e| match e {
            age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                "an ssh-rsa key under 2048 bits, which age refuses".to_owned()
            }
            age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => {
                "an ssh-rsa key over 4096 bits, which age refuses".to_owned()
            }
            age::ssh::ParseRecipientKeyError::Unsupported(kind) => format!(
                "an SSH key of type {kind}, which age cannot encrypt to (use ssh-ed25519 or ssh-rsa)"
            ),
            age::ssh::ParseRecipientKeyError::Invalid(why) => {
                format!("not a valid SSH public key ({why})")
            }
            age::ssh::ParseRecipientKeyError::Ignore => "not an SSH public key".to_owned(),
        })?;
        // The key type and its base64 body, without the comment.
        let canonical: String = line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let kind = canonical
            .split_whitespace()
            .next()
            .unwrap_or("ssh")
            .to_owned();
        let shown = if canonical.len() > 40 {
            format!("{}…", &canonical[..40])
        } else {
            canonical.clone()
        };
        return Ok((fingerprint(&kind, &canonical), shown, Box::new(key)));
    }
    if line.starts_with("AGE-SECRET-KEY-") {
        return Err(
            "a secret key (AGE-SECRET-KEY-…), not a public one: give its `age1…` public key \
             (`age-keygen -y KEYFILE`) and keep the secret key off this host"
                .into(),
        );
    }
    Err("not an age recipient: expected an `age1…` public key or an `ssh-ed25519` / `ssh-rsa` public key".into())
}

/// Reads a recipients file (one recipient per line; blank lines and `#` comments are
/// skipped, as `age -R` does): (line number, text).
fn read_recipients_file(path: &Path) -> Result<Vec<(usize, String)>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("encryption.recipients_file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line =
            line.map_err(|e| format!("encryption.recipients_file {}: {e}", path.display()))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push((n + 1, line.to_owned()));
    }
    Ok(out)
}

impl Recipients {
    /// Parses recipients given inline (`encryption.recipients`) and from a file
    /// (`encryption.recipients_file`), or a passphrase (`encryption.passphrase_file`).
    /// Every malformed recipient is reported, each naming where it came from.
    pub fn parse(
        inline: &[String],
        file: Option<&Path>,
        passphrase: Option<SecretString>,
    ) -> Result<Recipients, Vec<String>> {
        let mut problems = Vec::new();
        let mut lines: Vec<(String, String)> = inline
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("encryption.recipients[{i}]"), r.clone()))
            .collect();
        if let Some(path) = file {
            match read_recipients_file(path) {
                Ok(found) => lines.extend(
                    found
                        .into_iter()
                        .map(|(n, r)| (format!("{} line {n}", path.display()), r)),
                ),
                Err(e) => problems.push(e),
            }
        }
        let mut keys: Vec<Key> = Vec::new();
        for (origin, line) in &lines {
            match parse_recipient(line) {
                Ok((fingerprint, shown, key)) => {
                    if !keys.iter().any(|k| k.fingerprint == fingerprint) {
                        keys.push(Key {
                            fingerprint,
                            shown,
                            key,
                        });
                    }
                }
                Err(reason) => {
                    // Never any of a secret key pasted by mistake.
                    // Only a public key's prefix: a line that is not one may be a
                    // secret (a private key file, a passphrase) and is never echoed.
                    let shown: String =
                        if line.trim().starts_with("age1") || line.trim().starts_with("ssh-") {
                            line.chars().take(16).collect()
                        } else {
                            "…".into()
                        };
                    problems.push(format!("{origin} (`{shown}…`): {reason}"));
                }
            }
        }
        if passphrase.is_some() && !lines.is_empty() {
            problems.push(
                "encryption.passphrase_file cannot be combined with public-key recipients: an \
                 age file made for a passphrase has no other recipients. For an offline \
                 break-glass key, add the public key of an identity kept offline (e.g. printed, \
                 or encrypted with `age -p`) to the recipients instead"
                    .into(),
            );
        }
        if passphrase.is_none() && lines.is_empty() && problems.is_empty() {
            problems.push(
                "[encryption] is set but names no recipient: set encryption.recipients, \
                 encryption.recipients_file or encryption.passphrase_file"
                    .into(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let recipients = Recipients { keys, passphrase };
        if recipients.passphrase.is_none() {
            recipients.check_header_fits()?;
        }
        Ok(recipients)
    }

    /// Refuses a set of recipients whose age header would be longer than the header a
    /// ranged read fetches ([`stream::MAX_HEADER`]): `ls` and `restore --path` of their
    /// backups in a bucket could not open them. Measured with a trial header (public-key
    /// stanzas only; a passphrase's header is a few hundred bytes).
    fn check_header_fits(&self) -> Result<(), Vec<String>> {
        let mut trial = Vec::new();
        let written = self.encryptor().map_err(|e| e.to_string()).and_then(|e| {
            e.wrap_output(&mut trial)
                .and_then(|w| w.finish())
                .map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            return Err(vec![format!("cannot encrypt to these recipients: {e}")]);
        }
        let header = stream::header_len(&trial).unwrap_or(trial.len() as u64);
        if header > stream::MAX_HEADER {
            return Err(vec![format!(
                "{} recipients make an age header of {header} bytes, over the {} KiB that \
                 tierkeep reads to open an encrypted backup: use fewer recipients (an ssh-rsa \
                 stanza is about 700 bytes, an age1… one about 100)",
                self.keys.len(),
                stream::MAX_HEADER >> 10
            )]);
        }
        Ok(())
    }

    /// Fingerprints of the recipients, in order (`passphrase` for a passphrase).
    pub fn fingerprints(&self) -> Vec<String> {
        if self.passphrase.is_some() {
            return vec![PASSPHRASE_FINGERPRINT.to_owned()];
        }
        self.keys.iter().map(|k| k.fingerprint.clone()).collect()
    }

    /// Each recipient as shown to the operator (`config show`): (fingerprint, key text).
    pub fn shown(&self) -> Vec<(String, String)> {
        if self.passphrase.is_some() {
            return vec![(
                PASSPHRASE_FINGERPRINT.to_owned(),
                "(a passphrase)".to_owned(),
            )];
        }
        self.keys
            .iter()
            .map(|k| (k.fingerprint.clone(), k.shown.clone()))
            .collect()
    }

    /// A fresh encryptor (a new file key) for one archive.
    pub fn encryptor(&self) -> Result<age::Encryptor, CryptError> {
        if let Some(p) = &self.passphrase {
            return Ok(age::Encryptor::with_user_passphrase(p.clone()));
        }
        age::Encryptor::with_recipients(
            self.keys
                .iter()
                .map(|k| k.key.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| CryptError::Encrypt(e.to_string()))
    }
}

/// What decrypts encrypted backups: identities from one file and, optionally, a
/// passphrase.
pub struct Identities {
    list: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// Where they came from, for messages.
    pub source: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("source", &self.source)
            .field("count", &self.list.len())
            .finish()
    }
}

/// Where the identities of a read come from: the command line (`--identity`), then
/// `TIERKEEP_IDENTITY`, then `encryption.identity_file`; a passphrase from
/// `TIERKEEP_PASSPHRASE` or `encryption.passphrase_file`.
#[derive(Debug, Clone, Default)]
pub struct IdentitySource {
    /// An identity file.
    pub file: Option<PathBuf>,
    /// A file holding a passphrase (its first line).
    pub passphrase_file: Option<PathBuf>,
    /// A passphrase given directly (`TIERKEEP_PASSPHRASE`).
    pub passphrase: Option<String>,
}

/// Reads the first line of a passphrase file.
pub fn read_passphrase_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("passphrase file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(format!(
            "passphrase file {}: the first line is empty",
            path.display()
        ));
    }
    Ok(SecretString::from(line))
}

impl Identities {
    /// Loads what `source` names; `Ok(None)` when it names nothing.
    pub fn load(source: &IdentitySource) -> Result<Option<Identities>, CryptError> {
        let mut list: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        let mut from = Vec::new();
        let passphrase = match (&source.passphrase, &source.passphrase_file) {
            (Some(p), _) => {
                from.push("TIERKEEP_PASSPHRASE".to_owned());
                Some(SecretString::from(p.clone()))
            }
            (None, Some(path)) => {
                from.push(format!("passphrase file {}", path.display()));
                Some(read_passphrase_file(path).map_err(CryptError::Identity)?)
            }
            (None, None) => None,
        };
        if let Some(path) = &source.file {
            list.extend(load_identity_file(path, passphrase.as_ref())?);
            from.insert(0, format!("identity file {}", path.display()));
        }
        if let Some(p) = passphrase {
            list.push(Box::new(age::scrypt::Identity::new(p)));
        }
        if list.is_empty() {
            return Ok(None);
        }
        Ok(Some(Identities {
            list,
            source: from.join(" and "),
        }))
    }

    /// The identities, as age takes them.
    pub fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.list.iter().map(|i| i.as_ref() as &dyn age::Identity)
    }
}

/// Parses an identity file: age identities (`AGE-SECRET-KEY-1…` lines, `#` comments),
/// one unencrypted SSH private key (ed25519 or RSA), or such a file encrypted with a
/// passphrase (`age -p`: a break-glass key kept offline), unlocked with `passphrase`.
/// Never prints a line of it.
fn load_identity_file(
    path: &Path,
    passphrase: Option<&SecretString>,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, CryptError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| CryptError::Identity(format!("identity file {shown}: {e}")))?;
    if bytes.starts_with(b"age-encryption.org/") {
        let Some(passphrase) = passphrase else {
            return Err(CryptError::Identity(format!(
                "identity file {shown} is encrypted with a passphrase: give the passphrase \
                 in TIERKEEP_PASSPHRASE (or decrypt the file first with `age -d`)"
            )));
        };
        let unlock = age::scrypt::Identity::new(passphrase.clone());
        let mut text = String::new();
        age::Decryptor::new(&bytes[..])
            .and_then(|d| d.decrypt(std::iter::once(&unlock as &dyn age::Identity)))
            .map_err(|e| {
                CryptError::Identity(format!(
                    "identity file {shown} is encrypted with a passphrase, and the one given \
                     does not unlock it ({e})"
                ))
            })?
            .read_to_string(&mut text)
            .map_err(|e| CryptError::Identity(format!("identity file {shown}: {e}")))?;
        return parse_identities(&text, &shown);
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        CryptError::Identity(format!(
            "identity file {shown}: not text (an age identity file or an SSH private key)"
        ))
    })?;
    parse_identities(&text, &shown)
}

/// Parses the text of an identity file (see [`load_identity_file`]).
fn parse_identities(
    text: &str,
    shown: &str,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, CryptError> {
    if text.trim_start().starts_with("-----BEGIN") {
        let key = age::ssh::Identity::from_buffer(text.as_bytes(), Some(shown.to_owned()))
            .map_err(|e| {
                CryptError::Identity(format!(
                    "identity file {shown}: not a usable SSH private key ({e})"
                ))
            })?;
        return match key {
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(key)]),
            age::ssh::Identity::Encrypted(_) => Err(CryptError::Identity(format!(
                "identity file {shown}: a passphrase-protected SSH key, which tierkeep cannot \
                 unlock; use an unencrypted copy kept off the host, or decrypt with `age -d -i`"
            ))),
            age::ssh::Identity::Unsupported(_) => Err(CryptError::Identity(format!(
                "identity file {shown}: an SSH key of a type age cannot decrypt with (use ed25519 or RSA)"
            ))),
        };
    }
    let mut list: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key: age::x25519::Identity = line.parse().map_err(|_| {
            CryptError::Identity(format!(
                "identity file {shown}, line {}: not an age identity (AGE-SECRET-KEY-1…) nor an SSH private key",
                n + 1
            ))
        })?;
        list.push(Box::new(key));
    }
    if list.is_empty() {
        return Err(CryptError::Identity(format!(
            "identity file {shown}: holds no identity"
        )));
    }
    Ok(list)
}

#[cfg(test)]
mod tests;
