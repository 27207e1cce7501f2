//! Retention: which snapshots a policy keeps (`lifeboat forget`).
//!
//! The rules are restic's, which users already know. Snapshots are grouped (by host and paths
//! unless told otherwise); within a group they are walked newest first, and each `keep-<period>`
//! rule keeps the newest snapshot of each of its last N periods that hold a snapshot
//! (grandfather-father-son). `keep-within` keeps everything newer than the newest snapshot of the
//! group minus the duration. A snapshot is kept when any rule keeps it, and every reason is
//! reported. Periods are calendar periods in the local time zone (ISO weeks for `weekly`).
//!
//! Forgetting only removes snapshot objects; `prune` later deletes the data nobody uses.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::snapshot::Snapshot;

/// A retention policy. Counts of `None` are unset rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The N newest snapshots.
    pub last: Option<u32>,
    /// The newest snapshot of each of the last N hours that have one.
    pub hourly: Option<u32>,
    /// ... days.
    pub daily: Option<u32>,
    /// ... ISO weeks.
    pub weekly: Option<u32>,
    /// ... months.
    pub monthly: Option<u32>,
    /// ... years.
    pub yearly: Option<u32>,
    /// Everything taken within this span of the group's newest snapshot.
    pub within: Option<jiff::Span>,
    /// Every snapshot that has all the tags of one of these lists (`--keep-tag`).
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    /// Whether no rule is set (such a policy would remove everything, so it is refused).
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// What snapshots are grouped by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupBy {
    /// Same host.
    pub host: bool,
    /// Same set of paths.
    pub paths: bool,
    /// Same set of tags.
    pub tags: bool,
}

