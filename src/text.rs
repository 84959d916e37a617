//! Showing text that came from the network or from a manifest: control
//! characters escaped, length cut, so a peer can neither drive the terminal
//! (clear the screen, set the title, forge lines) nor flood it.

use std::fmt;

/// Longest untrusted text shown, in characters, before it is cut with "…".
pub const SHOWN_MAX: usize = 200;

/// Untrusted text made safe to print: every control character (C0, DEL, C1)
/// and every Unicode bidirectional override is written as an escape
/// (`\x1b`, `\u{202e}`), and anything past `max` characters is cut.
pub fn clean(text: &str, max: usize) -> String {
    Shown { text, max }.to_string()
}

/// [`clean`] as a `Display` adapter, for log fields and error messages.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a> {
    /// The untrusted text.
    pub text: &'a str,
    /// Most characters shown.
    pub max: usize,
}

/// Wraps untrusted text for display with the default limit.
pub fn shown(text: &str) -> Shown<'_> {
    Shown { text, max: SHOWN_MAX }
}

/// A path for messages: its name may come from a manifest, so it is shown
/// escaped, and cut at a longer limit than other text (paths are long).
pub fn shown_path(path: &std::path::Path) -> String {
    clean(&path.to_string_lossy(), 4 * SHOWN_MAX)
}

/// A byte count for people, in binary units: "512 B", "20.0 MiB", "1.50 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let digits = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.digits$} {}", UNITS[unit])
}

fn is_dangerous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.text.chars().enumerate() {
            if i >= self.max {
                return f.write_str("…");
            }
            match c {
                c if (c as u32) < 0x80 && is_dangerous(c) => write!(f, "\\x{:02x}", c as u32)?,
                c if is_dangerous(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// An I/O error as one short phrase: the system's wording without the
/// "(os error N)" suffix, so messages do not repeat or leak errno numbers.
pub fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_cuts_long_text() {
        assert_eq!(clean("ok é", 10), "ok é");
        assert_eq!(clean("\x1b]0;t\x07\r\n", 10), "\\x1b]0;t\\x07\\x0d\\x0a");
        assert_eq!(clean("a\u{202e}b\u{85}", 10), "a\\u{202e}b\\u{85}");
        assert_eq!(clean(&"x".repeat(10_000), 5), "xxxxx…");
        assert!(shown(&"é".repeat(10_000)).to_string().chars().count() <= SHOWN_MAX + 1);
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        assert_eq!(bytes(20 << 20), "20.0 MiB");
        assert_eq!(bytes(1536 << 20), "1.50 GiB");
        assert_eq!(bytes(300 << 30), "300 GiB");
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(io_message(&e), "Permission denied");
    }
}
