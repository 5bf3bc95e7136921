//! Turning one LDAP search entry into an [`Entry`] with its stable id, or a [`SkippedEntry`].

use std::collections::{btree_map, BTreeMap};

use ldap3::SearchEntry;

use super::guid::guid_to_string;
use super::snapshot::{Entry, SkippedEntry, StableId};
use super::{AgentQuery, IdFormat};

/// Attribute names lowercased; text values in `attrs`, non-UTF-8 ones in `binary`.
/// With [`IdFormat::Guid`] the id attribute always goes to `binary`, even when its 16 bytes
/// happen to be valid UTF-8 (ldap3 then returns it as text).
pub(crate) fn convert(se: SearchEntry, query: &AgentQuery) -> Result<Entry, SkippedEntry> {
    let id_attr = query.id_attribute.to_ascii_lowercase();
    let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, values) in se.attrs {
        add_values(&mut attrs, name, values);
    }
    let mut binary: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, values) in se.bin_attrs {
        add_values(&mut binary, name, values);
    }
    if matches!(query.id_format, IdFormat::Guid) {
        if let Some(values) = attrs.remove(&id_attr) {
            binary
                .entry(id_attr.clone())
                .or_default()
                .extend(values.into_iter().map(String::into_bytes));
        }
    }

    let skip = |reason: String| SkippedEntry {
        dn: se.dn.clone(),
        reason,
    };
    let id = match query.id_format {
        IdFormat::Text => match attrs.get(&id_attr).map(Vec::as_slice) {
            Some([value]) if !value.trim().is_empty() => value.trim().to_string(),
            Some([_]) | Some([]) => {
                return Err(skip(format!(
                    "the id attribute `{}` is empty",
                    query.id_attribute
                )))
            }
            Some(values) => {
                return Err(skip(format!(
                    "the id attribute `{}` has {} values, one expected",
                    query.id_attribute,
                    values.len()
                )))
            }
            None if binary.contains_key(&id_attr) => {
                return Err(skip(format!(
                    "the id attribute `{}` is binary, not text (for an AD objectGUID use the \
                     GUID id format)",
                    query.id_attribute
                )))
            }
            None => {
                return Err(skip(format!(
                    "no `{}` attribute (the stable id): not readable by the bind account?",
                    query.id_attribute
                )))
            }
        },
        IdFormat::Guid => match binary.get(&id_attr).map(Vec::as_slice) {
            Some([value]) => match guid_to_string(value) {
                Some(text) => text,
                None => {
                    return Err(skip(format!(
                        "the id attribute `{}` has {} bytes, a GUID has 16",
                        query.id_attribute,
                        value.len()
                    )))
                }
            },
            Some(values) => {
                return Err(skip(format!(
                    "the id attribute `{}` has {} values, one expected",
                    query.id_attribute,
                    values.len()
                )))
            }
            None => {
                return Err(skip(format!(
                    "no `{}` attribute (the stable id): not readable by the bind account?",
                    query.id_attribute
                )))
            }
        },
    };
    Ok(Entry {
        dn: se.dn,
        id: StableId(id),
        attrs,
        binary,
    })
}

