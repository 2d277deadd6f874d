//! Tests of the Kafka source that need no broker: the cursor and the
//! batch-cut policy, the rebalance context and the settings. Those that
//! read from a broker are in `aggregate/tests/kafka_source.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::super::{RawBatch, ReleaseHook};
use super::KafkaSourceConfig;
use super::cursor::{BatchClock, Cursor, CutPolicy, Filling, partition_of, progress_key};
use super::reader::is_fatal;
use super::rebalance::RebalanceLog;

const T: &str = "t";

fn key(partition: i32) -> String {
    progress_key(T, partition)
}

fn policy(batch_records: usize) -> CutPolicy {
    CutPolicy::new(batch_records, Duration::from_secs(1), None)
}

fn filling() -> Filling {
    policy(1_000).start(RawBatch::default())
}

/// A cursor that asked for the progress of `assigned` and got
/// `committed` (partition → next offset).
fn resumed(assigned: &[i32], committed: &[(i32, i64)]) -> Cursor {
    let mut cursor = Cursor::default();
    assert!(cursor.ask_resume(T, assigned, &mut filling(), None));
    let committed = committed.iter().map(|&(p, o)| (key(p), o)).collect();
    assert_eq!(cursor.resume(T, &committed), assigned);
    cursor
}

fn records(batch: &RawBatch) -> Vec<&[u8]> {
    batch.iter().collect()
}

fn map(entries: &[(i32, i64)]) -> BTreeMap<String, i64> {
    entries.iter().map(|&(p, o)| (key(p), o)).collect()
}

#[test]
fn progress_keys_name_a_partition_of_the_topic() {
    assert_eq!(progress_key("events", 3), "kafka:events:3");
    assert_eq!(partition_of("events", "kafka:events:3"), Some(3));
    assert_eq!(partition_of("events", "kafka:other:3"), None);
    assert_eq!(partition_of("events", "kafka:events2:3"), None);
    assert_eq!(partition_of("t", "kafka:t:1:2"), None, "topic t:1");
    assert_eq!(partition_of("t:1", "kafka:t:1:2"), Some(2));
    assert_eq!(partition_of("events", "file:/kafka:events:3"), None);
    assert_eq!(partition_of("events", "kafka:events:x"), None);
    assert_eq!(partition_of("events", "p"), None);
}

#[test]
fn a_partition_is_read_only_once_its_progress_is_known() {
    let mut cursor = Cursor::default();
    let mut f = filling();
    assert!(!cursor.accept(&mut f, 2, 0, b"a"), "taken before a resume");
    assert!(f.is_empty());
    // The record's partition is asked for, after the assigned ones, once.
    assert!(cursor.ask_resume(T, &[0, 2], &mut f, Some(2)));
    assert_eq!(f.finish(T).needs_resume, vec![key(0), key(2)]);
    let mut f = filling();
    assert!(cursor.ask_resume(T, &[0], &mut f, Some(2)));
    assert_eq!(f.finish(T).needs_resume, vec![key(0), key(2)]);
    assert_eq!(cursor.resume(T, &BTreeMap::new()), vec![0, 2]);
    let mut f = filling();
    assert!(cursor.accept(&mut f, 2, 0, b"a"));
    assert_eq!(records(&f.finish(T)), vec![&b"a"[..]]);
}

#[test]
fn nothing_to_ask_for_once_every_assigned_partition_is_resumed() {
    let mut cursor = resumed(&[0, 1], &[]);
    let mut f = filling();
    assert!(!cursor.ask_resume(T, &[0, 1], &mut f, None));
    assert!(!cursor.ask_resume(T, &[], &mut f, None));
    assert!(f.finish(T).needs_resume.is_empty());
    // A partition newly assigned is asked for alone.
    let mut f = filling();
    assert!(cursor.ask_resume(T, &[0, 1, 5], &mut f, None));
    assert_eq!(f.finish(T).needs_resume, vec![key(5)]);
    assert_eq!(cursor.resume(T, &BTreeMap::new()), vec![5]);
}

