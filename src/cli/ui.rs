//! What a person at a terminal sees: progress bars that say what is happening
//! (connecting, waiting for the manifest, checking what is on disk, fetching,
//! no peers), a rate over the bytes actually received, a seeder's status
//! line, and one summary line at the end. Nothing here is drawn when stderr is
//! not a terminal or with `-q`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pex::fetch::{Progress, Stage};
use pex::text::{bytes, clean};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often bars are redrawn even when nothing changed (rates, countdowns).
const REDRAW: Duration = Duration::from_millis(250);
/// The window a rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// With nothing received for this long, no rate or ETA is shown.
const IDLE: Duration = Duration::from_secs(3);

/// Whether bars and status lines are shown: stderr is a terminal and not `-q`.
pub fn interactive(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// "1 peer", "3 peers".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A rate for people: "48.0 MiB/s".
pub fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", bytes(bytes_per_sec.max(0.0) as u64))
}

/// A duration for people: "45 s", "3 min 20 s", "1 h 05 min".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{wide_bar:.cyan/blue}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A progress bar on stderr, or a hidden one.
pub fn new_bar(show: bool) -> ProgressBar {
    let target = if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    ProgressBar::with_draw_target(None, target)
}

/// A bar for hashing `size` bytes.
pub fn hashing_bar(show: bool, size: u64, name: &str) -> ProgressBar {
    let pb = new_bar(show);
    pb.set_length(size);
    pb.set_style(bar_style());
    pb.set_prefix(format!("hashing {}", clean(name, 24)));
    pb
}

/// Bytes received over a recent window, for a rate that resumed bytes cannot inflate.
#[derive(Default)]
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
    last_change: Option<Instant>,
}

