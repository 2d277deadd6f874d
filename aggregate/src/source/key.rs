//! The keys of source positions: which source, and which part of it, a
//! position in [`RawBatch::progress`](super::RawBatch::progress) belongs to.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// What a source position is the position in. Sinks store it as the
/// string its [`Display`](fmt::Display) writes, `kafka:<topic>:<partition>`
/// or `file:<absolute path>`, and [`FromStr`] reads those strings back.
///
/// A path that is not valid UTF-8 is stored as [`Path::display`] writes it
/// (invalid sequences replaced), so such a key reads back as another path.
///
/// [`Path::display`]: std::path::Path::display
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// A partition of a Kafka topic: the position is the next offset to read.
    Kafka { topic: String, partition: i32 },
    /// A regular file, by its absolute path: the position is the byte
    /// offset after the last line read.
    File { path: PathBuf },
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::Kafka { topic, partition } => write!(f, "kafka:{topic}:{partition}"),
            SourceKey::File { path } => write!(f, "file:{}", path.display()),
        }
    }
}

/// A string that is no [`SourceKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a source key: {0:?}")]
pub struct NotASourceKey(String);

impl FromStr for SourceKey {
    type Err = NotASourceKey;

    /// The partition of a Kafka key is what follows its last colon, so a
    /// topic may hold colons; it is read as [`i32`] reads it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not = || NotASourceKey(s.to_string());
        if let Some(rest) = s.strip_prefix("kafka:") {
            let (topic, partition) = rest.rsplit_once(':').ok_or_else(not)?;
            let partition = partition.parse().map_err(|_| not())?;
            return Ok(SourceKey::Kafka {
                topic: topic.to_string(),
                partition,
            });
        }
        if let Some(path) = s.strip_prefix("file:") {
            return Ok(SourceKey::File { path: path.into() });
        }
        Err(not())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(topic: &str, partition: i32) -> SourceKey {
        SourceKey::Kafka {
            topic: topic.to_string(),
            partition,
        }
    }

    fn file(path: &str) -> SourceKey {
        SourceKey::File { path: path.into() }
    }

    #[test]
    fn keys_are_stored_as_before() {
        assert_eq!(kafka("events", 3).to_string(), "kafka:events:3");
        assert_eq!(kafka("t", -1).to_string(), "kafka:t:-1");
        assert_eq!(file("/data/in.ndjson").to_string(), "file:/data/in.ndjson");
        assert_eq!("kafka:events:3".parse(), Ok(kafka("events", 3)));
        assert_eq!("file:/data/in.ndjson".parse(), Ok(file("/data/in.ndjson")));
    }

    #[test]
    fn keys_read_back_as_written() {
        for key in [
            kafka("events", 0),
            kafka("events", i32::MAX),
            kafka("a:b:c", 12),
            kafka("with space", 1),
            kafka("tökens-événements-トークン", 7),
            kafka("", 0),
            kafka("ends:", 2),
            kafka("12", 34),
            file("/data/in.ndjson"),
            file("/data/a:b/c:1"),
            file("/data/with space/x y.ndjson"),
            file("/données/トークン/ü.ndjson"),
            file("/data/in.ndjson#head"),
            file("/kafka:t:0"),
            file(""),
        ] {
            let stored = key.to_string();
            assert_eq!(stored.parse::<SourceKey>(), Ok(key), "{stored}");
        }
    }

    #[test]
    fn a_kafka_key_needs_a_partition_number() {
        for bad in [
            "kafka:",
            "kafka:t",
            "kafka:t:",
            "kafka:t:x",
            "kafka:t:1:x",
            "kafka:t:99999999999",
            "kafka:t:1.0",
            "kafka:t: 1",
        ] {
            assert_eq!(
                bad.parse::<SourceKey>(),
                Err(NotASourceKey(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_strings_are_no_keys() {
        for bad in ["", "p", "Kafka:t:0", "kafka", "file", "FILE:/x", " file:/x"] {
            assert!(bad.parse::<SourceKey>().is_err(), "{bad}");
        }
        let err = "p".parse::<SourceKey>().unwrap_err();
        assert_eq!(err.to_string(), r#"not a source key: "p""#);
    }
}