#[test]
fn records_the_sink_has_are_skipped_and_offsets_advance() {
    let mut cursor = resumed(&[0], &[(0, 40)]);
    assert_eq!(cursor.next_offset(0), Some(40));
    let mut f = filling();
    for offset in 38..43 {
        assert!(cursor.accept(&mut f, 0, offset, offset.to_string().as_bytes()));
    }
    assert_eq!(cursor.skipped().load(Ordering::Relaxed), 2, "38 and 39");
    assert_eq!(cursor.next_offset(0), Some(43));
    // Redelivered (a lagging Kafka commit): skipped, the batch unchanged.
    assert!(cursor.accept(&mut f, 0, 41, b"again"));
    assert_eq!(cursor.skipped().load(Ordering::Relaxed), 3);
    assert_eq!(cursor.next_offset(0), Some(43));
    let batch = f.finish(T);
    assert_eq!(records(&batch), vec![&b"40"[..], b"41", b"42"]);
    assert_eq!(batch.progress, map(&[(0, 43)]));
    assert_eq!(batch.starts, map(&[(0, 40)]));
}

#[test]
fn a_partition_the_ledger_has_nothing_of_is_read_from_its_first_record() {
    let mut cursor = resumed(&[0], &[]);
    assert_eq!(cursor.next_offset(0), None);
    let mut f = filling();
    assert!(cursor.accept(&mut f, 0, 7, b"x"));
    assert_eq!(cursor.skipped().load(Ordering::Relaxed), 0);
    let batch = f.finish(T);
    assert_eq!(batch.progress, map(&[(0, 8)]));
    assert_eq!(batch.starts, map(&[(0, 7)]));
}

#[test]
fn a_resume_replaces_the_position_of_the_partitions_asked_for() {
    let mut cursor = resumed(&[0, 1], &[]);
    let mut f = filling();
    assert!(cursor.accept(&mut f, 0, 10, b"a"));
    assert!(cursor.accept(&mut f, 1, 20, b"b"));
    // Partition 1 asked for again (say, revoked and assigned back): the
    // ledger has nothing of it, so the position read so far goes.
    cursor.revoke(&[1], &mut f);
    assert!(cursor.ask_resume(T, &[0, 1], &mut f, None));
    let mut committed = map(&[(0, 5)]);
    committed.insert("kafka:other:1".into(), 99);
    committed.insert("file:/in.ndjson".into(), 99);
    assert_eq!(cursor.resume(T, &committed), vec![1]);
    assert_eq!(cursor.next_offset(1), None);
    // Positions of partitions not asked for are taken too.
    assert_eq!(cursor.next_offset(0), Some(5));
    // A resume nobody asked for resumes nothing.
    assert_eq!(cursor.resume(T, &map(&[(3, 1)])), Vec::<i32>::new());
    assert!(!cursor.accept(&mut f, 3, 1, b"c"));
}

#[test]
fn a_revocation_forgets_the_partition_and_drops_its_records() {
    let mut cursor = resumed(&[0, 1], &[(0, 10), (1, 20)]);
    let mut f = filling();
    assert!(cursor.accept(&mut f, 0, 10, b"a"));
    assert!(cursor.accept(&mut f, 1, 20, b"b"));
    cursor.reached_end(0);
    cursor.revoke(&[0], &mut f);
    assert_eq!(cursor.next_offset(0), None);
    assert_eq!(cursor.next_offset(1), Some(21));
    assert!(!cursor.all_at_end(&[0]), "its end forgotten");
    // Assigned back, it waits for the sink's progress again.
    assert!(!cursor.accept(&mut f, 0, 11, b"c"));
    let batch = f.finish(T);
    assert_eq!(records(&batch), vec![&b"b"[..]]);
    assert_eq!(batch.progress, map(&[(1, 21)]));
    assert_eq!(batch.starts, map(&[(1, 20)]));
}

