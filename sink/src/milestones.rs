//! Milestone detection over running per-model daily token totals. Pure: fed
//! with daily roll-up deltas, it reports each threshold a model's daily total
//! crosses, exactly once, and whether that model was the first ever to cross
//! it.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, UInt64Type};

/// Default ladder of daily token thresholds: 1B, 10B, 100B, 1T, 10T.
pub const DEFAULT_LADDER: [u64; 5] = [
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
    1_000_000_000_000,
    10_000_000_000_000,
];

/// A model's daily total passed a threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    /// UTC day, days since 1970-01-01.
    pub day: i32,
    pub model: String,
    pub threshold: u64,
    /// The model's total for the day right after the crossing batch.
    pub total: u64,
    /// No model had crossed this threshold on any day before.
    pub first: bool,
}

/// Running per-(day, model) totals and the thresholds already crossed.
pub struct MilestoneTracker {
    ladder: Vec<u64>,
    totals: HashMap<(i32, String), u64>,
    ever_crossed: BTreeSet<u64>,
}

impl MilestoneTracker {
    pub fn new(mut ladder: Vec<u64>) -> Self {
        ladder.sort_unstable();
        ladder.dedup();
        MilestoneTracker {
            ladder,
            totals: HashMap::new(),
            ever_crossed: BTreeSet::new(),
        }
    }

    /// Load totals that already exist (e.g. from the store at start-up)
    /// without reporting crossings for them.
    pub fn seed(&mut self, day: i32, model: &str, total: u64) {
        let t = self.totals.entry((day, model.to_string())).or_default();
        *t += total;
        let t = *t;
        self.ever_crossed
            .extend(self.ladder.iter().copied().filter(|th| *th <= t));
    }

    /// Apply daily roll-up deltas (schema of `usage_daily`) and return the
    /// crossings they cause, in ladder order.
    pub fn apply_daily(&mut self, batches: &[RecordBatch]) -> Vec<Crossing> {
        let mut touched: HashMap<(i32, String), u64> = HashMap::new();
        for b in batches {
            let (Some(day), Some(model), Some(total)) = (
                b.column_by_name("day"),
                b.column_by_name("model"),
                b.column_by_name("total_tokens"),
            ) else {
                continue;
            };
            let day = day.as_primitive::<Date32Type>();
            let model = model.as_string::<i32>();
            let total = total.as_primitive::<UInt64Type>();
            for i in 0..b.num_rows() {
                *touched
                    .entry((day.value(i), model.value(i).to_string()))
                    .or_default() += total.value(i);
            }
        }
        let mut touched: Vec<_> = touched.into_iter().collect();
        touched.sort();
        let mut out = Vec::new();
        for (key, delta) in touched {
            let entry = self.totals.entry(key.clone()).or_default();
            let before = *entry;
            *entry += delta;
            let after = *entry;
            for &th in self
                .ladder
                .iter()
                .filter(|th| before < **th && **th <= after)
            {
                out.push(Crossing {
                    day: key.0,
                    model: key.1.clone(),
                    threshold: th,
                    total: after,
                    first: self.ever_crossed.insert(th),
                });
            }
        }
        out.sort_by(|a, b| (a.threshold, &a.model).cmp(&(b.threshold, &b.model)));
        out
    }

    /// The most recent day with any tokens.
    pub fn latest_day(&self) -> Option<i32> {
        self.totals.keys().map(|(d, _)| *d).max()
    }

    /// The top `n` models of `day` by tokens, largest first.
    pub fn leaderboard(&self, day: i32, n: usize) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = self
            .totals
            .iter()
            .filter(|((d, _), _)| *d == day)
            .map(|((_, m), t)| (m.clone(), *t))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows.truncate(n);
        rows
    }
}

/// `1_000_000_000_000` → `"1T"`, `2_500_000_000` → `"2.5B"`.
pub fn human_tokens(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "B"),
        (1_000_000, "M"),
        (1_000, "K"),
    ];
    for (scale, unit) in UNITS {
        if n >= scale {
            let v = n as f64 / scale as f64;
            let s = format!("{v:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s}{unit}");
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Date32Array, StringArray, UInt64Array};
    use tokentally_aggregate::rollup::Rollup;

    fn delta(rows: &[(i32, &str, u64)]) -> RecordBatch {
        let n = rows.len();
        let zeros = || Arc::new(UInt64Array::from(vec![0u64; n])) as _;
        RecordBatch::try_new(
            Rollup::Daily.schema(),
            vec![
                Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "p"))),
                zeros(),
                zeros(),
                zeros(),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
                zeros(),
                zeros(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn each_threshold_fires_once_and_first_only_once() {
        let mut t = MilestoneTracker::new(vec![100, 10]);
        let c = t.apply_daily(&[delta(&[(1, "a", 50), (1, "b", 5)])]);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].model.as_str(), c[0].threshold, c[0].first),
            ("a", 10, true)
        );
        let c = t.apply_daily(&[delta(&[(1, "a", 60), (1, "b", 200)])]);
        let got: Vec<_> = c
            .iter()
            .map(|c| (c.model.as_str(), c.threshold, c.first))
            .collect();
        assert_eq!(got, [("b", 10, false), ("a", 100, true), ("b", 100, false)]);
        assert!(t.apply_daily(&[delta(&[(1, "a", 1000)])]).is_empty());
        let c = t.apply_daily(&[delta(&[(2, "a", 150)])]);
        assert_eq!(c.len(), 2, "a new day starts from zero");
        assert!(c.iter().all(|c| !c.first));
        assert_eq!(t.leaderboard(1, 1), vec![("a".to_string(), 1110)]);
        assert_eq!(t.latest_day(), Some(2));
    }

    #[test]
    fn seeded_totals_do_not_fire() {
        let mut t = MilestoneTracker::new(DEFAULT_LADDER.to_vec());
        t.seed(1, "a", 2_000_000_000);
        let c = t.apply_daily(&[delta(&[(1, "b", 1_500_000_000)])]);
        assert_eq!(c.len(), 1);
        assert!(!c[0].first, "a crossed 1B before");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_tokens(1_000_000_000_000), "1T");
        assert_eq!(human_tokens(2_500_000_000), "2.5B");
        assert_eq!(human_tokens(999), "999");
        assert_eq!(human_tokens(1_234_567), "1.23M");
    }
}
