//! NDJSON from a file or standard input.
//!
//! A reader thread splits lines into micro-batches and hands them over a
//! bounded channel, so reading overlaps with aggregation and memory stays
//! bounded. Blank lines are skipped; a trailing `\r` is removed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::thread;

use tokio::sync::mpsc;

use super::{BoxError, EventSource, RawBatch};

/// Reads NDJSON lines in micro-batches.
pub struct FileSource {
    rx: mpsc::Receiver<Result<RawBatch, BoxError>>,
}

/// Where to read from.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    Path(PathBuf),
}

impl Input {
    /// `-` means standard input.
    pub fn parse(arg: &Path) -> Input {
        if arg == Path::new("-") {
            Input::Stdin
        } else {
            Input::Path(arg.to_path_buf())
        }
    }
}

impl FileSource {
    /// Open `input` and start reading batches of at most `batch_records`
    /// lines.
    pub fn open(input: Input, batch_records: usize) -> io::Result<Self> {
        let reader: Box<dyn Read + Send> = match &input {
            Input::Stdin => Box::new(io::stdin()),
            Input::Path(p) => Box::new(File::open(p).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
            })?),
        };
        let (tx, rx) = mpsc::channel(2);
        thread::Builder::new()
            .name("file-source".into())
            .spawn(move || {
                read_batches(
                    BufReader::with_capacity(1 << 20, reader),
                    batch_records.max(1),
                    tx,
                )
            })?;
        Ok(FileSource { rx })
    }
}

fn read_batches(
    mut reader: impl BufRead,
    batch_records: usize,
    tx: mpsc::Sender<Result<RawBatch, BoxError>>,
) {
    let mut line = Vec::with_capacity(1024);
    loop {
        let mut batch = RawBatch::with_capacity(batch_records, batch_records * 256);
        while batch.len() < batch_records {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let mut rec: &[u8] = &line;
                    while let [rest @ .., b'\n' | b'\r'] = rec {
                        rec = rest;
                    }
                    if !rec.iter().all(u8::is_ascii_whitespace) {
                        batch.push(rec);
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(Box::new(e)));
                    return;
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let full = batch.len() == batch_records;
        if tx.blocking_send(Ok(batch)).is_err() || !full {
            return;
        }
    }
}

impl EventSource for FileSource {
    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        self.rx.recv().await.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_into_batches() {
        let dir = std::env::temp_dir().join(format!("tt-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.ndjson");
        std::fs::write(&path, "a\r\n\n  \nb\nc\nd\ne").unwrap();
        let mut src = FileSource::open(Input::Path(path), 2).unwrap();
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        while let Some(b) = src.next_batch().await.unwrap() {
            sizes.push(b.len());
            all.extend(b.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()));
        }
        assert_eq!(all, ["a", "b", "c", "d", "e"]);
        assert_eq!(sizes, [2, 2, 1]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = FileSource::open(Input::Path("/nonexistent/x.ndjson".into()), 10)
            .err()
            .expect("missing file");
        assert!(err.to_string().contains("/nonexistent/x.ndjson"), "{err}");
    }
}
