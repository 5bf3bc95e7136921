//! Reading accounts as Synapse's admin API returns them, and the tests' clock (`--now` for
//! previews, `Daemon::run_at` for the commands that write).

use serde_json::Value;

pub const DAY: i64 = 86_400;
/// 2026-12-01T00:00:00Z: the tests' "today".
pub const T0: i64 = 1_796_083_200;

/// A Unix time as the RFC 3339 text `--now` (and the test clock) takes.
pub fn at(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A boolean flag of a user (`suspended`, `deactivated`, `locked`), whether Synapse sends it
/// as a boolean or as 0/1; absent is false.
pub fn flag(user: &Value, name: &str) -> bool {
    user[name]
        .as_bool()
        .or(user[name].as_i64().map(|n| n != 0))
        .unwrap_or(false)
}

/// The e-mail addresses of a user.
pub fn emails(user: &Value) -> Vec<String> {
    user["threepids"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["medium"] == "email")
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect()
}