impl RateMeter {
    fn add(&mut self, now: Instant, received: u64) {
        if self.samples.back().is_none_or(|(_, r)| *r != received) {
            self.last_change = Some(now);
        }
        self.samples.push_back((now, received));
        while self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window, or None while nothing arrives.
    fn rate(&self, now: Instant) -> Option<f64> {
        let recent = self.last_change.is_some_and(|t| now.duration_since(t) < IDLE);
        let ((t0, r0), (t1, r1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.duration_since(*t0).as_secs_f64();
        (recent && secs >= 0.5 && r1 > r0).then(|| (r1 - r0) as f64 / secs)
    }
}

/// Shows a fetch's progress until the watch closes; returns when it does.
pub async fn fetch_progress(mut rx: watch::Receiver<Progress>, show: bool) {
    let pb = new_bar(show);
    pb.set_style(spinner_style());
    pb.enable_steady_tick(Duration::from_millis(120));
    let mut meter = RateMeter::default();
    let mut bar_mode = false;
    let mut tick = tokio::time::interval(REDRAW);
    loop {
        let p = rx.borrow_and_update().clone();
        let now = Instant::now();
        meter.add(now, p.received_bytes);
        match &p.stage {
            Stage::Connecting => pb.set_message(connecting(&p)),
            Stage::Manifest => {
                pb.set_message(format!("waiting for the manifest from {}", count(p.peers, "peer", "peers")))
            }
            Stage::Lists => pb.set_message(format!("fetching the piece list of {}", name(&p))),
            Stage::Checking => {
                if !bar_mode {
                    pb.set_style(bar_style());
                    bar_mode = true;
                }
                pb.set_prefix("checking");
                pb.set_length(p.checking_bytes.max(1));
                pb.set_position(p.checked_bytes);
                let on_disk = bytes(p.checking_bytes);
                pb.set_message(fit("checking", vec![format!("{on_disk} already on disk"), on_disk]));
            }
            Stage::Pieces | Stage::NoPeers { .. } => {
                if !bar_mode {
                    pb.set_style(bar_style());
                    bar_mode = true;
                }
                let prefix = name(&p);
                pb.set_length(p.total_bytes.max(1));
                pb.set_position(p.have_bytes);
                pb.set_message(fit(&prefix, pieces_message(&p, meter.rate(now))));
                pb.set_prefix(prefix);
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
    }
    pb.finish_and_clear();
}

/// The terminal's width in columns (80 if unknown).
fn columns() -> usize {
    // SAFETY: TIOCGWINSZ fills the zeroed winsize struct; failure leaves it zero.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        80
    }
}

/// The longest of `options` (best first) that leaves room on one line for the
/// prefix, the percentage and a bar of at least 10 columns.
fn fit(prefix: &str, options: Vec<String>) -> String {
    let room = columns().saturating_sub(prefix.chars().count() + " [] 100% ".len() + 10 + 1);
    let mut last = String::new();
    for o in options {
        if o.chars().count() <= room {
            return o;
        }
        last = o;
    }
    last.chars().take(room).collect()
}

fn name(p: &Progress) -> String {
    clean(p.name.as_deref().unwrap_or("file"), (columns() / 5).clamp(8, 24))
}

fn connecting(p: &Progress) -> String {
    if p.dialing.is_empty() {
        // No address given: discovery is looking (its finds are dialled as they come).
        let d = p.discovered;
        let found: Vec<String> = [(d.remembered, "remembered"), (d.lan, "on the LAN"), (d.dht, "on the DHT")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        return match found.is_empty() {
            true => "looking for peers…".to_owned(),
            false => format!("looking for peers… found {}", found.join(", ")),
        };
    }
    let n = count(p.dialing.len().max(1), "peer", "peers");
    let failing: Vec<String> =
        p.dialing.iter().filter_map(|(a, e)| e.as_ref().map(|e| format!("{a}: {}", clean(e, 60)))).collect();
    match failing.last() {
        Some(last) => format!("connecting to {n}… {last} — retrying"),
        None => format!("connecting to {n}…"),
    }
}

/// What follows the bar while pieces arrive, longest first (see [`fit`]).
fn pieces_message(p: &Progress, rate: Option<f64>) -> Vec<String> {
    let mut options = file_message(p, rate);
    if p.files_total > 0 {
        // A folder: files done, then the file being fetched, as room allows.
        let files = format!("{}/{} files", p.files_done, p.files_total);
        let current = p.current.as_deref().map(|c| clean(c, 40)).unwrap_or_default();
        let mut more: Vec<String> = options.iter().map(|o| format!("{o}  {files}  {current}")).collect();
        more.extend(options.iter().map(|o| format!("{o}  {files}")));
        more.append(&mut options);
        return more;
    }
    options
}

fn file_message(p: &Progress, rate: Option<f64>) -> Vec<String> {
    let sizes = format!("{}/{}", bytes(p.have_bytes), bytes(p.total_bytes));
    if let Stage::NoPeers { give_up_in } = p.stage {
        let left = duration(give_up_in);
        return vec![
            format!("{sizes}  no peers connected — giving up in {left}"),
            format!("no peers — giving up in {left}"),
            format!("no peers, {left}"),
        ];
    }
    let peers = count(p.peers, "peer", "peers");
    match rate {
        Some(r) if r > 0.0 => {
            let left = p.total_bytes.saturating_sub(p.have_bytes) as f64 / r;
            let eta = duration(Duration::from_secs_f64(left.min(1e7)).max(Duration::from_secs(1)));
            let r = self::rate(r);
            vec![
                format!("{sizes}  {r}  ETA {eta}  {peers}"),
                format!("{sizes}  {r}  ETA {eta}"),
                format!("{r}  ETA {eta}"),
                r,
            ]
        }
        _ => vec![format!("{sizes}  waiting for data  {peers}"), format!("{sizes}  waiting"), "waiting".into()],
    }
}

/// A seeder's live status line: connected peers, bytes uploaded, current upload rate.
pub struct StatusLine {
    pb: ProgressBar,
    meter: RateMeter,
}

impl StatusLine {
    /// A status line (hidden unless `show`).
    pub fn new(show: bool) -> StatusLine {
        let pb = new_bar(show);
        pb.set_style(spinner_style());
        StatusLine { pb, meter: RateMeter::default() }
    }

    /// Redraws it for `what` with these counters.
    pub fn update(&mut self, what: &str, peers: usize, uploaded: u64) {
        let now = Instant::now();
        self.meter.add(now, uploaded);
        let r = self.meter.rate(now).map(rate).unwrap_or_else(|| "idle".into());
        let peers = count(peers, "peer", "peers");
        self.pb.set_message(format!("{what}: {peers} connected, {} uploaded, {r}", bytes(uploaded)));
        self.pb.tick();
    }

    /// Prints a line on stderr above it.
    pub fn say(&self, line: &str) {
        self.pb.suspend(|| eprintln!("{line}"));
    }

    /// Removes it from the screen.
    pub fn clear(&self) {
        self.pb.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_address_given_the_screen_says_discovery_is_looking_and_what_it_found() {
        let mut p = Progress::default();
        assert_eq!(connecting(&p), "looking for peers…");
        p.discovered.lan = 2;
        p.discovered.dht = 1;
        assert_eq!(connecting(&p), "looking for peers… found 2 on the LAN, 1 on the DHT");
        p.dialing = vec![("[::1]:9000".parse().unwrap(), Some("Connection refused".into()))];
        assert_eq!(connecting(&p), "connecting to 1 peer… [::1]:9000: Connection refused — retrying");
    }

    #[test]
    fn a_rate_counts_only_bytes_received_in_the_window() {
        let mut m = RateMeter::default();
        let t = Instant::now();
        m.add(t, 0);
        m.add(t + Duration::from_secs(1), 10 << 20);
        assert_eq!(m.rate(t + Duration::from_secs(1)).map(|r| r as u64), Some(10 << 20));
        // Nothing more arrives: after IDLE no rate (so no ETA) is shown.
        m.add(t + Duration::from_secs(5), 10 << 20);
        assert_eq!(m.rate(t + Duration::from_secs(5)), None);
        assert_eq!(duration(Duration::from_secs(45)), "45 s");
        assert_eq!(duration(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(count(1, "peer", "peers"), "1 peer");
    }
}
