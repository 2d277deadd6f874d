-- The peer: ClickHouse's own Kafka table engine + a materialized view, rolling a
-- topic of tokentally JSON events up per (UTC day, model, provider) into the
-- same totals as tokentally's usage_daily (without dedup by event_id). Written
-- for and tested on ClickHouse 18.16.1 (Debian, system librdkafka 2.0.2) with
-- Kafka 4.4.
--
-- Placeholders: {db} {brokers} {topic} {group} {consumers}.
-- A statement ends at a line whose last character is `;` (comment lines never
-- end in one): split there, drop the `;`, POST each statement as the body of a
-- request to the HTTP interface, in order.
--
-- Streaming starts when the view (the last statement) is created, so start the
-- clock just before sending it. The run is done when
--     SELECT sum(requests) FROM {db}.usage_daily
-- returns the number of events in the topic. Rows become visible in blocks of
-- 1,048,576 (min_insert_block_size_rows) or when a read stream ends: after about
-- 2.5 s with no new messages, or at stream_flush_interval_ms (7.5 s).
--
-- Teardown: DROP TABLE {db}.usage_daily_mv, wait about 5 s, then
-- DROP DATABASE {db}. A plain DROP DATABASE with the view still attached
-- aborted the whole server in 3 of 9 tries with 2 or 4 consumers (librdkafka
-- assert in rd_kafka_cgrp_destroy_final), once after the topic was drained. With
-- 1 consumer it never did (about 10 tries), and the order above never did in about
-- 30 runs.
--
-- Server config needed (18.16 reads librdkafka settings only from config.xml,
-- not from the table, and only at start-up); scripts/clickhouse/config writes it:
--   <kafka>
--     <auto_offset_reset>smallest</auto_offset_reset>
--     <queued_min_messages>1000000</queued_min_messages>
--     <queued_max_messages_kbytes>1048576</queued_max_messages_kbytes>
--   </kafka>
-- Without auto_offset_reset a new group starts at the end of the topic and
-- reads nothing (librdkafka's default is `largest`): then commit offset 0 for
-- every partition of {topic} in group {group} before these statements. Without
-- the queue settings, librdkafka stops fetching for a hard-coded 1 s whenever
-- its queue fills (about 3.5x slower here).
--
-- Use {consumers} = 1. With more consumers, the rebalance among them while
-- they start re-delivers messages that were read but not yet committed (+21% and
-- +29% over-count in 2 of 5 runs with 2 consumers). Waiting about 5 s between
-- creating the Kafka table and the view avoided that in our 5 runs. On 2 cores,
-- extra consumers were not faster.

CREATE DATABASE IF NOT EXISTS {db};

-- Target: SummingMergeTree adds up every non-key numeric column when it merges,
-- so sum() over it is exact at any time, with or without FINAL.
CREATE TABLE {db}.usage_daily
(
    day Date,
    model String,
    provider String,
    requests UInt64,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    total_tokens UInt64,
    cached_tokens UInt64,
    error_requests UInt64
)
ENGINE = SummingMergeTree
ORDER BY (day, model, provider);

-- Only the fields the roll-up reads. The engine always sets
-- input_format_skip_unknown_fields=1 itself, so event_id, app, node, region,
-- latency_ms, reasoning_tokens are skipped, and absent optional fields read as
-- 0 or ''. ts must be epoch milliseconds: an RFC 3339 string (valid in the
-- contract) fails the parse, and 18.16 (with no kafka_skip_broken_messages)
-- then retries the same batch forever and ingests nothing more.
-- 18.16 accepts only these settings: kafka_broker_list, kafka_topic_list,
-- kafka_group_name, kafka_format, kafka_row_delimiter, kafka_schema,
-- kafka_num_consumers, kafka_max_block_size. kafka_max_block_size (rows per
-- block parsed from a consumer) defaults to the profile's max_block_size, 65536.
-- 65536 beat 16384, 262144 and 1048576 here.
CREATE TABLE {db}.events_queue
(
    ts UInt64,
    model String,
    provider String,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    cached_tokens UInt64,
    status String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '{brokers}',
    kafka_topic_list = '{topic}',
    kafka_group_name = '{group}',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = {consumers},
    kafka_max_block_size = 65536;

-- `prompt_tokens + completion_tokens AS total_tokens` reads the two aliases,
-- i.e. sum(prompt_tokens) + sum(completion_tokens). ClickHouse aliases are
-- global, so `sum(prompt_tokens + completion_tokens)` here would be a sum()
-- nested in a sum() and is rejected. 18.16 also cannot run a view with a
-- subquery in FROM over a Kafka table ("There is no query"), and a TO view does
-- not fill the target's DEFAULT columns. Both fail only at insert time, after the
-- offsets were committed, so those events are lost.
CREATE MATERIALIZED VIEW {db}.usage_daily_mv TO {db}.usage_daily AS
SELECT
    toDate(toDateTime(intDiv(ts, 1000), 'UTC')) AS day,
    model,
    provider,
    count() AS requests,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    prompt_tokens + completion_tokens AS total_tokens,
    sum(cached_tokens) AS cached_tokens,
    countIf(status = 'error') AS error_requests
FROM {db}.events_queue
GROUP BY day, model, provider;
