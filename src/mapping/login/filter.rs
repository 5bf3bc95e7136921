//! The `filter` synapse-ldap3 needs so that agents who left cannot log in.

use std::fmt::Write;

use crate::mapping::DepartureRules;

/// The `filter` synapse-ldap3 needs: the agent filter, without the agents the `[departure]`
/// attributes mark as disabled. The module adds it to its own search (`(&(uid=<login>)<filter>)`),
/// so a departed agent whose LDAP password still works finds no entry and cannot log in.
pub fn ldap3_filter(agent_filter: &str, departure: &DepartureRules) -> String {
    let mut filter = String::from("(&");
    filter.push_str(agent_filter);
    for signal in &departure.disabled {
        let attribute = &signal.attribute;
        if let Some(bits) = signal.bits {
            // Any of the bits set (LDAP_MATCHING_RULE_BIT_OR; AD and OpenLDAP know it).
            let _ = write!(filter, "(!({attribute}:1.2.840.113556.1.4.804:={bits}))");
        }
        for value in signal.values.iter().flatten() {
            let _ = write!(filter, "(!({attribute}={}))", escape_filter_value(value));
        }
    }
    filter.push(')');
    filter
}

/// RFC 4515 escaping of an assertion value.
fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}
