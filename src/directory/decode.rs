//! Decoding a search result entry from its BER structure.
//!
//! ldap3's `SearchEntry::construct` copies every value and panics on a malformed entry; this
//! moves the bytes it was given into the values and says `None` instead. Same result: an
//! attribute goes to `attrs` when all its values are UTF-8, else (all of them) to `bin_attrs`.

use std::collections::HashMap;

use ldap3::asn1::{StructureTag, PL};
use ldap3::SearchEntry;

/// The application tag of a SearchResultEntry (RFC 4511 §4.5.2).
const SEARCH_RESULT_ENTRY: u64 = 4;

/// The entry (a `ResultEntry`'s tag), or `None` if it is not a well-formed SearchResultEntry.
pub(super) fn search_entry(tag: StructureTag) -> Option<SearchEntry> {
    let mut parts = constructed(tag.match_id(SEARCH_RESULT_ENTRY)?)?.into_iter();
    let dn = text(parts.next()?)?;
    let attributes = constructed(parts.next()?)?;
    let mut attrs: HashMap<String, Vec<String>> = HashMap::with_capacity(attributes.len());
    let mut bin_attrs: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for attribute in attributes {
        let mut attribute = constructed(attribute)?.into_iter();
        let name = text(attribute.next()?)?;
        let raw = constructed(attribute.next()?)?
            .into_iter()
            .map(primitive)
            .collect::<Option<Vec<Vec<u8>>>>()?;
        if raw.iter().all(|v| std::str::from_utf8(v).is_ok()) {
            let values = raw.into_iter().filter_map(|v| String::from_utf8(v).ok());
            attrs.entry(name).or_default().extend(values);
        } else {
            bin_attrs.entry(name).or_default().extend(raw);
        }
    }
    Some(SearchEntry {
        dn,
        attrs,
        bin_attrs,
    })
}

fn constructed(tag: StructureTag) -> Option<Vec<StructureTag>> {
    match tag.payload {
        PL::C(inner) => Some(inner),
        PL::P(_) => None,
    }
}

fn primitive(tag: StructureTag) -> Option<Vec<u8>> {
    match tag.payload {
        PL::P(bytes) => Some(bytes),
        PL::C(_) => None,
    }
}

fn text(tag: StructureTag) -> Option<String> {
    String::from_utf8(primitive(tag)?).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ldap3::asn1::{ASNTag, OctetString, Sequence, Set, Tag, TagClass};

    use super::*;

    fn octets(bytes: &[u8]) -> Tag {
        Tag::OctetString(OctetString {
            inner: bytes.to_vec(),
            ..Default::default()
        })
    }

    fn entry(dn: &[u8], attributes: &[(&[u8], &[&[u8]])]) -> StructureTag {
        let attributes = attributes
            .iter()
            .map(|(name, values)| {
                Tag::Sequence(Sequence {
                    inner: vec![
                        octets(name),
                        Tag::Set(Set {
                            inner: values.iter().map(|v| octets(v)).collect(),
                            ..Default::default()
                        }),
                    ],
                    ..Default::default()
                })
            })
            .collect();
        let tag = Tag::Sequence(Sequence {
            id: SEARCH_RESULT_ENTRY,
            class: TagClass::Application,
            inner: vec![
                octets(dn),
                Tag::Sequence(Sequence {
                    inner: attributes,
                    ..Default::default()
                }),
            ],
        });
        tag.into_structure()
    }

    #[test]
    fn text_and_binary_values_as_ldap3_sorts_them() {
        let se = search_entry(entry(
            b"uid=a,dc=example,dc=org",
            &[
                (b"cn", &[b"Agent", "Élodie".as_bytes()]),
                (b"objectGUID", &[&[0x90, 0xff, 0x01]]),
                // One value that is not UTF-8 sends them all to the binary side.
                (b"mixed", &[b"text", &[0xc3, 0x28]]),
            ],
        ))
        .unwrap();
        assert_eq!(se.dn, "uid=a,dc=example,dc=org");
        assert_eq!(se.attrs["cn"], vec!["Agent", "Élodie"]);
        assert_eq!(se.bin_attrs["objectGUID"], vec![vec![0x90, 0xff, 0x01]]);
        assert_eq!(
            se.bin_attrs["mixed"],
            vec![b"text".to_vec(), vec![0xc3, 0x28]]
        );
        assert!(!se.attrs.contains_key("mixed"));
    }

    #[test]
    fn malformed_entries_are_refused_not_panicked_on() {
        assert!(search_entry(entry(&[0xff], &[])).is_none(), "DN not UTF-8");
        let other = Tag::Sequence(Sequence {
            id: 5,
            class: TagClass::Application,
            inner: vec![],
        })
        .into_structure();
        assert!(search_entry(other).is_none(), "not a SearchResultEntry");
        let no_attributes = Tag::Sequence(Sequence {
            id: SEARCH_RESULT_ENTRY,
            class: TagClass::Application,
            inner: vec![octets(b"dc=org")],
        })
        .into_structure();
        assert!(search_entry(no_attributes).is_none());
        let primitive_value_set = Tag::Sequence(Sequence {
            id: SEARCH_RESULT_ENTRY,
            class: TagClass::Application,
            inner: vec![
                octets(b"dc=org"),
                Tag::Sequence(Sequence {
                    inner: vec![Tag::Sequence(Sequence {
                        inner: vec![octets(b"cn"), octets(b"not a set")],
                        ..Default::default()
                    })],
                    ..Default::default()
                }),
            ],
        })
        .into_structure();
        assert!(search_entry(primitive_value_set).is_none());
    }
}