#[test]
fn revoking_nothing_or_partitions_without_records_keeps_the_batch() {
    let mut cursor = resumed(&[0, 1], &[]);
    let mut f = filling();
    assert!(cursor.accept(&mut f, 0, 3, b"a"));
    assert!(cursor.ask_resume(T, &[0, 1, 2], &mut f, None));
    cursor.revoke(&[], &mut f);
    cursor.revoke(&[1], &mut f);
    assert_eq!(cursor.next_offset(0), Some(4));
    assert_eq!(cursor.next_offset(1), None);
    let batch = f.finish(T);
    assert_eq!(records(&batch), vec![&b"a"[..]]);
    assert_eq!(batch.needs_resume, vec![key(2)]);
}

#[test]
fn dropping_a_revoked_partition_keeps_the_others() {
    let mut cursor = resumed(&[0, 1, 2], &[]);
    let mut f = filling();
    for (p, offset, payload) in [(0, 10, b"a"), (1, 20, b"b"), (0, 11, b"c"), (2, 5, b"d")] {
        assert!(cursor.accept(&mut f, p, offset, payload));
    }
    assert!(cursor.ask_resume(T, &[0, 1, 2, 3], &mut f, None));
    cursor.revoke(&[0], &mut f);
    let batch = f.finish("t");
    assert_eq!(records(&batch), vec![&b"b"[..], b"d"]);
    let progress: Vec<(&String, &i64)> = batch.progress.iter().collect();
    assert_eq!(
        progress,
        vec![
            (&"kafka:t:1".to_string(), &21),
            (&"kafka:t:2".to_string(), &6)
        ]
    );
    let starts: Vec<(&String, &i64)> = batch.starts.iter().collect();
    assert_eq!(
        starts,
        vec![
            (&"kafka:t:1".to_string(), &20),
            (&"kafka:t:2".to_string(), &5)
        ]
    );
    assert_eq!(batch.needs_resume, vec!["kafka:t:3".to_string()]);
}

#[test]
fn the_end_of_every_assigned_partition_is_known_until_a_record_comes() {
    let mut cursor = resumed(&[0, 1], &[]);
    let mut f = filling();
    cursor.reached_end(0);
    assert!(!cursor.all_at_end(&[0, 1]));
    cursor.reached_end(1);
    assert!(cursor.all_at_end(&[0, 1]));
    assert!(cursor.all_at_end(&[]), "nothing assigned: nothing to read");
    assert!(cursor.accept(&mut f, 1, 0, b"a"));
    assert!(!cursor.all_at_end(&[0, 1]));
    assert!(cursor.all_at_end(&[0]));
    // A record of a partition still to resume is no longer at its end
    // either: it is read again after the resume.
    cursor.reached_end(4);
    assert!(!cursor.accept(&mut f, 4, 0, b"b"));
    assert!(!cursor.all_at_end(&[4]));
}

#[test]
fn a_batch_is_cut_when_it_holds_batch_records() {
    let mut cursor = resumed(&[0], &[]);
    let policy = policy(3);
    let mut f = policy.start(RawBatch::default());
    for offset in 0..2 {
        assert!(cursor.accept(&mut f, 0, offset, b"r"));
        assert!(!policy.is_full(&f));
    }
    assert!(cursor.accept(&mut f, 0, 2, b"r"));
    assert!(policy.is_full(&f));
    // Skipped records do not count.
    let mut cursor = resumed(&[0], &[(0, 10)]);
    let mut f = policy.start(RawBatch::default());
    for offset in 0..12 {
        assert!(cursor.accept(&mut f, 0, offset, b"r"));
    }
    assert_eq!(f.len(), 2);
    assert!(!policy.is_full(&f));
}

