//! Text from peers and plugins, shown to a human on a terminal.
//!
//! A seller's terms of use, a `dazaar/invalid` reason, a user-message reply or a payment
//! plugin's note are chosen by someone else; printed raw, their control characters drive
//! the terminal (ESC sequences clear the screen, move the cursor, retitle the window or
//! write to the clipboard; C1 controls do the same on some terminals; bidi overrides
//! reorder what is shown, so an amount or address reads as something else). Every place
//! that prints such text for a human passes it through [`escape`] first; JSON output is
//! escaped by serde instead.

use std::borrow::Cow;
use std::fmt::Write;

/// What to do with line breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Keep `\n` and `\t` (and `\r\n` as `\n`): text meant to span lines, such as terms.
    Keep,
    /// Escape them too: text shown inside one line of ours, which must not forge more.
    Escape,
}

/// `text` with every character that could drive a terminal replaced by a visible escape
/// (`\x1b`, `\u{202e}`): C0 controls and DEL, C1 controls, bidi embeddings, overrides,
/// isolates and marks, and the Unicode line and paragraph separators. Borrowed when
/// there is nothing to escape.
pub fn escape(text: &str, lines: Lines) -> Cow<'_, str> {
    let keeps = |c: char| lines == Lines::Keep && (c == '\n' || c == '\t');
    if !text.chars().any(|c| is_unsafe(c) && !keeps(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if lines == Lines::Keep && c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if !is_unsafe(c) || keeps(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Whether `c` can change what a terminal shows beyond printing itself.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(
            c,
            '\u{061c}' // Arabic letter mark
                | '\u{200e}' | '\u{200f}' // LRM, RLM
                | '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{202a}'..='\u{202e}' // LRE, RLE, PDF, LRO, RLO
                | '\u{2066}'..='\u{2069}' // LRI, RLI, FSI, PDI
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "Terms: no redistribution.\n\tThanks — été 2026 ✓";
        assert!(matches!(escape(text, Lines::Keep), Cow::Borrowed(t) if t == text));
        assert!(matches!(
            escape("one line", Lines::Escape),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escape_sequences_are_made_visible() {
        assert_eq!(
            escape("\x1b[2Jgone\x1b]0;title\x07", Lines::Keep),
            "\\x1b[2Jgone\\x1b]0;title\\x07"
        );
        assert_eq!(escape("a\0b\x7fc\x08", Lines::Keep), "a\\x00b\\x7fc\\x08");
        // C1: CSI and OSC as single code points.
        assert_eq!(
            escape("\u{9b}31m\u{9d}x", Lines::Keep),
            "\\u{9b}31m\\u{9d}x"
        );
    }

    #[test]
    fn bidi_controls_are_made_visible() {
        assert_eq!(
            escape("pay \u{202e}0001\u{202c} sat", Lines::Escape),
            "pay \\u{202e}0001\\u{202c} sat"
        );
        for c in [
            '\u{061c}', '\u{200e}', '\u{200f}', '\u{2028}', '\u{2029}', '\u{202a}', '\u{202b}',
            '\u{202d}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            let s = c.to_string();
            let e = escape(&s, Lines::Keep);
            assert!(!e.contains(c), "{c:?} kept");
            assert!(e.starts_with("\\u{"), "{e}");
        }
    }

    #[test]
    fn line_breaks_are_kept_or_escaped_as_asked() {
        let text = "line 1\r\nline 2\n\tindented\rover";
        assert_eq!(
            escape(text, Lines::Keep),
            "line 1\nline 2\n\tindented\\x0dover"
        );
        assert_eq!(
            escape(text, Lines::Escape),
            "line 1\\x0d\\x0aline 2\\x0a\\x09indented\\x0dover"
        );
    }

    #[test]
    fn nothing_unsafe_survives_any_input() {
        // Every code point of the ranges that matter, in both modes.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for lines in [Lines::Keep, Lines::Escape] {
            let out = escape(&all, lines);
            for c in out.chars() {
                let n = c as u32;
                let control = n < 0x20 || (0x7f..0xa0).contains(&n);
                let bidi = [0x61c, 0x200e, 0x200f, 0x2028, 0x2029].contains(&n)
                    || (0x202a..=0x202e).contains(&n)
                    || (0x2066..=0x2069).contains(&n);
                let allowed = lines == Lines::Keep && (c == '\n' || c == '\t');
                assert!(!(control || bidi) || allowed, "{c:?} survived in {lines:?}");
            }
        }
    }
}
