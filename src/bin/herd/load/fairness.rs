//! How evenly the requests spread over the server's workers.
//!
//! Jain's fairness index, `(Σx)² / (n·Σx²)`, is 1 when every worker served the same number of
//! requests and falls towards `1/n` as one worker takes everything. It is independent of scale
//! (doubling every count leaves it unchanged), which makes runs of different lengths comparable.
//! The max/min share ratio complements it: it shows the worst pair, which the index averages away.

/// Jain's fairness index over per-worker counts; `None` for no workers or no requests.
pub fn jain(counts: &[u64]) -> Option<f64> {
    let sum: f64 = counts.iter().map(|&x| x as f64).sum();
    let sum_sq: f64 = counts.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if counts.is_empty() || sum_sq == 0.0 {
        return None;
    }
    Some(sum * sum / (counts.len() as f64 * sum_sq))
}

/// The indices of the busiest and the idlest worker (the first one on ties); `None` if empty.
pub fn busiest_and_idlest(counts: &[u64]) -> Option<(usize, usize)> {
    let max = counts.iter().enumerate().max_by_key(|&(i, &x)| (x, std::cmp::Reverse(i)))?.0;
    let min = counts.iter().enumerate().min_by_key(|&(i, &x)| (x, i))?.0;
    Some((max, min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn jain_is_one_when_even() {
        assert!(close(jain(&[5, 5, 5, 5]).unwrap(), 1.0));
        assert!(close(jain(&[7]).unwrap(), 1.0));
    }

    #[test]
    fn jain_is_one_over_n_when_one_takes_all() {
        assert!(close(jain(&[10, 0, 0, 0]).unwrap(), 0.25));
        assert!(close(jain(&[0, 3]).unwrap(), 0.5));
    }

    #[test]
    fn jain_matches_the_formula() {
        // (1+2+3)^2 / (3 * (1+4+9)) = 36 / 42
        assert!(close(jain(&[1, 2, 3]).unwrap(), 36.0 / 42.0));
        // Scale does not matter.
        assert!(close(jain(&[1000, 2000, 3000]).unwrap(), 36.0 / 42.0));
    }

    #[test]
    fn jain_is_undefined_without_data() {
        assert_eq!(jain(&[]), None);
        assert_eq!(jain(&[0, 0]), None);
    }

    #[test]
    fn finds_extremes() {
        assert_eq!(busiest_and_idlest(&[3, 9, 1, 9, 1]), Some((1, 2)));
        assert_eq!(busiest_and_idlest(&[4]), Some((0, 0)));
        assert_eq!(busiest_and_idlest(&[]), None);
    }
}
