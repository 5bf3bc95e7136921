//! What the homeserver refuses, checked before anything is sent to it: a user id longer than
//! 255 bytes or whose localpart Synapse does not take for a new user, a display name longer
//! than 256 characters, an e-mail value that is not an address. Strings are sent in Unicode
//! NFC, so that one name written two ways (`é` precomposed or `e` + U+0301) is one name.
//!
//! The limits are Synapse's (1.163): `synapse/api/constants.py` `MAX_USERID_LENGTH = 255`,
//! `synapse/handlers/register.py` `check_username` (the localpart grammar, no leading `_`, no
//! all-digit localpart), `synapse/handlers/profile.py` `MAX_DISPLAYNAME_LEN = 256`. They are
//! written here rather than taken from ruma's `ruma-identifiers-validation`: that crate checks
//! the spec's grammar and length, but not the two rules of Synapse's own that refuse a
//! registration (a leading `_`, digits only), and this is the whole of it.

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
use unicode_segmentation::UnicodeSegmentation;

/// The longest user id (`@localpart:server_name`), in bytes: the spec's limit (appendices,
/// "User Identifiers": 255 bytes including the `@` and the domain) and Synapse's
/// `MAX_USERID_LENGTH`; a longer one is refused with 400 `M_INVALID_USERNAME`.
pub const MXID_MAX_BYTES: usize = 255;

/// Synapse's `MAX_DISPLAYNAME_LEN`, in characters (Python's `len`: code points). A longer name
/// is refused with 400 "Displayname is too long (max 256)" on every update — though account
/// creation takes it, so an account made once could never be updated again.
pub const DISPLAY_NAME_MAX_CHARS: usize = 256;

/// RFC 5321 §4.5.3.1.1: a local part of at most 64 octets.
const EMAIL_LOCAL_MAX_BYTES: usize = 64;
/// RFC 5321 §4.5.3.1.3: a path of at most 256 octets, `<` and `>` included.
const EMAIL_MAX_BYTES: usize = 254;

/// `text` in Unicode NFC (most values already are, and are given back as they are).
pub fn nfc(text: String) -> String {
    if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        return text;
    }
    text.nfc().collect()
}

/// Why Synapse would refuse `localpart` for a new user, or `None` if it takes it.
/// (`check_username`: `a-z`, `0-9` and `._=-/+`; not empty; no leading `_` unless the
/// homeserver sets `allow_underscore_prefixed_localpart`, off by default; digits only are
/// reserved for guests.)
pub fn localpart_problem(localpart: &str) -> Option<&'static str> {
    if localpart.is_empty() {
        Some("it is empty")
    } else if !localpart.chars().all(is_localpart_char) {
        Some("Synapse takes only a-z, 0-9 and `._=-/+`")
    } else if localpart.starts_with('_') {
        Some("Synapse refuses a leading `_`")
    } else if localpart.bytes().all(|b| b.is_ascii_digit()) {
        Some("Synapse keeps all-digit user ids for guests")
    } else {
        None
    }
}

/// True when Synapse takes `localpart` for a new user.
pub fn is_synapse_localpart(localpart: &str) -> bool {
    localpart_problem(localpart).is_none()
}

fn is_localpart_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '=' | '-' | '/' | '+')
}

/// The longest localpart a user id on `server_name` can hold (`@`, `:` and the server name
/// take the rest of [`MXID_MAX_BYTES`]).
pub fn localpart_budget(server_name: &str) -> usize {
    MXID_MAX_BYTES.saturating_sub(server_name.len() + 2)
}

/// `name` cut to [`DISPLAY_NAME_MAX_CHARS`] characters, `…` included, or `None` when it fits.
/// The cut falls between graphemes (never inside an emoji sequence, a flag or a letter with
/// its accents), trailing spaces dropped before the `…`; only a single grapheme longer than
/// the whole limit is cut between code points.
pub fn cut_display_name(name: &str) -> Option<String> {
    // Bytes are at least as many as characters: most names need no counting.
    if name.len() <= DISPLAY_NAME_MAX_CHARS || name.chars().count() <= DISPLAY_NAME_MAX_CHARS {
        return None;
    }
    let room = DISPLAY_NAME_MAX_CHARS - 1;
    let mut kept = 0;
    let mut end = 0;
    for (at, grapheme) in name.grapheme_indices(true) {
        let chars = grapheme.chars().count();
        if kept + chars > room {
            break;
        }
        kept += chars;
        end = at + grapheme.len();
    }
    if end == 0 {
        end = name
            .char_indices()
            .nth(room)
            .map_or(name.len(), |(at, _)| at);
    }
    let mut cut = name.get(..end).unwrap_or_default().trim_end().to_string();
    cut.push('…');
    Some(cut)
}

