//! The driver: source → aggregator → sink, one micro-batch at a time, with
//! the commit of each batch overlapping the reading and processing of the
//! next.
//!
//! The sink lives on its own thread (the committer), which serves commits
//! strictly in order. The pipeline processes batch N+1 while batch N is
//! being committed, then waits for N before handing N+1 over, so at most
//! one batch is in flight. That is safe because:
//! - the in-memory dedup state already includes N when N+1 is processed,
//!   and if N's commit fails the pipeline stops: a restart rebuilds that
//!   state from the sink;
//! - a source that can lose partitions attaches a guard to each batch
//!   ([`RawBatch::hold`](crate::source::RawBatch)), which the pipeline
//!   keeps until the batch's commit lands, and waits for every guard before
//!   giving partitions up in a rebalance (see
//!   [`CommitGate`](crate::source::CommitGate)), so a new owner never reads
//!   the ledger before this aggregator's batches are in it;
//! - before asking the sink for newly assigned partitions' progress, the
//!   pipeline waits for N, so the answer includes this aggregator's own
//!   last commit.

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::core::{Aggregator, AggregatorConfig, BatchOutcome, BatchStats};
use crate::error::{Error, Result};
use crate::metrics::PipelineMetrics;
use crate::sink::{Recovered, UsageSink};
use crate::source::{BoxError, EventSource, InFlight, ReleaseHook};

/// How long a stopping pipeline waits for the commit in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long a source's rebalance waits for the sink to record a release.
/// Past it the partitions go anyway, unrecorded: the next owner then fences
/// this aggregator (safe; it stops).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Run until the source is exhausted or `stop` completes (a shutdown
/// signal). `on_commit` sees every committed outcome, in order, once the
/// sink has it (for progress displays, milestone checks and dead-letter
/// mirrors).
///
/// It never returns with a commit in flight: on a stop or an error it first
/// waits for that commit, at most [`SHUTDOWN_GRACE`]; past that it returns
/// [`Error::Abandoned`], and the caller must exit without closing the
/// source gracefully (for Kafka: without leaving the group, so that the
/// partitions move only after the session timeout, once the commit has
/// landed or failed).
pub async fn run<S, K>(
    source: &mut S,
    sink: K,
    config: AggregatorConfig,
    metrics: Option<PipelineMetrics>,
    mut on_commit: impl FnMut(&BatchOutcome),
    stop: impl Future<Output = ()>,
) -> Result<BatchStats>
where
    S: EventSource,
    K: UsageSink + Send + 'static,
{
    let mut stop = pin!(stop.fuse());
    let committer = Committer::start(sink, metrics.clone())?;
    source.on_release(committer.release_hook());
    let Some(recovered) = unless_stopped(stop.as_mut(), committer.recover(None)).await else {
        return Ok(BatchStats::default());
    };
    let recovered = recovered.map_err(Error::Recover)?;
    source.resume(&recovered.progress).map_err(Error::Source)?;
    let mut aggregator = Aggregator::new(config, &recovered);
    if let Some(m) = &metrics {
        aggregator = aggregator.with_metrics(m.clone());
    }
    let mut totals = BatchStats::default();
    let mut landed = |committed: Option<BatchOutcome>, source: &mut S| -> Result<()> {
        let Some(outcome) = committed else {
            return Ok(());
        };
        source
            .acknowledge(&outcome.progress)
            .map_err(Error::Source)?;
        totals.add(&outcome.stats);
        on_commit(&outcome);
        Ok(())
    };
    let mut in_flight: Option<Ticket> = None;
    let mut stopped = false;
    let result: Result<()> = async {
        loop {
            let reading = Instant::now();
            // While waiting for the next batch, report the one in flight as
            // soon as it lands (Kafka offsets, dead-letter mirror, progress),
            // not only when more data comes.
            let next = loop {
                tokio::select! {
                    biased;
                    () = &mut stop => break None,
                    r = Committer::wait(&mut in_flight), if in_flight.is_some() => {
                        landed(r?, source)?;
                    }
                    next = source.next_batch() => break Some(next.map_err(Error::Source)?),
                }
            };
            let Some(next) = next else {
                break;
            };
            let Some(mut raw) = next else {
                return Ok(());
            };
            let needs_resume = std::mem::take(&mut raw.needs_resume);
            let hold = raw.hold.take();
            let processing = Instant::now();
            let outcome = if raw.is_empty() {
                None
            } else {
                Some(aggregator.process(&raw).await?)
            };
            let processed = Instant::now();
            let records = raw.len();
            source.recycle(raw);
            // Commits land in order: the previous batch before this one.
            let Some(previous) =
                unless_stopped(stop.as_mut(), Committer::wait(&mut in_flight)).await
            else {
                break;
            };
            let previous = previous?;
            tracing::debug!(
                records,
                read_ms = (processing - reading).as_millis() as u64,
                process_ms = (processed - processing).as_millis() as u64,
                wait_ms = processed.elapsed().as_millis() as u64,
                "batch"
            );
            landed(previous, source)?;
            if let Some(outcome) = outcome {
                in_flight = Some(committer.commit(outcome, hold)?);
            }
            if !needs_resume.is_empty() {
                // The partitions' progress must include this aggregator's
                // own last commit.
                let Some(previous) =
                    unless_stopped(stop.as_mut(), Committer::wait(&mut in_flight)).await
                else {
                    break;
                };
                landed(previous?, source)?;
                let recover = committer.recover(Some(needs_resume));
                let Some(recovered) = unless_stopped(stop.as_mut(), recover).await else {
                    break;
                };
                let recovered = recovered.map_err(Error::Recover)?;
                aggregator.restore(&recovered);
                source.resume(&recovered.progress).map_err(Error::Source)?;
            }
        }
        stopped = true;
        Ok(())
    }
    .await;
    // Never leave a commit behind; once stopping, wait a bounded time.
    let mut bounded = stopped || result.is_err();
    let last = Committer::wait(&mut in_flight);
    let mut last = pin!(last);
    let drained = loop {
        if bounded {
            break tokio::time::timeout(SHUTDOWN_GRACE, &mut last)
                .await
                .unwrap_or(Err(Error::Abandoned(SHUTDOWN_GRACE)));
        }
        tokio::select! {
            r = &mut last => break r,
            () = &mut stop => bounded = true,
        }
    };
    match drained {
        Err(e @ Error::Abandoned(_)) => Err(e),
        Err(e) => result.and(Err(e)),
        Ok(last) => {
            result?;
            landed(last, source)?;
            committer.close().await.map_err(Error::Sink)?;
            Ok(totals)
        }
    }
}

