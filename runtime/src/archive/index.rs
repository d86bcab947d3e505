//! Format 2's layout inside the archive file: the entry index and the seek table, each
//! in a zstd skippable frame after the last data frame, so `zstd -d` skips them and the
//! archive stays one self-contained file.
//!
//! ```text
//! [data frame 0] … [data frame N-1] [index frame] [seek table frame]
//! ```
//!
//! - **Data frames** are independent zstd frames (with content checksum) of the tar
//!   stream, cut at entry boundaries: small entries grouped until a frame holds about
//!   [`GROUP_TARGET`] bytes, a large file's data in frames of [`CHUNK`] bytes each (its
//!   headers end the frame before), and the tar end marker in a frame of its own.
//! - **The index frame** (skippable magic `0x184D2A5A`) holds `TKIX`, a little-endian
//!   `u32` version, then the zstd-compressed JSON of [`Index`]: every frame's offsets,
//!   sizes and SHA-256s, and every entry's name, metadata and place in the stream. The
//!   manifest records where it sits and its SHA-256.
//! - **The seek table** is the zstd seekable format's (skippable magic `0x184D2A5E`,
//!   footer magic `0x8F92EAB1`, no checksums): one entry per frame of the file, the index
//!   frame listed with a decompressed size of 0, so offsets summed from it are right.

use std::io;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A group frame is cut before the next entry once it holds this many bytes of tar.
pub const GROUP_TARGET: usize = 4 << 20;

/// A regular file of at least this size has its data in frames of this many bytes.
pub const CHUNK: u64 = 4 << 20;

/// The index frame's skippable-frame magic number.
pub const INDEX_MAGIC: u32 = 0x184D_2A5A;
const INDEX_TAG: &[u8; 4] = b"TKIX";
/// The index layout version this build writes and reads.
pub const INDEX_VERSION: u32 = 1;
const SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_FOOTER_MAGIC: u32 = 0x8F92_EAB1;

/// The entry index of a format 2 archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// The data frames, in file order.
    pub frames: Vec<Frame>,
    /// The tar entries, in stream order (PAX and long-name records are part of the
    /// entry they precede).
    pub entries: Vec<Entry>,
}

/// One data frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Offset of the compressed frame in the archive file.
    pub offset: u64,
    /// Size of the compressed frame.
    pub bytes: u64,
    /// Offset of its decompressed bytes in the tar stream.
    pub raw_offset: u64,
    /// Size of its decompressed bytes.
    pub raw_bytes: u64,
    /// Hex SHA-256 of the compressed frame.
    pub sha256: String,
    /// Hex SHA-256 of the decompressed bytes.
    pub raw_sha256: String,
}

/// What kind of tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A hard link to an earlier entry.
    Hardlink,
}

impl Kind {
    /// The kind of a tar entry type; `None` for types a backup never stores.
    pub fn of(t: tar::EntryType) -> Option<Kind> {
        match t {
            tar::EntryType::Regular | tar::EntryType::Continuous => Some(Kind::File),
            tar::EntryType::Directory => Some(Kind::Dir),
            tar::EntryType::Symlink => Some(Kind::Symlink),
            tar::EntryType::Link => Some(Kind::Hardlink),
            _ => None,
        }
    }

    /// The word `ls` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
        }
    }
}

/// A name or link target: bytes, shown as a JSON string when it is UTF-8 and as
/// `{"hex": "…"}` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => NameRepr::Text(t.to_owned()),
            Err(_) => NameRepr::Hex {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NameRepr::deserialize(d)? {
            NameRepr::Text(t) => Ok(Name(t.into_bytes())),
            NameRepr::Hex { hex } => hex::decode(hex).map(Name).map_err(serde::de::Error::custom),
        }
    }
}

/// One entry: what `ls` shows, what reuse compares, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry name as stored (the absolute path without its leading `/`; a
    /// directory's ends with `/`).
    pub name: Name,
    /// Its kind.
    pub kind: Kind,
    /// Data size (regular files; 0 otherwise).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: i64,
    /// Status change time, seconds (compared by reuse, not restored).
    pub ctime: i64,
    /// Nanoseconds of the status change time.
    pub ctime_nsec: i64,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device of the source file (compared by reuse).
    pub dev: u64,
    /// Inode of the source file (compared by reuse).
    pub ino: u64,
    /// Symlink target, or the earlier entry a hard link points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Name>,
    /// Offset in the tar stream of the entry's first header (its PAX or long-name
    /// record when it has one).
    pub offset: u64,
    /// Offset in the tar stream of its data (just after its header).
    pub data: u64,
    /// First and last data frame holding its bytes.
    pub frames: [u32; 2],
    /// Whether its data is in frames of its own, [`CHUNK`] bytes each, starting with
    /// frame `frames[0] + 1`.
    #[serde(default)]
    pub chunked: bool,
}

