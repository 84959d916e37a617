//! Upload rate limiting: a token bucket shared by every connection of a node,
//! and the parser for rates such as `16MiB` or `256KiB`.

use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket of bytes. Callers take what they send; when the bucket runs
/// dry they wait for it to refill, so the long-run rate never exceeds the limit.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec`, allowing bursts of an eighth of a second (at least 16 KiB).
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 8.0).max(16.0 * 1024.0);
        RateLimiter { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// How many bytes to send between waits: small enough to keep slow links
    /// steady, large enough that fast links are not throttled by timer granularity.
    pub fn chunk(&self) -> usize {
        ((self.rate / 64.0) as usize).clamp(16 * 1024, 256 * 1024)
    }

    /// Bytes per second allowed.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Waits until `n` bytes may be sent. Waiters are served in turn: the
    /// lock is held while waiting, so a debt is paid before anyone else sends.
    pub async fn acquire(&self, n: usize) {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let (tokens, last) = *state;
        // `last` may lie in the future while a previous caller's wait is pending.
        let mut tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        tokens -= n as f64;
        if tokens < 0.0 {
            // Anchor the bucket at the planned wake-up, not at the actual one:
            // timers oversleep, and the extra time is credit for the next caller.
            let wake = now + Duration::from_secs_f64(-tokens / self.rate);
            *state = (0.0, wake);
            tokio::time::sleep_until(wake).await;
        } else {
            *state = (tokens, now);
        }
    }
}

/// Parses a rate in bytes per second: a number with an optional unit
/// (`B`, `K`/`KB` = 1000, `KiB` = 1024, and likewise M, G), optional `/s`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("invalid rate {text:?}: expected a number such as 16MiB or 500KB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("invalid rate unit {u:?} in {text:?}: use B, KB, KiB, MB, MiB, GB or GiB")),
    };
    let bytes = value * mult;
    if !(1.0..1e15).contains(&bytes) {
        return Err(format!("invalid rate {text:?}: must be at least 1 byte per second"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("16MiB"), Ok(16 << 20));
        assert_eq!(parse_rate("256KiB/s"), Ok(256 << 10));
        assert_eq!(parse_rate("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("3 parsecs").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_holds_the_long_run_rate() {
        let limiter = RateLimiter::new(256 * 1024);
        let start = Instant::now();
        for _ in 0..64 {
            limiter.acquire(16 * 1024).await;
        }
        // 1 MiB at 256 KiB/s, less the initial burst of 32 KiB.
        let secs = start.elapsed().as_secs_f64();
        assert!((3.8..4.1).contains(&secs), "{secs}");
    }
}
