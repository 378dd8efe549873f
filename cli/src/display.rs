//! What a contact wrote, made safe to print on a terminal.
//!
//! Received names and texts are written by someone else: an escape sequence
//! in them could move the cursor, rewrite earlier lines, change the
//! window title or hide text; a carriage return or a bidirectional override
//! could make one message look like another. Every such character is shown
//! as a visible escape (`\u{1b}`) instead; a newline in a text is kept but
//! indented, so a text cannot fake a message line of its own.

use std::time::{Duration, UNIX_EPOCH};

/// Whether `c` changes how a terminal shows what follows it.
pub(crate) fn is_unsafe(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates; marks.
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        // Line and paragraph separators.
        || matches!(c, '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    out.extend(c.escape_unicode());
}

/// A single-line field (a name, a file name): every unsafe character,
/// newlines included, escaped.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// A message text: newlines kept, with the following lines indented;
/// tabs kept; every other unsafe character escaped.
pub(crate) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push('\t'),
            c if is_unsafe(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// A sender's timestamp (ms since the Unix epoch) as RFC 3339; a value no
/// calendar can show (past year 9999) as a note instead of a panic.
pub(crate) fn time(ms: u64) -> String {
    // 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
    const LAST_MS: u64 = 253_402_300_799_999;
    if ms > LAST_MS {
        return "invalid time".to_owned();
    }
    match UNIX_EPOCH.checked_add(Duration::from_millis(ms)) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "invalid time".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escape_sequences_cannot_reach_the_terminal() {
        let hostile = "hi\u{1b}[2J\u{1b}]0;owned\u{7}\rbob: fake\u{202e}txt.exe\u{9b}31m";
        for shown in [clean(hostile), text(hostile)] {
            assert!(!shown.chars().any(is_unsafe), "{shown:?}");
            assert!(shown.contains("\\u{1b}[2J"), "{shown:?}");
            assert!(shown.contains("\\u{d}bob: fake"), "{shown:?}");
            assert!(shown.contains("\\u{202e}"), "{shown:?}");
        }
    }

    #[test]
    fn newlines_are_indented_in_texts_and_escaped_in_names() {
        assert_eq!(
            text("one\n[2026] bob: two\tx"),
            "one\n    [2026] bob: two\tx"
        );
        assert_eq!(clean("a\nb"), "a\\u{a}b");
        assert_eq!(text("plain ünïcode ✓"), "plain ünïcode ✓");
    }

    #[test]
    fn any_timestamp_is_shown_without_a_panic() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(253_402_300_799_999), "9999-12-31T23:59:59Z");
        assert_eq!(time(253_402_300_800_000), "invalid time");
        assert_eq!(time(u64::MAX), "invalid time");
    }
}