impl Entry {
    /// Offset in the tar stream just past the entry (its data padded to 512 bytes).
    pub fn end(&self) -> u64 {
        self.data + self.size.div_ceil(512) * 512
    }
}

/// Where the index frame sits in the archive file, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// Offset of the index frame (its skippable-frame header) in the archive file.
    pub offset: u64,
    /// Size of the whole index frame.
    pub bytes: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: String,
}

fn skippable(magic: u32, payload: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::other("a skippable frame is limited to 4 GiB"))?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The index frame's bytes.
pub fn encode_index(index: &Index) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(index).map_err(io::Error::other)?;
    let packed = zstd::bulk::compress(&json, 9)?;
    let mut payload = Vec::with_capacity(packed.len() + 8);
    payload.extend_from_slice(INDEX_TAG);
    payload.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    payload.extend_from_slice(&packed);
    skippable(INDEX_MAGIC, &payload)
}

/// The largest decompressed index accepted (a hostile index cannot exhaust memory).
const INDEX_MAX_JSON: usize = 1 << 30;

/// Parses an index frame read at `reference`, checking its SHA-256 first.
pub fn decode_index(bytes: &[u8], reference: &IndexRef) -> Result<Index, String> {
    let actual = hex::encode(Sha256::digest(bytes));
    if bytes.len() as u64 != reference.bytes || !actual.eq_ignore_ascii_case(&reference.sha256) {
        return Err(format!(
            "its {} bytes at offset {} do not match the manifest (SHA-256 {actual}, expected {})",
            bytes.len(),
            reference.offset,
            reference.sha256
        ));
    }
    if bytes.len() < 16 || bytes[..4] != INDEX_MAGIC.to_le_bytes() || &bytes[8..12] != INDEX_TAG {
        return Err("it is not a tierkeep index frame".into());
    }
    let version = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if version != INDEX_VERSION {
        return Err(format!(
            "index version {version} is not supported by this tierkeep (reads {INDEX_VERSION})"
        ));
    }
    let json = decompress_bounded(&bytes[16..], INDEX_MAX_JSON)
        .map_err(|e| format!("it does not decompress: {e}"))?;
    let index: Index =
        serde_json::from_slice(&json).map_err(|e| format!("it does not parse: {e}"))?;
    index.check()?;
    Ok(index)
}

fn decompress_bounded(data: &[u8], max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data)?
        .take(max as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > max {
        return Err(io::Error::other("larger than 1 GiB"));
    }
    Ok(out)
}

impl Index {
    /// Checks the index is consistent with itself: frames contiguous in the file and in
    /// the stream, entries in order inside the frames they name. (Whether it tells the
    /// truth about the tar headers is checked when they are read.)
    pub fn check(&self) -> Result<(), String> {
        let mut raw = 0u64;
        let mut prev_end: Option<u64> = None;
        for (i, f) in self.frames.iter().enumerate() {
            if f.raw_offset != raw {
                return Err(format!(
                    "frame {i} starts at stream offset {}",
                    f.raw_offset
                ));
            }
            if let Some(end) = prev_end
                && f.offset != end
            {
                return Err(format!("frame {i} does not follow frame {}", i - 1));
            }
            raw += f.raw_bytes;
            prev_end = Some(f.offset + f.bytes);
        }
        let mut last = 0u64;
        for e in &self.entries {
            let [first, end_frame] = e.frames;
            let (Some(a), Some(b)) = (
                self.frames.get(first as usize),
                self.frames.get(end_frame as usize),
            ) else {
                return Err(format!(
                    "entry {} names frames that do not exist",
                    String::from_utf8_lossy(&e.name.0)
                ));
            };
            let inside = e.offset >= last
                && e.data >= e.offset
                && e.offset >= a.raw_offset
                && e.offset < a.raw_offset + a.raw_bytes.max(1)
                && e.end() <= b.raw_offset + b.raw_bytes
                && first <= end_frame;
            if !inside {
                return Err(format!(
                    "entry {} lies outside its frames",
                    String::from_utf8_lossy(&e.name.0)
                ));
            }
            last = e.end();
        }
        Ok(())
    }
}