/// Why `address` is not an e-mail address the daemon hands on, or `None` if it is one.
/// Synapse itself refuses only a value without exactly one `@`; the rest keeps out what no
/// mail server would deliver to (RFC 5321 lengths, a domain that is not a dotted name).
pub fn email_problem(address: &str) -> Option<&'static str> {
    let Some((local, domain)) = address.split_once('@') else {
        return Some("no `@`");
    };
    if domain.contains('@') {
        Some("more than one `@`")
    } else if local.is_empty() {
        Some("nothing before the `@`")
    } else if domain.is_empty() {
        Some("nothing after the `@`")
    } else if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it holds spaces or control characters")
    } else if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        Some("the domain is not a dotted name")
    } else if local.len() > EMAIL_LOCAL_MAX_BYTES {
        Some("the part before the `@` is longer than 64 bytes (RFC 5321)")
    } else if address.len() > EMAIL_MAX_BYTES {
        Some("it is longer than 254 bytes (RFC 5321)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localparts_synapse_takes_for_new_users() {
        for good in ["cdurand", "jean.martin2", "a_b=c-d/e+f", "x0", "0x", "a"] {
            assert_eq!(localpart_problem(good), None, "{good}");
        }
        let bad = [
            ("", "empty"),
            ("CDurand", "a-z"),
            ("zoë", "a-z"),
            ("a b", "a-z"),
            ("a@b", "a-z"),
            ("a:b", "a-z"),
            ("_svc", "leading `_`"),
            ("0", "guests"),
            ("12345", "guests"),
        ];
        for (localpart, why) in bad {
            let problem = localpart_problem(localpart).unwrap_or_default();
            assert!(problem.contains(why), "{localpart}: {problem}");
            assert!(!is_synapse_localpart(localpart), "{localpart}");
        }
    }

    #[test]
    fn the_localpart_budget_leaves_room_for_the_server_name() {
        assert_eq!(localpart_budget("example.org"), 255 - 13);
        assert_eq!(localpart_budget("a.example.gouv.fr:18101"), 255 - 25);
        assert_eq!(localpart_budget(&"x".repeat(300)), 0);
    }

    #[test]
    fn nfc_composes_and_leaves_composed_text_alone() {
        assert_eq!(nfc("Ele\u{301}onore".into()), "Eléonore");
        assert_eq!(nfc("Eléonore".into()), "Eléonore");
        assert_eq!(nfc("plain".into()), "plain");
        assert_eq!(nfc("Zoe\u{308} A\u{30a}sa".into()), "Zoë Åsa");
    }

    #[test]
    fn display_names_are_cut_to_256_characters_between_graphemes() {
        let fits = "é".repeat(256);
        assert_eq!(cut_display_name(&fits), None, "256 characters fit");
        assert_eq!(cut_display_name("Jean Martin [DSI]"), None);
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}"; // 👨‍👩‍👧: 5 code points
        let cases: Vec<(String, String)> = vec![
            // ASCII: 255 kept, then the ellipsis.
            ("a".repeat(300), format!("{}…", "a".repeat(255))),
            // Accented (two bytes each): counted in characters, not bytes.
            ("é".repeat(257), format!("{}…", "é".repeat(255))),
            // Multi-byte CJK (three bytes each).
            ("李".repeat(400), format!("{}…", "李".repeat(255))),
            // Emoji outside the BMP (four bytes, one character each).
            ("😀".repeat(300), format!("{}…", "😀".repeat(255))),
            // A five-code-point emoji sequence is not split: 253 + 5 would pass 255.
            (
                format!("{}{family}{}", "a".repeat(253), "b".repeat(10)),
                format!("{}…", "a".repeat(253)),
            ),
            // A letter with a combining accent that has no precomposed form stays whole.
            (
                format!("{}q\u{301}{}", "a".repeat(254), "b".repeat(10)),
                format!("{}…", "a".repeat(254)),
            ),
            // Spaces before the cut are dropped.
            (
                format!("{}   {}", "a".repeat(253), "b".repeat(10)),
                format!("{}…", "a".repeat(253)),
            ),
            // One grapheme longer than the limit: cut between code points.
            (
                format!("a{}", "\u{301}".repeat(300)),
                format!("a{}…", "\u{301}".repeat(254)),
            ),
        ];
        for (name, want) in cases {
            let cut = cut_display_name(&name).unwrap_or_default();
            assert_eq!(cut, want, "{name}");
            assert!(cut.chars().count() <= DISPLAY_NAME_MAX_CHARS, "{cut}");
        }
    }

    #[test]
    fn email_addresses() {
        for good in [
            "a.b@example.org",
            "jean+tag@sub.example.gouv.fr",
            "élodie@exemple.fr",
        ] {
            assert_eq!(email_problem(good), None, "{good}");
        }
        let long_local = format!("{}@x.org", "a".repeat(65));
        let long = format!("a@{}.org", "b".repeat(250));
        let bad = [
            ("", "no `@`"),
            ("not-mail", "no `@`"),
            ("a@b@c.org", "more than one"),
            ("@x.org", "nothing before"),
            ("a@", "nothing after"),
            ("a b@x.org", "spaces"),
            ("a@x.org\u{0}", "control"),
            ("a@localhost", "dotted"),
            ("a@.org", "dotted"),
            ("a@x..org", "dotted"),
            ("a@x.org.", "dotted"),
            (long_local.as_str(), "64 bytes"),
            (long.as_str(), "254 bytes"),
        ];
        for (address, why) in bad {
            let problem = email_problem(address).unwrap_or_default();
            assert!(problem.contains(why), "{address:?}: {problem}");
        }
    }
}
