//! Dedup id segments: `TTIDS001`, a little-endian u64 count, then
//! (i64 hour bucket, u128 id hash) pairs, 24 bytes each.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"TTIDS001";

pub fn write(path: &Path, ids: &[(i64, u128)]) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    w.write_all(MAGIC)?;
    w.write_all(&(ids.len() as u64).to_le_bytes())?;
    for (bucket, id) in ids {
        w.write_all(&bucket.to_le_bytes())?;
        w.write_all(&id.to_le_bytes())?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

pub fn read(path: &Path, out: &mut Vec<(i64, u128)>) -> io::Result<()> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("dedup id segment {} {what}", path.display()),
        )
    };
    let file = File::open(path).map_err(|e| bad(&format!("cannot be opened: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| bad(&format!("cannot be read: {e}")))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|_| bad("is truncated"))?;
    if &head[..8] != MAGIC {
        return Err(bad("has a bad header"));
    }
    // The count must agree with the length before anything is reserved: a
    // garbled count must not become a huge allocation.
    let n = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if n.checked_mul(24).and_then(|b| b.checked_add(16)) != Some(len) {
        return Err(bad(&format!(
            "is truncated or garbled: its header counts {n} ids, its length is {len} bytes"
        )));
    }
    out.reserve(n as usize);
    let mut rec = [0u8; 24];
    for _ in 0..n {
        r.read_exact(&mut rec).map_err(|_| bad("is truncated"))?;
        let bucket = i64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let id = u128::from_le_bytes(rec[8..].try_into().expect("16 bytes"));
        out.push((bucket, id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.ids");
        let ids = vec![(1, 2u128), (-3, u128::MAX)];
        write(&p, &ids).unwrap();
        let mut back = Vec::new();
        read(&p, &mut back).unwrap();
        assert_eq!(back, ids);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let err = read(&p, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(err.to_string().contains("a.ids"), "{err}");
        // A garbled count, far past the file: refused before allocating.
        let mut garbled = bytes.clone();
        garbled[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &garbled).unwrap();
        let err = read(&p, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("garbled"), "{err}");
        std::fs::remove_file(&p).unwrap();
        let err = read(&p, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("a.ids cannot be opened"), "{err}");
    }
}
