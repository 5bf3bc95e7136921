//! Distinguished names, compared the way RFC 4514 reads them.
//!
//! One entry's DN can be written many ways: `CN=Martin\, Jean, OU=People,DC=example,DC=org`
//! and `cn=Martin\2C Jean,ou=people,dc=example,dc=org` name the same entry, and slapd answers
//! with the second even when a group's `member` value says the first (as a group loaded with
//! slapadd, or written by another tool, may). Every DN the daemon compares (group members
//! against entries, rule groups against the groups read, entries under a departed OU or a
//! base) is compared through a [`DnKey`], the normalised form:
//! - attribute types without case (`CN` = `cn`); numeric OIDs are kept as written, so
//!   `2.5.4.3=x` and `cn=x` differ;
//! - values unescaped (`\,` = `\2C` = `\2c`, `\C3\A9` = `é`), with leading, trailing and
//!   repeated spaces not significant and case ignored: the directory string matching
//!   (caseIgnoreMatch) of the attributes naming entries in practice (cn, ou, dc, uid, o, c, l).
//!   Nothing beyond lowercase is done to Unicode (no NFC/NFKC);
//! - a `#`-prefixed BER value (`cn=#04024869`) compared as its hex text, not decoded;
//! - the parts of a multi-valued RDN (`cn=a+uid=b`) in any order;
//! - spaces around `=`, `,` and `+` ignored (as RFC 2253 readers allow); the other special
//!   characters (`"`, `;`, `<`, `>`, `=`) are taken as they are in a value, escaped or not.
//!
//! No crate was used: the one parsing RFC 4514 (`ldapdn`) only splits the text; the
//! normalisation and the comparisons are the part needed here.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The normalised form of a DN: equal keys name the same entry. Cheap to compare, hash and
/// order (one string); see the module doc for what is normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnKey(Box<str>);

/// A DN as written (kept for messages), with its [`DnKey`]: equality, hashing and order are
/// the key's.
#[derive(Clone)]
pub struct Dn {
    text: String,
    key: DnKey,
}

/// Text that is not a DN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnError {
    pub text: String,
    pub reason: String,
}

impl fmt::Display for DnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a valid DN: {}", self.text, self.reason)
    }
}

impl std::error::Error for DnError {}

/// Starts the key of text that is not a DN (see [`DnKey::lenient`]); a parsed key never holds
/// a NUL (it is escaped).
const MALFORMED: char = '\0';

impl DnKey {
    pub fn parse(text: &str) -> Result<DnKey, DnError> {
        normalise(text)
            .map(|key| DnKey(key.into_boxed_str()))
            .map_err(|reason| DnError {
                text: text.to_string(),
                reason,
            })
    }

    /// The key of a DN a server sent. Servers send well-formed DNs; text that is not one
    /// anyway is kept as it is, equal only to the same text and under nothing.
    pub fn lenient(text: &str) -> DnKey {
        DnKey::parse(text).unwrap_or_else(|_| DnKey(format!("{MALFORMED}{text}").into()))
    }

    /// True when this DN is `base` or below it (`uid=a,ou=people,dc=x` is under `dc=x`, not
    /// under `le,dc=x`).
    pub fn is_under(&self, base: &DnKey) -> bool {
        let (dn, base) = (&*self.0, &*base.0);
        if dn.starts_with(MALFORMED) || base.starts_with(MALFORMED) {
            return dn == base;
        }
        // Every `,` of a key separates RDNs: those in values are escaped (`\2c`).
        dn == base
            || (dn.ends_with(base) && dn.as_bytes().get(dn.len() - base.len() - 1) == Some(&b','))
    }

    /// The normalised text, e.g. `cn=martin\2c jean,ou=people,dc=example,dc=org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_malformed(&self) -> bool {
        self.0.starts_with(MALFORMED)
    }
}

impl Dn {
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        Ok(Dn {
            key: DnKey::parse(text)?,
            text: text.to_string(),
        })
    }

    /// The DN as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn key(&self) -> &DnKey {
        &self.key
    }

    /// True when this DN is `base` or below it.
    pub fn is_under(&self, base: &Dn) -> bool {
        self.key.is_under(&base.key)
    }
}

/// True when `a` and `b` name the same entry (either may be malformed, see
/// [`DnKey::lenient`]); identical texts are not parsed.
pub fn same_dn(a: &str, b: &str) -> bool {
    a == b || DnKey::lenient(a) == DnKey::lenient(b)
}

impl PartialEq for Dn {
    fn eq(&self, other: &Dn) -> bool {
        self.key == other.key
    }
}

impl Eq for Dn {}

