//! The Kafka source against a real broker: where it starts reading a
//! partition, when it hands a batch over, and what a rebalance takes away.
//!
//! Needs the broker of `scripts/services up` (as `scripts/test` runs it):
//! `TOKENTALLY_KAFKA_BROKERS`. Fails, never skips, without it. What needs no
//! broker is unit-tested in `aggregate/src/source/kafka/tests.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokentally_aggregate::source::kafka::{KafkaSource, KafkaSourceConfig};
use tokentally_aggregate::source::{EventSource, RawBatch, SourceKey};

/// How long a batch that should come may take (joining a group takes
/// seconds).
const WAIT: Duration = Duration::from_secs(30);

fn brokers() -> String {
    std::env::var("TOKENTALLY_KAFKA_BROKERS")
        .expect("TOKENTALLY_KAFKA_BROKERS: start the broker with scripts/services up")
}

/// A new topic of `partitions` partitions, named after the test.
async fn new_topic(name: &str, partitions: i32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("tt-source-{name}-{nanos}");
    let kafka = tokentally_ingest::kafka::KafkaConfig {
        brokers: brokers(),
        ..Default::default()
    };
    tokentally_ingest::kafka::create_topics(&kafka, &[(&topic, partitions)])
        .await
        .unwrap();
    topic
}

/// Write `records` records to `partition` of `topic`, each its partition
/// and offset-to-be (`"<partition>:<n>"`, counting from `from`).
async fn produce(topic: &str, partition: i32, from: usize, records: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for n in from..from + records {
        let payload = format!("{partition}:{n}");
        let record = FutureRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(&payload);
        producer.send(record, WAIT).await.unwrap();
    }
}

/// Commit `offset` of partition 0 of `topic` for the consumer group `group`.
fn commit_group_offset(topic: &str, group: &str, offset: i64) {
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    committer.commit(&tpl, CommitMode::Sync).unwrap();
}

/// A member of the consumer group named after `topic`, resumed from an
/// empty ledger (as the pipeline does before the first batch).
fn member(topic: &str, batch_records: usize, max_wait: Duration) -> KafkaSource {
    let mut source = KafkaSource::connect(KafkaSourceConfig {
        connection: tokentally_ingest::kafka::Connection::plaintext(brokers()),
        topic: topic.to_string(),
        group: topic.to_string(),
        batch_records,
        max_wait,
        exit_on_idle: None,
        instance_id: None,
        lag: None,
    })
    .unwrap();
    source.resume(&BTreeMap::new()).unwrap();
    source
}

/// The next batch, which must come within [`WAIT`].
async fn next(source: &mut KafkaSource) -> RawBatch {
    tokio::time::timeout(WAIT, source.next_batch())
        .await
        .expect("a batch in time")
        .unwrap()
        .expect("a batch, not the end")
}

fn key(topic: &str, partition: i32) -> String {
    SourceKey::Kafka {
        topic: topic.to_string(),
        partition,
    }
    .to_string()
}

fn records(batch: &RawBatch) -> Vec<String> {
    batch
        .iter()
        .map(|r| String::from_utf8(r.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_partition_is_read_from_the_ledger_not_from_the_groups_offset() {
    let topic = new_topic("ledger", 1).await;
    produce(&topic, 0, 0, 100).await;
    // The group committed offset 80 (say, while feeding another
    // database); the ledger of this one ends at 40.
    commit_group_offset(&topic, &topic, 80);
    let mut source = member(&topic, 1_000, Duration::from_secs(1));
    let first = next(&mut source).await;
    assert!(first.is_empty());
    assert_eq!(first.needs_resume, vec![key(&topic, 0)]);
    drop(first);
    let ledger = BTreeMap::from([(key(&topic, 0), 40)]);
    source.resume(&ledger).unwrap();
    let batch = next(&mut source).await;
    assert_eq!(batch.len(), 60, "offsets 40..100");
    assert_eq!(records(&batch)[0], "0:40");
    assert_eq!(batch.progress, BTreeMap::from([(key(&topic, 0), 100)]));
    assert_eq!(batch.starts, BTreeMap::from([(key(&topic, 0), 40)]));
}

#[tokio::test]
async fn the_tail_of_a_backlog_is_handed_over_without_waiting() {
    let topic = new_topic("tail", 1).await;
    produce(&topic, 0, 0, 150).await;
    let mut source = member(&topic, 100, Duration::from_secs(60));
    let first = next(&mut source).await;
    assert_eq!(first.needs_resume, vec![key(&topic, 0)]);
    drop(first);
    source.resume(&BTreeMap::new()).unwrap();
    assert_eq!(next(&mut source).await.len(), 100);
    // The other 50 are all there is: they come at the partition's end,
    // not after the 60 s `max_wait`.
    let tail = next(&mut source).await;
    assert_eq!(tail.len(), 50);
    assert_eq!(tail.progress, BTreeMap::from([(key(&topic, 0), 150)]));
}

#[tokio::test]
async fn a_revoked_partition_leaves_the_batch_being_filled_for_its_new_owner() {
    let topic = new_topic("revoked", 2).await;
    produce(&topic, 0, 0, 5).await;
    produce(&topic, 1, 0, 5).await;
    // Batches of 15 that wait a minute: only records fill them in time.
    let max_wait = Duration::from_secs(60);
    let mut first_member = member(&topic, 15, max_wait);
    let asked = next(&mut first_member).await;
    assert_eq!(asked.needs_resume, vec![key(&topic, 0), key(&topic, 1)]);
    drop(asked); // committed: the member may give partitions up
    first_member.resume(&BTreeMap::new()).unwrap();

    // The first member takes the ten records and waits for more; a second
    // one joins and is handed a partition once the first gave it up.
    let mut second_member = member(&topic, 15, max_wait);
    let asked = next(&mut second_member).await;
    let [moved] = asked.needs_resume.as_slice() else {
        panic!("asked for {:?}", asked.needs_resume);
    };
    let moved = match moved.parse::<SourceKey>().unwrap() {
        SourceKey::Kafka { partition, .. } => partition,
        other => panic!("{other}"),
    };
    let kept = 1 - moved;
    drop(asked);
    second_member.resume(&BTreeMap::new()).unwrap();

    // Ten more records per partition: each member's batch fills with its
    // own partition, from its first record; none of the moved partition's
    // records stays in the first member's batch.
    produce(&topic, 0, 5, 10).await;
    produce(&topic, 1, 5, 10).await;
    let expected = |p: i32| (0..15).map(|n| format!("{p}:{n}")).collect::<Vec<_>>();
    let from_first = next(&mut first_member).await;
    assert_eq!(records(&from_first), expected(kept));
    assert_eq!(
        from_first.progress,
        BTreeMap::from([(key(&topic, kept), 15)])
    );
    assert_eq!(from_first.starts, BTreeMap::from([(key(&topic, kept), 0)]));
    let from_second = next(&mut second_member).await;
    assert_eq!(records(&from_second), expected(moved));
    assert_eq!(
        from_second.progress,
        BTreeMap::from([(key(&topic, moved), 15)])
    );
}
