//! Levelled compaction. A commit writes its files at level 0; once one
//! level of a table holds more than `limit` files, they are merged into one
//! file of the next level. A row is rewritten once per level it climbs, so
//! a commit's compaction work does not grow with the store's age: merging
//! every file into one, as the store did before, rewrote the whole history
//! every `limit` commits (at 90 days of a busy fleet, seconds per merge).
//! A table holds at most `limit` files per level, and levels grow with the
//! logarithm (base `limit + 1`) of the number of commits: 6 for 90 days of
//! commits every 500 ms at the default 16.
//!
//! The level is part of a file's name: `<gen>.<ext>` is level 0, and
//! `c<gen>-l<level>.<ext>` the merge written at commit `gen`. Stores written
//! before levels named their merged files `c<gen>`; those count as level 1.

use std::collections::BTreeMap;

/// The level of a store file, from its name.
pub fn level(rel: &str) -> u32 {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let stem = name.split('.').next().unwrap_or(name);
    match stem.strip_prefix('c') {
        None => 0,
        Some(rest) => rest
            .split_once("-l")
            .and_then(|(_, l)| l.parse().ok())
            .unwrap_or(1),
    }
}

/// The path of the file that merges files into `level` at commit
/// `generation`, in directory `dir` of the store.
pub fn merged_name(dir: &str, generation: u64, level: u32, ext: &str) -> String {
    format!("{dir}/c{generation:010}-l{level}.{ext}")
}

/// The next merge of `files`: the lowest level below `max_level` that
/// holds more than `limit` of them, and those files in their order.
pub fn next_merge(files: &[String], limit: usize, max_level: u32) -> Option<(u32, Vec<String>)> {
    let mut counts = BTreeMap::new();
    for f in files {
        *counts.entry(level(f)).or_insert(0usize) += 1;
    }
    let (&lvl, _) = counts.iter().find(|&(&l, &n)| l < max_level && n > limit)?;
    Some((
        lvl,
        files.iter().filter(|f| level(f) == lvl).cloned().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_come_from_names() {
        assert_eq!(level("tables/usage_daily/0000000007.parquet"), 0);
        assert_eq!(level("tables/usage_daily/c0000000007.parquet"), 1);
        assert_eq!(level("dead-letter/c0000000007-l3.ndjson"), 3);
        let name = merged_name("tables/usage_minute", 42, 2, "parquet");
        assert_eq!(name, "tables/usage_minute/c0000000042-l2.parquet");
        assert_eq!(level(&name), 2);
    }

    #[test]
    fn the_lowest_full_level_merges_first_and_the_cap_is_kept() {
        let files: Vec<String> = [
            "t/c0000000001-l2.p",
            "t/c0000000005-l1.p",
            "t/c0000000009-l1.p",
            "t/0000000010.p",
            "t/0000000011.p",
            "t/c0000000012-l1.p",
            "t/0000000013.p",
        ]
        .map(String::from)
        .into();
        assert_eq!(next_merge(&files, 3, u32::MAX), None);
        let (lvl, inputs) = next_merge(&files, 2, u32::MAX).unwrap();
        assert_eq!(lvl, 0);
        assert_eq!(
            inputs,
            ["t/0000000010.p", "t/0000000011.p", "t/0000000013.p"]
        );
        let (lvl, _) = next_merge(&files[..3], 1, u32::MAX).unwrap();
        assert_eq!(lvl, 1);
        assert_eq!(next_merge(&files[..3], 1, 1), None, "level 1 is the cap");
    }
}
