//! The Arrow form of validated events: the columns the roll-ups read.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, RecordBatch, StringDictionaryBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::event::{Status, TokenEvent};

/// Dictionary-encoded string: model, provider and app names repeat a lot.
fn dict_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Schema of a batch of validated events, as the roll-up queries see it
/// (table `events`): only the columns the roll-ups read, to keep the hot
/// path lean.
///
/// | column | type | meaning |
/// |---|---|---|
/// | `day` | Date32 | UTC date of `ts` |
/// | `minute` | Timestamp(ms, UTC) | `ts` truncated to the minute |
/// | `model`, `provider`, `app` | Dictionary(Int32, Utf8) | dimensions |
/// | `prompt_tokens`, `completion_tokens`, `total_tokens`, `cached_tokens` | UInt64 | measures |
/// | `is_error` | UInt64 | 1 when `status` is `"error"`, else 0 |
pub fn event_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("day", DataType::Date32, false),
        Field::new("minute", ts, false),
        Field::new("model", dict_utf8(), false),
        Field::new("provider", dict_utf8(), false),
        Field::new("app", dict_utf8(), false),
        Field::new("prompt_tokens", DataType::UInt64, false),
        Field::new("completion_tokens", DataType::UInt64, false),
        Field::new("total_tokens", DataType::UInt64, false),
        Field::new("cached_tokens", DataType::UInt64, false),
        Field::new("is_error", DataType::UInt64, false),
    ]))
}

/// Accumulates validated events into a [`RecordBatch`] of [`event_schema`].
pub struct EventBatchBuilder {
    schema: SchemaRef,
    day: Date32Builder,
    minute: TimestampMillisecondBuilder,
    model: StringDictionaryBuilder<Int32Type>,
    provider: StringDictionaryBuilder<Int32Type>,
    app: StringDictionaryBuilder<Int32Type>,
    prompt: UInt64Builder,
    completion: UInt64Builder,
    total: UInt64Builder,
    cached: UInt64Builder,
    is_error: UInt64Builder,
    len: usize,
}

impl EventBatchBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        EventBatchBuilder {
            schema: event_schema(),
            day: Date32Builder::with_capacity(rows),
            minute: TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"),
            model: StringDictionaryBuilder::new(),
            provider: StringDictionaryBuilder::new(),
            app: StringDictionaryBuilder::new(),
            prompt: UInt64Builder::with_capacity(rows),
            completion: UInt64Builder::with_capacity(rows),
            total: UInt64Builder::with_capacity(rows),
            cached: UInt64Builder::with_capacity(rows),
            is_error: UInt64Builder::with_capacity(rows),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, ev: &TokenEvent<'_>) {
        self.day.append_value(ev.day());
        self.minute.append_value(ev.minute_ms());
        self.model.append_value(&ev.model);
        self.provider.append_value(&ev.provider);
        self.app.append_value(&ev.app);
        self.prompt.append_value(ev.prompt_tokens);
        self.completion.append_value(ev.completion_tokens);
        self.total.append_value(ev.total_tokens());
        self.cached.append_value(ev.cached_tokens);
        self.is_error
            .append_value(u64::from(ev.status == Status::Error));
        self.len += 1;
    }

    /// Take the rows appended so far as a batch; the builder is empty after.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.day.finish()),
            Arc::new(self.minute.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.app.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.completion.finish()),
            Arc::new(self.total.finish()),
            Arc::new(self.cached.finish()),
            Arc::new(self.is_error.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Limits, decode};

    #[test]
    fn builds_a_batch_matching_the_schema() {
        let mut b = EventBatchBuilder::with_capacity(4);
        let line = br#"{"event_id":"a","ts":"2026-11-27T23:59:59.999Z","model":"m","provider":"p","prompt_tokens":2,"completion_tokens":3,"status":"error"}"#;
        let ev = decode(line, &Limits::default()).unwrap();
        b.append(&ev);
        b.append(&ev);
        assert_eq!(b.len(), 2);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), event_schema());
        assert!(b.is_empty());
        let total = batch
            .column_by_name("total_tokens")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
            .unwrap();
        assert_eq!(total.values().iter().sum::<u64>(), 10);
    }
}