/// `work`'s output, or `None` if `stop` completes first (`work` wins a tie).
/// `stop` must not have completed before (the pipeline fuses it).
async fn unless_stopped<T>(
    stop: Pin<&mut impl Future<Output = ()>>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        v = work => Some(v),
        () = stop => None,
    }
}

/// A request to the committer thread.
enum Request {
    /// `recover` (`None`) or `recover_partitions`.
    Recover(
        Option<Vec<String>>,
        oneshot::Sender<std::result::Result<Recovered, BoxError>>,
    ),
    Commit(
        Box<BatchOutcome>,
        Option<InFlight>,
        oneshot::Sender<Committed>,
    ),
    /// `release`, answered on a std channel: the caller is a blocked
    /// thread (a rebalance callback), not a task.
    Release(Vec<String>, std::sync::mpsc::Sender<Result<(), String>>),
    /// `close`, after the last commit.
    Close(oneshot::Sender<std::result::Result<(), BoxError>>),
}

type Committed = (Box<BatchOutcome>, std::result::Result<(), BoxError>);

/// A commit handed to the committer, not yet known to have landed.
struct Ticket(oneshot::Receiver<Committed>);

/// The sink, on its own thread with its own single-threaded runtime, so
/// that a commit progresses even while the pipeline's thread is blocked in
/// a source's rebalance callback waiting for it. Dropping the committer
/// cancels what it is doing, as a crash would (a commit is atomic).
struct Committer {
    requests: mpsc::UnboundedSender<Request>,
    _stop: oneshot::Sender<()>,
    /// The sink was closed after the last commit: a source giving
    /// partitions up afterwards (leaving the group) has nothing to release.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Committer {
    fn start<K: UsageSink + Send + 'static>(
        mut sink: K,
        metrics: Option<PipelineMetrics>,
    ) -> Result<Self> {
        let (requests, mut rx) = mpsc::unbounded_channel::<Request>();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Sink(Box::new(e)))?;
        std::thread::Builder::new()
            .name("tokentally-commit".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(request) = rx.recv().await {
                        let serve = serve(&mut sink, request, metrics.as_ref());
                        tokio::select! {
                            () = serve => {}
                            _ = &mut stopped => break,
                        }
                    }
                });
            })
            .map_err(|e| Error::Sink(Box::new(e)))?;
        Ok(Committer {
            requests,
            _stop: stop,
            closed: Default::default(),
        })
    }

    async fn recover(&self, keys: Option<Vec<String>>) -> std::result::Result<Recovered, BoxError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Recover(keys, tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// How a source tells the sink that it gave partitions up: a request
    /// served between commits, in order with them, waited for at most
    /// [`RELEASE_TIMEOUT`].
    fn release_hook(&self) -> ReleaseHook {
        let requests = self.requests.clone();
        let closed = self.closed.clone();
        ReleaseHook::new(move |keys| {
            if closed.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
            let (tx, rx) = std::sync::mpsc::channel();
            requests
                .send(Request::Release(keys, tx))
                .map_err(|_| "the commit thread stopped".to_string())?;
            rx.recv_timeout(RELEASE_TIMEOUT)
                .map_err(|_| format!("not recorded within {RELEASE_TIMEOUT:?}"))?
        })
    }

    async fn close(&self) -> std::result::Result<(), BoxError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Close(tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())??;
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn commit(&self, outcome: BatchOutcome, hold: Option<InFlight>) -> Result<Ticket> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Commit(Box::new(outcome), hold, tx))
            .map_err(|_| Error::Sink(stopped()))?;
        Ok(Ticket(rx))
    }

    /// Wait for the commit in flight (if any) to land: its outcome, or the
    /// sink's error. Cancel-safe: dropped early, the commit stays in flight.
    async fn wait(in_flight: &mut Option<Ticket>) -> Result<Option<BatchOutcome>> {
        let Some(Ticket(rx)) = in_flight.as_mut() else {
            return Ok(None);
        };
        let answer = rx.await;
        *in_flight = None;
        let (outcome, result) = answer.map_err(|_| Error::Sink(stopped()))?;
        result.map_err(Error::Sink)?;
        Ok(Some(*outcome))
    }
}

