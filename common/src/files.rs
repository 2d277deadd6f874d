//! Local files tokentally owns: replaced atomically, read with a bound.
//! Every reader of a state file goes through [`read_bounded`], so a file
//! grown or garbled past reason is an error naming it, never an
//! allocation the size of whatever its length field claims.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// Read `path` whole, refusing it if it is larger than `limit` bytes (the
/// error names the file and the bound). `NotFound` passes through as is.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells "too large" from "exactly the limit",
    // whatever the metadata says (the file may be growing).
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {limit} bytes, more than tokentally ever writes there",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// A file's length and content hash (XXH3-64), recorded when it is
/// committed so that any later change to it can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub xxh3: u64,
}

impl std::fmt::Display for FileSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, xxh3 {:016x}", self.bytes, self.xxh3)
    }
}

/// The [`FileSum`] of the file at `path`, read in 1 MiB chunks.
pub fn checksum(path: &Path) -> io::Result<FileSum> {
    let mut file = File::open(path)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        xxh3: hasher.digest(),
    })
}

/// Replace `dir/name` with `bytes` atomically: write a temporary file,
/// fsync it, rename it over the old one, fsync the directory. A crash, or
/// a full disk, leaves the old file whole.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // A full disk: give the partial file's space back.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// fsync a directory so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_past_the_bound_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_bounded(&p, 10).unwrap(), b"0123456789");
        let err = read_bounded(&p, 9).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("state.json"), "{err}");
        let missing = read_bounded(&dir.path().join("nope"), 9).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_checksum_tells_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("delta.parquet");
        fs::write(&p, vec![7u8; 3 << 20]).unwrap();
        let sum = checksum(&p).unwrap();
        assert_eq!(sum.bytes, 3 << 20);
        let mut bytes = fs::read(&p).unwrap();
        bytes[2 << 20] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert_ne!(checksum(&p).unwrap(), sum);
    }

    #[test]
    fn an_atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "m.json", b"old").unwrap();
        write_atomic(dir.path(), "m.json", b"new").unwrap();
        assert_eq!(fs::read(dir.path().join("m.json")).unwrap(), b"new");
        assert!(!dir.path().join("m.json.tmp").exists());
    }
}
