//! Small templates over directory attributes: `{givenName|ascii|lower}.{sn|ascii|lower}`,
//! `{givenName} {sn} [{ou?}]`.
//!
//! `{attr}` takes the attribute's first value and is required: an entry without it cannot be
//! rendered. `{attr?}` is optional and renders empty. Filters after `|` run left to right.
//! After rendering, whitespace runs are folded and empty `[]` / `()` are dropped, so an
//! optional part in brackets disappears cleanly.

use std::borrow::Cow;
use std::fmt;

use crate::directory::Entry;

use super::normalize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Lower,
    Upper,
    Ascii,
    Localpart,
    EmailLocal,
    FirstWord,
    Trim,
}

impl Filter {
    const NAMES: &'static str = "lower, upper, ascii, localpart, email_local, first_word, trim";

    fn parse(name: &str) -> Option<Filter> {
        Some(match name {
            "lower" => Filter::Lower,
            "upper" => Filter::Upper,
            "ascii" => Filter::Ascii,
            "localpart" => Filter::Localpart,
            "email_local" => Filter::EmailLocal,
            "first_word" => Filter::FirstWord,
            "trim" => Filter::Trim,
            _ => return None,
        })
    }

    fn apply(self, value: &str) -> String {
        match self {
            Filter::Lower => value.to_lowercase(),
            Filter::Upper => value.to_uppercase(),
            Filter::Ascii => normalize::strip_accents(value),
            Filter::Localpart => normalize::to_localpart(value),
            Filter::EmailLocal => normalize::email_local_part(value).to_string(),
            Filter::FirstWord => value.split_whitespace().next().unwrap_or("").to_string(),
            Filter::Trim => value.trim().to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    attr: String,
    optional: bool,
    filters: Vec<Filter>,
}

impl Field {
    /// The value through the filters (borrowed when there are none: most fields).
    fn render<'v>(&self, value: &'v str) -> Cow<'v, str> {
        self.filters
            .iter()
            .fold(Cow::Borrowed(value), |v, f| Cow::Owned(f.apply(&v)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that does not parse; `column` is 1-based, in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// An entry lacks a required attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingAttribute(pub String);

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        let column = |byte: usize| source[..byte].chars().count() + 1;
        while let Some((at, c)) = chars.next() {
            match c {
                '{' => {
                    let start = at + 1;
                    let end = loop {
                        match chars.next() {
                            Some((i, '}')) => break i,
                            Some((i, '{')) => {
                                return Err(TemplateError {
                                    column: column(i),
                                    message: "`{` inside a field".into(),
                                })
                            }
                            Some(_) => {}
                            None => {
                                return Err(TemplateError {
                                    column: column(at),
                                    message: "`{` is never closed".into(),
                                })
                            }
                        }
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    let field =
                        parse_field(&source[start..end]).map_err(|message| TemplateError {
                            column: column(start),
                            message,
                        })?;
                    parts.push(Part::Field(field));
                }
                '}' => {
                    return Err(TemplateError {
                        column: column(at),
                        message: "`}` without a `{`".into(),
                    })
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(TemplateError {
                column: 1,
                message: "names no attribute (write e.g. `{uid}`)".into(),
            });
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// The attributes this template reads.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.attr.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders with each attribute's first value.
    pub fn render(&self, entry: &Entry) -> Result<String, MissingAttribute> {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(field) => {
                    match entry.first(&field.attr).filter(|v| !v.trim().is_empty()) {
                        Some(value) => out.push_str(&field.render(value)),
                        None if field.optional => {}
                        None => return Err(MissingAttribute(field.attr.clone())),
                    }
                }
            }
        }
        Ok(tidy(out))
    }

    /// Renders once per value when the template is a single field (`{mail}` with three mail
    /// values gives three results); otherwise renders once.
    pub fn render_all(&self, entry: &Entry) -> Result<Vec<String>, MissingAttribute> {
        match self.parts.as_slice() {
            [Part::Field(field)] => {
                let values: Vec<String> = entry
                    .values(&field.attr)
                    .iter()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| tidy(field.render(v).into_owned()))
                    .collect();
                if values.is_empty() && !field.optional {
                    return Err(MissingAttribute(field.attr.clone()));
                }
                Ok(values)
            }
            _ => Ok(vec![self.render(entry)?])
                .map(|v| v.into_iter().filter(|s| !s.is_empty()).collect()),
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_field(inner: &str) -> Result<Field, String> {
    let mut pieces = inner.split('|').map(str::trim);
    let name = pieces.next().unwrap_or("");
    let (name, optional) = match name.strip_suffix('?') {
        Some(n) => (n.trim(), true),
        None => (name, false),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';')
    {
        return Err(format!("`{name}` is not an attribute name"));
    }
    let filters = pieces
        .map(|f| {
            Filter::parse(f)
                .ok_or_else(|| format!("unknown filter `{f}` (known: {})", Filter::NAMES))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Field {
        attr: name.to_string(),
        optional,
        filters,
    })
}

/// Folds whitespace runs, drops empty bracket pairs left by optional fields, trims.
fn tidy(text: String) -> String {
    const EMPTY: [&str; 4] = ["[]", "()", "[ ]", "( )"];
    let mut s = fold_whitespace(text);
    // One pass over the bytes: four substring searches cost more than the rendering.
    let bytes = s.as_bytes();
    let has_empty = bytes.windows(2).any(|w| matches!(w, b"[]" | b"()"))
        || bytes.windows(3).any(|w| matches!(w, b"[ ]" | b"( )"));
    if has_empty {
        for empty in EMPTY {
            s = s.replace(empty, "");
        }
        s = fold_whitespace(s);
    }
    s
}

/// Whitespace runs become one space; none at either end. Most values need nothing done (and
/// are given back as they are).
fn fold_whitespace(text: String) -> String {
    let mut previous_space = true;
    let folded = text.chars().all(|c| {
        let ok = !c.is_whitespace() || (c == ' ' && !previous_space);
        previous_space = c == ' ';
        ok
    }) && !previous_space;
    if folded || text.is_empty() {
        return text;
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::StableId;

    fn entry(attrs: &[(&str, &[&str])]) -> Entry {
        Entry {
            dn: "uid=x,ou=people,dc=example,dc=org".into(),
            id: StableId("id".into()),
            attrs: attrs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.iter().map(|s| s.to_string()).collect(),
                    )
                })
                .collect(),
            binary: Default::default(),
        }
    }

    #[test]
    fn tidy_folds_whitespace_and_drops_empty_brackets() {
        let cases = [
            ("Jean Martin [DSI]", "Jean Martin [DSI]"),
            ("  Jean\tMartin  ", "Jean Martin"),
            ("Jean\u{a0}Martin", "Jean Martin"),
            ("Jean Martin []", "Jean Martin"),
            ("Jean ( ) Martin [ ]", "Jean Martin"),
            ("([])", ""),
            (" ", ""),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(tidy(text.to_string()), want, "{text:?}");
        }
    }

    #[test]
    fn renders_with_filters_and_optional_fields() {
        let e = entry(&[
            ("givenName", &["Élodie"]),
            ("sn", &["Dupré"]),
            ("mail", &["e.dupre@example.org"]),
        ]);
        let cases = [
            ("{givenName|ascii|lower}.{sn|ascii|lower}", "elodie.dupre"),
            ("{givenName} {sn} [{ou?}]", "Élodie Dupré"),
            ("{givenName} {sn} ({ou?|upper})", "Élodie Dupré"),
            ("{mail|email_local|localpart}", "e.dupre"),
            ("{GIVENNAME|upper}", "ÉLODIE"),
        ];
        for (src, want) in cases {
            assert_eq!(
                Template::parse(src).unwrap().render(&e).unwrap(),
                want,
                "{src}"
            );
        }
        let with_ou = entry(&[
            ("givenName", &["Jean"]),
            ("sn", &["Martin"]),
            ("ou", &["DSI", "RH"]),
        ]);
        assert_eq!(
            Template::parse("{givenName} {sn} [{ou?}]")
                .unwrap()
                .render(&with_ou)
                .unwrap(),
            "Jean Martin [DSI]"
        );
    }

    #[test]
    fn missing_required_attribute_is_named() {
        let e = entry(&[("givenName", &["Jean"]), ("sn", &["  "])]);
        let t = Template::parse("{givenName}.{sn}").unwrap();
        assert_eq!(t.render(&e), Err(MissingAttribute("sn".into())));
    }

    #[test]
    fn render_all_expands_a_lone_field_over_values() {
        let e = entry(&[("mail", &["a@x.org", "b@x.org"])]);
        assert_eq!(
            Template::parse("{mail}").unwrap().render_all(&e).unwrap(),
            vec!["a@x.org", "b@x.org"]
        );
        assert_eq!(
            Template::parse("{uid?}").unwrap().render_all(&e).unwrap(),
            Vec::<String>::new()
        );
        assert!(Template::parse("{uid}").unwrap().render_all(&e).is_err());
    }

    #[test]
    fn parse_errors_say_where() {
        let cases = [
            ("{givenName", 1, "never closed"),
            ("a}b", 2, "without"),
            ("x{sn|shout}", 3, "unknown filter `shout`"),
            ("{}", 2, "not an attribute name"),
            ("plain", 1, "names no attribute"),
            ("{a{b}", 3, "inside a field"),
        ];
        for (src, column, msg) in cases {
            let err = Template::parse(src).unwrap_err();
            assert_eq!(err.column, column, "{src}: {err}");
            assert!(err.message.contains(msg), "{src}: {err}");
        }
    }

    #[test]
    fn attributes_lists_every_field() {
        let t = Template::parse("{givenName} {sn} [{ou?}]").unwrap();
        assert_eq!(
            t.attributes().collect::<Vec<_>>(),
            vec!["givenName", "sn", "ou"]
        );
    }
}