fn stopped() -> BoxError {
    "the commit thread stopped".into()
}

async fn serve<K: UsageSink>(sink: &mut K, request: Request, metrics: Option<&PipelineMetrics>) {
    match request {
        Request::Recover(keys, reply) => {
            let recovered = match keys {
                None => sink.recover().await,
                Some(keys) => sink.recover_partitions(&keys).await,
            };
            let _ = reply.send(recovered);
        }
        Request::Commit(outcome, hold, reply) => {
            let started = Instant::now();
            let result = sink.commit(&outcome).await;
            // Release the batch before answering: it is in (or failed, and
            // the pipeline stops).
            drop(hold);
            if let (Ok(()), Some(m)) = (&result, metrics) {
                m.commit_seconds.observe(started.elapsed().as_secs_f64());
                m.last_commit.set(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or(Duration::ZERO)
                        .as_secs_f64(),
                );
            }
            tracing::debug!(
                commit_ms = started.elapsed().as_millis() as u64,
                ok = result.is_ok(),
                "batch commit"
            );
            let _ = reply.send((outcome, result));
        }
        Request::Release(keys, reply) => {
            let result = sink.release(&keys).await.map_err(|e| e.to_string());
            let _ = reply.send(result);
        }
        Request::Close(reply) => {
            let _ = reply.send(sink.close().await);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::source::{CommitGate, RawBatch};

    /// What the test sink has committed: each batch's progress, in order.
    type Log = Arc<Mutex<Vec<BTreeMap<String, i64>>>>;

    /// A sink whose commits take `delay`, and fail from the `fail_at`th on.
    struct SlowSink {
        log: Log,
        delay: Duration,
        fail_at: Option<usize>,
    }

    impl UsageSink for SlowSink {
        async fn recover(&mut self) -> std::result::Result<Recovered, BoxError> {
            Ok(Recovered::default())
        }
        async fn recover_partitions(
            &mut self,
            _: &[String],
        ) -> std::result::Result<Recovered, BoxError> {
            Ok(Recovered::default())
        }
        async fn commit(&mut self, outcome: &BatchOutcome) -> std::result::Result<(), BoxError> {
            tokio::time::sleep(self.delay).await;
            let mut log = self.log.lock().unwrap();
            if self.fail_at.is_some_and(|n| log.len() + 1 >= n) {
                return Err("refused".into());
            }
            log.push(outcome.progress.clone());
            Ok(())
        }
    }

    /// Batches of one event each (progress `p` → i + 1); before handing out
    /// batch `check_at`, it waits on the gate as a rebalance would, and
    /// records how many commits had landed once the gate opened.
    struct Batches {
        left: VecDeque<RawBatch>,
        gate: CommitGate,
        check_at: usize,
        handed: usize,
        log: Log,
        landed_at_gate: Option<usize>,
        acknowledged: Vec<i64>,
        /// How long the source stays quiet before it says it has ended.
        quiet: Duration,
    }

    impl Batches {
        fn new(n: usize, log: &Log, check_at: usize) -> Self {
            let left = (0..n)
                .map(|i| {
                    let mut b = RawBatch::default();
                    b.push(
                        format!(
                            r#"{{"event_id":"e{i}","ts":1795737600000,"model":"m","provider":"p","prompt_tokens":1,"completion_tokens":1}}"#
                        )
                        .as_bytes(),
                    );
                    b.progress.insert("p".into(), i as i64 + 1);
                    b
                })
                .collect();
            Batches {
                left,
                gate: CommitGate::default(),
                check_at,
                handed: 0,
                log: log.clone(),
                landed_at_gate: None,
                acknowledged: Vec::new(),
                quiet: Duration::ZERO,
            }
        }
    }

    impl EventSource for Batches {
        fn resume(&mut self, _: &BTreeMap<String, i64>) -> std::result::Result<(), BoxError> {
            Ok(())
        }
        async fn next_batch(&mut self) -> std::result::Result<Option<RawBatch>, BoxError> {
            if self.handed == self.check_at {
                self.gate.wait_idle();
                self.landed_at_gate = Some(self.log.lock().unwrap().len());
            }
            if self.left.is_empty() {
                tokio::time::sleep(self.quiet).await;
            }
            self.handed += 1;
            Ok(self.left.pop_front().map(|mut b| {
                b.hold = Some(self.gate.enter());
                b
            }))
        }
        fn acknowledge(
            &mut self,
            progress: &BTreeMap<String, i64>,
        ) -> std::result::Result<(), BoxError> {
            self.acknowledged.push(progress["p"]);
            Ok(())
        }
    }

    fn sink(log: &Log, delay_ms: u64, fail_at: Option<usize>) -> SlowSink {
        SlowSink {
            log: log.clone(),
            delay: Duration::from_millis(delay_ms),
            fail_at,
        }
    }

    #[tokio::test]
    async fn commits_land_in_order_and_the_gate_waits_for_the_one_in_flight() {
        let log = Log::default();
        let mut source = Batches::new(6, &log, 3);
        let mut seen = Vec::new();
        let stats = run(
            &mut source,
            sink(&log, 50, None),
            AggregatorConfig::default(),
            None,
            |o| seen.push(o.progress["p"]),
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(stats.accepted, 6);
        let committed: Vec<i64> = log.lock().unwrap().iter().map(|p| p["p"]).collect();
        assert_eq!(committed, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(seen, committed);
        assert_eq!(source.acknowledged, committed);
        // Batches 1-3 were handed out before the source waited on the gate:
        // all three are in once it opens (the third was still being
        // committed, 50ms per commit).
        assert_eq!(source.landed_at_gate, Some(3));
    }

    #[tokio::test]
    async fn a_commit_is_reported_while_the_source_is_quiet() {
        let log = Log::default();
        let mut source = Batches::new(1, &log, usize::MAX);
        source.quiet = Duration::from_secs(3);
        let started = Instant::now();
        let mut reported = None;
        run(
            &mut source,
            sink(&log, 10, None),
            AggregatorConfig::default(),
            None,
            |_| reported = Some(started.elapsed()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let reported = reported.expect("the batch was reported");
        assert!(
            reported < Duration::from_secs(2),
            "reported after {reported:?}"
        );
        assert_eq!(source.acknowledged, vec![1]);
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_commit_in_flight_and_reads_nothing_more() {
        let log = Log::default();
        let mut source = Batches::new(100, &log, usize::MAX);
        let mut seen = 0;
        let stop = tokio::time::sleep(Duration::from_millis(250));
        let stats = run(
            &mut source,
            sink(&log, 100, None),
            AggregatorConfig::default(),
            None,
            |_| seen += 1,
            stop,
        )
        .await
        .unwrap();
        let committed = log.lock().unwrap().len();
        assert!((1..10).contains(&committed), "{committed} commits");
        // Everything handed to the sink landed and was reported; the batch
        // read when the stop came was dropped, nothing after it was read.
        assert_eq!(seen, committed);
        assert_eq!(stats.accepted as usize, committed);
        assert!(source.handed <= committed + 2, "{} read", source.handed);
    }

    #[tokio::test]
    async fn a_failed_commit_stops_the_pipeline_after_the_ones_before_it() {
        let log = Log::default();
        let mut source = Batches::new(10, &log, usize::MAX);
        let mut seen = Vec::new();
        let err = run(
            &mut source,
            sink(&log, 10, Some(3)),
            AggregatorConfig::default(),
            None,
            |o| seen.push(o.progress["p"]),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Sink(_)), "{err}");
        assert_eq!(seen, vec![1, 2]);
        assert!(source.handed <= 5, "{} read", source.handed);
    }
}
