//! Makes console text safe for terminals and for XML (JUnit CDATA).

use std::borrow::Cow;
use std::str::Chars;

const ESC: char = '\u{1b}';
const BEL: char = '\u{07}';
/// 8-bit CSI; the other C1 controls are simply dropped, their arguments being ordinary text.
const C1_CSI: char = '\u{9b}';

/// Removes terminal escape sequences, carriage returns and every character XML 1.0 cannot hold, and
/// breaks up the CDATA terminator "]]>" (as "]] >": entities are not decoded inside CDATA).
pub fn sanitize(text: &str) -> String {
    clean(text).into_owned()
}

/// `sanitize` without the copy for the common case of a line that is already clean: triage runs it on
/// every console line.
pub(super) fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_care) && !text.contains("]]>") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ESC => skip_escape(&mut chars),
            C1_CSI => skip_csi(&mut chars),
            c if is_forbidden_in_xml(c) => {}
            '>' if out.ends_with("]]") => out.push_str(" >"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_care(c: char) -> bool {
    c == ESC || is_forbidden_in_xml(c)
}

/// Carriage returns go too: they are C0 controls, and on a terminal they overwrite the line.
fn is_forbidden_in_xml(c: char) -> bool {
    (c < ' ' && c != '\t' && c != '\n') || ('\u{7f}'..='\u{9f}').contains(&c) || c == '\u{fffe}' || c == '\u{ffff}'
}

fn peek(chars: &Chars<'_>) -> Option<char> {
    chars.clone().next()
}

/// Consumes chars while `accept` holds for the next one.
fn skip_while(chars: &mut Chars<'_>, accept: impl Fn(char) -> bool) {
    while peek(chars).is_some_and(&accept) {
        chars.next();
    }
}

/// After ESC: ECMA-48 sequences. A malformed one ends at the first char that cannot belong to it,
/// and that char is kept.
fn skip_escape(chars: &mut Chars<'_>) {
    match peek(chars) {
        Some('[') => {
            chars.next();
            skip_csi(chars);
        }
        Some(']' | 'P' | 'X' | '^' | '_') => {
            chars.next();
            skip_string(chars);
        }
        Some(' '..='/') => {
            skip_while(chars, |c| (' '..='/').contains(&c));
            if peek(chars).is_some_and(|c| ('0'..='~').contains(&c)) {
                chars.next();
            }
        }
        Some('0'..='~') => {
            chars.next();
        }
        _ => {}
    }
}

fn skip_csi(chars: &mut Chars<'_>) {
    skip_while(chars, |c| ('0'..='?').contains(&c));
    skip_while(chars, |c| (' '..='/').contains(&c));
    if peek(chars).is_some_and(|c| ('@'..='~').contains(&c)) {
        chars.next();
    }
}

/// OSC/DCS-style strings end at BEL or ST; an unterminated one stops at the end of the line rather
/// than swallowing the rest of the excerpt.
fn skip_string(chars: &mut Chars<'_>) {
    while let Some(c) = peek(chars) {
        match c {
            '\n' => return,
            BEL => {
                chars.next();
                return;
            }
            ESC => {
                chars.next();
                if peek(chars) == Some('\\') {
                    chars.next();
                }
                return;
            }
            _ => {
                chars.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    fn check(input: &str, expect: &str) {
        assert_eq!(sanitize(input), expect, "input {input:?}");
    }

    #[test]
    fn plain_text_is_unchanged() {
        check("", "");
        check("[    0.000000] Linux version 7.3.4", "[    0.000000] Linux version 7.3.4");
        check("tabs\tand\nnewlines stay", "tabs\tand\nnewlines stay");
        check("non-ASCII stays: é ü \u{fffd} 漢", "non-ASCII stays: é ü \u{fffd} 漢");
    }

    #[test]
    fn escape_sequences_are_removed() {
        check("\x1b[31mred\x1b[0m", "red");
        check("\x1b[1;32;40mbold\x1b[m", "bold");
        check("\x1b[?25l\x1b[2J\x1b[Hclear", "clear");
        check("\x1b]0;window title\x07text", "text");
        check("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link");
        check("\x1bcreset", "reset");
        check("\x1b(Bcharset", "charset");
        check("\u{9b}31mC1 CSI", "C1 CSI");
        check("\u{9d}C1 OSC\u{9c}after", "C1 OSCafter");
        check("unterminated \x1b]osc\nnext line", "unterminated \nnext line");
        check("lone escape at end \x1b", "lone escape at end ");
        check("broken \x1b[12\nnext", "broken \nnext");
    }

    #[test]
    fn controls_are_removed() {
        check("NUL\0byte", "NULbyte");
        check("crlf\r\n", "crlf\n");
        check("lone\rcarriage return", "lonecarriage return");
        check("bell\x07 backspace\x08 del\x7f", "bell backspace del");
        check("C1\u{80}\u{85}\u{9f} controls", "C1 controls");
        check("nonchars\u{fffe}\u{ffff}", "nonchars");
    }

    #[test]
    fn cdata_terminator_is_broken_up() {
        check("a]]>b", "a]] >b");
        check("]]>]]>", "]] >]] >");
        check("]]\0>", "]] >");
        check("]]\x1b[0m>", "]] >");
        check("] ]> and ]]", "] ]> and ]]");
    }
}