#[test]
fn a_batch_holds_at_least_one_record() {
    let policy = CutPolicy::new(0, Duration::from_secs(1), None);
    let mut cursor = resumed(&[0], &[]);
    let mut f = policy.start(RawBatch::default());
    assert!(!policy.is_full(&f));
    assert!(cursor.accept(&mut f, 0, 0, b"r"));
    assert!(policy.is_full(&f));
}

#[test]
fn a_batch_with_records_is_cut_max_wait_after_the_first() {
    let max_wait = Duration::from_millis(500);
    let idle = Duration::from_secs(60);
    let policy = CutPolicy::new(100, max_wait, Some(idle));
    let mut cursor = resumed(&[0], &[]);
    let mut f = policy.start(RawBatch::default());
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut clock = BatchClock::start(t0);
    clock.tick(t0, &f);
    assert!(!clock.has_records());
    assert_eq!(
        policy.wait(&clock, ms(100)),
        idle - Duration::from_millis(100)
    );
    // The first record is seen at 200 ms: the batch waits until 700 ms.
    assert!(cursor.accept(&mut f, 0, 0, b"r"));
    clock.received();
    clock.tick(ms(200), &f);
    assert!(clock.has_records());
    assert_eq!(policy.wait(&clock, ms(200)), max_wait);
    assert!(cursor.accept(&mut f, 0, 1, b"r"));
    clock.received();
    clock.tick(ms(450), &f);
    assert_eq!(policy.wait(&clock, ms(450)), Duration::from_millis(250));
    assert_eq!(policy.wait(&clock, ms(700)), Duration::ZERO);
    assert_eq!(policy.wait(&clock, ms(5_000)), Duration::ZERO);
}

#[test]
fn without_records_the_source_waits_for_exit_on_idle_from_the_last_sign_of_life() {
    let idle = Duration::from_secs(5);
    let policy = CutPolicy::new(100, Duration::from_secs(1), Some(idle));
    let f = policy.start(RawBatch::default());
    let t0 = Instant::now();
    let s = |n| t0 + Duration::from_secs(n);
    let mut clock = BatchClock::start(t0);
    clock.tick(s(2), &f);
    assert_eq!(policy.wait(&clock, s(2)), Duration::from_secs(3));
    assert_eq!(policy.wait(&clock, s(9)), Duration::ZERO);
    // Records came (all skipped: the batch is still empty): the idle
    // window starts when the clock next looks.
    clock.received();
    clock.tick(s(3), &f);
    assert!(!clock.has_records());
    assert_eq!(policy.wait(&clock, s(3)), idle);
    clock.tick(s(4), &f);
    assert_eq!(policy.wait(&clock, s(4)), Duration::from_secs(4));
    // Found busy (joining, or not at the end of every partition).
    clock.busy(s(6));
    assert_eq!(policy.wait(&clock, s(6)), idle);
    // Without exit_on_idle the wait has no end in sight.
    let forever = CutPolicy::new(100, Duration::from_secs(1), None);
    assert_eq!(forever.wait(&clock, s(100)), Duration::from_secs(3600));
}

#[test]
fn a_batch_emptied_by_a_revocation_waits_afresh_for_records() {
    let max_wait = Duration::from_secs(1);
    let policy = CutPolicy::new(100, max_wait, None);
    let mut cursor = resumed(&[0, 1, 2], &[]);
    let mut f = policy.start(RawBatch::default());
    let t0 = Instant::now();
    let mut clock = BatchClock::start(t0);
    assert!(cursor.accept(&mut f, 0, 0, b"r"));
    clock.received();
    clock.tick(t0, &f);
    // A revocation of another partition changes nothing.
    cursor.revoke(&[1], &mut f);
    clock.revoked(&f);
    assert!(clock.has_records());
    assert_eq!(policy.wait(&clock, t0), max_wait);
    // Every record revoked: not a batch to cut after max_wait (an empty
    // one would end the stream), but an idle wait.
    cursor.revoke(&[0], &mut f);
    clock.revoked(&f);
    assert!(!clock.has_records());
    let later = t0 + Duration::from_secs(2);
    assert_eq!(policy.wait(&clock, later), Duration::from_secs(3600));
    // A record afterwards starts a new max_wait.
    assert!(cursor.accept(&mut f, 2, 0, b"r"));
    clock.received();
    clock.tick(later, &f);
    assert_eq!(policy.wait(&clock, later), max_wait);
}

