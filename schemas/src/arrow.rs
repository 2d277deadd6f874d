//! The Arrow form of validated events: the columns the roll-ups read.
//!
//! Model, provider and app names repeat on almost every event, so they are
//! interned: each batch carries small integer ids into a name table
//! ([`EventBatch::names`]). Grouping on integers lets DataFusion use its
//! vectorised primitive group-by instead of encoding every string into a
//! row format, and each (model, provider, app) combination costs one hash
//! lookup per event instead of three dictionary appends.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array, UInt64Array,
};
use arrow::compute::filter_record_batch;
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
/// | `prompt_tokens`, `completion_tokens`, `total_tokens`, `cached_tokens`, `reasoning_tokens` | UInt64 | measures |
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
        Field::new("reasoning_tokens", DataType::UInt64, false),
        Field::new("is_error", DataType::UInt64, false),
    ]))
}

/// The name columns of [`event_schema`], which hold ids into
/// [`EventBatch::names`].
pub const NAME_COLUMNS: [&str; 3] = ["model", "provider", "app"];

/// A batch of [`event_schema`] rows (in one or more record batches) and
/// the names its ids refer to.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub rows: Vec<RecordBatch>,
    /// `names.value(id)` is the name an id in a name column stands for.
    pub names: Arc<StringArray>,
}

/// One distinct (model, provider, app), with the ids of its three names.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
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
    fn name_hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    fn find_name(&self, hash: u64, name: &str) -> Option<u32> {
        let names = &self.names;
        let found = self.by_name.find(hash, |&id| &*names[id as usize] == name);
        found.copied()
    }

    fn name(&mut self, name: &str) -> u32 {
        let hash = self.name_hash(name);
        if let Some(id) = self.find_name(hash, name) {
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

    fn combo_hash(&self, model: &str, provider: &str, app: &str) -> u64 {
        self.hasher.hash_one((model, provider, app))
    }

    fn find_combo(&self, hash: u64, model: &str, provider: &str, app: &str) -> Option<Combo> {
        let (names, combos) = (&self.names, &self.combos);
        let found = self.by_combo.find(hash, |&c| {
            let c = &combos[c as usize];
            &*names[c.model as usize] == model
                && &*names[c.provider as usize] == provider
                && &*names[c.app as usize] == app
        });
        found.map(|&c| combos[c as usize])
    }

    /// Remember a combination of interned names, if it is new.
    fn add_combo(&mut self, combo: Combo) {
        let (names, combos, hasher) = (&self.names, &self.combos, &self.hasher);
        let hash_of = |c: &Combo| {
            let name = |id: u32| &*names[id as usize];
            hasher.hash_one((name(c.model), name(c.provider), name(c.app)))
        };
        let hash = hash_of(&combo);
        if self
            .by_combo
            .find(hash, |&c| combos[c as usize] == combo)
            .is_some()
        {
            return;
        }
        let index = combos.len() as u32;
        self.by_combo
            .insert_unique(hash, index, |&c| hash_of(&combos[c as usize]));
        self.combos.push(combo);
    }

    fn table(&mut self) -> Arc<StringArray> {
        let names = &self.names;
        self.table
            .get_or_insert_with(|| Arc::new(StringArray::from_iter_values(names.iter())))
            .clone()
    }
}

/// Builds an [`EventBatch`] from chunks of rows that may be filled on
/// several threads at once ([`EventBatchBuilder::chunk`]). Keep one for
/// the life of a pipeline: its name table carries over from batch to
/// batch.
pub struct EventBatchBuilder {
    schema: SchemaRef,
    names: Names,
    rows: Vec<RecordBatch>,
}

impl Default for EventBatchBuilder {
    fn default() -> Self {
        EventBatchBuilder {
            schema: event_schema(),
            names: Names::default(),
            rows: Vec::new(),
        }
    }
}

impl EventBatchBuilder {
    /// A writer for up to `capacity` rows of the batch being built. Any
    /// number can be filled at once (each on its own thread): they only
    /// read the name table, and hand names it lacks to [`Self::add`].
    pub fn chunk(&self, capacity: usize) -> ChunkBuilder<'_> {
        ChunkBuilder {
            names: &self.names,
            base: self.names.names.len() as u32,
            new_names: Vec::new(),
            new_ids: HashMap::new(),
            new_combos: HashTable::new(),
            columns: Columns::with_capacity(capacity),
        }
    }

    /// Add a filled chunk's rows to the batch: those whose entry in `keep`
    /// is true, or all of them without one. Chunks are added in order.
    pub fn add(&mut self, chunk: Chunk, keep: Option<&[bool]>) -> Result<(), ArrowError> {
        let Chunk {
            mut columns,
            base,
            new_names,
            new_combos,
        } = chunk;
        // The table's ids of the chunk's new names (provisional ids from
        // `base` up).
        let ids: Vec<u32> = new_names.iter().map(|n| self.names.name(n)).collect();
        let global = |id: u32| match id.checked_sub(base) {
            None => id,
            Some(new) => ids[new as usize],
        };
        if !ids.is_empty() {
            for column in [&mut columns.model, &mut columns.provider, &mut columns.app] {
                column.iter_mut().for_each(|id| *id = global(*id));
            }
        }
        for c in new_combos {
            self.names.add_combo(Combo {
                model: global(c.model),
                provider: global(c.provider),
                app: global(c.app),
            });
        }
        let rows = columns.finish(self.schema.clone())?;
        let rows = match keep {
            Some(keep) => filter_record_batch(&rows, &BooleanArray::from(keep.to_vec()))?,
            None => rows,
        };
        if rows.num_rows() > 0 {
            self.rows.push(rows);
        }
        Ok(())
    }

    /// Take the rows added so far as a batch; the builder is empty after
    /// (its name table is kept, unless it has grown past a bound).
    pub fn finish(&mut self) -> EventBatch {
        let names = self.names.table();
        if self.names.names.len() > MAX_NAMES || self.names.combos.len() > MAX_NAMES {
            self.names = Names::default();
        }
        EventBatch {
            rows: std::mem::take(&mut self.rows),
            names,
        }
    }
}