/// Adds `values` under `name` lowercased, moving them (this runs for every attribute read).
fn add_values<T>(map: &mut BTreeMap<String, Vec<T>>, mut name: String, values: Vec<T>) {
    name.make_ascii_lowercase();
    match map.entry(name) {
        btree_map::Entry::Vacant(slot) => {
            slot.insert(values);
        }
        btree_map::Entry::Occupied(mut slot) => slot.get_mut().extend(values),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn query(id: &str, format: IdFormat) -> AgentQuery {
        AgentQuery {
            filter: "(objectClass=*)".into(),
            attributes: vec![],
            id_attribute: id.into(),
            id_format: format,
        }
    }

    fn search_entry(attrs: &[(&str, &[&str])], bin: &[(&str, &[&[u8]])]) -> SearchEntry {
        SearchEntry {
            dn: "uid=a,ou=people,dc=example,dc=org".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect::<HashMap<_, _>>(),
            bin_attrs: bin
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|b| b.to_vec()).collect()))
                .collect::<HashMap<_, _>>(),
        }
    }

    #[test]
    fn text_id_any_case_and_lowercased_names() {
        let se = search_entry(
            &[
                ("entryUUID", &["1b6a6f2e-1d1c-103f-9d8a-7b3c1c6f5a11"]),
                ("displayName", &["Élodie Ŝmith"]),
                ("mail", &["a@example.org", "b@example.org"]),
            ],
            &[("jpegPhoto", &[&[0xff, 0xd8, 0xff]])],
        );
        let e = convert(se, &query("ENTRYUUID", IdFormat::Text)).unwrap();
        assert_eq!(e.id.0, "1b6a6f2e-1d1c-103f-9d8a-7b3c1c6f5a11");
        assert_eq!(e.first("displayname"), Some("Élodie Ŝmith"));
        assert_eq!(e.values("mail").len(), 2);
        assert!(e.attrs.contains_key("entryuuid"));
        assert_eq!(e.binary["jpegphoto"], vec![vec![0xff, 0xd8, 0xff]]);
    }

    #[test]
    fn missing_or_multiple_text_ids_are_skipped() {
        let se = search_entry(&[("cn", &["x"])], &[]);
        let s = convert(se, &query("entryUUID", IdFormat::Text)).unwrap_err();
        assert_eq!(s.dn, "uid=a,ou=people,dc=example,dc=org");
        assert!(s.reason.contains("no `entryUUID`"), "{}", s.reason);

        let se = search_entry(&[("entryUUID", &["a", "b"])], &[]);
        let s = convert(se, &query("entryUUID", IdFormat::Text)).unwrap_err();
        assert!(s.reason.contains("2 values"), "{}", s.reason);

        let se = search_entry(&[("entryUUID", &[" "])], &[]);
        let s = convert(se, &query("entryUUID", IdFormat::Text)).unwrap_err();
        assert!(s.reason.contains("empty"), "{}", s.reason);
    }

    #[test]
    fn binary_guid_becomes_ad_string() {
        let guid: &[u8] = &[
            0x90, 0x39, 0x5f, 0x19, 0x1a, 0xb5, 0x1b, 0x4a, 0x9e, 0x9c, 0xf4, 0xbe, 0x59, 0x16,
            0xd8, 0x94,
        ];
        let se = search_entry(
            &[("sAMAccountName", &["alice"])],
            &[("objectGUID", &[guid])],
        );
        let e = convert(se, &query("objectGUID", IdFormat::Guid)).unwrap();
        assert_eq!(e.id.0, "195f3990-b51a-4a1b-9e9c-f4be5916d894");
        assert_eq!(e.first("samaccountname"), Some("alice"));
    }

    #[test]
    fn guid_that_is_valid_utf8_still_works() {
        // 16 ASCII bytes: ldap3 returns these as a text value.
        let se = search_entry(&[("objectGUID", &["ABCDEFGHIJKLMNOP"])], &[]);
        let e = convert(se, &query("objectguid", IdFormat::Guid)).unwrap();
        assert_eq!(e.id.0, "44434241-4645-4847-494a-4b4c4d4e4f50");
        assert!(!e.attrs.contains_key("objectguid"));
        assert_eq!(e.binary["objectguid"][0], b"ABCDEFGHIJKLMNOP".to_vec());
    }

    #[test]
    fn bad_guid_is_skipped() {
        let se = search_entry(&[], &[("objectGUID", &[&[1, 2, 3]])]);
        let s = convert(se, &query("objectGUID", IdFormat::Guid)).unwrap_err();
        assert!(s.reason.contains("3 bytes"), "{}", s.reason);
        let se = search_entry(&[("cn", &["x"])], &[]);
        let s = convert(se, &query("objectGUID", IdFormat::Guid)).unwrap_err();
        assert!(s.reason.contains("no `objectGUID`"), "{}", s.reason);
    }
}
