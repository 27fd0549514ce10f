//! Completion indexes of Indexed Jobs: the index a Pod works on (its
//! `batch.kubernetes.io/job-completion-index` annotation), and sets of indexes as ordered
//! intervals written the way status.completedIndexes is ("1,3-5,7").

use baton_client::CachedPod;
use std::fmt;

/// The annotation (and label) with a Pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The completion index of `pod`, if it has a valid one.
pub fn completion_index(pod: &CachedPod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse::<i32>()
        .ok()
        .filter(|i| *i >= 0)
}

/// A set of indexes as sorted, disjoint, non-adjacent closed intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(Vec<(i32, i32)>);

impl Intervals {
    /// Parses `text` ("1,3-5"), dropping malformed parts and indexes at or beyond
    /// `completions`.
    pub fn parse(text: &str, completions: i32) -> Self {
        let mut indexes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
                None => (part.parse::<i32>(), part.parse::<i32>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                continue;
            };
            let last = last.min(completions - 1);
            if first < 0 || first > last {
                continue;
            }
            indexes.push((first, last));
        }
        let mut out = Intervals::default();
        for (first, last) in indexes {
            out.insert_range(first, last);
        }
        out
    }

    fn insert_range(&mut self, first: i32, last: i32) {
        let mut merged = (first, last);
        let mut rest = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b + 1 < merged.0 || merged.1 + 1 < a {
                rest.push((a, b));
            } else {
                merged = (merged.0.min(a), merged.1.max(b));
            }
        }
        rest.push(merged);
        rest.sort_unstable();
        self.0 = rest;
    }

    /// These indexes and `more`.
    pub fn with(&self, more: &[i32]) -> Self {
        let mut out = self.clone();
        for &i in more {
            out.insert_range(i, i);
        }
        out
    }

    /// Whether `index` is in the set.
    pub fn has(&self, index: i32) -> bool {
        self.0.iter().any(|&(a, b)| a <= index && index <= b)
    }

    /// How many indexes the set holds.
    pub fn total(&self) -> i32 {
        self.0.iter().map(|&(a, b)| b - a + 1).sum()
    }
}

impl fmt::Display for Intervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, &(a, b)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            match b - a {
                0 => write!(f, "{a}")?,
                1 => write!(f, "{a},{b}")?,
                _ => write!(f, "{a}-{b}")?,
            }
        }
        Ok(())
    }
}

/// The lowest `count` indexes below `completions` that neither succeeded nor have an active
/// Pod.
pub fn first_pending(
    succeeded: &Intervals,
    active: &[i32],
    count: usize,
    completions: i32,
) -> Vec<i32> {
    (0..completions)
        .filter(|i| !succeeded.has(*i) && !active.contains(i))
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn intervals_parse_merge_and_print() {
        let i = Intervals::parse("1,3-5,7", 10);
        assert_eq!(i.to_string(), "1,3-5,7");
        assert_eq!(i.total(), 5);
        assert!(i.has(4) && !i.has(2));
        assert_eq!(i.with(&[2, 6]).to_string(), "1-7");
        assert_eq!(i.with(&[8]).to_string(), "1,3-5,7,8");
        assert_eq!(Intervals::parse("0-9", 5).to_string(), "0-4");
        assert_eq!(Intervals::parse("x,2,5-3,-1", 5).to_string(), "2");
        assert_eq!(Intervals::default().with(&[]).to_string(), "");
        assert_eq!(Intervals::default().with(&[3, 0, 1]).to_string(), "0,1,3");
    }

    #[test]
    fn pending_indexes_skip_done_and_running() {
        let done = Intervals::parse("0,2", 6);
        assert_eq!(first_pending(&done, &[1], 2, 6), [3, 4]);
        assert_eq!(first_pending(&done, &[], 10, 6), [1, 3, 4, 5]);
    }

    #[test]
    fn index_comes_from_the_annotation() {
        let pod = |v: &str| {
            CachedPod::from(Pod {
                metadata: ObjectMeta {
                    annotations: Some([(COMPLETION_INDEX.to_string(), v.to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        assert_eq!(completion_index(&pod("3")), Some(3));
        assert_eq!(completion_index(&pod("-1")), None);
        assert_eq!(completion_index(&pod("x")), None);
        assert_eq!(completion_index(&CachedPod::default()), None);
    }
}