#[test]
fn the_tail_of_a_backlog_is_cut_at_the_end_only_after_a_full_batch() {
    let mut policy = policy(2);
    let mut cursor = resumed(&[0], &[]);
    let mut f = policy.start(RawBatch::default());
    assert!(!policy.cuts_at_end(&f));
    assert!(cursor.accept(&mut f, 0, 0, b"r"));
    assert!(!policy.cuts_at_end(&f), "a trickle fills for max_wait");
    assert!(cursor.accept(&mut f, 0, 1, b"r"));
    let full = policy.cut(f).expect("a batch");
    assert_eq!(full.finish(T).len(), 2);
    // After a full batch: the rest of the backlog goes at the end.
    let mut f = policy.start(RawBatch::default());
    assert!(!policy.cuts_at_end(&f), "not empty");
    assert!(cursor.accept(&mut f, 0, 2, b"r"));
    assert!(policy.cuts_at_end(&f));
    assert_eq!(policy.cut(f).expect("a batch").finish(T).len(), 1);
    // A partial batch ends the backlog.
    let mut f = policy.start(RawBatch::default());
    assert!(cursor.accept(&mut f, 0, 3, b"r"));
    assert!(!policy.cuts_at_end(&f));
}

#[test]
fn an_empty_batch_after_the_wait_is_the_end_of_the_stream() {
    let mut policy = policy(1);
    let mut cursor = resumed(&[0], &[]);
    let mut f = policy.start(RawBatch::default());
    assert!(cursor.accept(&mut f, 0, 0, b"r"));
    assert!(policy.cut(f).is_some());
    assert!(policy.cut(policy.start(RawBatch::default())).is_none());
    // An empty cut leaves the backlog as it was.
    let mut f = policy.start(RawBatch::default());
    assert!(cursor.accept(&mut f, 0, 1, b"r"));
    assert!(policy.cuts_at_end(&f));
}

#[test]
fn a_recycled_batch_is_filled_afresh() {
    let mut old = RawBatch::default();
    old.push(b"old");
    old.progress.insert(key(0), 9);
    old.starts.insert(key(0), 8);
    old.needs_resume.push(key(1));
    let mut cursor = resumed(&[0], &[]);
    let mut f = policy(10).start(old);
    assert!(f.is_empty());
    assert!(cursor.accept(&mut f, 0, 0, b"new"));
    let batch = f.finish(T);
    assert_eq!(records(&batch), vec![&b"new"[..]]);
    assert_eq!(batch.progress, map(&[(0, 1)]));
    assert_eq!(batch.starts, map(&[(0, 0)]));
    assert!(batch.needs_resume.is_empty());
}

fn config() -> KafkaSourceConfig {
    KafkaSourceConfig {
        // Never contacted: nothing is subscribed.
        connection: tokentally_ingest::kafka::Connection::plaintext("127.0.0.1:9"),
        topic: T.into(),
        group: "g".into(),
        batch_records: 10,
        max_wait: Duration::from_secs(1),
        exit_on_idle: None,
        instance_id: None,
        lag: None,
    }
}

/// A consumer (which no test subscribes, so it talks to no broker) with
/// the rebalance context, whose callbacks the tests call as librdkafka
/// would.
fn consumer() -> BaseConsumer<RebalanceLog> {
    let config = config();
    config
        .client()
        .create_with_context(RebalanceLog::new(&config))
        .unwrap()
}

fn partitions(parts: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &p in parts {
        tpl.add_partition_offset(T, p, Offset::Invalid).unwrap();
    }
    tpl
}