impl GroupBy {
    /// Parse `host,paths,tags` (any subset, comma-separated; empty means one group).
    ///
    /// # Errors
    /// `InvalidInput` for an unknown field.
    pub fn parse(s: &str) -> Result<Self> {
        let mut g = GroupBy::default();
        for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match f {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                _ => {
                    return Err(Error::invalid(format!(
                        "--group-by: unknown field {f:?} (use host, paths, tags)"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// The key a snapshot is grouped under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// Host, when grouping by host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Paths, when grouping by paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Tags, when grouping by tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl GroupKey {
    /// The group of `s` under `group_by`.
    pub fn of(s: &Snapshot, group_by: GroupBy) -> Self {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        GroupKey {
            host: group_by.host.then(|| s.host.clone()),
            paths: group_by.paths.then(|| sorted(&s.paths)),
            tags: group_by.tags.then(|| sorted(&s.tags)),
        }
    }
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Snapshot id.
    pub id: Id,
    /// Snapshot time.
    pub time: jiff::Timestamp,
    /// The rules that keep it (`last`, `hourly`, ..., `within`, `tag`); empty when it is removed.
    pub reasons: Vec<&'static str>,
}

/// The decisions for one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub group: GroupKey,
    /// Kept snapshots, newest first.
    pub keep: Vec<Decision>,
    /// Removed snapshots, newest first.
    pub remove: Vec<Decision>,
}

/// Apply `policy` to every group of `snaps`.
///
/// # Errors
/// `InvalidInput` for an empty policy or a `within` span that cannot be applied.
pub fn plan(
    snaps: &[(Id, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    tz: &TimeZone,
) -> Result<Vec<GroupPlan>> {
    if policy.is_empty() {
        return Err(Error::invalid(
            "no retention rule given (use --keep-last, --keep-daily, ..., --keep-within or --keep-tag); nothing was removed",
        ));
    }
    let mut groups: BTreeMap<GroupKey, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in snaps {
        groups
            .entry(GroupKey::of(&s.1, group_by))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(group, mut members)| {
            // Newest first; ties broken by id so the outcome never depends on listing order.
            members.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
            let (keep, remove) = plan_group(&members, policy, tz)?;
            Ok(GroupPlan {
                group,
                keep,
                remove,
            })
        })
        .collect()
}

type Bucket = fn(&jiff::Zoned) -> (i32, i32, i32, i32);

fn plan_group(
    newest_first: &[&(Id, Snapshot)],
    policy: &Policy,
    tz: &TimeZone,
) -> Result<(Vec<Decision>, Vec<Decision>)> {
    let rules: [(&'static str, Option<u32>, Bucket); 6] = [
        ("last", policy.last, |_| (0, 0, 0, 0)),
        ("hourly", policy.hourly, |z| {
            (
                i32::from(z.year()),
                i32::from(z.day_of_year()),
                i32::from(z.hour()),
                0,
            )
        }),
        ("daily", policy.daily, |z| {
            (i32::from(z.year()), i32::from(z.day_of_year()), 0, 0)
        }),
        ("weekly", policy.weekly, |z| {
            let w = z.date().iso_week_date();
            (i32::from(w.year()), i32::from(w.week()), 0, 0)
        }),
        ("monthly", policy.monthly, |z| {
            (i32::from(z.year()), i32::from(z.month()), 0, 0)
        }),
        ("yearly", policy.yearly, |z| (i32::from(z.year()), 0, 0, 0)),
    ];
    let mut left: Vec<Option<u32>> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<(i32, i32, i32, i32)>> = vec![None; rules.len()];
    let cutoff = match (&policy.within, newest_first.first()) {
        (Some(span), Some(newest)) => Some(
            newest
                .1
                .time
                .to_zoned(tz.clone())
                .checked_sub(*span)
                .map_err(|e| Error::invalid(format!("--keep-within: {e}")))?
                .timestamp(),
        ),
        _ => None,
    };
    let (mut keep, mut remove) = (Vec::new(), Vec::new());
    for (id, snap) in newest_first.iter().map(|s| (&s.0, &s.1)) {
        let z = snap.time.to_zoned(tz.clone());
        let mut reasons = Vec::new();
        for (i, (name, _, bucket)) in rules.iter().enumerate() {
            let Some(n) = left[i] else { continue };
            if n == 0 {
                continue;
            }
            let b = if *name == "last" {
                None
            } else {
                Some(bucket(&z))
            };
            if b.is_none() || b != last_bucket[i] {
                reasons.push(*name);
                left[i] = Some(n - 1);
                last_bucket[i] = b;
            }
        }
        if cutoff.is_some_and(|c| snap.time >= c) {
            reasons.push("within");
        }
        if policy
            .tags
            .iter()
            .any(|l| crate::snapshot::has_tags(snap, l))
        {
            reasons.push("tag");
        }
        let d = Decision {
            id: *id,
            time: snap.time,
            reasons,
        };
        if d.reasons.is_empty() {
            remove.push(d);
        } else {
            keep.push(d);
        }
    }
    Ok((keep, remove))
}

/// Parse a `--keep-within` span: jiff's friendly format (`30d`, `2w`, `1y 6mo`, `36h`) or ISO 8601
/// (`P30D`).
///
/// # Errors
/// `InvalidInput` for anything else or a negative span.
pub fn parse_span(s: &str) -> Result<jiff::Span> {
    let span: jiff::Span = s.trim().parse().map_err(|e| {
        Error::invalid(format!(
            "{s:?} is not a duration (examples: 30d, 2w, 1y 6mo, 36h): {e}"
        ))
    })?;
    if span.is_negative() {
        return Err(Error::invalid(format!("{s:?}: the duration is negative")));
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t: &str, host: &str) -> Snapshot {
        Snapshot {
            time: t.parse().unwrap(),
            host: host.into(),
            paths: vec!["/data".into()],
            tags: vec![],
            parent: None,
            tree: vec![],
            summary: crate::Summary::default(),
            program: String::new(),
            original: None,
        }
    }

    fn ids(v: &[Decision], all: &[(Id, Snapshot)]) -> Vec<usize> {
        v.iter()
            .map(|d| all.iter().position(|s| s.0 == d.id).unwrap())
            .collect()
    }

    #[test]
    fn grandfather_father_son() {
        // Two snapshots a day for 60 days, from 2026-01-01.
        let start: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let all: Vec<(Id, Snapshot)> = (0..120)
            .map(|i| {
                let t = start + jiff::SignedDuration::from_hours(12 * i);
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&i.to_be_bytes());
                (Id(id), snap(&t.to_string(), "a"))
            })
            .collect();
        let policy = Policy {
            last: Some(3),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(3),
            ..Policy::default()
        };
        let g = GroupBy::parse("host,paths").unwrap();
        let p = plan(&all, &policy, g, &TimeZone::UTC).unwrap();
        assert_eq!(p.len(), 1);
        let keep = ids(&p[0].keep, &all);
        // last 3: 119, 118, 117. daily 7: newest of each of the last 7 days: 119, 117, ..., 107.
        // weekly: newest of the last 4 ISO weeks; monthly: newest of Mar, Feb, Jan.
        for i in [119, 118, 117, 115, 113, 111, 109, 107] {
            assert!(keep.contains(&i), "{i} kept: {keep:?}");
        }
        // Snapshot i is taken on day i/2 at 01:00 or 13:00. 2026-03-01 (day 59) is a Sunday, so
        // the last four ISO weeks end with 119, 105 (Feb 22), 91 (Feb 15) and 77 (Feb 8).
        // Monthly: 119 (Mar), 117 (Feb 28), 61 (Jan 31).
        let mut want = vec![119, 118, 117, 115, 113, 111, 109, 107, 105, 91, 77, 61];
        want.sort_unstable();
        let mut got = keep.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(keep.len() + p[0].remove.len(), 120);
        let reasons = &p[0].keep[0].reasons;
        assert_eq!(reasons, &["last", "daily", "weekly", "monthly"]);
    }

    #[test]
    fn within_and_groups() {
        let all = vec![
            (Id([1; 32]), snap("2026-05-10T00:00:00Z", "a")),
            (Id([2; 32]), snap("2026-05-01T00:00:00Z", "a")),
            (Id([3; 32]), snap("2026-04-01T00:00:00Z", "a")),
            (Id([4; 32]), snap("2025-01-01T00:00:00Z", "b")),
        ];
        let policy = Policy {
            within: Some(parse_span("10d").unwrap()),
            ..Policy::default()
        };
        let p = plan(
            &all,
            &policy,
            GroupBy::parse("host").unwrap(),
            &TimeZone::UTC,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(ids(&p[0].keep, &all), vec![0, 1]);
        assert_eq!(ids(&p[0].remove, &all), vec![2]);
        // Relative to the group's own newest snapshot: b's only snapshot stays.
        assert_eq!(ids(&p[1].keep, &all), vec![3]);
        let one = plan(&all, &policy, GroupBy::parse("").unwrap(), &TimeZone::UTC).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].remove.len(), 2);
        assert!(plan(&all, &Policy::default(), GroupBy::default(), &TimeZone::UTC).is_err());
        assert!(parse_span("yesterday").is_err());
        assert!(GroupBy::parse("host,color").is_err());
    }

    #[test]
    fn keep_tag_keeps_snapshots_with_every_tag_of_a_list() {
        let tagged = |t: &str, tags: &[&str]| {
            let mut s = snap(t, "a");
            s.tags = tags.iter().map(|t| (*t).to_owned()).collect();
            s
        };
        let all = vec![
            (Id([1; 32]), tagged("2026-05-10T00:00:00Z", &[])),
            (Id([2; 32]), tagged("2026-05-09T00:00:00Z", &["release"])),
            (
                Id([3; 32]),
                tagged("2026-05-08T00:00:00Z", &["release", "audit"]),
            ),
            (Id([4; 32]), tagged("2026-05-07T00:00:00Z", &["audit"])),
            (Id([5; 32]), tagged("2026-05-06T00:00:00Z", &[])),
        ];
        let policy = Policy {
            last: Some(1),
            tags: vec![vec!["release".into(), "audit".into()], vec![]],
            ..Policy::default()
        };
        let p = plan(&all, &policy, GroupBy::default(), &TimeZone::UTC).unwrap();
        // The newest by `last` (it has no tags, so the empty list keeps it too), the one with both
        // tags, and the older untagged one; `release` alone or `audit` alone is not enough.
        assert_eq!(ids(&p[0].keep, &all), vec![0, 2, 4]);
        assert_eq!(p[0].keep[0].reasons, ["last", "tag"]);
        assert_eq!(p[0].keep[1].reasons, ["tag"]);
        assert_eq!(ids(&p[0].remove, &all), vec![1, 3]);
    }
}
