//! NDJSON from a file or standard input.
//!
//! A reader thread splits lines into micro-batches and hands them over a
//! bounded channel, so reading overlaps with aggregation and memory stays
//! bounded. Blank lines are skipped; a trailing `\r` is removed.
//!
//! For a regular file, each batch carries its end byte offset as progress
//! (key `file:<absolute path>`, with a fingerprint of the file's first 4 KiB
//! under `file:<absolute path>#head`). The sink commits it with the data, so
//! ingesting the same file again — after a crash or on purpose — continues
//! after the last committed line instead of reading it all again. A file
//! whose head changed is read from the start (dedup still drops ids already
//! counted within the horizon).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::thread;

use tokio::sync::mpsc;

use super::{BoxError, EventSource, RawBatch, SourceKey};

const HEAD_BYTES: usize = 4096;

/// Longest line kept whole: a longer one is cut to its first
/// `MAX_LINE_BYTES + 1` bytes (the rest is read past, never held), so that
/// a file without newlines cannot exhaust memory; the decoder then refuses
/// it as `too_large` (`max_record_bytes`, 1 MiB by default, is far below).
pub const MAX_LINE_BYTES: usize = 64 << 20;

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

struct Position {
    /// The file's [`SourceKey`], as stored.
    key: String,
    /// Where the fingerprint of the file's head is stored: the key with
    /// `#head` appended (a fingerprint, not a position).
    head_key: String,
    head: i64,
    len: u64,
}

enum State {
    Ready(Box<dyn Read + Send>, u64),
    Running(mpsc::Receiver<Result<RawBatch, BoxError>>),
}

/// Reads NDJSON lines in micro-batches.
pub struct FileSource {
    state: Option<State>,
    position: Option<Position>,
    batch_records: usize,
    skipped: u64,
}

impl FileSource {
    /// Open `input`; batches hold at most `batch_records` lines.
    pub fn open(input: Input, batch_records: usize) -> io::Result<Self> {
        let (reader, position): (Box<dyn Read + Send>, _) = match &input {
            Input::Stdin => (Box::new(io::stdin()), None),
            Input::Path(p) => {
                let with_path = |e: io::Error| {
                    io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
                };
                let mut file = File::open(p).map_err(with_path)?;
                let meta = file.metadata().map_err(with_path)?;
                let position = if meta.is_file() {
                    let mut head = Vec::with_capacity(HEAD_BYTES);
                    (&mut file)
                        .take(HEAD_BYTES as u64)
                        .read_to_end(&mut head)
                        .map_err(with_path)?;
                    file.seek(SeekFrom::Start(0)).map_err(with_path)?;
                    let path = std::path::absolute(p).map_err(with_path)?;
                    let key = SourceKey::File { path }.to_string();
                    Some(Position {
                        head_key: format!("{key}#head"),
                        key,
                        head: xxhash_rust::xxh3::xxh3_64(&head) as i64,
                        len: meta.len(),
                    })
                } else {
                    None // a pipe or device: no position to resume from
                };
                (Box::new(file), position)
            }
        };
        Ok(FileSource {
            state: Some(State::Ready(reader, 0)),
            position,
            batch_records: batch_records.max(1),
            skipped: 0,
        })
    }

    /// Bytes skipped because a previous run had committed them.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    fn start(&mut self) -> Result<(), BoxError> {
        if !matches!(self.state, Some(State::Ready(..))) {
            return Ok(());
        }
        if let Some(State::Ready(mut reader, offset)) = self.state.take() {
            if offset > 0 {
                // Only regular files get a non-zero offset, and they can skip.
                io::copy(&mut (&mut reader).take(offset), &mut io::sink())?;
            }
            let (tx, rx) = mpsc::channel(2);
            let batch_records = self.batch_records;
            let tags = self
                .position
                .as_ref()
                .map(|p| (p.key.clone(), p.head_key.clone(), p.head));
            thread::Builder::new()
                .name("file-source".into())
                .spawn(move || {
                    read_batches(
                        BufReader::with_capacity(1 << 20, reader),
                        offset,
                        batch_records,
                        tags,
                        tx,
                    )
                })?;
            self.state = Some(State::Running(rx));
        }
        Ok(())
    }
}