impl Hash for Dn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl PartialOrd for Dn {
    fn partial_cmp(&self, other: &Dn) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dn {
    fn cmp(&self, other: &Dn) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl Borrow<DnKey> for Dn {
    fn borrow(&self) -> &DnKey {
        &self.key
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dn({:?})", self.text)
    }
}

/// The key text of `text`: RDNs joined by `,`, each RDN's `type=value` parts sorted and joined
/// by `+`, types and values lowercased, values with `\`, `,`, `+`, NUL and a leading `#`
/// escaped as hex pairs, so that a key's every `,` and `+` is a separator.
fn normalise(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("it is empty".into());
    }
    let mut parser = Parser {
        bytes: text.as_bytes(),
        at: 0,
        value: Vec::new(),
    };
    let mut out = String::with_capacity(text.len());
    loop {
        let rdn_start = out.len();
        let mut parts = 1;
        loop {
            parser.attribute_type(&mut out)?;
            out.push('=');
            parser.value(&mut out)?;
            match parser.next() {
                Some(b'+') => {
                    out.push('+');
                    parts += 1;
                }
                Some(b',') => break,
                None => return Ok(sort_parts(out, rdn_start, parts)),
                Some(_) => return Err("unexpected text after a value".into()),
            }
        }
        out = sort_parts(out, rdn_start, parts);
        out.push(',');
    }
}

/// Sorts the `+`-joined parts of the RDN that starts at `start` (the last one in `out`).
fn sort_parts(mut out: String, start: usize, parts: usize) -> String {
    if parts > 1 {
        let mut sorted: Vec<String> = out[start..].split('+').map(str::to_string).collect();
        sorted.sort();
        out.truncate(start);
        out.push_str(&sorted.join("+"));
    }
    out
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The value being read, unescaped (bytes: hex pairs may be parts of a UTF-8 character).
    value: Vec<u8>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// The separator after a value (`,` or `+`, consumed), or `None` at the end.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    /// `cn`, `OU`, `2.5.4.3`, and the `=` after it; spaces around are skipped.
    fn attribute_type(&mut self, out: &mut String) -> Result<(), String> {
        self.skip_spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            self.at += 1;
        }
        let name = &self.bytes[start..self.at];
        let shown = || String::from_utf8_lossy(name).into_owned();
        self.skip_spaces();
        match (self.peek(), name.is_empty()) {
            (Some(b'='), false) => self.at += 1,
            (Some(b'='), true) => return Err("an attribute type is missing".into()),
            (None | Some(b',' | b'+'), true) => return Err("an RDN is empty".into()),
            (_, true) => return Err("an attribute type is missing".into()),
            (_, false) => return Err(format!("no `=` after `{}`", shown())),
        }
        // descr (`cn`, `msDS-x`) or numericoid (`2.5.4.3`).
        let descr = name.first().is_some_and(u8::is_ascii_alphabetic) && !name.contains(&b'.');
        let oid = name
            .split(|&c| c == b'.')
            .all(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit));
        if !descr && !oid {
            return Err(format!("`{}` is not an attribute type", shown()));
        }
        out.extend(name.iter().map(|c| char::from(c.to_ascii_lowercase())));
        Ok(())
    }

    /// One value, up to an unescaped `,` or `+` or the end, written normalised to `out`.
    fn value(&mut self, out: &mut String) -> Result<(), String> {
        self.skip_spaces();
        if self.peek() == Some(b'#') {
            return self.hex_value(out);
        }
        // Most values have no escape: they are read in place, with no copy.
        let start = self.at;
        let mut plain = true;
        while let Some(c) = self.peek() {
            match c {
                b',' | b'+' => break,
                b'\\' => {
                    plain = false;
                    self.at += 2;
                }
                _ => self.at += 1,
            }
        }
        let value = if plain {
            // Ends before a `,`, a `+` or the end of the text: a whole `str`.
            std::str::from_utf8(&self.bytes[start..self.at])
                .map_err(|_| "a value is not UTF-8".to_string())?
        } else {
            self.at = start;
            self.unescape()?;
            std::str::from_utf8(&self.value)
                .map_err(|_| "an escaped value is not UTF-8".to_string())?
        };
        let start = out.len();
        let mut space = false;
        for c in value.chars() {
            if c == ' ' {
                space = true;
                continue;
            }
            if space && out.len() > start {
                out.push(' ');
            }
            space = false;
            for c in c.to_lowercase() {
                match c {
                    '\\' => out.push_str("\\5c"),
                    ',' => out.push_str("\\2c"),
                    '+' => out.push_str("\\2b"),
                    '\0' => out.push_str("\\00"),
                    '#' if out.len() == start => out.push_str("\\23"),
                    c => out.push(c),
                }
            }
        }
        if out.len() == start {
            return Err("a value is empty".into());
        }
        Ok(())
    }

    /// Reads a value with escapes into `self.value`, unescaped.
    fn unescape(&mut self) -> Result<(), String> {
        self.value.clear();
        while let Some(c) = self.peek() {
            match c {
                b',' | b'+' => break,
                b'\\' => {
                    self.at += 1;
                    let byte = self.escaped()?;
                    self.value.push(byte);
                }
                c => {
                    self.at += 1;
                    self.value.push(c);
                }
            }
        }
        Ok(())
    }

    /// After a `\`: a hex pair (`\2C`) or an escaped character (`\,`), as one byte.
    fn escaped(&mut self) -> Result<u8, String> {
        let Some(first) = self.peek() else {
            return Err("it ends with a lone `\\`".into());
        };
        let pair = match self.bytes.get(self.at..self.at + 2) {
            Some(&[high, low]) => hex_digit(high).zip(hex_digit(low)),
            _ => None,
        };
        if let Some((high, low)) = pair {
            self.at += 2;
            return Ok(high << 4 | low);
        }
        if b" \"#+,;<=>\\".contains(&first) {
            self.at += 1;
            return Ok(first);
        }
        let shown: String = String::from_utf8_lossy(&self.bytes[self.at..])
            .chars()
            .take(2)
            .collect();
        Err(format!(
            "`\\{shown}` is neither a hex pair nor an escaped special character"
        ))
    }

    /// `#04024869`: kept as its lowercase hex text.
    fn hex_value(&mut self, out: &mut String) -> Result<(), String> {
        self.at += 1;
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            self.at += 1;
        }
        let hex = &self.bytes[start..self.at];
        self.skip_spaces();
        if hex.is_empty()
            || !hex.len().is_multiple_of(2)
            || !matches!(self.peek(), None | Some(b',' | b'+'))
        {
            return Err("a `#` value is not an even number of hex digits".into());
        }
        out.push('#');
        out.extend(hex.iter().map(|c| char::from(c.to_ascii_lowercase())));
        Ok(())
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
