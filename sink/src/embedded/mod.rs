//! The embedded store: a directory of append-only Parquet delta files,
//! dedup id segments and dead-letter files, tied together by an atomically
//! replaced manifest. Nothing is rewritten in place; compaction writes a new
//! file and swaps it in with the next manifest.
//!
//! ```text
//! DIR/MANIFEST.json                    what is committed
//! DIR/LOCK                             one writer at a time
//! DIR/tables/<table>/<gen>.parquet     roll-up deltas (c<gen>-l<level> = merged)
//! DIR/dedup/<gen>.ids                  ids remembered for dedup
//! DIR/dead-letter/<gen>.ndjson         refused records with their reasons
//! DIR/prices/<valid_from>.json         price tables (see `prices`)
//! ```

mod idfile;
mod levels;
pub(crate) mod manifest;
pub mod prices;
mod query;
mod verify;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tokentally_aggregate::BatchOutcome;
use tokentally_aggregate::rollup::Rollup;
use tokentally_aggregate::sink::{Recovered, UsageSink};
use tokentally_aggregate::source::BoxError;

pub use manifest::Manifest;
pub use query::{QueryError, open_query_context};
pub use verify::{Finding, Report, verify};

use manifest::Garbage;
use tokentally_common::files::{FileSum, checksum, sync_dir};

/// Levels dead-letter files climb (see `maintain`).
const DEAD_LETTER_LEVELS: u32 = 4;

/// The table of reject counts.
pub const REJECTED: &str = "rejected";

/// Schema of `rejected` rows.
pub fn rejected_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
    ]))
}

/// Store settings (`[store]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The store directory. Default `./tokentally-data`.
    pub dir: PathBuf,
    /// Merge the files of one compaction level of a table (or of the
    /// dead letters) into one file of the next level once the level holds
    /// more than this many.
    pub compact_after_files: usize,
    /// Seconds a replaced file is kept for readers of an older manifest.
    pub garbage_grace_secs: u64,
    /// Dead-letter files whose newest record is older than this are
    /// dropped; the counts in `rejected` stay. Default 90 days.
    #[serde(with = "humantime_serde")]
    pub dead_letter_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("tokentally-data"),
            compact_after_files: 16,
            garbage_grace_secs: 60,
            dead_letter_retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// Errors of the embedded store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "store {0} is in use by another tokentally process (its LOCK file is held); stop it or use another --store"
    )]
    Locked(PathBuf),
    #[error("writing {} failed: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("compaction query failed: {0}")]
    DataFusion(#[from] DataFusionError),
}

