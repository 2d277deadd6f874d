//! The Arrow form of validated events: the columns the roll-ups read.
//!
//! Model, provider and app names repeat on almost every event, so they are
//! interned: each batch carries small integer ids into a name table
//! ([`EventBatch::names`]). Grouping on integers lets DataFusion use its
//! vectorised primitive group-by instead of encoding every string into a
//! row format, and each (model, provider, app) combination costs one hash
//! lookup per event instead of three dictionary appends.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;

use crate::event::{Status, TokenEvent};

/// Names (or name combinations) interned before the table is started
/// afresh (at a batch boundary), so that a long run over ever-new app ids
/// stays bounded.
const MAX_NAMES: usize = 1 << 20;

/// Schema of a batch of validated events, as the roll-up queries see it
/// (table `events`): only the columns the roll-ups read, to keep the hot
/// path lean.
///
/// | column | type | meaning |
/// |---|---|---|
/// | `day` | Date32 | UTC date of `ts` |
/// | `minute` | Timestamp(ms, UTC) | `ts` truncated to the minute |
/// | `model`, `provider`, `app` | UInt32 | ids into the batch's name table |
/// | `prompt_tokens`, `completion_tokens`, `total_tokens`, `cached_tokens` | UInt64 | measures |
/// | `is_error` | UInt64 | 1 when `status` is `"error"`, else 0 |
pub fn event_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("day", DataType::Date32, false),
        Field::new("minute", ts, false),
        Field::new("model", DataType::UInt32, false),
        Field::new("provider", DataType::UInt32, false),
        Field::new("app", DataType::UInt32, false),
        Field::new("prompt_tokens", DataType::UInt64, false),
        Field::new("completion_tokens", DataType::UInt64, false),
        Field::new("total_tokens", DataType::UInt64, false),
        Field::new("cached_tokens", DataType::UInt64, false),
        Field::new("is_error", DataType::UInt64, false),
    ]))
}

/// The name columns of [`event_schema`], which hold ids into
/// [`EventBatch::names`].
pub const NAME_COLUMNS: [&str; 3] = ["model", "provider", "app"];

/// A batch of [`event_schema`] rows and the names its ids refer to.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub rows: RecordBatch,
    /// `names.value(id)` is the name an id in a name column stands for.
    pub names: Arc<StringArray>,
}

/// One distinct (model, provider, app), with the ids of its three names.
struct Combo {
    model: u32,
    provider: u32,
    app: u32,
}

/// Interns names, and (model, provider, app) combinations of them.
#[derive(Default)]
struct Names {
    hasher: DefaultHashBuilder,
    /// Index into `names`, by name.
    by_name: HashTable<u32>,
    names: Vec<Box<str>>,
    /// Index into `combos`, by the three names.
    by_combo: HashTable<u32>,
    combos: Vec<Combo>,
    /// The name table as of the last batch, while no name was added since.
    table: Option<Arc<StringArray>>,
}

impl Names {
    fn name(&mut self, name: &str) -> u32 {
        let hash = self.hasher.hash_one(name);
        let names = &self.names;
        if let Some(&id) = self.by_name.find(hash, |&id| &*names[id as usize] == name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        let (names, hasher) = (&self.names, &self.hasher);
        self.by_name
            .insert_unique(hash, id, |&id| hasher.hash_one(&*names[id as usize]));
        self.table = None;
        id
    }

    fn combo(&mut self, model: &str, provider: &str, app: &str) -> &Combo {
        let hash = self.hasher.hash_one((model, provider, app));
        let (names, combos) = (&self.names, &self.combos);
        let found = self.by_combo.find(hash, |&c| {
            let c = &combos[c as usize];
            &*names[c.model as usize] == model
                && &*names[c.provider as usize] == provider
                && &*names[c.app as usize] == app
        });
        let index = match found {
            Some(&c) => c,
            None => {
                let combo = Combo {
                    model: self.name(model),
                    provider: self.name(provider),
                    app: self.name(app),
                };
                let index = self.combos.len() as u32;
                self.combos.push(combo);
                let (names, combos, hasher) = (&self.names, &self.combos, &self.hasher);
                self.by_combo.insert_unique(hash, index, |&c| {
                    let c = &combos[c as usize];
                    hasher.hash_one((
                        &*names[c.model as usize],
                        &*names[c.provider as usize],
                        &*names[c.app as usize],
                    ))
                });
                index
            }
        };
        &self.combos[index as usize]
    }

    fn table(&mut self) -> Arc<StringArray> {
        let names = &self.names;
        self.table
            .get_or_insert_with(|| Arc::new(StringArray::from_iter_values(names.iter())))
            .clone()
    }
}

/// Accumulates validated events into an [`EventBatch`]. Keep one for the
/// life of a pipeline: its name table carries over from batch to batch.
/// Columns are plain vectors (no column is nullable), handed to Arrow
/// without a copy.
pub struct EventBatchBuilder {
    schema: SchemaRef,
    names: Names,
    day: Vec<i32>,
    minute: Vec<i64>,
    model: Vec<u32>,
    provider: Vec<u32>,
    app: Vec<u32>,
    prompt: Vec<u64>,
    completion: Vec<u64>,
    total: Vec<u64>,
    cached: Vec<u64>,
    is_error: Vec<u64>,
}

impl EventBatchBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        EventBatchBuilder {
            schema: event_schema(),
            names: Names::default(),
            day: Vec::with_capacity(rows),
            minute: Vec::with_capacity(rows),
            model: Vec::with_capacity(rows),
            provider: Vec::with_capacity(rows),
            app: Vec::with_capacity(rows),
            prompt: Vec::with_capacity(rows),
            completion: Vec::with_capacity(rows),
            total: Vec::with_capacity(rows),
            cached: Vec::with_capacity(rows),
            is_error: Vec::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.day.len()
    }

