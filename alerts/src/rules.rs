//! Milestone rules, evaluated against authoritative daily totals. Pure: the
//! same totals and the same already-known milestones always give the same
//! new milestones, with deterministic ids, so detection can be repeated
//! (after a restart, by another instance) without inventing new ids.
//!
//! This is the one rule set: `tokentally demo` runs it on the totals it
//! has committed after each batch, `alerts run` on the totals it reads
//! from the store or ClickHouse every interval.
//!
//! **"First"** has one definition: when a daily threshold is seen crossed
//! for the first time, the first model to cross it is, among the model-days
//! at or above it in those totals, the one on the earliest day, and on that
//! day the one with the largest total (then the smallest name). It is
//! announced once (id `first:model:THRESHOLD`) and never revised. The order
//! in which batches arrived plays no part, so any two readers of the same
//! totals name the same model.
//!
//! Over 600 lines: every rule reads the same `Totals` and shares the id
//! scheme, and the unit tests (a fifth of the file) hold them to it.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, UInt64Type};
use serde::{Deserialize, Serialize};

/// Default ladder of daily token thresholds: 1B, 10B, 100B, 1T, 10T.
pub const DEFAULT_LADDER: [u64; 5] = [
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
    1_000_000_000_000,
    10_000_000_000_000,
];

/// `[alerts]` rules in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Daily token thresholds, per model, per provider and fleet-wide.
    /// Default 1B, 10B, 100B, 1T, 10T.
    pub daily_thresholds: Vec<u64>,
    /// Cumulative (all-time) token thresholds per model. Default 1T, 10T, 100T.
    pub all_time_thresholds: Vec<u64>,
    /// Fire `first` milestones: the first model ever to cross a daily threshold.
    pub first: bool,
    /// Fire `record` milestones: new highest daily totals.
    pub records: bool,
    /// Records below this many tokens are not announced (noise control).
    /// Default 1B.
    pub record_min_tokens: u64,
    /// Daily spend thresholds in whole USD: the first model ever to spend
    /// each in one day is announced (`first` milestones in `usd`). Default
    /// 1,000, 10,000, 100,000, 1,000,000.
    pub first_spend_usd: Vec<u64>,
    /// Fire spend `record` milestones: the highest daily spend of any
    /// model, and the fleet's, beaten.
    pub spend_records: bool,
    /// Spend records below this many USD are not announced. Default 1,000.
    pub record_min_usd: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            daily_thresholds: DEFAULT_LADDER.to_vec(),
            all_time_thresholds: vec![1_000_000_000_000, 10_000_000_000_000, 100_000_000_000_000],
            first: true,
            records: true,
            record_min_tokens: 1_000_000_000,
            first_spend_usd: vec![1_000, 10_000, 100_000, 1_000_000],
            spend_records: true,
            record_min_usd: 1_000,
        }
    }
}

/// What a milestone is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A daily total crossed a threshold.
    Threshold,
    /// A cumulative total crossed a threshold.
    AllTime,
    /// The first model ever to cross a daily threshold.
    First,
    /// A new highest daily total.
    Record,
    /// A sample sent by `tokentally alerts test` ([`Milestone::sample`]);
    /// the rules never fire it.
    Test,
    /// A fraction of a budget reached (`[[alerts.budgets]]`).
    Budget,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Threshold => "threshold",
            Kind::AllTime => "all_time",
            Kind::First => "first",
            Kind::Record => "record",
            Kind::Test => "test",
            Kind::Budget => "budget",
        }
    }
}

/// What a milestone's `threshold`, `value` and `previous_record` count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Tokens.
    #[default]
    Tokens,
    /// Millionths of a US dollar (the exact cost, rounded down).
    UsdMicros,
}

/// Millionths of a dollar in one dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// The units of an exact cost ([`Totals::spend`]): 10⁻¹² USD, the scale
/// of `cost_usd`, Decimal(38, 12).
pub const COST_UNITS_PER_MICRO: i128 = 1_000_000;

/// An exact cost in micro-USD, rounded down (0 if negative).
pub fn micros(cost: i128) -> u64 {
    u64::try_from((cost / COST_UNITS_PER_MICRO).max(0)).unwrap_or(u64::MAX)
}

/// The budget a `budget` milestone is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetHit {
    /// The budget's `name`.
    pub name: String,
    /// `day` or `month`; the milestone's `day` is the period's first day.
    pub period: String,
    /// The limit, micro-USD.
    pub limit: u64,
    /// The fraction of the limit reached, in percent.
    pub percent: u32,
}

