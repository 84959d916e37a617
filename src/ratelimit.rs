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
/// Decimals are exact (`4.1MB` is 4100000); a fraction of a byte is dropped.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    const LIMIT: u128 = 1_000_000_000_000_000;
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad_number = || format!("invalid rate {text:?}: expected a number such as 16MiB or 500KB");
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad_number());
    }
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        u => return Err(format!("invalid rate unit {u:?} in {text:?}: use B, KB, KiB, MB, MiB, GB or GiB")),
    };
    let too_large = || format!("invalid rate {text:?}: must be below 10^15 bytes per second");
    let whole = whole.trim_start_matches('0');
    if whole.len() > 16 {
        return Err(too_large());
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad_number())? };
    // Decimals past the 30th cannot change the whole bytes: in every unit a
    // whole number of bytes has at most 30 decimals (1 B = 2^-30 GiB has 30).
    let frac = &frac[..frac.len().min(30)];
    let scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad_number())? };
    // frac * mult / scale, reduced first so that it cannot overflow.
    let g = gcd(mult, scale);
    let bytes = whole * mult + frac * (mult / g) / (scale / g);
    if bytes == 0 {
        return Err(format!("invalid rate {text:?}: must be at least 1 byte per second"));
    }
    if bytes >= LIMIT {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_decimals_of_the_largest_unit_parse_exactly_without_overflow() {
        // 0.999… (30 nines) GiB is one byte short of a GiB: the fraction must be
        // reduced before it is multiplied, or 10^30 × 2^30 overflows.
        assert_eq!(parse_rate(&format!("1.{}GiB", "9".repeat(30))), Ok((1 << 31) - 1));
        assert_eq!(parse_rate(&format!("0.{}GiB", "9".repeat(30))), Ok((1 << 30) - 1));
    }

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

    #[test]
    fn every_unit_parses() {
        for (text, want) in [
            ("7", 7),
            ("7B", 7),
            ("7b", 7),
            ("7K", 7_000),
            ("7KB", 7_000),
            ("7kb", 7_000),
            ("7KiB", 7 << 10),
            ("7kib", 7 << 10),
            ("7M", 7_000_000),
            ("7MB", 7_000_000),
            ("7MiB", 7 << 20),
            ("7G", 7_000_000_000),
            ("7GB", 7_000_000_000),
            ("7GiB", 7 << 30),
            ("7 KiB", 7 << 10),
            ("7KiB/s", 7 << 10),
            (" 7 KiB /s ", 7 << 10),
            ("007KB", 7_000),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn decimal_rates_parse() {
        for (text, want) in [
            ("1.5KiB", 1536),
            ("0.5MiB", 512 << 10),
            ("2.25GiB", 9 << 28),
            ("0.25KB", 250),
            ("1.5", 1),
            ("0.001KB", 1),
            ("1.000", 1),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn decimal_rates_are_exact() {
        // Binary floating point would make 4.1 * 10^6 = 4099999.9999999995.
        for (text, want) in [
            ("4.1MB", 4_100_000),
            ("4.1GB", 4_100_000_000),
            ("8.2M", 8_200_000),
            ("2.01KB", 2010),
            ("16.9GB", 16_900_000_000),
            ("0.1KiB", 102),
            ("0.000000000931322574615478515625GiB", 1),
            ("1.0000000000000000000000000000000000001KB", 1000),
        ] {
            assert_eq!(parse_rate(text), Ok(want), "{text:?}");
        }
        // Rates with three decimals from 1 to 100 of each unit.
        for (unit, mult) in
            [("KB", 1_000u64), ("MB", 1_000_000), ("GB", 1_000_000_000), ("KiB", 1024), ("MiB", 1 << 20)]
        {
            for thousandths in (1_000..100_000).step_by(7) {
                let text = format!("{}.{:03}{unit}", thousandths / 1000, thousandths % 1000);
                assert_eq!(parse_rate(&text), Ok(thousandths * mult / 1000), "{text:?}");
            }
        }
    }

    #[test]
    fn rates_below_one_byte_per_second_are_refused() {
        for text in ["0", "0B", "0KiB", "0.0", "0.5", "0.0009KB", "000"] {
            let e = parse_rate(text).unwrap_err();
            assert!(e.contains("at least 1 byte"), "{text:?}: {e}");
        }
    }

    #[test]
    fn malformed_rates_are_refused() {
        for text in [
            "",
            " ",
            "/s",
            "fast",
            "KiB",
            "-1",
            "+1",
            "1.2.3",
            ".",
            "1e3",
            "NaN",
            "inf",
            "1,5MB",
            "3 parsecs",
            "16TiB",
            "16KiB/h",
            "16KiB/S",
            "16 K i B",
            "0x10",
        ] {
            assert!(parse_rate(text).is_err(), "{text:?} parsed as {:?}", parse_rate(text));
        }
        // The unit is named in the error.
        assert!(parse_rate("16TiB").unwrap_err().contains("\"tib\""));
    }

    #[test]
    fn absurdly_high_rates_are_refused_without_overflow() {
        assert_eq!(parse_rate("999999999999999"), Ok(999_999_999_999_999));
        assert_eq!(parse_rate("931322GiB"), Ok(931_322 << 30));
        for text in [
            "1000000000000000",
            "1000000GB",
            "931323GiB",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999GiB",
            &"9".repeat(400),
        ] {
            let e = parse_rate(text).unwrap_err();
            assert!(e.contains("below 10^15"), "{text:?}: {e}");
        }
    }

    #[test]
    fn chunks_are_a_64th_of_a_second_within_16_and_256_kib() {
        for (rate, want) in [
            (0, 16 << 10),
            (1, 16 << 10),
            (1000, 16 << 10),
            (64 * (16 << 10), 16 << 10),
            (64 * (16 << 10) + 64, (16 << 10) + 1),
            (64 * 100_000, 100_000),
            (64 * (256 << 10) - 64, (256 << 10) - 1),
            (64 * (256 << 10), 256 << 10),
            (1 << 40, 256 << 10),
            (u64::MAX, 256 << 10),
        ] {
            assert_eq!(RateLimiter::new(rate).chunk(), want, "rate {rate}");
        }
    }

    #[test]
    fn the_rate_is_what_was_asked_and_at_least_1() {
        assert_eq!(RateLimiter::new(0).rate(), 1);
        assert_eq!(RateLimiter::new(1).rate(), 1);
        assert_eq!(RateLimiter::new(123_456_789).rate(), 123_456_789);
    }

    /// Virtual seconds that `f` takes (the clock is paused: no real waiting).
    async fn secs(f: impl std::future::Future<Output = ()>) -> f64 {
        let start = Instant::now();
        f.await;
        start.elapsed().as_secs_f64()
    }

    fn assert_near(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-3 + want * 1e-6, "took {got} s, expected {want} s");
    }

    const MIB: usize = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn the_first_burst_is_free_then_each_byte_costs_its_time() {
        let l = RateLimiter::new(MIB as u64);
        // The burst: an eighth of a second.
        assert_near(secs(l.acquire(MIB / 8)).await, 0.0);
        assert_near(secs(l.acquire(MIB / 16)).await, 1.0 / 16.0);
        assert_near(secs(l.acquire(MIB / 4)).await, 0.25);
        assert_near(secs(l.acquire(0)).await, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_are_an_eighth_of_a_second_and_at_least_16_kib() {
        let fast = RateLimiter::new(8 * MIB as u64);
        assert_near(secs(fast.acquire(MIB)).await, 0.0);
        assert_near(secs(fast.acquire(8 * MIB)).await, 1.0);
        let slow = RateLimiter::new(1000);
        assert_near(secs(slow.acquire(16 << 10)).await, 0.0);
        assert_near(secs(slow.acquire(1000)).await, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_the_bucket_up_to_the_burst_only() {
        let l = RateLimiter::new(MIB as u64);
        l.acquire(MIB / 8).await;
        // A 32nd of a second refills a 32nd of the rate.
        tokio::time::sleep(Duration::from_secs_f64(1.0 / 32.0)).await;
        assert_near(secs(l.acquire(MIB / 32)).await, 0.0);
        assert_near(secs(l.acquire(MIB / 32)).await, 1.0 / 32.0);
        // Ten idle seconds refill only the burst.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_near(secs(l.acquire(MIB / 8)).await, 0.0);
        assert_near(secs(l.acquire(MIB)).await, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_request_waits_its_whole_cost_and_the_next_one_pays_its_own() {
        let l = RateLimiter::new(MIB as u64);
        assert_near(secs(l.acquire(10 * MIB)).await, 10.0 - 0.125);
        assert_near(secs(l.acquire(MIB)).await, 1.0);
        assert_near(secs(l.acquire(1)).await, 1.0 / MIB as f64);
    }

    #[tokio::test(start_paused = true)]
    async fn the_long_run_rate_holds_for_any_request_sizes() {
        let mut r = fastrand::Rng::with_seed(3);
        for rate in [1000, 65_536, 3_000_000, 100_000_000] {
            let l = RateLimiter::new(rate);
            let burst = (rate as f64 / 8.0).max(16.0 * 1024.0);
            for sizes in [(1, rate as usize / 100), (l.chunk(), l.chunk()), (1, 4 * l.chunk())] {
                let start = Instant::now();
                let mut total = 0;
                // The burst and about five seconds' worth, in requests of random sizes.
                while (total as f64) < burst + 5.0 * rate as f64 {
                    let n = r.usize(sizes.0..=sizes.1);
                    l.acquire(n).await;
                    total += n;
                }
                let want = (total as f64 - burst) / rate as f64;
                assert_near(start.elapsed().as_secs_f64(), want);
                // Let the bucket refill for the next round.
                tokio::time::sleep(Duration::from_secs_f64(burst / rate as f64 + 1.0)).await;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_rate() {
        let l = std::sync::Arc::new(RateLimiter::new(MIB as u64));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    for _ in 0..8 {
                        l.acquire(MIB / 4).await;
                    }
                    Instant::now()
                })
            })
            .collect();
        let mut ends = Vec::new();
        for t in tasks {
            ends.push(t.await.unwrap().duration_since(start).as_secs_f64());
        }
        // 8 MiB in all at 1 MiB/s, less the burst; nobody is starved.
        let last = ends.iter().copied().fold(0.0, f64::max);
        assert_near(last, 8.0 - 0.125);
        assert!(ends.iter().all(|&e| e > 6.0), "{ends:?}");
    }
}