    pub fn is_empty(&self) -> bool {
        self.day.is_empty()
    }

    pub fn append(&mut self, ev: &TokenEvent<'_>) {
        let combo = self.names.combo(&ev.model, &ev.provider, &ev.app);
        self.model.push(combo.model);
        self.provider.push(combo.provider);
        self.app.push(combo.app);
        self.day.push(ev.day());
        self.minute.push(ev.minute_ms());
        self.prompt.push(ev.prompt_tokens);
        self.completion.push(ev.completion_tokens);
        self.total.push(ev.total_tokens());
        self.cached.push(ev.cached_tokens);
        self.is_error.push(u64::from(ev.status == Status::Error));
    }

    /// Take the rows appended so far as a batch; the builder is empty after
    /// (its name table is kept, unless it has grown past a bound).
    pub fn finish(&mut self) -> Result<EventBatch, ArrowError> {
        /// The column's values, leaving an empty vector of the same capacity.
        fn take<T>(v: &mut Vec<T>) -> Vec<T> {
            std::mem::replace(v, Vec::with_capacity(v.len()))
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Date32Array::from(take(&mut self.day))),
            Arc::new(TimestampMillisecondArray::from(take(&mut self.minute)).with_timezone("UTC")),
            Arc::new(UInt32Array::from(take(&mut self.model))),
            Arc::new(UInt32Array::from(take(&mut self.provider))),
            Arc::new(UInt32Array::from(take(&mut self.app))),
            Arc::new(UInt64Array::from(take(&mut self.prompt))),
            Arc::new(UInt64Array::from(take(&mut self.completion))),
            Arc::new(UInt64Array::from(take(&mut self.total))),
            Arc::new(UInt64Array::from(take(&mut self.cached))),
            Arc::new(UInt64Array::from(take(&mut self.is_error))),
        ];
        let names = self.names.table();
        if self.names.names.len() > MAX_NAMES || self.names.combos.len() > MAX_NAMES {
            self.names = Names::default();
        }
        Ok(EventBatch {
            rows: RecordBatch::try_new(self.schema.clone(), columns)?,
            names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Limits, decode};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt32Type;

    fn event(model: &str, provider: &str, app: &str) -> String {
        format!(
            r#"{{"event_id":"a","ts":"2026-11-27T23:59:59.999Z","model":"{model}","provider":"{provider}","app":"{app}","prompt_tokens":2,"completion_tokens":3,"status":"error"}}"#
        )
    }

    fn names_of(batch: &EventBatch, column: &str) -> Vec<String> {
        batch
            .rows
            .column_by_name(column)
            .unwrap()
            .as_primitive::<UInt32Type>()
            .values()
            .iter()
            .map(|&id| batch.names.value(id as usize).to_string())
            .collect()
    }

    #[test]
    fn builds_a_batch_matching_the_schema() {
        let mut b = EventBatchBuilder::with_capacity(4);
        let line = event("m", "p", "");
        let ev = decode(line.as_bytes(), &Limits::default()).unwrap();
        b.append(&ev);
        b.append(&ev);
        assert_eq!(b.len(), 2);
        let batch = b.finish().unwrap();
        assert_eq!(batch.rows.num_rows(), 2);
        assert_eq!(batch.rows.schema(), event_schema());
        assert!(b.is_empty());
        let total = batch
            .rows
            .column_by_name("total_tokens")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(total.values().iter().sum::<u64>(), 10);
        assert_eq!(names_of(&batch, "model"), ["m", "m"]);
        assert_eq!(names_of(&batch, "app"), ["", ""]);
    }

    #[test]
    fn ids_name_the_right_strings_across_batches() {
        let mut b = EventBatchBuilder::with_capacity(4);
        // The same string in different roles, and combinations that share
        // all but one name.
        let lines = [
            event("x", "y", "z"),
            event("y", "x", "z"),
            event("x", "y", "y"),
            event("x", "y", "z"),
            event("ü/模型", "y", "x"),
        ];
        for l in &lines[..3] {
            b.append(&decode(l.as_bytes(), &Limits::default()).unwrap());
        }
        let first = b.finish().unwrap();
        assert_eq!(names_of(&first, "model"), ["x", "y", "x"]);
        assert_eq!(names_of(&first, "provider"), ["y", "x", "y"]);
        assert_eq!(names_of(&first, "app"), ["z", "z", "y"]);
        for l in &lines[3..] {
            b.append(&decode(l.as_bytes(), &Limits::default()).unwrap());
        }
        let second = b.finish().unwrap();
        assert_eq!(names_of(&second, "model"), ["x", "ü/模型"]);
        assert_eq!(names_of(&second, "provider"), ["y", "y"]);
        assert_eq!(names_of(&second, "app"), ["z", "x"]);
        assert_eq!(second.names.len(), 4, "x, y, z and ü/模型, once each");
    }
}