/// One milestone, as recorded and delivered (the webhook body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    /// Deterministic: the receiver's idempotency key. The `webhook-id`
    /// header carries its ASCII digest, [`crate::webhook::webhook_id`].
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// `model`, `provider`, `fleet`, or for records `top_model` (the highest
    /// daily total of any model).
    pub scope: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    /// UTC day (`YYYY-MM-DD`) of daily milestones.
    pub day: Option<String>,
    pub threshold: Option<u64>,
    /// The total when detected.
    pub value: u64,
    /// Records: the previous record.
    pub previous_record: Option<u64>,
    /// Records: who held it.
    pub previous_holder: Option<String>,
    /// RFC 3339, when tokentally detected it.
    pub detected_at: String,
    /// What the numbers count: `tokens`, or `usd_micros` for spend.
    #[serde(default)]
    pub unit: Unit,
    /// Budgets of an app: the app.
    #[serde(default)]
    pub app: Option<String>,
    /// Budget milestones: which budget, and how much of it.
    #[serde(default)]
    pub budget: Option<BudgetHit>,
}

/// The model of [`Milestone::sample`].
pub const SAMPLE_MODEL: &str = "tokentally/test-model";

impl Milestone {
    /// What `tokentally alerts test` sends: plainly not news (type
    /// `test`, model [`SAMPLE_MODEL`], 1T tokens on the day of `now`),
    /// with an id that says so and is new on every call
    /// (`test:model:tokentally/test-model:<day>:<unix ms>`), so that a
    /// receiver that deduplicates shows every test.
    pub fn sample(now: chrono::DateTime<chrono::Utc>) -> Milestone {
        let day = now.format("%Y-%m-%d").to_string();
        Milestone {
            id: format!("test:model:{SAMPLE_MODEL}:{day}:{}", now.timestamp_millis()),
            kind: Kind::Test,
            scope: "model".into(),
            model: Some(SAMPLE_MODEL.into()),
            provider: None,
            day: Some(day),
            threshold: Some(1_000_000_000_000),
            value: 1_000_000_000_000,
            previous_record: None,
            previous_holder: None,
            detected_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            unit: Unit::Tokens,
            app: None,
            budget: None,
        }
    }
}

/// Daily totals by (day, model, provider), as read from `usage_daily`,
/// and the spend of priced rows, from `cost_daily` and `cost_app_daily`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// (day `YYYY-MM-DD`, model, provider) → total tokens.
    pub daily: BTreeMap<(String, String, String), u64>,
    /// (day, model, provider) → exact cost, in 10⁻¹² USD.
    pub spend: BTreeMap<(String, String, String), i128>,
    /// (day, app) → exact cost, in 10⁻¹² USD.
    pub app_spend: BTreeMap<(String, String), i128>,
}

impl Totals {
    pub fn add_spend(&mut self, day: &str, model: &str, provider: &str, cost: i128) {
        *self
            .spend
            .entry((day.to_string(), model.to_string(), provider.to_string()))
            .or_default() += cost;
    }

    pub fn add_app_spend(&mut self, day: &str, app: &str, cost: i128) {
        *self
            .app_spend
            .entry((day.to_string(), app.to_string()))
            .or_default() += cost;
    }

    pub fn add(&mut self, day: &str, model: &str, provider: &str, tokens: u64) {
        *self
            .daily
            .entry((day.to_string(), model.to_string(), provider.to_string()))
            .or_default() += tokens;
    }

