#!/usr/bin/env python3
"""Prove tokentally's modern ClickHouse DDL and every shipped query valid on
the modern engine (chdb, ClickHouse 26.x, in-process).

Usage: check.py DDL_JSON QUERIES_JSON
       check.py --parse-only DDL_JSON
  DDL_JSON      a JSON array of statements (`tokentally migrate --print-ddl modern --json`)
  QUERIES_JSON  a JSON array of queries to run after synthetic data is inserted

Every statement must succeed and every query must return at least one row.
Prints one line per query; exits 1 on the first failure.

--parse-only parses each statement with the engine's own parser
(formatQuery) without running it: for DDL an in-process engine cannot run,
such as ON CLUSTER with Replicated*MergeTree (no ZooKeeper, no cluster).
Prints one line per statement.
"""
import json
import sys
import tempfile

from chdb import session


def parse_only(path: str) -> int:
    s = session.Session()
    for stmt in json.load(open(path)):
        quoted = stmt.replace("\\", "\\\\").replace("'", "\\'")
        try:
            s.query(f"SELECT formatQuery('{quoted}')", "TSV")
        except Exception as e:  # the engine's parse error, with the statement
            print(f"does not parse: {stmt}\n  {e}")
            return 1
        print(f"ok (parses): {stmt[:100]}")
    return 0


def main() -> int:
    if sys.argv[1] == "--parse-only":
        return parse_only(sys.argv[2])
    ddl = json.load(open(sys.argv[1]))
    queries = json.load(open(sys.argv[2]))
    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        print("engine:", str(s.query("SELECT version()", "TSV")).strip())
        for stmt in ddl:
            s.query(stmt)
        db = "tokentally"
        # Synthetic deltas: 3 days x 4 models x 2 providers, minutes, apps,
        # rejects and progress rows, through the same columns the aggregator
        # writes (two batches, so the views must sum).
        for batch in ("b1", "b2"):
            s.query(f"""
                INSERT INTO {db}.usage_deltas
                (kind, day, minute, model, provider, app, reason, source, next_offset, batch_id,
                 requests, prompt_tokens, completion_tokens, total_tokens, cached_tokens,
                 error_requests, batches, watermark_ms)
                SELECT
                    ['daily', 'minute', 'app_daily'][1 + number % 3],
                    toDate('2026-11-25') + intDiv(number, 24) % 3,
                    toDateTime('2026-11-25 00:00:00', 'UTC') + 60 * (number % 300),
                    ['qwen/qwen3.6-plus', 'openai/gpt-5', 'anthropic/claude-sonnet-4.5', 'z-ai/glm-4.6'][1 + number % 4],
                    ['alibaba', 'openai'][1 + number % 2],
                    ['cline', 'roo-code'][1 + number % 2],
                    '', '', 0, '',
                    10 + number, 400000000000 + number, 300000000000, 700000000000 + number, 5, number % 2,
                    -- delta rows keep their reasoning tokens in `batches`
                    number % 7, 0
                FROM numbers(600)""")
            s.query(f"""
                INSERT INTO {db}.usage_deltas (kind, day, reason, batch_id, requests)
                VALUES ('rejected', '2026-11-27', 'invalid_json', '', 3)""")
            # Progress as a batch commits it: by source (minute 0), by
            # commit time (minute = arrival, requests = its dead letters),
            # and the head written after the commit.
            offset = 100 if batch == 'b1' else 200
            s.query(f"""
                INSERT INTO {db}.usage_deltas (kind, minute, source, next_offset, batch_id, requests, batches, watermark_ms)
                VALUES ('progress', toDateTime(0), 'kafka:token-events:0', {offset}, '{batch}', 0, 1, 1795823996725),
                       ('progress', now(), 'kafka:token-events:0', {offset}, '{batch}', 1, 1, 1795823996725)""")
            s.query(f"""
                INSERT INTO {db}.ledger_heads (source, next_offset, watermark_ms, at)
                VALUES ('kafka:token-events:0', {offset}, 1795823996725, now())""")
            s.query(f"""
                INSERT INTO {db}.rejected_events_log (received_at, batch_id, reason, field, detail, raw)
                VALUES (now(), '{batch}', 'invalid_json', '', 'expected value', '{{not json')""")
        # A price table as `tokentally prices load` stores it: one model by
        # its id, one by its id without the provider/ prefix; the other two
        # are unpriced.
        s.query(f"""
            INSERT INTO {db}.model_prices
            (valid_from, loaded_ns, model, provider, alias_of, input, output, cache_read, reasoning)
            VALUES ('2026-11-01', 1, 'openai/gpt-5', 'openai', '', 0.00000125, 0.00001, 0.000000125, 0.00002),
                   ('2026-11-01', 1, 'qwen3.6-plus', 'alibaba', '', 0.0000004, 0.0000012, 0.0000004, 0.0000012)""")
        s.query(f"""
            INSERT INTO {db}.milestones_log (id, type, scope, model, day, threshold, value, detected_at)
            VALUES ('first:model:1000000000000', 'first', 'model', 'qwen/qwen3.6-plus', '2026-11-27',
                    1000000000000, 1000000000001, now())""")
        for q in queries:
            rows = str(s.query(q, "JSONEachRow")).strip().splitlines()
            first = " ".join(q.split())[:70]
            if not rows:
                print(f"FAIL (no rows): {first}")
                return 1
            print(f"ok ({len(rows)} rows): {first}")
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
