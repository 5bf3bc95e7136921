//! Text filters used by templates: accent stripping, Matrix-legal localparts.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Latin text without accents: `Élodie Dupré` → `Elodie Dupre`, `Œuvre` → `OEuvre`.
/// Letters with no ASCII form are kept as they are (a later filter may drop them).
pub fn strip_accents(text: &str) -> String {
    if text.is_ascii() {
        // Nothing to decompose or replace (and most names are ASCII).
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.nfkd().filter(|c| !is_combining_mark(*c)) {
        match c {
            'œ' => out.push_str("oe"),
            'Œ' => out.push_str("OE"),
            'æ' => out.push_str("ae"),
            'Æ' => out.push_str("AE"),
            'ß' => out.push_str("ss"),
            'ø' => out.push('o'),
            'Ø' => out.push('O'),
            'đ' => out.push('d'),
            'Đ' => out.push('D'),
            'ł' => out.push('l'),
            'Ł' => out.push('L'),
            // Typographic apostrophes and dashes, common in French names.
            '\u{2019}' | '\u{2018}' | '\u{02bc}' => out.push('\''),
            '\u{2010}' | '\u{2011}' | '\u{2013}' => out.push('-'),
            c => out.push(c),
        }
    }
    out
}

/// True for characters a Matrix user id localpart may hold (the historical safe set).
fn is_localpart_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '=' | '-')
}

fn is_separator(c: char) -> bool {
    matches!(c, '.' | '_' | '=' | '-')
}

/// A Matrix-legal localpart: accents stripped, lowercased, whitespace turned into `-`,
/// other illegal characters (apostrophes, …) dropped, runs of separators folded, and no
/// separator at either end. `Pierre-Yves  L'Hôte` → `pierre-yves-lhote`.
pub fn to_localpart(text: &str) -> String {
    let lowered = if text.is_ascii() {
        text.to_ascii_lowercase()
    } else {
        strip_accents(text).to_lowercase()
    };
    let mut out = String::with_capacity(lowered.len());
    for c in lowered.chars() {
        let c = if c.is_whitespace() { '-' } else { c };
        if !is_localpart_char(c) {
            continue;
        }
        if is_separator(c) && out.chars().last().is_some_and(is_separator) {
            continue;
        }
        out.push(c);
    }
    if out.ends_with(is_separator) {
        out.truncate(out.trim_end_matches(is_separator).len());
    }
    match out.strip_prefix(is_separator) {
        Some(rest) => rest.to_string(),
        None => out,
    }
}

/// The part of an e-mail address before the `@` (the whole text if there is none).
pub fn email_local_part(text: &str) -> &str {
    text.split('@').next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_are_stripped() {
        let cases = [
            ("Élodie Dupré", "Elodie Dupre"),
            ("François Lefèvre", "Francois Lefevre"),
            ("Anaïs Côté", "Anais Cote"),
            ("Zoë Œillet", "Zoe OEillet"),
            ("Łukasz Øster", "Lukasz Oster"),
            ("Straße", "Strasse"),
            ("plain", "plain"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_accents(input), want, "{input}");
        }
    }

    #[test]
    fn localparts_are_matrix_legal() {
        let cases = [
            ("Élodie.Dupré", "elodie.dupre"),
            ("Pierre-Yves  L'Hôte", "pierre-yves-lhote"),
            ("Jeanne d\u{2019}Arc", "jeanne-darc"),
            ("  .-Anne--Marie-. ", "anne-marie"),
            ("O'Neil", "oneil"),
            ("李", ""),
            ("user+tag@x", "usertagx"),
            ("Maël_Le Goff", "mael_le-goff"),
        ];
        for (input, want) in cases {
            assert_eq!(to_localpart(input), want, "{input}");
        }
    }

    #[test]
    fn email_local_parts() {
        assert_eq!(email_local_part("jean.martin@example.org"), "jean.martin");
        assert_eq!(email_local_part("nodomain"), "nodomain");
    }
}
