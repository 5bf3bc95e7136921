//! The homeserver side: a [`Homeserver`] trait, and its Synapse admin API client.
//! It knows nothing of LDAP.

use std::future::Future;

use serde::{Deserialize, Serialize};

pub mod breaker;
pub mod retry;
pub mod rooms;
pub mod synapse;

pub use breaker::{Breaker, Halt, Liveness};
pub use retry::Backoff;
pub use rooms::{NewRoom, RoomState, Rooms};
pub use synapse::SynapseClient;

/// An account as the homeserver reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteUser {
    pub mxid: String,
    pub displayname: Option<String>,
    /// E-mail addresses (threepids of medium `email`), as Synapse stores them: lowercased.
    /// Always empty in [`Homeserver::list_users`] results (Synapse's list does not report
    /// threepids); [`Homeserver::get_user`] gives them.
    pub emails: Vec<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub locked: bool,
    /// Only [`Homeserver::get_user`] reports it; `false` in list results.
    #[serde(default)]
    pub suspended: bool,
    /// The ids SSO providers know the account by. Only [`Homeserver::get_user`] reports
    /// them; empty in list results.
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
}

/// An id an SSO provider knows an account by: at a login through `auth_provider` whose
/// subject is `external_id`, Synapse logs the user in to the account that holds the pair.
/// Synapse names an OIDC provider `oidc-<idp_id>` (`oidc` for the legacy single provider).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExternalId {
    pub auth_provider: String,
    pub external_id: String,
}

impl std::fmt::Display for ExternalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.auth_provider, self.external_id)
    }
}

/// What to set on an account. `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UserChanges {
    pub displayname: Option<String>,
    /// Replaces the account's e-mail threepids with exactly these.
    pub emails: Option<Vec<String>>,
    /// Replaces the account's external ids (of every provider) with exactly these.
    pub external_ids: Option<Vec<ExternalId>>,
}

/// Whether a PUT created the account or changed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Created,
    Updated,
}

/// A homeserver request that failed for good (after the retries the client allows).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HomeserverError {
    /// The homeserver answered with an error status.
    #[error("{method} {endpoint}: HTTP {status}{}: {message}", errcode.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        method: String,
        endpoint: String,
        status: u16,
        errcode: Option<String>,
        message: String,
    },
    /// No usable answer: connection refused or cut, timeout, TLS failure.
    #[error("{method} {endpoint}: {message}")]
    Transport {
        method: String,
        endpoint: String,
        message: String,
    },
    /// An answer that is not what the API documents.
    #[error("{method} {endpoint}: unexpected reply: {message}")]
    BadReply {
        method: String,
        endpoint: String,
        message: String,
    },
    /// The client could not be set up from its config (never a network problem).
    #[error("homeserver client: {message}")]
    Config { message: String },
    /// The client stopped sending (see [`Halt`]): the request was not sent, or its answer
    /// or retry was no longer awaited. One message for every request it stops.
    #[error("{halt}")]
    Halted {
        halt: Halt,
        /// When the request had been sent and got no answer: what happened to it (the
        /// homeserver may have done it; the next run finds out).
        unanswered: Option<String>,
    },
}

impl HomeserverError {
    /// True when the homeserver refused this one request for good (a 4xx other than
    /// 401/403, 408 and 429): asking the same again would be refused again, but other
    /// requests are not concerned. A 404 on a room or user endpoint is one too.
    pub fn is_refusal(&self) -> bool {
        matches!(self, HomeserverError::Status { status, .. }
            if (400..500).contains(status) && !matches!(status, 401 | 403 | 408 | 429))
    }

    /// True when the client stopped sending: the breaker opened or the run's deadline passed.
    pub fn is_halt(&self) -> bool {
        matches!(self, HomeserverError::Halted { .. })
    }

    /// True for an HTTP 401/403: the token is wrong or not an admin's.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            HomeserverError::Status {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// The operations the sync needs from a homeserver. Implementations bound their own
/// concurrency and retry 429s / 5xx / transport errors before returning an error.
pub trait Homeserver: Send + Sync {
    /// The client's circuit breaker: a run resets it when it starts, halts it at its deadline,
    /// and reads why the client stopped.
    fn breaker(&self) -> &Breaker;

    /// The mxid the access token belongs to (`GET /_matrix/client/v3/account/whoami`).
    fn whoami(&self) -> impl Future<Output = Result<String, HomeserverError>> + Send;

    /// Proves the token can use the admin API (e.g. `GET /_synapse/admin/v1/server_version`
    /// plus an admin-only read); returns the server's version string.
    fn check_admin(&self) -> impl Future<Output = Result<String, HomeserverError>> + Send;

    /// One account, or `None` if the homeserver has no such user.
    fn get_user(
        &self,
        mxid: &str,
    ) -> impl Future<Output = Result<Option<RemoteUser>, HomeserverError>> + Send;

    /// Creates the account (without a password) or updates it.
    fn upsert_user(
        &self,
        mxid: &str,
        changes: &UserChanges,
    ) -> impl Future<Output = Result<Upserted, HomeserverError>> + Send;

    /// The account an SSO provider's id is bound to, or `None` if no account holds it
    /// (`GET /_synapse/admin/v1/auth_providers/<provider>/users/<id>`).
    fn user_by_external_id(
        &self,
        id: &ExternalId,
    ) -> impl Future<Output = Result<Option<String>, HomeserverError>> + Send;

    /// Every local account, deactivated and locked ones included (paginated). `emails` is
    /// empty in what it returns: see [`RemoteUser::emails`].
    fn list_users(&self) -> impl Future<Output = Result<Vec<RemoteUser>, HomeserverError>> + Send;

    /// Every local account as [`Homeserver::list_users`] gives it, but only if reading the
    /// whole list costs the homeserver less than `lookups` [`Homeserver::get_user`] calls;
    /// `None` otherwise. For a large batch of creations, one listing answers "does it exist?"
    /// for all of them.
    fn list_users_if_cheaper(
        &self,
        lookups: usize,
    ) -> impl Future<Output = Result<Option<Vec<RemoteUser>>, HomeserverError>> + Send;

    /// Suspends (`true`) or unsuspends an account. A suspended user can still log in and
    /// read, but not send: reversible.
    fn set_suspended(
        &self,
        mxid: &str,
        suspended: bool,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;

    /// Locks (`true`) or unlocks an account. A locked user cannot use the account: reversible.
    fn set_locked(
        &self,
        mxid: &str,
        locked: bool,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;

    /// Logs out every device (access token) of the account; returns how many there were.
    fn logout_devices(
        &self,
        mxid: &str,
    ) -> impl Future<Output = Result<usize, HomeserverError>> + Send;

    /// Deactivates the account: it leaves its rooms and loses its e-mails; with `erase`, its
    /// messages are hidden from future members too. The mxid is never given to anyone else.
    fn deactivate(
        &self,
        mxid: &str,
        erase: bool,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;

    /// Reactivates a deactivated account (same mxid). It gets no usable password: people log
    /// in through SSO. Rooms and e-mails are not restored by the homeserver.
    fn reactivate(&self, mxid: &str) -> impl Future<Output = Result<(), HomeserverError>> + Send;
}