/// Fills the rows of one chunk of a batch (see [`EventBatchBuilder::chunk`]).
pub struct ChunkBuilder<'a> {
    names: &'a Names,
    /// Ids from here up stand for `new_names`.
    base: u32,
    /// Names the table lacks, in order of first use, and their ids.
    new_names: Vec<Box<str>>,
    new_ids: HashMap<Box<str>, u32>,
    /// Combinations the table lacks, hashed as the table hashes them.
    new_combos: HashTable<Combo>,
    columns: Columns,
}

impl ChunkBuilder<'_> {
    pub fn append(&mut self, ev: &TokenEvent<'_>) {
        let (model, provider, app) = (&*ev.model, &*ev.provider, &*ev.app);
        let hash = self.names.combo_hash(model, provider, app);
        let combo = match self.names.find_combo(hash, model, provider, app) {
            Some(combo) => combo,
            None => self.new_combo(hash, model, provider, app),
        };
        self.columns.push(ev, combo);
    }

    /// The (partly provisional) ids of a combination the table lacks.
    fn new_combo(&mut self, hash: u64, model: &str, provider: &str, app: &str) -> Combo {
        let found = self.new_combos.find(hash, |c| {
            self.name_of(c.model) == model
                && self.name_of(c.provider) == provider
                && self.name_of(c.app) == app
        });
        if let Some(&combo) = found {
            return combo;
        }
        let combo = Combo {
            model: self.name(model),
            provider: self.name(provider),
            app: self.name(app),
        };
        let ChunkBuilder {
            names,
            base,
            new_names,
            new_combos,
            ..
        } = self;
        let name_of = |id: u32| name_of(names, *base, new_names, id);
        new_combos.insert_unique(hash, combo, |c| {
            names.combo_hash(name_of(c.model), name_of(c.provider), name_of(c.app))
        });
        combo
    }

    fn name_of(&self, id: u32) -> &str {
        name_of(self.names, self.base, &self.new_names, id)
    }

    /// A name's id, provisional (from `base` up) if the table lacks it.
    fn name(&mut self, name: &str) -> u32 {
        if let Some(id) = self.names.find_name(self.names.name_hash(name), name) {
            return id;
        }
        if let Some(&id) = self.new_ids.get(name) {
            return id;
        }
        let id = self.base + self.new_names.len() as u32;
        self.new_names.push(name.into());
        self.new_ids.insert(name.into(), id);
        id
    }

    pub fn finish(self) -> Chunk {
        Chunk {
            columns: self.columns,
            base: self.base,
            new_names: self.new_names,
            new_combos: self.new_combos.into_iter().collect(),
        }
    }
}

