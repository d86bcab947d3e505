//! The tar records the writer emits: headers with their PAX and GNU long-name records,
//! entry bodies padded to the 512-byte block, and the reader that feeds a file's bytes
//! into the stream exactly as its header announced them.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;

use tar::{EntryType, Header};

use super::stream_err;
use crate::archive::ArchiveError;
use crate::archive::framer::Framer;

/// Feeds exactly `remaining` bytes of a file into the tar stream, padding with zeros if
/// the file shrinks, and remembering a read error instead of corrupting the stream.
pub(super) struct FileBody<'a> {
    pub(super) file: &'a mut File,
    pub(super) remaining: u64,
    pub(super) short: bool,
    pub(super) error: Option<io::Error>,
    pub(super) progress: &'a mut dyn FnMut(u64),
}

impl Read for FileBody<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = if self.short || self.error.is_some() {
            out[..want].fill(0);
            want
        } else {
            match self.file.read(&mut out[..want]) {
                Ok(0) => {
                    self.short = true;
                    out[..want].fill(0);
                    want
                }
                Ok(n) => {
                    (self.progress)(n as u64);
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => {
                    // Abort the backup after this entry; keep the stream well-formed.
                    self.error = Some(e);
                    out[..want].fill(0);
                    want
                }
            }
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes a header block followed by `data` padded to the 512-byte block.
pub(super) fn block(out: &mut Framer, header: &Header, data: &[u8]) -> Result<(), ArchiveError> {
    out.write_all(header.as_bytes()).map_err(stream_err)?;
    out.write_all(data).map_err(stream_err)?;
    let pad = (512 - data.len() % 512) % 512;
    out.write_all(&[0u8; 512][..pad]).map_err(stream_err)
}

/// Writes the PAX record carrying the nanosecond mtime, then the GNU long-name and
/// long-link records where needed, then the header itself.
pub(super) fn write_headers(
    out: &mut Framer,
    mut header: Header,
    md: &Metadata,
    name: &[u8],
    link: Option<&[u8]>,
) -> Result<(), ArchiveError> {
    let nsec = md.mtime_nsec();
    if nsec != 0 || md.mtime() < 0 {
        let value = pax_time(md.mtime(), nsec);
        let record = pax_record("mtime", value.as_bytes());
        let mut x = Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        set_raw_name(&mut x, b"././@PaxHeader");
        x.set_mode(0o644);
        x.set_size(record.len() as u64);
        x.set_cksum();
        block(out, &x, &record)?;
    }
    if name.len() > 100 {
        long_record(out, b'L', name)?;
    }
    set_raw_name(&mut header, &name[..name.len().min(100)]);
    if let Some(link) = link {
        if link.len() > 100 {
            long_record(out, b'K', link)?;
        }
        let slot = &mut header.as_old_mut().linkname;
        slot.fill(0);
        slot[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    }
    header.set_cksum();
    out.write_all(header.as_bytes()).map_err(stream_err)
}

/// Streams a small entry's body with our own large buffer, then pads it to the block.
pub(super) fn copy_body(
    out: &mut Framer,
    data: &mut dyn Read,
    buf: &mut [u8],
) -> Result<(), ArchiveError> {
    let mut written = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(stream_err(e)),
        };
        out.write_all(&buf[..n]).map_err(stream_err)?;
        written += n as u64;
    }
    let pad = ((512 - written % 512) % 512) as usize;
    out.write_all(&[0u8; 512][..pad]).map_err(stream_err)
}

/// A GNU `L` (long name) or `K` (long link) record holding `value` byte for byte.
pub(super) fn long_record(out: &mut Framer, kind: u8, value: &[u8]) -> Result<(), ArchiveError> {
    let mut h = Header::new_gnu();
    set_raw_name(&mut h, b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(EntryType::new(kind));
    h.set_cksum();
    let mut data = value.to_vec();
    data.push(0);
    block(out, &h, &data)
}

pub(super) fn set_raw_name(h: &mut Header, name: &[u8]) {
    let slot = &mut h.as_old_mut().name;
    slot.fill(0);
    let n = name.len().min(slot.len());
    slot[..n].copy_from_slice(&name[..n]);
}

/// `seconds.nanoseconds` as PAX writes times, for negative times too.
pub(super) fn pax_time(secs: i64, nsec: i64) -> String {
    if secs >= 0 || nsec == 0 {
        format!("{secs}.{nsec:09}")
    } else {
        // -1.5 s is stored as secs = -2, nsec = 500_000_000.
        let total_ns = i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let abs = total_ns.unsigned_abs();
        format!("-{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
pub(super) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("mtime", b"1700000000.123456789");
        let text = String::from_utf8(r.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), r.len());
        // Crossing a power of ten.
        for n in 0..200 {
            let v = vec![b'x'; n];
            let r = pax_record("k", &v);
            let text = String::from_utf8(r.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "value length {n}");
        }
    }

    #[test]
    fn a_file_that_shrinks_is_padded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = File::open(&path).unwrap();
        let mut seen = 0u64;
        let mut progress = |n| seen += n;
        // The header announced 20 bytes; the file now holds 10.
        let mut body = FileBody {
            file: &mut file,
            remaining: 20,
            short: false,
            error: None,
            progress: &mut progress,
        };
        let mut out = Vec::new();
        body.read_to_end(&mut out).unwrap();
        assert!(body.short);
        assert_eq!(out.len(), 20);
        assert_eq!(&out[..10], b"0123456789");
        assert!(out[10..].iter().all(|&b| b == 0));
        assert_eq!(seen, 10);
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 7), "5.000000007");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
    }
}