    /// Fold in daily roll-up deltas (rows of `usage_daily`, as the
    /// aggregation emits them for one batch).
    pub fn apply_daily(&mut self, batches: &[RecordBatch]) -> Result<(), arrow::error::ArrowError> {
        for b in batches {
            let column = |name: &str| {
                b.column_by_name(name).ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError(format!(
                        "daily deltas without a {name} column"
                    ))
                })
            };
            let day = column("day")?.as_primitive::<Date32Type>();
            let model = column("model")?.as_string::<i32>();
            let provider = column("provider")?.as_string::<i32>();
            let total = column("total_tokens")?.as_primitive::<UInt64Type>();
            for i in 0..b.num_rows() {
                self.add(
                    &date(day.value(i)),
                    model.value(i),
                    provider.value(i),
                    total.value(i),
                );
            }
        }
        Ok(())
    }

    /// The most recent day with any tokens (`YYYY-MM-DD`).
    pub fn latest_day(&self) -> Option<&str> {
        self.daily.keys().map(|(d, _, _)| d.as_str()).max()
    }

    /// The top `n` models of `day` by tokens (all providers), largest
    /// first.
    pub fn leaderboard(&self, day: &str, n: usize) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = self
            .by(|(d, m, _)| (d.clone(), m.clone()))
            .into_iter()
            .filter(|((d, _), _)| d == day)
            .map(|((_, m), t)| (m, t))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(n);
        rows
    }

    fn by<K: Ord>(&self, key: impl Fn(&(String, String, String)) -> K) -> BTreeMap<K, u64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.daily {
            *out.entry(key(k)).or_default() += v;
        }
        out
    }
}

/// Days since 1970-01-01 as `YYYY-MM-DD`, the form both stores print.
fn date(day: i32) -> String {
    chrono::NaiveDate::from_epoch_days(day)
        .map(|d| d.to_string())
        .unwrap_or_else(|| day.to_string())
}

fn id_threshold(scope: &str, subject: &str, day: &str, t: u64) -> String {
    format!("threshold:{scope}:{subject}:{day}:{t}")
}

/// The milestones `totals` reach that are not in `known` (by id), in a
/// stable order: thresholds, all-time, firsts, records.
pub fn evaluate(
    rules: &RulesConfig,
    totals: &Totals,
    known: &BTreeSet<String>,
    detected_at: &str,
) -> Vec<Milestone> {
    let mut out = Vec::new();
    let mut push = |m: Milestone| {
        if !known.contains(&m.id) && !out.iter().any(|o: &Milestone| o.id == m.id) {
            out.push(m);
        }
    };
    let blank = |id: String, kind: Kind, scope: &str, value: u64| Milestone {
        id,
        kind,
        scope: scope.to_string(),
        model: None,
        provider: None,
        day: None,
        threshold: None,
        value,
        previous_record: None,
        previous_holder: None,
        detected_at: detected_at.to_string(),
        unit: Unit::Tokens,
        app: None,
        budget: None,
    };
    let model_day = totals.by(|(d, m, _)| (d.clone(), m.clone()));
    let provider_day = totals.by(|(d, _, p)| (d.clone(), p.clone()));
    let fleet_day = totals.by(|(d, _, _)| d.clone());
    let model_all = totals.by(|(_, m, _)| m.clone());

    let mut ladder = rules.daily_thresholds.clone();
    ladder.sort_unstable();
    ladder.dedup();
    // Daily totals by scope, in the order milestones are listed: each
    // model, each provider, the fleet.
    let daily: Vec<(&str, &str, &str, u64)> = model_day
        .iter()
        .map(|((d, m), v)| ("model", m.as_str(), d.as_str(), *v))
        .chain(
            provider_day
                .iter()
                .map(|((d, p), v)| ("provider", p.as_str(), d.as_str(), *v)),
        )
        .chain(
            fleet_day
                .iter()
                .map(|(d, v)| ("fleet", "all", d.as_str(), *v)),
        )
        .collect();
    for &t in &ladder {
        for &(scope, subject, day, v) in daily.iter().filter(|e| e.3 >= t) {
            let mut m = blank(
                id_threshold(scope, subject, day, t),
                Kind::Threshold,
                scope,
                v,
            );
            match scope {
                "model" => m.model = Some(subject.to_string()),
                "provider" => m.provider = Some(subject.to_string()),
                _ => {}
            }
            m.day = Some(day.to_string());
            m.threshold = Some(t);
            push(m);
        }
    }
    let mut all_time = rules.all_time_thresholds.clone();
    all_time.sort_unstable();
    all_time.dedup();
    for &t in &all_time {
        for (model, &v) in &model_all {
            if v >= t {
                let mut m = blank(
                    format!("all_time:model:{model}:{t}"),
                    Kind::AllTime,
                    "model",
                    v,
                );
                m.model = Some(model.clone());
                m.threshold = Some(t);
                push(m);
            }
        }
    }
    if rules.first {
        for &t in &ladder {
            if let Some((day, model, v)) = first_to(&model_day, t) {
                let mut m = blank(format!("first:model:{t}"), Kind::First, "model", v);
                m.model = Some(model.to_string());
                m.day = Some(day.to_string());
                m.threshold = Some(t);
                push(m);
            }
        }
    }
    if rules.records {
        records(rules, &model_day, &fleet_day, &blank, &mut push);
    }
    spend(rules, totals, &blank, &mut push);
    out
}