/// The embedded store, opened for writing.
pub struct EmbeddedStore {
    dir: PathBuf,
    config: StoreConfig,
    manifest: Manifest,
    _lock: File,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EmbeddedStore {
    /// Open (creating if needed) the store at `config.dir` for writing.
    /// Files left by an interrupted commit are removed.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        let io_err = |source| StoreError::Io {
            dir: dir.clone(),
            source,
        };
        for sub in ["tables", "dedup", "dead-letter"] {
            fs::create_dir_all(dir.join(sub)).map_err(io_err)?;
        }
        for r in Rollup::ALL {
            fs::create_dir_all(dir.join("tables").join(r.table())).map_err(io_err)?;
        }
        fs::create_dir_all(dir.join("tables").join(REJECTED)).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_err)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir));
        }
        let manifest = match Manifest::load(&dir).map_err(io_err)? {
            Some(m) => m,
            None => {
                let m = Manifest::empty();
                m.store(&dir).map_err(io_err)?;
                m
            }
        };
        let store = EmbeddedStore {
            dir: dir.clone(),
            config,
            manifest,
            _lock: lock,
        };
        store.remove_orphans().map_err(io_err)?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Remove files no manifest references (left by a crash mid-commit).
    fn remove_orphans(&self) -> io::Result<()> {
        let live: BTreeSet<&str> = self.manifest.referenced().collect();
        let mut dirs = vec![self.dir.join("dedup"), self.dir.join("dead-letter")];
        for t in Rollup::ALL.iter().map(|r| r.table()).chain([REJECTED]) {
            dirs.push(self.dir.join("tables").join(t));
        }
        for d in dirs {
            for entry in fs::read_dir(&d)? {
                let path = entry?.path();
                let rel = self.relative(&path);
                if !live.contains(rel.as_str()) {
                    fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// The checksum of a file just written, for the manifest.
    fn checksum(&self, rel: &str) -> Result<FileSum, StoreError> {
        checksum(&self.dir.join(rel)).map_err(|source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        })
    }

    fn write_parquet(
        &self,
        rel: &str,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<(), StoreError> {
        let path = self.dir.join(rel);
        let file = File::create(&path).map_err(|source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::LZ4_RAW)
            .build();
        // The path in the error: a full disk shows up here, and the
        // operator needs to know which disk.
        let parquet = |source| StoreError::Parquet {
            path: path.clone(),
            source,
        };
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet)?;
        for b in batches {
            w.write(b).map_err(parquet)?;
        }
        let file = w.into_inner().map_err(parquet)?;
        file.sync_all().map_err(|source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        })?;
        Ok(())
    }

    fn write_dead_letters(
        &self,
        rel: &str,
        outcome: &BatchOutcome,
        generation: u64,
    ) -> io::Result<()> {
        #[derive(Serialize)]
        struct Record<'a> {
            reason: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
            detail: &'a str,
            raw: std::borrow::Cow<'a, str>,
            generation: u64,
            index: usize,
        }
        let mut w = BufWriter::new(File::create(self.dir.join(rel))?);
        for dl in &outcome.dead_letters {
            let rec = Record {
                reason: dl.rejection.reason.as_str(),
                field: dl.rejection.field,
                detail: &dl.rejection.detail,
                raw: String::from_utf8_lossy(&dl.raw),
                generation,
                index: dl.index,
            };
            serde_json::to_writer(&mut w, &rec)?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    }

    fn commit_outcome(&mut self, outcome: &BatchOutcome) -> Result<(), StoreError> {
        let io_err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| StoreError::Io { dir, source }
        };
        let generation = self.manifest.generation + 1;
        let mut next = self.manifest.clone();
        next.generation = generation;
        next.watermark_ms = outcome.watermark_ms.or(next.watermark_ms);
        next.progress
            .extend(outcome.progress.iter().map(|(k, v)| (k.clone(), *v)));

        for r in Rollup::ALL {
            let batches = outcome.deltas.get(r);
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let rel = format!("tables/{}/{generation:010}.parquet", r.table());
            self.write_parquet(&rel, r.schema(), batches)?;
            next.checksums.insert(rel.clone(), self.checksum(&rel)?);
            next.tables
                .entry(r.table().to_string())
                .or_default()
                .push(rel);
        }
        if !outcome.stats.rejected.is_empty() {
            let reasons: Vec<&str> = outcome.stats.rejected.keys().map(|r| r.as_str()).collect();
            let counts: Vec<u64> = outcome.stats.rejected.values().copied().collect();
            let batch = RecordBatch::try_new(
                rejected_schema(),
                vec![
                    Arc::new(StringArray::from(reasons)),
                    Arc::new(UInt64Array::from(counts)),
                ],
            )
            .map_err(|e| StoreError::DataFusion(e.into()))?;
            let rel = format!("tables/{REJECTED}/{generation:010}.parquet");
            self.write_parquet(&rel, rejected_schema(), &[batch])?;
            next.checksums.insert(rel.clone(), self.checksum(&rel)?);
            next.tables
                .entry(REJECTED.to_string())
                .or_default()
                .push(rel);
        }
        if !outcome.new_ids.is_empty() {
            let rel = format!("dedup/{generation:010}.ids");
            idfile::write(&self.dir.join(&rel), &outcome.new_ids).map_err(io_err(&self.dir))?;
            next.checksums.insert(rel.clone(), self.checksum(&rel)?);
            next.dedup_segments.push(rel);
        }
        if !outcome.dead_letters.is_empty() {
            let rel = format!("dead-letter/{generation:010}.ndjson");
            self.write_dead_letters(&rel, outcome, generation)
                .map_err(io_err(&self.dir))?;
            next.checksums.insert(rel.clone(), self.checksum(&rel)?);
            next.dead_letter_times.insert(rel.clone(), now_ms());
            next.dead_letters.push(rel);
        }
        sync_dir(&self.dir.join("tables")).map_err(io_err(&self.dir))?;
        next.store(&self.dir).map_err(io_err(&self.dir))?;
        self.manifest = next;
        Ok(())
    }

    /// Merge the files of tables, dedup segments and dead letters that
    /// have accumulated too many, drop dead letters past their retention,
    /// then drop garbage past its grace period.
    async fn maintain(&mut self, dedup_floor: i64) -> Result<(), StoreError> {
        let limit = self.config.compact_after_files.max(2);
        let mut next = self.manifest.clone();
        let mut replaced = Vec::new();
        let generation = next.generation;
        let io_err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| StoreError::Io { dir, source }
        };
        let table_names: Vec<String> = next.tables.keys().cloned().collect();
        for table in table_names {
            while let Some((level, inputs)) =
                levels::next_merge(&next.tables[&table], limit, u32::MAX)
            {
                let started = Instant::now();
                let batches = query::merge_files(&self.dir, &table, &inputs).await?;
                let rel = levels::merged_name(
                    &format!("tables/{table}"),
                    generation,
                    level + 1,
                    "parquet",
                );
                self.write_parquet(&rel, query::table_schema(&table), &batches)?;
                next.checksums.insert(rel.clone(), self.checksum(&rel)?);
                let files = next.tables.entry(table.clone()).or_default();
                files.retain(|f| !inputs.contains(f));
                files.push(rel);
                tracing::debug!(
                    table,
                    level = level + 1,
                    files = inputs.len(),
                    rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
                    seconds = started.elapsed().as_secs_f64(),
                    "merged store files"
                );
                replaced.extend(inputs);
            }
        }
        if next.dedup_segments.len() > 4 * limit {
            // Filtered segment by segment: memory for the ids kept, not for
            // every id of 64 segments (64 batches' worth). What is kept is
            // the horizon's ids, so this rewrite is bounded by the horizon.
            let (mut ids, mut segment) = (Vec::new(), Vec::new());
            for seg in &next.dedup_segments {
                idfile::read(&self.dir.join(seg), &mut segment).map_err(io_err(&self.dir))?;
                ids.extend(
                    segment
                        .drain(..)
                        .filter(|(bucket, _)| *bucket >= dedup_floor),
                );
            }
            let rel = format!("dedup/c{generation:010}.ids");
            idfile::write(&self.dir.join(&rel), &ids).map_err(io_err(&self.dir))?;
            next.checksums.insert(rel.clone(), self.checksum(&rel)?);
            replaced.append(&mut next.dedup_segments);
            next.dedup_segments.push(rel);
        }
        let now = now_ms();
        for f in &next.dead_letters {
            next.dead_letter_times.entry(f.clone()).or_insert(now);
        }
        // Dead letters climb at most DEAD_LETTER_LEVELS levels, so that a
        // file spans at most (limit + 1)^4 commits with dead letters, and
        // the retention drops them a file at a time.
        while let Some((level, inputs)) =
            levels::next_merge(&next.dead_letters, limit, DEAD_LETTER_LEVELS)
        {
            let rel = levels::merged_name("dead-letter", generation, level + 1, "ndjson");
            let mut out =
                BufWriter::new(File::create(self.dir.join(&rel)).map_err(io_err(&self.dir))?);
            for f in &inputs {
                let mut src = File::open(self.dir.join(f)).map_err(io_err(&self.dir))?;
                io::copy(&mut src, &mut out).map_err(io_err(&self.dir))?;
            }
            out.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(io_err(&self.dir))?;
            next.checksums.insert(rel.clone(), self.checksum(&rel)?);
            let newest = inputs
                .iter()
                .filter_map(|f| next.dead_letter_times.get(f))
                .max()
                .copied()
                .unwrap_or(now);
            next.dead_letter_times.insert(rel.clone(), newest);
            next.dead_letters.retain(|f| !inputs.contains(f));
            next.dead_letters.push(rel);
            replaced.extend(inputs);
        }
        let retention =
            i64::try_from(self.config.dead_letter_retention.as_millis()).unwrap_or(i64::MAX);
        let (aged, kept): (Vec<String>, Vec<String>) = next.dead_letters.drain(..).partition(|f| {
            next.dead_letter_times
                .get(f)
                .is_some_and(|t| now.saturating_sub(*t) > retention)
        });
        next.dead_letters = kept;
        replaced.extend(aged);
        let grace = self.config.garbage_grace_secs as i64 * 1000;
        let (expired, kept): (Vec<Garbage>, Vec<Garbage>) = next
            .garbage
            .drain(..)
            .partition(|g| now - g.since_ms >= grace);
        next.garbage = kept;
        for file in &replaced {
            next.checksums.remove(file);
            next.dead_letter_times.remove(file);
        }
        next.garbage
            .extend(replaced.into_iter().map(|file| Garbage {
                file,
                since_ms: now,
            }));
        if next == self.manifest && expired.is_empty() {
            return Ok(());
        }
        next.store(&self.dir).map_err(io_err(&self.dir))?;
        self.manifest = next;
        for g in expired {
            match fs::remove_file(self.dir.join(&g.file)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&self.dir)(e)),
            }
        }
        Ok(())
    }

    /// All remembered dedup ids.
    fn read_dedup_ids(&self) -> io::Result<Vec<(i64, u128)>> {
        let mut ids = Vec::new();
        for seg in &self.manifest.dedup_segments {
            idfile::read(&self.dir.join(seg), &mut ids)?;
        }
        Ok(ids)
    }
}

