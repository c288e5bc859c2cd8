//! Token bucket for smooth rate limits, with time passed in, and the
//! parser for human rates (`10MB`, `80Mbit`).

use std::time::Duration;

/// Bytes per second; `rate` tokens accrue per second up to `burst`.
/// Taking more than is available puts the bucket in debt and returns how
/// long the caller must wait, so large chunks are paced, never refused.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// May be negative (debt).
    tokens: i128,
    last: Duration,
}

impl TokenBucket {
    /// A bucket that starts full. `rate` must be at least 1 byte/s.
    pub fn new(rate: u64, burst: u64, now: Duration) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            burst,
            tokens: burst as i128,
            last: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Duration) {
        if now > self.last {
            let gained = (now - self.last).as_nanos() as i128 * self.rate as i128 / 1_000_000_000;
            if gained > 0 {
                self.tokens = (self.tokens + gained).min(self.burst as i128);
                // Advance only by the time that produced whole tokens, so
                // rounding never loses rate.
                let used = gained * 1_000_000_000 / self.rate as i128;
                self.last += Duration::from_nanos(used as u64);
            }
        }
    }

    /// True when the bucket has refilled to its burst: forgetting it loses
    /// nothing.
    pub fn is_full(&mut self, now: Duration) -> bool {
        self.refill(now);
        self.tokens >= self.burst as i128
    }

    /// Returns `n` tokens taken by a [`TokenBucket::take`] whose work was
    /// not done after all.
    pub fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n as i128).min(self.burst as i128);
    }

    /// Takes `n` bytes' worth of tokens at `now`; returns how long to wait
    /// before sending them (zero when they were available).
    pub fn take(&mut self, n: u64, now: Duration) -> Duration {
        self.refill(now);
        self.tokens -= n as i128;
        if self.tokens >= 0 {
            Duration::ZERO
        } else {
            let nanos = (-self.tokens) * 1_000_000_000 / self.rate as i128;
            Duration::from_nanos(nanos.min(u64::MAX as i128) as u64)
        }
    }
}

/// Why a rate string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate {0:?}: use a number with a unit, e.g. 500KB, 10MB, 1.5GB (bytes/s) or 80Mbit (bits/s)"
)]
pub struct RateParseError(pub String);

/// Parses a rate in bytes per second: `123`, `10KB`, `10MB`, `1GB`,
/// `10KiB`, `10MiB`, `80Kbit`, `80Mbit`, `1Gbit` (case-insensitive, an
/// optional `/s`). Decimal units are powers of 1000, binary ones of 1024.
pub fn parse_rate(s: &str) -> Result<u64, RateParseError> {
    let err = || RateParseError(s.to_owned());
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "kbps" => 1e3 / 8.0,
        "mbit" | "mbps" => 1e6 / 8.0,
        "gbit" | "gbps" => 1e9 / 8.0,
        _ => return Err(err()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
        return Err(err());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn full_bucket_passes_burst_then_paces() {
        let mut b = TokenBucket::new(1000, 500, Duration::ZERO);
        assert_eq!(b.take(500, Duration::ZERO), Duration::ZERO);
        // 250 more bytes at 1000 B/s: wait 250 ms.
        assert_eq!(b.take(250, Duration::ZERO), 250 * MS);
        // After the wait the debt is paid; the next 100 need 100 ms more.
        assert_eq!(b.take(100, 250 * MS), 100 * MS);
    }

    #[test]
    fn refill_is_capped_by_burst() {
        let mut b = TokenBucket::new(1000, 100, Duration::ZERO);
        b.take(100, Duration::ZERO);
        // An hour idle still only refills the burst.
        assert_eq!(b.take(100, Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(b.take(100, Duration::from_secs(3600)), 100 * MS);
    }

    #[test]
    fn long_run_average_matches_rate() {
        let mut b = TokenBucket::new(10_000, 1000, Duration::ZERO);
        let mut now = Duration::ZERO;
        for _ in 0..1000 {
            now += b.take(1000, now);
        }
        // 1,000,000 bytes minus the initial burst at 10,000 B/s.
        let expect = Duration::from_secs_f64(999_000.0 / 10_000.0);
        let diff = now.abs_diff(expect);
        assert!(diff < 2 * MS, "took {now:?}, expected {expect:?}");
    }

    #[test]
    fn full_and_give_back() {
        let mut b = TokenBucket::new(10, 5, Duration::ZERO);
        assert!(b.is_full(Duration::ZERO));
        assert_eq!(b.take(6, Duration::ZERO), 100 * MS);
        assert!(!b.is_full(Duration::ZERO));
        b.give_back(6);
        assert!(b.is_full(Duration::ZERO));
        b.give_back(100);
        assert_eq!(
            b.take(5, Duration::ZERO),
            Duration::ZERO,
            "never above the burst"
        );
        assert_eq!(b.take(1, Duration::ZERO), 100 * MS);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("10MB"), Ok(10_000_000));
        assert_eq!(parse_rate("10mb/s"), Ok(10_000_000));
        assert_eq!(parse_rate("80Mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_rate("4KiB"), Ok(4096));
        assert_eq!(parse_rate("123"), Ok(123));
        for bad in ["", "MB", "10XB", "-5MB", "0", "1e400", "nanMB"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