#[test]
fn a_revocation_waits_for_the_batches_handed_out_then_releases_its_partitions() {
    let consumer = consumer();
    let log = consumer.context();
    let released = Arc::new(Mutex::new(Vec::new()));
    log.set_release(ReleaseHook::new({
        let released = released.clone();
        move |keys| {
            released.lock().unwrap().push(keys);
            Ok(())
        }
    }));
    let handed_out = log.hand_out();
    let revoked = partitions(&[0, 2]);
    std::thread::scope(|s| {
        let revoking = s.spawn(|| log.pre_rebalance(&consumer, &Rebalance::Revoke(&revoked)));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !revoking.is_finished(),
            "gave partitions up with a batch out"
        );
        assert!(released.lock().unwrap().is_empty());
        assert!(log.take_revoked().is_empty());
        drop(handed_out);
        revoking.join().unwrap();
    });
    assert_eq!(
        *released.lock().unwrap(),
        vec![vec!["kafka:t:0".to_string(), "kafka:t:2".to_string()]]
    );
    assert_eq!(log.take_revoked(), vec![0, 2]);
    assert!(log.take_revoked().is_empty(), "reported once");
    // An assignment is no revocation.
    log.pre_rebalance(&consumer, &Rebalance::Assign(&partitions(&[1])));
    assert!(log.take_revoked().is_empty());
    assert_eq!(released.lock().unwrap().len(), 1);
}

#[test]
fn revoking_nothing_releases_nothing() {
    let consumer = consumer();
    let log = consumer.context();
    let calls = Arc::new(Mutex::new(0));
    log.set_release(ReleaseHook::new({
        let calls = calls.clone();
        move |_| {
            *calls.lock().unwrap() += 1;
            Ok(())
        }
    }));
    log.pre_rebalance(&consumer, &Rebalance::Revoke(&partitions(&[])));
    assert_eq!(*calls.lock().unwrap(), 0);
    assert!(log.take_revoked().is_empty());
}

#[test]
fn an_assignment_is_reported_once() {
    let consumer = consumer();
    let log = consumer.context();
    assert!(!log.take_assigned());
    log.post_rebalance(&consumer, &Rebalance::Assign(&partitions(&[0, 1])));
    assert!(log.take_assigned());
    assert!(!log.take_assigned());
    log.post_rebalance(&consumer, &Rebalance::Revoke(&partitions(&[0])));
    assert!(!log.take_assigned(), "a revocation is no assignment");
}

#[test]
fn static_membership_and_statistics_are_asked_for_only_when_configured() {
    let plain = config().client();
    assert_eq!(plain.get("group.instance.id"), None);
    assert_eq!(plain.get("statistics.interval.ms"), None);
    assert_eq!(plain.get("enable.auto.commit"), Some("false"));
    assert_eq!(plain.get("group.id"), Some("g"));
    let lag = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("lag", "consumer lag"),
        &["topic", "partition"],
    )
    .unwrap();
    let configured = KafkaSourceConfig {
        instance_id: Some("agg-1".into()),
        lag: Some(lag),
        ..config()
    }
    .client();
    assert_eq!(configured.get("group.instance.id"), Some("agg-1"));
    assert_eq!(configured.get("statistics.interval.ms"), Some("5000"));
}

#[test]
fn only_errors_librdkafka_cannot_recover_from_are_fatal() {
    use RDKafkaErrorCode as C;
    for code in [C::FencedInstanceId, C::UnknownTopicOrPartition, C::Fatal] {
        assert!(is_fatal(&KafkaError::MessageConsumption(code)), "{code:?}");
    }
    for code in [
        C::BrokerTransportFailure,
        C::AllBrokersDown,
        C::RebalanceInProgress,
    ] {
        assert!(!is_fatal(&KafkaError::MessageConsumption(code)), "{code:?}");
    }
    assert!(!is_fatal(&KafkaError::PartitionEOF(0)));
}
