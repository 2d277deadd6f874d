//! The store's manifest: the single source of truth for which files hold
//! committed data. It is replaced atomically (write, fsync, rename, fsync
//! the directory), so a crash leaves either the old or the new commit.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "MANIFEST.json";
const FORMAT: u32 = 1;

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
        }
    }

    /// Load the manifest of `dir`; `None` if the store is new.
    pub fn load(dir: &Path) -> io::Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid manifest: {e}", path.display()),
            )
        })?;
        if m.format != FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} has format {}, this tokentally reads format {FORMAT}",
                    path.display(),
                    m.format
                ),
            ));
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

/// Replace `dir/name` with `bytes` atomically: write a temporary file,
/// fsync it, rename it over the old one, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// fsync a directory so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
