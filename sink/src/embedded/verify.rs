//! `tokentally store verify`: read every file the manifest lists, the way
//! the store and its readers would, and name each one that is damaged.
//! Nothing is changed; it is safe beside a running writer (committed files
//! are never rewritten in place).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use arrow::array::RecordBatchReader;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use super::manifest::{MANIFEST, Manifest};
use super::{idfile, query};
use tokentally_common::files::checksum;

/// One damaged file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Relative to the store directory.
    pub file: String,
    pub problem: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The manifest's generation (0 when the manifest itself is damaged).
    pub generation: u64,
    /// Files read, the manifest included.
    pub files: usize,
    /// Rows read from the Parquet deltas.
    pub rows: u64,
    /// Ids read from the dedup segments.
    pub ids: u64,
    pub damaged: Vec<Finding>,
}

/// Verify the store at `dir`. An error only when there is no store there;
/// damage is reported in [`Report::damaged`].
pub fn verify(dir: &Path) -> io::Result<Report> {
    let mut report = Report {
        files: 1,
        ..Report::default()
    };
    let manifest = match Manifest::load(dir) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no tokentally store at {} (no {MANIFEST})", dir.display()),
            ));
        }
        Err(e) => {
            report.damaged.push(Finding {
                file: MANIFEST.into(),
                problem: e.to_string(),
            });
            return Ok(report);
        }
    };
    report.generation = manifest.generation;
    let sums = &manifest.checksums;
    let mut check = |file: &str, result: Result<(), String>| {
        report.files += 1;
        // A changed file is damaged even when it still parses: its rows
        // would be read back as other numbers.
        let result = match sums.get(file).filter(|_| result.is_ok()) {
            Some(want) => match checksum(&dir.join(file)) {
                Ok(got) if got == *want => result,
                Ok(got) => Err(format!(
                    "has changed since it was committed ({got}; committed as {want})"
                )),
                Err(e) => Err(format!("cannot be read: {e}")),
            },
            None => result,
        };
        if let Err(problem) = result {
            report.damaged.push(Finding {
                file: file.to_string(),
                problem,
            });
        }
    };
    let mut rows = 0;
    for (table, files) in &manifest.tables {
        for f in files {
            check(f, read_parquet(&dir.join(f), table).map(|n| rows += n));
        }
    }
    let mut ids = Vec::new();
    let mut id_count = 0;
    for f in &manifest.dedup_segments {
        let read = idfile::read(&dir.join(f), &mut ids).map_err(|e| e.to_string());
        id_count += ids.len() as u64;
        ids.clear();
        check(f, read);
    }
    for f in &manifest.dead_letters {
        check(f, read_dead_letters(&dir.join(f)));
    }
    report.rows = rows;
    report.ids = id_count;
    Ok(report)
}

/// Every row of a delta file, checked against its table's schema.
fn read_parquet(path: &Path, table: &str) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| format!("is not a readable Parquet file: {e}"))?;
    let want = query::table_schema(table);
    let got = reader.schema();
    let shape = |s: &arrow::datatypes::Schema| {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect::<Vec<_>>()
    };
    if shape(&got) != shape(&want) {
        return Err(format!(
            "has the columns of another table: {:?}",
            shape(&got)
        ));
    }
    let mut rows = 0;
    for batch in reader {
        rows += batch.map_err(|e| format!("is damaged: {e}"))?.num_rows() as u64;
    }
    Ok(rows)
}

/// Every line of a dead-letter file is one JSON object.
fn read_dead_letters(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("cannot be read: {e}"))?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&line)
            .map_err(|e| format!("line {} is not a JSON record: {e}", n + 1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::{EmbeddedStore, StoreConfig};
    use tokentally_aggregate::sink::{Recovered, UsageSink};
    use tokentally_aggregate::source::RawBatch;
    use tokentally_aggregate::{Aggregator, AggregatorConfig};

    /// A store with one committed batch of two events, one dead letter.
    async fn store(dir: &Path) {
        let mut store = EmbeddedStore::open(StoreConfig {
            dir: dir.to_path_buf(),
            ..StoreConfig::default()
        })
        .unwrap();
        let mut agg = Aggregator::new(AggregatorConfig::default(), &Recovered::default());
        let mut raw = RawBatch::default();
        for line in [
            r#"{"event_id":"a","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":2}"#,
            r#"{"event_id":"b","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":3,"completion_tokens":4}"#,
            "not json",
        ] {
            raw.push(line.as_bytes());
        }
        let outcome = agg.process(&raw).await.unwrap();
        store.commit(&outcome).await.unwrap();
    }

    fn damage(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    }

    #[tokio::test]
    async fn every_damaged_file_is_named_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path()).await;
        let intact = verify(dir.path()).unwrap();
        assert!(intact.damaged.is_empty(), "{:?}", intact.damaged);
        assert!(intact.rows > 0 && intact.ids == 2, "{intact:?}");

        let m = Manifest::load(dir.path()).unwrap().unwrap();
        let delta = &m.tables["usage_daily"][0];
        let segment = &m.dedup_segments[0];
        damage(&dir.path().join(delta));
        damage(&dir.path().join(segment));
        let report = verify(dir.path()).unwrap();
        let named: Vec<&str> = report.damaged.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(named, vec![delta.as_str(), segment.as_str()], "{report:?}");

        damage(&dir.path().join(MANIFEST));
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(report.damaged[0].file, MANIFEST);
    }
}
