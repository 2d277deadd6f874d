//! Budgets (`[[alerts.budgets]]`): a limit in USD on the spend of an app,
//! a model, a provider or the whole fleet, per UTC day or calendar month.
//! A budget milestone fires when the spend of a period reaches a fraction
//! of the limit (default 50%, 80% and 100%), once per budget, period and
//! fraction: its id is `budget:NAME:PERIOD_START:PERCENT`. Pure, like the
//! other rules, and over the same totals; spend is exact (10⁻¹² USD), and
//! so is the comparison with the limit.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Totals;
use crate::rules::{
    BudgetHit, COST_UNITS_PER_MICRO, Kind, MICROS_PER_USD, Milestone, Unit, micros,
};

/// Budgets per config, at most.
pub const MAX_BUDGETS: usize = 1_000;

/// The largest limit: a trillion dollars.
const MAX_LIMIT_USD: f64 = 1e12;

/// The period a budget's limit applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC day.
    #[default]
    Day,
    /// A calendar month (UTC).
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The first day (`YYYY-MM-DD`) of the period `day` is in.
    fn start(self, day: &str) -> String {
        match self {
            Period::Day => day.to_string(),
            Period::Month => format!("{}-01", day.get(..7).unwrap_or(day)),
        }
    }
}

/// One `[[alerts.budgets]]` entry. At most one of `app`, `model` and
/// `provider`; none: the whole fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Names the budget in alerts and ids: letters, digits, `-` and `_`.
    pub name: String,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    /// The limit, USD per period.
    pub limit_usd: f64,
    /// `day` (default) or `month`.
    #[serde(default)]
    pub period: Period,
    /// The fractions of the limit that fire, each once per period (0.01
    /// steps, up to 10). Default 0.5, 0.8, 1.0.
    #[serde(default = "default_fractions")]
    pub fractions: Vec<f64>,
}

fn default_fractions() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

impl BudgetConfig {
    /// The scope (`app`, `model`, `provider`, `fleet`) and its subject.
    fn scope(&self) -> (&'static str, Option<&str>) {
        match (&self.app, &self.model, &self.provider) {
            (Some(a), _, _) => ("app", Some(a)),
            (_, Some(m), _) => ("model", Some(m)),
            (_, _, Some(p)) => ("provider", Some(p)),
            _ => ("fleet", None),
        }
    }

    /// The limit in micro-USD.
    fn limit(&self) -> u64 {
        (self.limit_usd * MICROS_PER_USD as f64).round() as u64
    }