impl UsageSink for EmbeddedStore {
    async fn recover(&mut self) -> Result<Recovered, BoxError> {
        let started = Instant::now();
        let dedup_ids = self.read_dedup_ids().map_err(|source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        })?;
        tracing::info!(
            sources = self.manifest.progress.len(),
            ids = dedup_ids.len(),
            watermark_ms = ?self.manifest.watermark_ms,
            seconds = started.elapsed().as_secs_f64(),
            "recovered from the store"
        );
        Ok(Recovered {
            watermark_ms: self.manifest.watermark_ms,
            dedup_ids,
            progress: self.manifest.progress.clone(),
        })
    }

    /// The store has one writer (its lock), so the progress in memory is
    /// the committed one, and every id was loaded by `recover`.
    async fn recover_partitions(&mut self, keys: &[String]) -> Result<Recovered, BoxError> {
        Ok(Recovered {
            progress: keys
                .iter()
                .filter_map(|k| Some((k.clone(), *self.manifest.progress.get(k)?)))
                .collect(),
            ..Recovered::default()
        })
    }

    async fn commit(&mut self, outcome: &BatchOutcome) -> Result<(), BoxError> {
        self.commit_outcome(outcome)?;
        self.maintain(outcome.dedup_floor).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokentally_aggregate::core::BatchStats;

    fn ids_only(new_ids: Vec<(i64, u128)>, dedup_floor: i64) -> BatchOutcome {
        BatchOutcome {
            deltas: Default::default(),
            dead_letters: Vec::new(),
            new_ids,
            dedup_floor,
            stats: BatchStats::default(),
            watermark_ms: None,
            progress: std::collections::BTreeMap::new(),
            starts: std::collections::BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn compacting_dedup_segments_keeps_exactly_the_ids_at_or_above_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(StoreConfig {
            dir: dir.path().to_path_buf(),
            compact_after_files: 2, // segments are merged past 4 * 2
            garbage_grace_secs: 0,
            ..StoreConfig::default()
        })
        .unwrap();
        // Nine batches, each with ids in hours b and b + 1; the ninth
        // commit compacts, with the floor at hour 5.
        for b in 0..9i64 {
            let ids = vec![(b, b as u128 * 10), (b + 1, b as u128 * 10 + 1)];
            let floor = if b == 8 { 5 } else { 0 };
            store.commit(&ids_only(ids, floor)).await.unwrap();
        }
        assert_eq!(store.manifest.dedup_segments.len(), 1, "compacted");
        let mut kept = store.recover().await.unwrap().dedup_ids;
        kept.sort_unstable();
        let mut want: Vec<(i64, u128)> = (0..9i64)
            .flat_map(|b| [(b, b as u128 * 10), (b + 1, b as u128 * 10 + 1)])
            .filter(|(bucket, _)| *bucket >= 5)
            .collect();
        want.sort_unstable();
        assert_eq!(kept, want);
    }
}