/// The name an id stands for in a chunk: the table's below `base`, the
/// chunk's own new names from there up.
fn name_of<'a>(names: &'a Names, base: u32, new_names: &'a [Box<str>], id: u32) -> &'a str {
    match id.checked_sub(base) {
        None => &names.names[id as usize],
        Some(new) => &new_names[new as usize],
    }
}

/// The rows of a filled [`ChunkBuilder`], for [`EventBatchBuilder::add`].
pub struct Chunk {
    columns: Columns,
    base: u32,
    new_names: Vec<Box<str>>,
    new_combos: Vec<Combo>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.columns.day.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `total_tokens` of each row.
    pub fn total_tokens(&self) -> &[u64] {
        &self.columns.total
    }
}

/// The columns of [`event_schema`] as plain vectors (no column is
/// nullable), handed to Arrow without a copy.
struct Columns {
    day: Vec<i32>,
    minute: Vec<i64>,
    model: Vec<u32>,
    provider: Vec<u32>,
    app: Vec<u32>,
    prompt: Vec<u64>,
    completion: Vec<u64>,
    total: Vec<u64>,
    cached: Vec<u64>,
    reasoning: Vec<u64>,
    is_error: Vec<u64>,
}

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        Columns {
            day: Vec::with_capacity(rows),
            minute: Vec::with_capacity(rows),
            model: Vec::with_capacity(rows),
            provider: Vec::with_capacity(rows),
            app: Vec::with_capacity(rows),
            prompt: Vec::with_capacity(rows),
            completion: Vec::with_capacity(rows),
            total: Vec::with_capacity(rows),
            cached: Vec::with_capacity(rows),
            reasoning: Vec::with_capacity(rows),
            is_error: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, ev: &TokenEvent<'_>, combo: Combo) {
        self.model.push(combo.model);
        self.provider.push(combo.provider);
        self.app.push(combo.app);
        self.day.push(ev.day());
        self.minute.push(ev.minute_ms());
        self.prompt.push(ev.prompt_tokens);
        self.completion.push(ev.completion_tokens);
        self.total.push(ev.total_tokens());
        self.cached.push(ev.cached_tokens);
        self.reasoning.push(ev.reasoning_tokens);
        self.is_error.push(u64::from(ev.status == Status::Error));
    }

    fn finish(self, schema: SchemaRef) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Date32Array::from(self.day)),
            Arc::new(TimestampMillisecondArray::from(self.minute).with_timezone("UTC")),
            Arc::new(UInt32Array::from(self.model)),
            Arc::new(UInt32Array::from(self.provider)),
            Arc::new(UInt32Array::from(self.app)),
            Arc::new(UInt64Array::from(self.prompt)),
            Arc::new(UInt64Array::from(self.completion)),
            Arc::new(UInt64Array::from(self.total)),
            Arc::new(UInt64Array::from(self.cached)),
            Arc::new(UInt64Array::from(self.reasoning)),
            Arc::new(UInt64Array::from(self.is_error)),
        ];
        RecordBatch::try_new(schema, columns)
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
        let mut out = Vec::new();
        for rows in &batch.rows {
            let ids = rows
                .column_by_name(column)
                .unwrap()
                .as_primitive::<UInt32Type>();
            out.extend(
                ids.values()
                    .iter()
                    .map(|&id| batch.names.value(id as usize).to_string()),
            );
        }
        out
    }

    /// One chunk of `lines`, added whole.
    fn add_all(b: &mut EventBatchBuilder, lines: &[String]) {
        let mut chunk = b.chunk(lines.len());
        for l in lines {
            chunk.append(&decode(l.as_bytes(), &Limits::default()).unwrap());
        }
        let chunk = chunk.finish();
        assert_eq!(chunk.len(), lines.len());
        b.add(chunk, None).unwrap();
    }

    #[test]
    fn builds_a_batch_matching_the_schema() {
        let mut b = EventBatchBuilder::default();
        let line = event("m", "p", "");
        add_all(&mut b, &[line.clone(), line]);
        let batch = b.finish();
        assert_eq!(batch.rows.len(), 1);
        let rows = &batch.rows[0];
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(rows.schema(), event_schema());
        assert!(
            b.finish().rows.is_empty(),
            "finish leaves the builder empty"
        );
        let total = rows
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
        let mut b = EventBatchBuilder::default();
        // The same string in different roles, and combinations that share
        // all but one name.
        let lines = [
            event("x", "y", "z"),
            event("y", "x", "z"),
            event("x", "y", "y"),
            event("x", "y", "z"),
            event("ü/模型", "y", "x"),
        ];
        add_all(&mut b, &lines[..3]);
        let first = b.finish();
        assert_eq!(names_of(&first, "model"), ["x", "y", "x"]);
        assert_eq!(names_of(&first, "provider"), ["y", "x", "y"]);
        assert_eq!(names_of(&first, "app"), ["z", "z", "y"]);
        add_all(&mut b, &lines[3..]);
        let second = b.finish();
        assert_eq!(names_of(&second, "model"), ["x", "ü/模型"]);
        assert_eq!(names_of(&second, "provider"), ["y", "y"]);
        assert_eq!(names_of(&second, "app"), ["z", "x"]);
        assert_eq!(second.names.len(), 4, "x, y, z and ü/模型, once each");
    }

    #[test]
    fn chunks_filled_side_by_side_agree_on_new_names() {
        let mut b = EventBatchBuilder::default();
        add_all(&mut b, &[event("known", "p", "a")]);
        b.finish();
        // Both chunks see the same table and give their new names the same
        // provisional ids; adding them must still keep every name apart.
        fn ev(line: &str) -> TokenEvent<'_> {
            decode(line.as_bytes(), &Limits::default()).unwrap()
        }
        let one = [
            event("new1", "p", "a"),
            event("known", "p", "a"),
            event("shared", "p", "b"),
            event("new1", "p", "a"),
        ];
        let two = [
            event("shared", "q", "a"),
            event("new2", "p", "a"),
            event("new1", "p", "a"),
        ];
        let (mut c1, mut c2) = (b.chunk(4), b.chunk(3));
        one.iter().for_each(|l| c1.append(&ev(l)));
        two.iter().for_each(|l| c2.append(&ev(l)));
        let (c1, c2) = (c1.finish(), c2.finish());
        b.add(c1, None).unwrap();
        b.add(c2, Some(&[true, false, true])).unwrap();
        let batch = b.finish();
        assert_eq!(batch.rows.len(), 2);
        assert_eq!(
            names_of(&batch, "model"),
            ["new1", "known", "shared", "new1", "shared", "new1"]
        );
        assert_eq!(names_of(&batch, "provider"), ["p", "p", "p", "p", "q", "p"]);
        assert_eq!(names_of(&batch, "app"), ["a", "a", "b", "a", "a", "a"]);
        // new2 was named although its row was dropped; nothing twice.
        assert_eq!(batch.names.len(), 8);
        // The next batch finds every combination in the table.
        let again = b.chunk(1);
        let known = |m, p, a| {
            let hash = again.names.combo_hash(m, p, a);
            again.names.find_combo(hash, m, p, a).is_some()
        };
        assert!(known("new2", "p", "a") && known("shared", "q", "a"));
    }
}