/// Spend milestones: the first model to spend each of `first_spend_usd`
/// in a day (the same definition of "first" as for tokens), and records of
/// the highest daily spend of any model and of the fleet. Values are
/// micro-USD; thresholds compare with the exact cost.
fn spend(
    rules: &RulesConfig,
    totals: &Totals,
    blank: &dyn Fn(String, Kind, &str, u64) -> Milestone,
    push: &mut dyn FnMut(Milestone),
) {
    let mut model_day: BTreeMap<(String, String), i128> = BTreeMap::new();
    let mut fleet_day: BTreeMap<&str, i128> = BTreeMap::new();
    for ((day, model, _), cost) in &totals.spend {
        *model_day.entry((day.clone(), model.clone())).or_default() += cost;
        *fleet_day.entry(day).or_default() += cost;
    }
    let usd = |n: u64| i128::from(n) * i128::from(MICROS_PER_USD) * COST_UNITS_PER_MICRO;
    let mut ladder = rules.first_spend_usd.clone();
    ladder.sort_unstable();
    ladder.dedup();
    for &t in &ladder {
        if let Some((day, model, v)) = first_to(&model_day, usd(t)) {
            let mut m = blank(
                format!("first_spend:model:{t}"),
                Kind::First,
                "model",
                micros(v),
            );
            m.unit = Unit::UsdMicros;
            m.model = Some(model.to_string());
            m.day = Some(day.to_string());
            m.threshold = Some(t * MICROS_PER_USD);
            push(m);
        }
    }
    if !rules.spend_records {
        return;
    }
    let min = usd(rules.record_min_usd);
    for (day, v, previous) in record_days(&fleet_day, min) {
        let mut m = blank(
            format!("spend_record:fleet:{day}"),
            Kind::Record,
            "fleet",
            micros(v),
        );
        m.unit = Unit::UsdMicros;
        m.day = Some(day.to_string());
        m.previous_record = Some(micros(previous));
        push(m);
    }
    for r in top_model_records(&model_day, min) {
        let mut m = blank(
            format!("spend_record:top_model:{}:{}", r.day, r.model),
            Kind::Record,
            "top_model",
            micros(r.value),
        );
        m.unit = Unit::UsdMicros;
        m.model = Some(r.model.to_string());
        m.day = Some(r.day.to_string());
        m.previous_record = Some(micros(r.beaten_value));
        m.previous_holder = Some(r.beaten.to_string());
        push(m);
    }
}

/// Of the model-days at or above `t`, the one on the earliest day, and on
/// that day the largest (then the smallest name): the first to reach it.
fn first_to<V: Copy + Ord>(
    model_day: &BTreeMap<(String, String), V>,
    t: V,
) -> Option<(&str, &str, V)> {
    model_day
        .iter()
        .filter(|(_, v)| **v >= t)
        .min_by(|((d1, m1), v1), ((d2, m2), v2)| d1.cmp(d2).then(v2.cmp(v1)).then(m1.cmp(m2)))
        .map(|((day, model), &v)| (day.as_str(), model.as_str(), v))
}

/// The days whose total beat every earlier day's (a first day sets no
/// record), at least `min`: (day, total, previous best). For a model's
/// days, its own records; for the fleet's, the fleet's.
fn record_days<'a, V: Copy + Ord + Default>(
    fleet_day: &BTreeMap<&'a str, V>,
    min: V,
) -> Vec<(&'a str, V, V)> {
    let zero = V::default();
    let mut best = zero;
    let mut out = Vec::new();
    for (&day, &v) in fleet_day {
        if best > zero && v > best && v >= min {
            out.push((day, v, best));
        }
        best = best.max(v);
    }
    out
}

/// A day's leading model taking the highest daily total of any model.
struct TopRecord<'a, V> {
    day: &'a str,
    model: &'a str,
    value: V,
    /// Who held the record it beat: the highest other total so far.
    beaten: &'a str,
    beaten_value: V,
}

