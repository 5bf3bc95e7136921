//! What can go wrong while reading the directory, said so an admin knows where and what to fix.
//!
//! Every variant names the server URL and the step. The bind password is never part of an
//! error (it is not even passed in here).

use std::path::PathBuf;
use std::time::Duration;

use super::server::ServerKind;

/// A directory read that did not produce a complete [`super::Snapshot`].
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The TCP connection could not be opened (refused, unreachable, DNS).
    #[error("cannot connect to {url}: {cause}")]
    Connect { url: String, cause: String },

    /// The TLS handshake (LDAPS or StartTLS) failed, e.g. an untrusted or wrong-name certificate.
    #[error("TLS with {url} failed: {reason}")]
    Tls { url: String, reason: String },

    /// The CA file (`directory.ca_file`) or the system roots could not be used.
    #[error("cannot use the CA certificates {}: {reason}", source_name(.path))]
    CaCertificates {
        path: Option<PathBuf>,
        reason: String,
    },

    /// The server answered the simple bind with an error result code.
    #[error("bind to {url} as `{dn}` failed: {}", bind_explanation(*.code, .dn, .text))]
    Bind {
        url: String,
        dn: String,
        code: u32,
        text: String,
    },

    /// A search (one page of it) ended with a result code other than success.
    #[error(
        "search of base `{base}` with filter `{filter}` on {url} failed: {}",
        search_explanation(*.code, .base, .text, .matched, .referrals, *.kind)
    )]
    Search {
        url: String,
        /// What the server is, for advice that fits it.
        kind: ServerKind,
        base: String,
        filter: String,
        code: u32,
        text: String,
        /// The part of the base DN the server found (for noSuchObject).
        matched: String,
        /// Referral URLs sent with a referral result (never followed).
        referrals: Vec<String>,
    },

    /// The filter is not valid LDAP filter syntax.
    #[error("the agent filter `{filter}` is not a valid LDAP filter")]
    InvalidFilter { filter: String },

    /// The server did not answer one operation in time (a hung or paused server).
    #[error("{url} did not answer within {}s while {operation}", .after.as_secs_f32())]
    Timeout {
        url: String,
        operation: String,
        after: Duration,
    },

    /// The connection dropped (or the client lost it) during an operation.
    #[error("connection to {url} lost while {operation}: {cause}")]
    ConnectionLost {
        url: String,
        operation: String,
        cause: String,
    },

    /// The server sent something this client could not decode or did not expect.
    #[error("LDAP protocol error with {url} while {operation}: {cause}")]
    Protocol {
        url: String,
        operation: String,
        cause: String,
    },

    /// A group's members could not all be read (e.g. AD ranged retrieval that stopped short):
    /// the run stops, since a group read in part would look like departures.
    #[error("the members of group `{group}` on {url} could not all be read: {reason}")]
    IncompleteGroup {
        url: String,
        group: String,
        reason: String,
    },

    /// Every configured URL was tried and none could be used.
    #[error("no directory server could be used: {}", join_failures(.failures))]
    AllServersFailed { failures: Vec<DirectoryError> },

    /// The configuration cannot be used (no URL, no base).
    #[error("directory configuration: {0}")]
    Config(String),
}