    /// The fractions as whole percents, sorted.
    fn percents(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self
            .fractions
            .iter()
            .map(|f| (f * 100.0).round() as u32)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// Check every budget: a clear message naming the first bad one.
pub fn check(budgets: &[BudgetConfig]) -> Result<(), String> {
    if budgets.len() > MAX_BUDGETS {
        return Err(format!("[[alerts.budgets]]: at most {MAX_BUDGETS} budgets"));
    }
    let mut names = BTreeSet::new();
    for b in budgets {
        let bad = |why: String| Err(format!("[[alerts.budgets]] {:?}: {why}", b.name));
        if b.name.is_empty()
            || b.name.len() > 64
            || !b
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("a name is 1 to 64 letters, digits, - and _".into());
        }
        if !names.insert(b.name.as_str()) {
            return bad("two budgets have this name".into());
        }
        let set = [&b.app, &b.model, &b.provider]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if set > 1 {
            return bad("set at most one of app, model and provider".into());
        }
        if !(b.limit_usd.is_finite() && b.limit_usd > 0.0 && b.limit_usd <= MAX_LIMIT_USD) {
            return bad(format!(
                "limit_usd must be above 0 and at most {MAX_LIMIT_USD}"
            ));
        }
        if b.fractions.is_empty() {
            return bad("fractions must not be empty".into());
        }
        for f in &b.fractions {
            let pct = f * 100.0;
            if !(f.is_finite() && *f > 0.0 && *f <= 10.0 && (pct - pct.round()).abs() < 1e-6) {
                return bad(format!(
                    "fraction {f} must be above 0, at most 10, in steps of 0.01"
                ));
            }
        }
    }
    Ok(())
}

/// The budget milestones `totals` reach that are not in `known`.
pub fn evaluate_budgets(
    budgets: &[BudgetConfig],
    totals: &Totals,
    known: &BTreeSet<String>,
    detected_at: &str,
) -> Vec<Milestone> {
    let mut out = Vec::new();
    for b in budgets {
        let (scope, subject) = b.scope();
        // Spend of each period.
        let mut periods: BTreeMap<String, i128> = BTreeMap::new();
        let mut add = |day: &str, cost: i128| {
            *periods.entry(b.period.start(day)).or_default() += cost;
        };
        if scope == "app" {
            for ((day, app), cost) in &totals.app_spend {
                if Some(app.as_str()) == subject {
                    add(day, *cost);
                }
            }
        } else {
            for ((day, model, provider), cost) in &totals.spend {
                let matches = match scope {
                    "model" => Some(model.as_str()) == subject,
                    "provider" => Some(provider.as_str()) == subject,
                    _ => true,
                };
                if matches {
                    add(day, *cost);
                }
            }
        }
        let limit = b.limit();
        for (start, spent) in periods {
            for percent in b.percents() {
                // Exact: spent ≥ limit · percent / 100, in 10⁻¹² USD.
                let reached =
                    spent * 100 >= i128::from(limit) * COST_UNITS_PER_MICRO * i128::from(percent);
                let id = format!("budget:{}:{start}:{percent}", b.name);
                if !reached || known.contains(&id) {
                    continue;
                }
                out.push(Milestone {
                    id,
                    kind: Kind::Budget,
                    scope: scope.to_string(),
                    model: (scope == "model").then(|| subject.unwrap_or("").to_string()),
                    provider: (scope == "provider").then(|| subject.unwrap_or("").to_string()),
                    day: Some(start.clone()),
                    threshold: Some(limit.saturating_mul(u64::from(percent)) / 100),
                    value: micros(spent),
                    previous_record: None,
                    previous_holder: None,
                    detected_at: detected_at.to_string(),
                    unit: Unit::UsdMicros,
                    app: (scope == "app").then(|| subject.unwrap_or("").to_string()),
                    budget: Some(BudgetHit {
                        name: b.name.clone(),
                        period: b.period.as_str().to_string(),
                        limit,
                        percent,
                    }),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10⁻¹² USD in one dollar.
    const USD: i128 = 1_000_000_000_000;

    /// A budget as JSON (the config's TOML maps to the same fields).
    fn budget(json: &str) -> BudgetConfig {
        serde_json::from_str(json).unwrap()
    }

    fn ids(ms: &[Milestone]) -> Vec<&str> {
        ms.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn each_fraction_fires_once_per_period_at_the_exact_limit() {
        let b = budget(r#"{"name": "cline-daily", "app": "cline", "limit_usd": 100}"#);
        assert_eq!(b.percents(), [50, 80, 100]);
        let mut totals = Totals::default();
        // 80 dollars less one unit: 50% only.
        totals.add_app_spend("2026-11-27", "cline", 80 * USD - 1);
        totals.add_app_spend("2026-11-27", "aider", 1_000 * USD);
        let got = evaluate_budgets(std::slice::from_ref(&b), &totals, &BTreeSet::new(), "t");
        assert_eq!(ids(&got), ["budget:cline-daily:2026-11-27:50"]);
        let m = &got[0];
        assert_eq!(
            (m.kind, m.unit, m.scope.as_str()),
            (Kind::Budget, Unit::UsdMicros, "app")
        );
        assert_eq!(m.app.as_deref(), Some("cline"));
        assert_eq!((m.threshold, m.value), (Some(50_000_000), 79_999_999));
        let mut known: BTreeSet<String> = got.iter().map(|m| m.id.clone()).collect();
        // One unit more: exactly 80%.
        totals.add_app_spend("2026-11-27", "cline", 1);
        let got = evaluate_budgets(std::slice::from_ref(&b), &totals, &known, "t");
        assert_eq!(ids(&got), ["budget:cline-daily:2026-11-27:80"]);
        known.extend(got.iter().map(|m| m.id.clone()));
        assert!(evaluate_budgets(std::slice::from_ref(&b), &totals, &known, "t").is_empty());
        // The next day is a new period.
        totals.add_app_spend("2026-11-28", "cline", 150 * USD);
        let got = evaluate_budgets(std::slice::from_ref(&b), &totals, &known, "t");
        assert_eq!(
            ids(&got),
            [
                "budget:cline-daily:2026-11-28:50",
                "budget:cline-daily:2026-11-28:80",
                "budget:cline-daily:2026-11-28:100"
            ]
        );
    }

    #[test]
    fn a_monthly_budget_sums_the_days_of_its_month() {
        let b = budget(
            r#"{"name": "m", "provider": "openai", "limit_usd": 10, "period": "month", "fractions": [1.0]}"#,
        );
        let mut totals = Totals::default();
        totals.add_spend("2026-11-01", "gpt-5", "openai", 4 * USD);
        totals.add_spend("2026-11-30", "gpt-5-mini", "openai", 6 * USD);
        totals.add_spend("2026-11-30", "claude", "anthropic", 100 * USD);
        totals.add_spend("2026-12-01", "gpt-5", "openai", 9 * USD);
        let got = evaluate_budgets(&[b], &totals, &BTreeSet::new(), "t");
        assert_eq!(ids(&got), ["budget:m:2026-11-01:100"]);
        assert_eq!(got[0].budget.as_ref().unwrap().period, "month");
        assert_eq!(got[0].value, 10_000_000);
    }

    #[test]
    fn bad_budgets_are_named() {
        let ok = budget(r#"{"name": "fleet", "limit_usd": 1.5}"#);
        assert_eq!(ok.scope(), ("fleet", None));
        assert_eq!(ok.limit(), 1_500_000);
        check(std::slice::from_ref(&ok)).unwrap();
        let err = |b: BudgetConfig| check(&[b]).unwrap_err();
        assert!(
            err(BudgetConfig {
                name: "a b".into(),
                ..ok.clone()
            })
            .contains("a name is")
        );
        assert!(
            err(BudgetConfig {
                app: Some("x".into()),
                model: Some("y".into()),
                ..ok.clone()
            })
            .contains("at most one of")
        );
        assert!(
            err(BudgetConfig {
                limit_usd: -1.0,
                ..ok.clone()
            })
            .contains("limit_usd")
        );
        assert!(
            err(BudgetConfig {
                limit_usd: f64::NAN,
                ..ok.clone()
            })
            .contains("limit_usd")
        );
        assert!(
            err(BudgetConfig {
                fractions: vec![0.333],
                ..ok.clone()
            })
            .contains("steps of 0.01")
        );
        assert!(
            check(&[ok.clone(), ok.clone()])
                .unwrap_err()
                .contains("two budgets")
        );
    }
}