/// The highest daily total of any model, taken from another model: each
/// day, only that day's leader can take it. Within a day, the order in
/// which models passed each other is not in the totals, so the models the
/// leader passed on its way are not announced; the record it beat is the
/// highest other total so far (an earlier day's holder, or a model it
/// passed that day). At least `min`.
fn top_model_records<V: Copy + Ord + Default>(
    model_day: &BTreeMap<(String, String), V>,
    min: V,
) -> Vec<TopRecord<'_, V>> {
    let zero = V::default();
    let mut out = Vec::new();
    let mut holder: Option<(&str, V)> = None;
    let mut days: BTreeMap<&str, Vec<(&str, V)>> = BTreeMap::new();
    for ((day, model), &v) in model_day {
        days.entry(day).or_default().push((model, v));
    }
    let higher = |a: (&str, V), b: (&str, V)| a.1 > b.1 || (a.1 == b.1 && a.0 < b.0);
    for (day, entries) in days {
        let Some(leader) = entries
            .iter()
            .copied()
            .reduce(|best, e| if higher(e, best) { e } else { best })
        else {
            continue;
        };
        let beaten = entries
            .iter()
            .copied()
            .filter(|e| e.0 != leader.0)
            .chain(holder)
            .reduce(|best, e| if higher(e, best) { e } else { best });
        if let Some((bmodel, bv)) = beaten
            && bmodel != leader.0
            && leader.1 > bv
            && bv > zero
            && leader.1 >= min
        {
            out.push(TopRecord {
                day,
                model: leader.0,
                value: leader.1,
                beaten: bmodel,
                beaten_value: bv,
            });
        }
        if holder.is_none_or(|h| higher(leader, h)) {
            holder = Some(leader);
        }
    }
    out
}
fn records(
    rules: &RulesConfig,
    model_day: &BTreeMap<(String, String), u64>,
    fleet_day: &BTreeMap<String, u64>,
    blank: &dyn Fn(String, Kind, &str, u64) -> Milestone,
    push: &mut dyn FnMut(Milestone),
) {
    let min = rules.record_min_tokens;
    // A model's best day beaten.
    let mut per_model: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((day, model), &v) in model_day {
        per_model.entry(model).or_default().insert(day, v);
    }
    for (model, days) in &per_model {
        for (day, v, previous) in record_days(days, min) {
            let mut m = blank(
                format!("record:model:{model}:{day}"),
                Kind::Record,
                "model",
                v,
            );
            m.model = Some(model.to_string());
            m.day = Some(day.to_string());
            m.previous_record = Some(previous);
            push(m);
        }
    }
    // The fleet's best day beaten.
    let fleet_day: BTreeMap<&str, u64> = fleet_day.iter().map(|(d, v)| (d.as_str(), *v)).collect();
    for (day, v, previous) in record_days(&fleet_day, min) {
        let mut m = blank(format!("record:fleet:{day}"), Kind::Record, "fleet", v);
        m.day = Some(day.to_string());
        m.previous_record = Some(previous);
        push(m);
    }
    for r in top_model_records(model_day, min) {
        let mut m = blank(
            format!("record:top_model:{}:{}", r.day, r.model),
            Kind::Record,
            "top_model",
            r.value,
        );
        m.model = Some(r.model.to_string());
        m.day = Some(r.day.to_string());
        m.previous_record = Some(r.beaten_value);
        m.previous_holder = Some(r.beaten.to_string());
        push(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_000_000_000_000;

    fn rules() -> RulesConfig {
        RulesConfig {
            daily_thresholds: vec![T],
            all_time_thresholds: vec![2 * T],
            ..RulesConfig::default()
        }
    }

    fn ids(ms: &[Milestone]) -> Vec<&str> {
        ms.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn thresholds_first_and_records_fire_once_with_stable_ids() {
        let mut known = BTreeSet::new();
        let mut totals = Totals::default();
        totals.add("2026-11-26", "a", "p", T / 2);
        totals.add("2026-11-27", "a", "p", T + 5);
        let got = evaluate(&rules(), &totals, &known, "now");
        assert_eq!(
            ids(&got),
            vec![
                "threshold:model:a:2026-11-27:1000000000000",
                "threshold:provider:p:2026-11-27:1000000000000",
                "threshold:fleet:all:2026-11-27:1000000000000",
                "first:model:1000000000000",
                "record:model:a:2026-11-27",
                "record:fleet:2026-11-27",
            ]
        );
        let rec = &got[4];
        assert_eq!((rec.previous_record, rec.value), (Some(T / 2), T + 5));
        known.extend(got.iter().map(|m| m.id.clone()));
        // Same totals again: nothing new.
        assert!(evaluate(&rules(), &totals, &known, "later").is_empty());

        // Model b crosses the same day and passes a: a threshold, no first,
        // and the top-model record with a as the previous holder.
        totals.add("2026-11-27", "b", "q", 2 * T);
        let got = evaluate(&rules(), &totals, &known, "later");
        assert!(got.iter().all(|m| m.kind != Kind::First));
        let top = got.iter().find(|m| m.scope == "top_model").unwrap();
        assert_eq!(top.id, "record:top_model:2026-11-27:b");
        assert_eq!(top.previous_holder.as_deref(), Some("a"));
        assert_eq!(top.previous_record, Some(T + 5));
        assert!(
            got.iter()
                .any(|m| m.id == "threshold:model:b:2026-11-27:1000000000000")
        );
        assert!(got.iter().any(|m| m.id == "all_time:model:b:2000000000000"));
    }

    #[test]
    fn only_a_days_leader_takes_the_top_model_record() {
        let mut totals = Totals::default();
        totals.add("2026-11-26", "a", "p", T);
        // On the next day c and b both pass a's best: only the leader, b,
        // takes the record, from c, the highest other total.
        totals.add("2026-11-27", "c", "p", T + 1);
        totals.add("2026-11-27", "b", "p", T + 2);
        totals.add("2026-11-27", "a", "p", 1);
        let got = evaluate(&rules(), &totals, &BTreeSet::new(), "now");
        let top: Vec<_> = got.iter().filter(|m| m.scope == "top_model").collect();
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].id, "record:top_model:2026-11-27:b");
        assert_eq!(top[0].previous_holder.as_deref(), Some("c"));
        assert_eq!(top[0].previous_record, Some(T + 1));
        // A model that keeps the lead on a later day takes nothing from
        // anyone.
        totals.add("2026-11-28", "b", "p", 3 * T);
        totals.add("2026-11-28", "a", "p", 1);
        let got = evaluate(&rules(), &totals, &BTreeSet::new(), "now");
        assert_eq!(got.iter().filter(|m| m.scope == "top_model").count(), 1);
    }

    #[test]
    fn spend_firsts_and_records_compare_the_exact_cost() {
        const USD: i128 = 1_000_000_000_000;
        let rules = RulesConfig {
            first_spend_usd: vec![1_000],
            record_min_usd: 1,
            ..RulesConfig::default()
        };
        let mut totals = Totals::default();
        totals.add_spend("2026-11-26", "a", "p", 1_000 * USD - 1);
        assert!(evaluate(&rules, &totals, &BTreeSet::new(), "t").is_empty());
        // b reaches exactly $1,000 over two providers, the next day.
        totals.add_spend("2026-11-27", "b", "p", 600 * USD);
        totals.add_spend("2026-11-27", "b", "q", 400 * USD);
        let got = evaluate(&rules, &totals, &BTreeSet::new(), "t");
        assert_eq!(
            ids(&got),
            [
                "first_spend:model:1000",
                "spend_record:fleet:2026-11-27",
                "spend_record:top_model:2026-11-27:b"
            ]
        );
        assert!(got.iter().all(|m| m.unit == Unit::UsdMicros));
        assert_eq!(got[0].model.as_deref(), Some("b"));
        assert_eq!(
            (got[0].threshold, got[0].value),
            (Some(1_000_000_000), 1_000_000_000)
        );
        assert_eq!(got[2].previous_holder.as_deref(), Some("a"));
        assert_eq!(got[2].previous_record, Some(999_999_999));
    }

    #[test]
    fn records_need_a_previous_record_and_the_minimum() {
        let mut totals = Totals::default();
        totals.add("2026-11-26", "a", "p", 10);
        totals.add("2026-11-27", "a", "p", 20);
        let got = evaluate(&rules(), &totals, &BTreeSet::new(), "now");
        assert!(got.is_empty(), "below record_min_tokens: {got:?}");
        let none = RulesConfig {
            records: false,
            first: false,
            ..rules()
        };
        totals.add("2026-11-28", "a", "p", 3 * T);
        let got = evaluate(&none, &totals, &BTreeSet::new(), "now");
        assert!(
            got.iter()
                .all(|m| m.kind == Kind::Threshold || m.kind == Kind::AllTime)
        );
    }
}