impl DirectoryError {
    /// The LDAP result code, when the server sent one.
    pub fn result_code(&self) -> Option<u32> {
        match self {
            DirectoryError::Bind { code, .. } | DirectoryError::Search { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether another server of the list may do better (network, TLS, busy/unavailable),
    /// as opposed to a problem every replica would have (wrong password, bad base DN).
    pub(crate) fn worth_failover(&self) -> bool {
        match self {
            DirectoryError::Connect { .. }
            | DirectoryError::Tls { .. }
            | DirectoryError::Timeout { .. }
            | DirectoryError::ConnectionLost { .. }
            | DirectoryError::Protocol { .. } => true,
            DirectoryError::Bind { code, .. } => matches!(code, 51 | 52),
            _ => false,
        }
    }
}

fn source_name(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("from {}", p.display()),
        None => "of the system".to_string(),
    }
}

fn join_failures(failures: &[DirectoryError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The RFC 4511 name of an LDAP result code.
pub fn result_code_name(code: u32) -> &'static str {
    match code {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        14 => "saslBindInProgress",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        80 => "other",
        _ => "unknown result code",
    }
}

fn code_and_text(code: u32, text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        format!("LDAP result {code} {}", result_code_name(code))
    } else {
        format!("LDAP result {code} {}: {text}", result_code_name(code))
    }
}

/// Active Directory puts the real reason of a failed bind in `data <hex>` of the text.
fn ad_bind_reason(text: &str) -> Option<&'static str> {
    let lower = text.to_ascii_lowercase();
    let data = lower.split("data ").nth(1)?;
    let code = data.split([',', ' ']).next()?;
    Some(match code {
        "525" => "the user does not exist",
        "52e" => "wrong password",
        "530" => "logon not permitted at this time",
        "531" => "logon not permitted from this workstation",
        "532" => "the password has expired",
        "533" => "the account is disabled (or expired)",
        "701" => "the account has expired",
        "773" => "the password must be reset",
        "775" => "the account is locked out",
        _ => return None,
    })
}

fn bind_explanation(code: u32, dn: &str, text: &str) -> String {
    let detail = code_and_text(code, text);
    match code {
        49 => match ad_bind_reason(text) {
            Some(reason) => format!("invalid credentials for {dn}: {reason} ({detail})"),
            None => format!("invalid credentials for {dn} ({detail})"),
        },
        8 | 13 => format!(
            "the server requires an encrypted connection for simple binds ({detail}): \
             use an ldaps:// URL or set `directory.starttls = true`"
        ),
        48 | 53 if text.trim().is_empty() => format!(
            "the server refused the bind ({detail}): check that `directory.bind_dn` and \
             the password are both set"
        ),
        _ => detail,
    }
}

fn search_explanation(
    code: u32,
    base: &str,
    text: &str,
    matched: &str,
    referrals: &[String],
    kind: ServerKind,
) -> String {
    let detail = code_and_text(code, text);
    match code {
        4 => format!(
            "the server stopped at its size limit ({detail}); no partial list is used: {}",
            kind.size_limit_advice()
        ),
        3 => format!(
            "the server stopped at its time limit ({detail}); no partial list is used: \
             raise the server's time limit for the bind account"
        ),
        10 => {
            let to = if referrals.is_empty() {
                String::from("another server")
            } else {
                referrals.join(", ")
            };
            format!(
                "the server referred the search to {to} ({detail}); referrals are not \
                 followed: point `directory.urls` at a server holding `{base}`"
            )
        }
        32 => {
            let found = if matched.trim().is_empty() {
                String::new()
            } else {
                format!(" (the server only found `{matched}`)")
            };
            format!(
                "the base DN `{base}` does not exist on this server{found} ({detail}): \
                 check `directory.base_dns`"
            )
        }
        34 => format!("the base DN `{base}` is not a valid DN ({detail})"),
        50 => format!("the bind account may not search `{base}` ({detail})"),
        11 => format!(
            "the server's administrative limit was exceeded ({detail}); no partial list is \
             used: {}",
            kind.admin_limit_advice()
        ),
        _ => detail,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn bind(code: u32, text: &str) -> DirectoryError {
        DirectoryError::Bind {
            url: "ldap://dc1.example.org".into(),
            dn: "cn=sync,dc=example,dc=org".into(),
            code,
            text: text.into(),
        }
    }

    fn search(code: u32, matched: &str, referrals: Vec<String>) -> DirectoryError {
        search_on(ServerKind::Other, code, matched, referrals)
    }

    fn search_on(
        kind: ServerKind,
        code: u32,
        matched: &str,
        referrals: Vec<String>,
    ) -> DirectoryError {
        DirectoryError::Search {
            kind,
            url: "ldap://dc1.example.org".into(),
            base: "ou=people,dc=example,dc=org".into(),
            filter: "(objectClass=inetOrgPerson)".into(),
            code,
            text: String::new(),
            matched: matched.into(),
            referrals,
        }
    }

    #[test]
    fn invalid_credentials_name_the_dn() {
        let msg = bind(49, "").to_string();
        assert!(
            msg.contains("invalid credentials for cn=sync,dc=example,dc=org"),
            "{msg}"
        );
        assert!(msg.contains("ldap://dc1.example.org"), "{msg}");
        assert!(msg.contains("49"), "{msg}");
    }

    #[test]
    fn ad_data_code_is_explained() {
        let msg = bind(
            49,
            "80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data 533, v4563",
        )
        .to_string();
        assert!(msg.contains("account is disabled"), "{msg}");
    }

    #[test]
    fn strong_auth_required_says_use_tls() {
        let msg = bind(8, "BindSimple: Transport encryption required.").to_string();
        assert!(msg.contains("ldaps://"), "{msg}");
        assert!(msg.contains("starttls"), "{msg}");
        assert!(msg.contains("Transport encryption required"), "{msg}");
    }

    #[test]
    fn search_errors_name_base_filter_and_code() {
        let msg = search(4, "", vec![]).to_string();
        assert!(msg.contains("ou=people,dc=example,dc=org"), "{msg}");
        assert!(msg.contains("(objectClass=inetOrgPerson)"), "{msg}");
        assert!(msg.contains("sizeLimitExceeded"), "{msg}");
        assert!(msg.contains("no partial list"), "{msg}");

        let msg = search(32, "dc=example,dc=org", vec![]).to_string();
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(msg.contains("only found `dc=example,dc=org`"), "{msg}");

        let msg = search(10, "", vec!["ldap://other/dc=x".into()]).to_string();
        assert!(msg.contains("ldap://other/dc=x"), "{msg}");
        assert!(msg.contains("not followed"), "{msg}");

        assert!(search(3, "", vec![])
            .to_string()
            .contains("timeLimitExceeded"));
    }

    #[test]
    fn size_limit_advice_fits_the_server() {
        let ds389 = search_on(ServerKind::Ds389, 4, "", vec![]).to_string();
        assert!(ds389.contains("nsSizeLimit: -1"), "{ds389}");
        assert!(ds389.contains("directory.page_size"), "{ds389}");
        assert!(ds389.contains("nsslapd-sizelimit"), "{ds389}");
        assert!(!ds389.contains("MaxPageSize"), "{ds389}");
        let openldap = search_on(ServerKind::OpenLdap, 4, "", vec![]).to_string();
        assert!(openldap.contains("size=unlimited"), "{openldap}");
        assert!(!openldap.contains("nsSizeLimit"), "{openldap}");
        let ad = search_on(ServerKind::ActiveDirectory, 4, "", vec![]).to_string();
        assert!(ad.contains("MaxPageSize"), "{ad}");
        let lookthrough = search_on(ServerKind::Ds389, 11, "", vec![]).to_string();
        assert!(lookthrough.contains("nsLookThroughLimit"), "{lookthrough}");
    }

    #[test]
    fn timeout_names_the_operation() {
        let e = DirectoryError::Timeout {
            url: "ldap://127.0.0.1:3890".into(),
            operation: "reading page 3 of `dc=x`".into(),
            after: Duration::from_secs(2),
        };
        assert_eq!(
            e.to_string(),
            "ldap://127.0.0.1:3890 did not answer within 2s while reading page 3 of `dc=x`"
        );
    }

    #[test]
    fn failover_only_for_transport_problems() {
        assert!(!bind(49, "").worth_failover());
        assert!(bind(52, "").worth_failover());
        assert!(!search(32, "", vec![]).worth_failover());
        assert!(DirectoryError::Connect {
            url: "u".into(),
            cause: "refused".into()
        }
        .worth_failover());
    }
}
