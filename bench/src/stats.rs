//! The arithmetic of a benchmark: medians of rounds, latency percentiles, ratios, targets.

/// The median of `values` (the mean of the two middle ones for an even count); `None` when
/// empty. NaNs sort last and so only matter when they are the majority.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    })
}

/// The `p`-th percentile (0 < p <= 100) by the nearest-rank method of already sorted
/// samples; `None` when empty.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil();
    // Clamped to 1..=len, so the cast and the index stay in range.
    let rank = rank.clamp(1.0, sorted.len() as f64) as usize;
    sorted.get(rank - 1).copied()
}

/// `ours / peer`; `None` when the peer figure is zero, negative or not a number, since a
/// ratio against nothing says nothing.
pub fn ratio(ours: f64, peer: f64) -> Option<f64> {
    (peer.is_finite() && peer > 0.0 && ours.is_finite()).then(|| ours / peer)
}

/// Whether a ratio meets a "at least `target` times" goal. No ratio never meets one.
pub fn meets(ratio: Option<f64>, target: f64) -> bool {
    ratio.is_some_and(|r| r >= target)
}

/// The median of a row's per-round figures; NaN (an empty cell) when there are none.
pub fn med(values: impl Iterator<Item = f64>) -> f64 {
    median(&values.collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

/// Per-round figures for a row's details, rounded to whole numbers: `812, 790, 805`.
pub fn per_round(values: impl IntoIterator<Item = f64>) -> String {
    values
        .into_iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_round_figures_are_rounded_and_joined() {
        assert_eq!(per_round([812.4, 790.6]), "812, 791");
        assert_eq!(per_round([]), "");
        assert!(med(std::iter::empty()).is_nan());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0, 100.0, 2.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn median_ignores_one_outlier() {
        assert_eq!(median(&[10.0, 11.0, 9.0, 10.5, 1e9]), Some(10.5));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&samples, 50.0), Some(50));
        assert_eq!(percentile_sorted(&samples, 99.0), Some(99));
        assert_eq!(percentile_sorted(&samples, 100.0), Some(100));
        assert_eq!(percentile_sorted(&samples, 0.1), Some(1));
        assert_eq!(percentile_sorted(&[7], 99.0), Some(7));
        assert_eq!(percentile_sorted(&[], 50.0), None);
    }

    #[test]
    fn ratio_needs_a_positive_peer() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(50.0, 0.0), None);
        assert_eq!(ratio(50.0, -1.0), None);
        assert_eq!(ratio(50.0, f64::NAN), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn target_is_at_least() {
        assert!(meets(Some(0.5), 0.5));
        assert!(meets(Some(2.1), 2.0));
        assert!(!meets(Some(0.49), 0.5));
        assert!(!meets(None, 0.5));
    }
}