fn read_batches(
    mut reader: impl BufRead,
    mut offset: u64,
    batch_records: usize,
    tags: Option<(String, String, i64)>,
    tx: mpsc::Sender<Result<RawBatch, BoxError>>,
) {
    let mut line = Vec::with_capacity(1024);
    loop {
        let mut batch = RawBatch::with_capacity(batch_records, batch_records * 256);
        let mut eof = false;
        while batch.len() < batch_records {
            line.clear();
            match read_line_bounded(&mut reader, &mut line, MAX_LINE_BYTES) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    offset += n as u64;
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
        if let Some((key, head_key, head)) = &tags {
            batch.progress.insert(key.clone(), offset as i64);
            batch.progress.insert(head_key.clone(), *head);
        }
        if batch.is_empty() {
            return;
        }
        if tx.blocking_send(Ok(batch)).is_err() || eof {
            return;
        }
    }
}

/// Like `read_until(b'\n')`, but keeps at most `max + 1` bytes of the line
/// in `line`; returns the bytes consumed (the whole line, newline included).
fn read_line_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(consumed);
        }
        let (n, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = (max + 1).saturating_sub(line.len());
        line.extend_from_slice(&buf[..n.min(room)]);
        reader.consume(n);
        consumed += n;
        if done {
            return Ok(consumed);
        }
    }
}

impl EventSource for FileSource {
    fn resume(&mut self, committed: &BTreeMap<String, i64>) -> Result<(), BoxError> {
        let Some(pos) = &self.position else {
            return Ok(());
        };
        let (Some(&offset), Some(&head)) = (committed.get(&pos.key), committed.get(&pos.head_key))
        else {
            return Ok(());
        };
        let offset = offset.max(0) as u64;
        if head == pos.head && offset <= pos.len {
            if let Some(State::Ready(_, start)) = &mut self.state {
                *start = offset;
                self.skipped = offset;
            }
        } else {
            tracing::warn!(
                file = %pos.key,
                committed_offset = offset,
                "the file changed since it was last ingested; reading it from the start (dedup drops ids already counted)"
            );
        }
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, BoxError> {
        self.start()?;
        match &mut self.state {
            Some(State::Running(rx)) => rx.recv().await.transpose(),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_read_past() {
        let text = format!("short\n{}\nlast", "x".repeat(100));
        let mut reader = io::BufReader::with_capacity(8, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_line_bounded(&mut reader, &mut line, 10).unwrap(), 6);
        assert_eq!(line, b"short\n");
        line.clear();
        assert_eq!(read_line_bounded(&mut reader, &mut line, 10).unwrap(), 101);
        assert_eq!(line, b"xxxxxxxxxxx", "the first max + 1 bytes");
        line.clear();
        assert_eq!(read_line_bounded(&mut reader, &mut line, 10).unwrap(), 4);
        assert_eq!(line, b"last");
        line.clear();
        assert_eq!(read_line_bounded(&mut reader, &mut line, 10).unwrap(), 0);
    }

    async fn read_all(src: &mut FileSource) -> (Vec<String>, Vec<usize>, BTreeMap<String, i64>) {
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        let mut progress = BTreeMap::new();
        while let Some(b) = src.next_batch().await.unwrap() {
            sizes.push(b.len());
            all.extend(b.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()));
            progress.extend(b.progress.clone());
        }
        (all, sizes, progress)
    }

    #[tokio::test]
    async fn splits_lines_into_batches_and_resumes_after_committed_progress() {
        let dir = std::env::temp_dir().join(format!("tt-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.ndjson");
        std::fs::write(&path, "a\r\n\n  \nb\nc\nd\ne").unwrap();
        let mut src = FileSource::open(Input::Path(path.clone()), 2).unwrap();
        src.resume(&BTreeMap::new()).unwrap();
        let (all, sizes, progress) = read_all(&mut src).await;
        assert_eq!(all, ["a", "b", "c", "d", "e"]);
        assert_eq!(sizes, [2, 2, 1]);
        let key = SourceKey::File {
            path: std::path::absolute(&path).unwrap(),
        }
        .to_string();
        assert_eq!(progress[&key], 14, "the whole file");

        // Committed after the first batch ("a", "b" = 9 bytes): continue at "c".
        let mut committed = progress.clone();
        committed.insert(key.clone(), 9);
        let mut again = FileSource::open(Input::Path(path.clone()), 10).unwrap();
        again.resume(&committed).unwrap();
        assert_eq!(read_all(&mut again).await.0, ["c", "d", "e"]);
        assert_eq!(again.skipped_bytes(), 9);

        // A different file at the same path is read from the start.
        std::fs::write(&path, "x\ny\n").unwrap();
        let mut changed = FileSource::open(Input::Path(path), 10).unwrap();
        changed.resume(&committed).unwrap();
        assert_eq!(read_all(&mut changed).await.0, ["x", "y"]);
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
