//! The store's manifest: the single source of truth for which files hold
//! committed data. It is replaced atomically (write, fsync, rename, fsync
//! the directory), so a crash leaves either the old or the new commit.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokentally_aggregate::rollup::Rollup;

use super::REJECTED;
use tokentally_common::files::{FileSum, read_bounded, write_atomic};

pub const MANIFEST: &str = "MANIFEST.json";
const FORMAT: u32 = 1;

/// A manifest lists a few dozen files once compacted; this bound is for a
/// garbled or foreign file, not for any store tokentally writes.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// A file that left the manifest, kept until readers of older manifests
/// are surely done with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Garbage {
    pub file: String,
    pub since_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Number of the last commit.
    pub generation: u64,
    pub watermark_ms: Option<i64>,
    /// Source progress committed with the data.
    pub progress: BTreeMap<String, i64>,
    /// Table name → delta files (relative paths).
    pub tables: BTreeMap<String, Vec<String>>,
    /// Dedup id segments (relative paths).
    pub dedup_segments: Vec<String>,
    /// Dead-letter NDJSON files (relative paths).
    pub dead_letters: Vec<String>,
    pub garbage: Vec<Garbage>,
    /// Live file → its length and hash when committed (`store verify`).
    /// Absent in manifests written before checksums were recorded.
    #[serde(default)]
    pub checksums: BTreeMap<String, FileSum>,
    /// Dead-letter file → when its newest record was committed (ms), for
    /// `dead_letter_retention`. Absent in manifests written before the
    /// retention: such files count from the first commit that finds them.
    #[serde(default)]
    pub dead_letter_times: BTreeMap<String, i64>,
}

impl Manifest {
    pub fn empty() -> Self {
        Manifest {
            format: FORMAT,
            generation: 0,
            watermark_ms: None,
            progress: BTreeMap::new(),
            tables: BTreeMap::new(),
            dedup_segments: Vec::new(),
            dead_letters: Vec::new(),
            garbage: Vec::new(),
            checksums: BTreeMap::new(),
            dead_letter_times: BTreeMap::new(),
        }
    }

    /// Load the manifest of `dir`; `None` if the store is new.
    pub fn load(dir: &Path) -> io::Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let bytes = match read_bounded(&path, MAX_MANIFEST_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let invalid = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} {what} (see `tokentally store verify` and README's \"A damaged store\")",
                    path.display()
                ),
            )
        };
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("is not a valid manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(invalid(format!(
                "has format {}, this tokentally reads format {FORMAT}",
                m.format
            )));
        }
        if let Some(bad) = m
            .referenced()
            .chain(m.checksums.keys().map(String::as_str))
            .chain(m.dead_letter_times.keys().map(String::as_str))
            .find(|f| !is_store_file(f))
        {
            // A garbled entry must never name a file outside the store:
            // garbage collection deletes what the manifest lists.
            return Err(invalid(format!(
                "lists {bad:?}, which is not a file of a tokentally store"
            )));
        }
        Ok(Some(m))
    }

    /// Atomically replace the manifest of `dir`.
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(dir, MANIFEST, &json)
    }

    /// Every file the manifest references, garbage included.
    pub fn referenced(&self) -> impl Iterator<Item = &str> {
        self.tables
            .values()
            .flatten()
            .chain(&self.dedup_segments)
            .chain(&self.dead_letters)
            .map(String::as_str)
            .chain(self.garbage.iter().map(|g| g.file.as_str()))
    }
}

/// Whether `rel` has the shape of a file the store writes:
/// `tables/<table>/<name>.parquet`, `dedup/<name>.ids` or
/// `dead-letter/<name>.ndjson`, with a plain name (no separators, no
/// leading dot, so nothing can point outside the store).
fn is_store_file(rel: &str) -> bool {
    let plain = |name: &str, ext: &str| {
        name.strip_suffix(ext).is_some_and(|stem| {
            !stem.is_empty()
                && !stem.starts_with('.')
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    };
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["tables", table, name] => {
            (Rollup::ALL.iter().any(|r| r.table() == *table) || *table == REJECTED)
                && plain(name, ".parquet")
        }
        ["dedup", name] => plain(name, ".ids"),
        ["dead-letter", name] => plain(name, ".ndjson"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stores_own_files_may_be_listed() {
        for good in [
            "tables/usage_daily/0000000001.parquet",
            "tables/rejected/c0000000009.parquet",
            "dedup/0000000003.ids",
            "dead-letter/c0000000004.ndjson",
        ] {
            assert!(is_store_file(good), "{good}");
        }
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "tables/usage_daily/../../../x.parquet",
            "tables/nope/0000000001.parquet",
            "dedup/.ids",
            "dedup/a/b.ids",
            "dedup/0000000003.parquet",
            "MANIFEST.json",
            "",
        ] {
            assert!(!is_store_file(bad), "{bad}");
        }
    }

    #[test]
    fn a_garbled_manifest_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::empty();
        m.store(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Some(m.clone()));
        let path = dir.path().join(MANIFEST);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("MANIFEST.json is not a valid manifest"),
            "{err}"
        );
        m.garbage.push(Garbage {
            file: "../outside".into(),
            since_ms: 0,
        });
        m.store(dir.path()).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a file of a tokentally store"), "{err}");
    }
}
