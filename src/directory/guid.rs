//! Active Directory `objectGUID`: 16 bytes on the wire, shown by AD tools in a mixed-endian
//! string form (the first three groups little-endian, the last two as stored).

/// The AD canonical string form of a binary `objectGUID`: lowercase `8-4-4-4-12` hex, the
/// first three groups byte-swapped (little-endian). `None` unless exactly 16 bytes.
///
/// Bytes `90 39 5f 19 1a b5 1b 4a 9e 9c f4 be 59 16 d8 94` become
/// `195f3990-b51a-4a1b-9e9c-f4be5916d894`.
pub fn guid_to_string(bytes: &[u8]) -> Option<String> {
    let b: &[u8; 16] = bytes.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    ))
}

/// The inverse of [`guid_to_string`]: the 16 wire bytes of a GUID string (either case, with or
/// without braces). Useful to build `(objectGUID=\xx...)` filters.
pub fn guid_to_bytes(text: &str) -> Option<[u8; 16]> {
    let text = text.trim();
    let text = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let groups: Vec<&str> = text.split('-').collect();
    if groups.len() != 5
        || groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .any(|(g, len)| g.len() != len || !g.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    let hex: String = groups.concat();
    let mut raw = [0u8; 16];
    for (i, out) in raw.iter_mut().enumerate() {
        *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    // Swap the first three groups back to little-endian.
    raw[0..4].reverse();
    raw[4..6].reverse();
    raw[6..8].reverse();
    Some(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // The objectGUID of an AD object as `ldapsearch` shows it base64 (kQ... form converted
    // to hex) and as AD tools (`Get-ADUser`, `[guid]`) print it.
    const BYTES: [u8; 16] = [
        0x90, 0x39, 0x5f, 0x19, 0x1a, 0xb5, 0x1b, 0x4a, 0x9e, 0x9c, 0xf4, 0xbe, 0x59, 0x16, 0xd8,
        0x94,
    ];
    const TEXT: &str = "195f3990-b51a-4a1b-9e9c-f4be5916d894";

    #[test]
    fn bytes_to_ad_string() {
        assert_eq!(guid_to_string(&BYTES).as_deref(), Some(TEXT));
    }

    #[test]
    fn ad_string_to_bytes() {
        assert_eq!(guid_to_bytes(TEXT), Some(BYTES));
        assert_eq!(
            guid_to_bytes("{195F3990-B51A-4A1B-9E9C-F4BE5916D894}"),
            Some(BYTES)
        );
    }

    #[test]
    fn round_trip_counting_bytes() {
        let bytes: Vec<u8> = (0u8..16).collect();
        let text = guid_to_string(&bytes).unwrap();
        assert_eq!(text, "03020100-0504-0706-0809-0a0b0c0d0e0f");
        assert_eq!(guid_to_bytes(&text).unwrap().to_vec(), bytes);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        assert_eq!(guid_to_string(&[]), None);
        assert_eq!(guid_to_string(&BYTES[..15]), None);
        assert_eq!(guid_to_string(&[0u8; 17]), None);
        assert_eq!(guid_to_bytes("195f3990-b51a-4a1b-9e9c-f4be5916d89"), None);
        assert_eq!(guid_to_bytes("195f3990b51a4a1b9e9cf4be5916d894"), None);
        assert_eq!(guid_to_bytes("195f3990-b51a-4a1b-9e9c-f4be5916d89g"), None);
    }
}