/// The seek table frame for frames of these (compressed, decompressed) sizes.
pub fn encode_seek_table(frames: &[(u64, u64)]) -> io::Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(frames.len() * 8 + 9);
    let too_big = || io::Error::other("a frame over 4 GiB cannot be listed in a seek table");
    for &(c, d) in frames {
        payload.extend_from_slice(&u32::try_from(c).map_err(|_| too_big())?.to_le_bytes());
        payload.extend_from_slice(&u32::try_from(d).map_err(|_| too_big())?.to_le_bytes());
    }
    let n = u32::try_from(frames.len()).map_err(|_| too_big())?;
    payload.extend_from_slice(&n.to_le_bytes());
    payload.push(0); // descriptor: no checksums
    payload.extend_from_slice(&SEEKABLE_FOOTER_MAGIC.to_le_bytes());
    skippable(SEEK_TABLE_MAGIC, &payload)
}

/// Whether `frame` starts with a zstd skippable-frame magic number (`0x184D2A5?`).
pub fn is_skippable(frame: &[u8]) -> bool {
    frame.len() >= 4
        && u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) >> 4 == 0x0184_D2A5
}

/// The size of the whole seek table frame whose footer is `foot` (a file's last 9
/// bytes), or `None` when it is no seek table footer.
pub fn seek_table_bytes(foot: &[u8; 9]) -> Option<u64> {
    if foot[5..9] != SEEKABLE_FOOTER_MAGIC.to_le_bytes() {
        return None;
    }
    let n = u64::from(u32::from_le_bytes([foot[0], foot[1], foot[2], foot[3]]));
    let entry = if foot[4] & 0x80 != 0 { 12 } else { 8 };
    (n <= 10_000_000).then(|| n * entry + 17)
}

/// Parses a seek table from the end of an archive file: the (compressed, decompressed)
/// size of each frame. `tail` holds the file's last bytes (the whole table).
pub fn decode_seek_table(tail: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let n = tail.len();
    let foot: &[u8; 9] = tail
        .get(n.saturating_sub(9)..)
        .and_then(|f| f.try_into().ok())
        .ok_or("no seek table at the end of the file")?;
    let whole = seek_table_bytes(foot).ok_or("no seek table at the end of the file")?;
    let frames = u32::from_le_bytes([foot[0], foot[1], foot[2], foot[3]]) as usize;
    let entry = if foot[4] & 0x80 != 0 { 12 } else { 8 };
    let Some(table) = usize::try_from(whole)
        .ok()
        .filter(|&t| t <= n)
        .map(|t| t - 8)
    else {
        return Err("the seek table is cut short".into());
    };
    let start = n - table - 8;
    if tail[start..start + 4] != SEEK_TABLE_MAGIC.to_le_bytes() {
        return Err("the seek table's frame header is missing".into());
    }
    let u32_at = |i: usize| {
        u64::from(u32::from_le_bytes([
            tail[i],
            tail[i + 1],
            tail[i + 2],
            tail[i + 3],
        ]))
    };
    Ok((0..frames)
        .map(|k| {
            let at = start + 8 + k * entry;
            (u32_at(at), u32_at(at + 4))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_non_utf8_bytes() {
        let names = [Name(b"srv/a".to_vec()), Name(vec![b's', 0xff, b'x'])];
        let json = serde_json::to_string(&names).unwrap();
        assert_eq!(json, r#"["srv/a",{"hex":"73ff78"}]"#);
        let back: Vec<Name> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, names);
    }

    #[test]
    fn seek_table_round_trips() {
        let frames = [(100, 4096), (30, 0), (7, 1024)];
        let table = encode_seek_table(&frames).unwrap();
        let mut file = vec![0u8; 137];
        file.extend_from_slice(&table);
        assert_eq!(decode_seek_table(&file).unwrap(), frames);
        assert!(decode_seek_table(&file[..file.len() - 1]).is_err());
    }

    #[test]
    fn an_index_that_does_not_match_its_reference_is_refused() {
        let index = Index::default();
        let bytes = encode_index(&index).unwrap();
        let good = IndexRef {
            offset: 0,
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        assert_eq!(decode_index(&bytes, &good).unwrap(), index);
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(
            decode_index(&flipped, &good)
                .unwrap_err()
                .contains("do not match")
        );
    }
}
