//! Synapse admin API client.
//!
//! Every request goes through [`SynapseClient::send`], the one place that bounds concurrency
//! (a semaphore of `concurrency` permits, held for one attempt: sending, waiting and reading
//! the body, and released while waiting to retry) and retries:
//! - 429: waits `retry_after_ms` (body) or `Retry-After` (header), else a backoff;
//! - 5xx and transport failures (refused, reset, cut mid-answer, timed out): exponential
//!   backoff with jitter;
//! - any other status is final.
//!
//! A 429 also pauses the client's other requests for the time asked (Synapse rate-limits per
//! user, so they would be refused too).
//!
//! Retries are bounded by `max_retries` (so a request is sent at most `max_retries + 1`
//! times), and by time: a request that has been failing (no answer, 5xx) for `timeout` is not
//! sent again — retries ride out a blip, and a homeserver silent for longer is an outage, for
//! the [`Breaker`] to judge across requests. So a request that timed out is not retried: a
//! retry would only double the wait on a homeserver that does not answer, and the load on one
//! that is overloaded; the next run does it. The breaker opens when a few different requests
//! fail in a row: requests waiting for an answer or a retry then give up, and new ones fail at
//! once with [`HomeserverError::Halted`], unsent. Only requests that are safe to repeat are
//! sent: GET, PUT, and the few POSTs whose
//! repetition is harmless (joining a member, kicking, making the daemon room admin, creating a
//! room with an alias — a repeat finds the alias taken and the room is resolved instead;
//! see `rooms.rs`). One consequence: a PUT that created an account but whose answer was
//! lost is retried and then reports [`Upserted::Updated`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use serde::{Deserialize, Deserializer};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use url::Url;

use super::breaker::{Breaker, Halt, Ticket};
use super::retry::{self, Backoff, Verdict};
use super::{ExternalId, Homeserver, HomeserverError, RemoteUser, Upserted, UserChanges};
use crate::config::HomeserverConfig;

mod rooms;

/// Characters left as they are in a path segment: RFC 3986 "unreserved". Everything else in
/// an mxid (`@`, `:`, `/`, `?`, `#`, `%`, non-ASCII...) is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Users per page when listing accounts.
const DEFAULT_PAGE_SIZE: u32 = 500;

/// Listing users costs Synapse about one single-user GET per 12 users listed (a page of 500:
/// ~55 ms of CPU; a GET: ~1.5 ms; Synapse 1.163, SQLite), plus one per page.
const USERS_LISTED_PER_LOOKUP: u64 = 12;

/// Fewer lookups than this are never replaced by a listing (not even counted): where a
/// listing would pay for so few, the homeserver is so small that it saves next to nothing.
const MIN_LOOKUPS_TO_LIST: u64 = 40;

/// Synapse admin API client. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct SynapseClient {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    in_flight: Semaphore,
    max_retries: u32,
    backoff: Backoff,
    page_size: u32,
    retries: AtomicU64,
    /// Set by a 429: no request of this client starts before then. Synapse rate-limits per
    /// user, so when one request is told to wait, all of the daemon's requests are.
    paused_until: Mutex<Option<Instant>>,
    breaker: Breaker,
}

/// The methods the client may send: idempotent ones only, since any request may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    /// Only for requests whose repetition does no harm (deactivate, delete devices, joins).
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
        }
    }
}

/// A request: where it goes and how it is named in logs and errors.
struct Request<'a> {
    method: Method,
    /// The path with the mxid as it is (readable), for logs and errors. No query, no token.
    endpoint: String,
    url: Url,
    body: Option<&'a serde_json::Value>,
}

/// A successful (2xx) answer.
struct Reply {
    status: u16,
    body: bytes::Bytes,
}

impl SynapseClient {
    /// A client for the homeserver at `cfg.url`, authenticating with `cfg.access_token`.
    /// Sends nothing; use [`Homeserver::check_admin`] to test the connection.
    pub fn new(cfg: &HomeserverConfig) -> Result<SynapseClient, HomeserverError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", cfg.access_token.expose()))
            .map_err(|_| HomeserverError::Config {
                message: "the access token contains characters not allowed in an HTTP header"
                    .to_string(),
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);

        let concurrency = cfg.concurrency.max(1);
        let http = reqwest::Client::builder()
            .user_agent(concat!("matrix-ldap-sync/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(concurrency)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(60))
            // The admin API does not redirect; following one could turn a PUT into a GET
            // (301/302) and report it as done. A 3xx is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HomeserverError::Config {
                message: format!("cannot build the HTTP client: {}", chain(&e)),
            })?;

        let mut base = cfg.url.clone();
        base.set_query(None);
        base.set_fragment(None);
        if base.cannot_be_a_base() {
            return Err(HomeserverError::Config {
                message: format!("`{}` cannot be a base URL", cfg.url),
            });
        }

        Ok(SynapseClient {
            http,
            base,
            timeout: cfg.timeout,
            in_flight: Semaphore::new(concurrency),
            max_retries: cfg.max_retries,
            backoff: Backoff::default(),
            page_size: DEFAULT_PAGE_SIZE,
            retries: AtomicU64::new(0),
            paused_until: Mutex::new(None),
            breaker: Breaker::new(cfg.url.as_str(), cfg.breaker_failures),
        })
    }

    /// Replaces the default backoff (250 ms doubling up to 30 s; 429 waits capped at 5 min).
    pub fn with_backoff(mut self, backoff: Backoff) -> SynapseClient {
        self.backoff = backoff;
        self
    }

    /// Users per page for [`Homeserver::list_users`] (default 500, at least 1).
    pub fn with_page_size(mut self, page_size: u32) -> SynapseClient {
        self.page_size = page_size.max(1);
        self
    }

    /// How many retries this client has made so far (all requests, all reasons).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A request to `path` (whose parts are already percent-encoded) with a query.
    fn request<'a>(
        &self,
        method: Method,
        endpoint: String,
        encoded_path: &str,
        query: &[(&str, &str)],
        body: Option<&'a serde_json::Value>,
    ) -> Request<'a> {
        let mut url = self.base.clone();
        let path = format!("{}{}", self.base.path().trim_end_matches('/'), encoded_path);
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Request {
            method,
            endpoint,
            url,
            body,
        }
    }

    /// `/_synapse/admin/v2/users/<mxid>`, as (readable endpoint, encoded path).
    fn user_path(mxid: &str) -> (String, String) {
        Self::admin_path("/_synapse/admin/v2/users/", mxid, "")
    }

    /// `<prefix><mxid><suffix>`, as (readable endpoint, path with the mxid encoded).
    fn admin_path(prefix: &str, mxid: &str, suffix: &str) -> (String, String) {
        let encoded = percent_encoding::utf8_percent_encode(mxid, SEGMENT);
        (
            format!("{prefix}{mxid}{suffix}"),
            format!("{prefix}{encoded}{suffix}"),
        )
    }

    /// Sends a JSON body to an admin endpoint about one user; the answer's body is not needed.
    async fn send_about_user(
        &self,
        method: Method,
        (endpoint, path): (String, String),
        body: &serde_json::Value,
    ) -> Result<(), HomeserverError> {
        let req = self.request(method, endpoint, &path, &[], Some(body));
        self.send(&req).await.map_err(explain_auth)?;
        Ok(())
    }

    /// Sends `req`, retrying as the module documentation says. Returns a 2xx answer, or the
    /// final error: [`HomeserverError::Status`] for any other status, `Transport` when no
    /// answer came, `Halted` when the client stopped sending.
    async fn send(&self, req: &Request<'_>) -> Result<Reply, HomeserverError> {
        let mut retry = 0u32;
        let mut ticket = Ticket::default();
        // When this request's first failed attempt since an answer began.
        let mut failing_since: Option<Instant> = None;
        loop {
            let began = Instant::now();
            let outcome = self.attempt(req).await;
            let failure = match &outcome {
                Attempt::Halted { .. } => return self.finish(req, outcome, retry),
                Attempt::Answer { status, .. } if *status < 500 => {
                    self.breaker.answered();
                    failing_since = None;
                    None
                }
                Attempt::Answer { status, .. } => Some(format!("HTTP {status}")),
                Attempt::NoAnswer(what) => Some(what.clone()),
            };
            if let Some(what) = &failure {
                failing_since.get_or_insert(began);
                let failed = format!("{} {}: {what}", req.method.as_str(), req.endpoint);
                if let Some(halt) = self.breaker.failed(&mut ticket, &failed) {
                    return Err(HomeserverError::Halted {
                        halt,
                        unanswered: Some(failed),
                    });
                }
            }
            let out_of_time = failing_since.is_some_and(|since| since.elapsed() >= self.timeout);
            let verdict = match &outcome {
                Attempt::Answer { status, .. } if (200..300).contains(status) => Verdict::Final,
                _ if out_of_time => Verdict::Final,
                Attempt::Answer {
                    status,
                    body,
                    retry_after,
                } => {
                    let asked = if *status == 429 {
                        retry::retry_after(body, retry_after.as_deref())
                    } else {
                        None
                    };
                    retry::for_status(&self.backoff, *status, asked, retry, self.max_retries)
                }
                Attempt::NoAnswer(what) => {
                    retry::for_transport(&self.backoff, what, retry, self.max_retries)
                }
                Attempt::Halted { .. } => Verdict::Final,
            };
            match verdict {
                Verdict::Retry { wait, reason } => {
                    if matches!(outcome, Attempt::Answer { status: 429, .. }) {
                        self.pause_for(wait);
                    }
                    retry += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        method = req.method.as_str(),
                        endpoint = %req.endpoint,
                        retry,
                        max_retries = self.max_retries,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "homeserver request failed: {reason}; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        halt = self.breaker.until_halted() => {
                            return Err(HomeserverError::Halted {
                                halt,
                                unanswered: failure.map(|what| {
                                    format!("{} {}: {what}", req.method.as_str(), req.endpoint)
                                }),
                            });
                        }
                    }
                }
                Verdict::Final => return self.finish(req, outcome, retry),
            }
        }
    }

    /// Holds back every request of this client for `wait` (or longer, if already paused).
    fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let paused = *self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        paused.filter(|until| *until > Instant::now())
    }

    /// A concurrency permit, once no 429 pause is in force.
    async fn permit(&self) -> Option<SemaphorePermit<'_>> {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
            }
            let permit = self.in_flight.acquire().await.ok()?;
            // A 429 may have come while this request queued for its permit.
            if self.paused_until().is_none() {
                return Some(permit);
            }
        }
    }

    /// One attempt, holding a concurrency permit from sending until the body is read; given
    /// up as soon as the client is halted.
    async fn attempt(&self, req: &Request<'_>) -> Attempt {
        let permit = tokio::select! {
            biased;
            halt = self.breaker.until_halted() => return Attempt::Halted { halt, sent: false },
            permit = self.permit() => permit,
        };
        let Some(_permit) = permit else {
            return Attempt::NoAnswer("the client is shutting down".to_string());
        };
        tokio::select! {
            biased;
            answer = self.exchange(req) => answer,
            halt = self.breaker.until_halted() => Attempt::Halted { halt, sent: true },
        }
    }

    /// Sends `req` and reads the whole answer.
    async fn exchange(&self, req: &Request<'_>) -> Attempt {
        let builder = match req.method {
            Method::Get => self.http.get(req.url.clone()),
            Method::Put => self.http.put(req.url.clone()),
            Method::Post => self.http.post(req.url.clone()),
        };
        let builder = match req.body {
            Some(body) => builder.json(body),
            None => builder,
        };
        let resp = match builder.send().await {
            Ok(resp) => resp,
            Err(e) => return Attempt::NoAnswer(self.describe(&e)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match resp.bytes().await {
            Ok(body) => Attempt::Answer {
                status,
                body,
                retry_after,
            },
            Err(e) => Attempt::NoAnswer(format!(
                "HTTP {status} answer cut short: {}",
                self.describe(&e)
            )),
        }
    }

    fn finish(
        &self,
        req: &Request<'_>,
        outcome: Attempt,
        retries: u32,
    ) -> Result<Reply, HomeserverError> {
        let method = req.method.as_str().to_string();
        let endpoint = req.endpoint.clone();
        let after = if retries > 0 {
            format!(" (after {retries} retries)")
        } else {
            String::new()
        };
        match outcome {
            Attempt::Answer { status, body, .. } if (200..300).contains(&status) => {
                Ok(Reply { status, body })
            }
            Attempt::Answer { status, body, .. } => {
                let parsed: MatrixError = serde_json::from_slice(&body).unwrap_or_default();
                let message = match parsed.error {
                    Some(m) => m,
                    None if body.is_empty() => "(empty body)".to_string(),
                    None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                };
                Err(HomeserverError::Status {
                    method,
                    endpoint,
                    status,
                    errcode: parsed.errcode,
                    message: format!("{message}{after}"),
                })
            }
            Attempt::NoAnswer(what) => Err(HomeserverError::Transport {
                method,
                endpoint,
                message: format!("{what}{after}"),
            }),
            Attempt::Halted { halt, sent } => Err(HomeserverError::Halted {
                halt,
                unanswered: sent.then(|| format!("{method} {endpoint}: sent, answer not awaited")),
            }),
        }
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("no answer within {:?} (timed out)", self.timeout)
        } else if e.is_connect() {
            format!("cannot connect: {}", chain(e))
        } else {
            chain(e)
        }
    }

    /// Decodes a 2xx JSON answer.
    fn decode<T: for<'de> Deserialize<'de>>(
        req: &Request<'_>,
        reply: &Reply,
    ) -> Result<T, HomeserverError> {
        serde_json::from_slice(&reply.body).map_err(|e| HomeserverError::BadReply {
            method: req.method.as_str().to_string(),
            endpoint: req.endpoint.clone(),
            message: format!("HTTP {}: {e}", reply.status),
        })
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        req: &Request<'_>,
    ) -> Result<T, HomeserverError> {
        let reply = self.send(req).await?;
        Self::decode(req, &reply)
    }
}

/// The outcome of one attempt.
enum Attempt {
    /// The homeserver answered (any status) and the whole body was read.
    Answer {
        status: u16,
        body: bytes::Bytes,
        retry_after: Option<String>,
    },
    /// No (complete) answer; why, for the log and the error.
    NoAnswer(String),
    /// The client was halted before the request was sent, or while it awaited the answer.
    Halted { halt: Halt, sent: bool },
}

/// An error with its sources, e.g. "error sending request: connection refused".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Makes a 401/403 say what it means for the operator.
fn explain_auth(e: HomeserverError) -> HomeserverError {
    match e {
        HomeserverError::Status {
            method,
            endpoint,
            status,
            errcode,
            message,
        } if status == 401 || status == 403 => {
            let hint = if status == 401 {
                "the access token is not valid (unknown, expired or logged out)"
            } else {
                "the access token is not a server admin's: the admin API refused it"
            };
            HomeserverError::Status {
                method,
                endpoint,
                status,
                errcode,
                message: format!("{hint} ({message})"),
            }
        }
        other => other,
    }
}

#[derive(Deserialize, Default)]
struct MatrixError {
    errcode: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct WhoAmI {
    user_id: String,
}

#[derive(Deserialize)]
struct ServerVersion {
    server_version: String,
}

#[derive(Deserialize)]
struct Threepid {
    medium: String,
    address: String,
}

/// A user as `GET /_synapse/admin/v2/users[/<id>]` reports it. Older Synapse versions give
/// 0/1 for the flags; the list does not report threepids.
#[derive(Deserialize)]
struct WireUser {
    name: String,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    threepids: Option<Vec<Threepid>>,
    #[serde(default, deserialize_with = "flag")]
    admin: bool,
    #[serde(default, deserialize_with = "flag")]
    deactivated: bool,
    #[serde(default, deserialize_with = "flag")]
    locked: bool,
    #[serde(default, deserialize_with = "flag")]
    suspended: bool,
    #[serde(default)]
    external_ids: Option<Vec<ExternalId>>,
}

impl From<WireUser> for RemoteUser {
    fn from(u: WireUser) -> RemoteUser {
        RemoteUser {
            mxid: u.name,
            displayname: u.displayname,
            emails: u
                .threepids
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.medium == "email")
                .map(|t| t.address)
                .collect(),
            admin: u.admin,
            deactivated: u.deactivated,
            locked: u.locked,
            suspended: u.suspended,
            external_ids: u.external_ids.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct UserId {
    user_id: String,
}

#[derive(Deserialize)]
struct Device {
    device_id: String,
}

#[derive(Deserialize)]
struct DeviceList {
    devices: Vec<Device>,
}

/// A password nobody knows, for a reactivation the homeserver refuses without one: the
/// account stays usable through SSO only.
fn unusable_password() -> Result<String, HomeserverError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| HomeserverError::Config {
        message: format!("no randomness for a placeholder password: {e}"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Deserialize)]
struct UserPage {
    users: Vec<WireUser>,
    #[serde(default)]
    next_token: Option<serde_json::Value>,
    /// How many users match the query, all pages together.
    #[serde(default)]
    total: Option<u64>,
}

/// A boolean that Synapse may send as `true`/`false`, `0`/`1` or `null`.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    Ok(match Option::<Flag>::deserialize(d)? {
        Some(Flag::Bool(b)) => b,
        Some(Flag::Int(i)) => i != 0,
        None => false,
    })
}

/// The body of a create-or-modify PUT: only the fields that are set.
fn upsert_body(changes: &UserChanges) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if let Some(name) = &changes.displayname {
        body.insert("displayname".into(), serde_json::Value::from(name.as_str()));
    }
    if let Some(emails) = &changes.emails {
        let threepids = emails
            .iter()
            .map(|a| serde_json::json!({"medium": "email", "address": a}))
            .collect();
        body.insert("threepids".into(), serde_json::Value::Array(threepids));
    }
    if let Some(ids) = &changes.external_ids {
        body.insert("external_ids".into(), serde_json::json!(ids));
    }
    serde_json::Value::Object(body)
}

impl Homeserver for SynapseClient {
    fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    async fn whoami(&self) -> Result<String, HomeserverError> {
        let path = "/_matrix/client/v3/account/whoami";
        let req = self.request(Method::Get, path.into(), path, &[], None);
        let who: WhoAmI = self.get_json(&req).await.map_err(explain_auth)?;
        Ok(who.user_id)
    }

    async fn check_admin(&self) -> Result<String, HomeserverError> {
        let path = "/_synapse/admin/v1/server_version";
        let req = self.request(Method::Get, path.into(), path, &[], None);
        let version: ServerVersion = self.get_json(&req).await.map_err(explain_auth)?;

        let path = "/_synapse/admin/v2/users";
        let req = self.request(Method::Get, path.into(), path, &[("limit", "1")], None);
        let _: UserPage = self.get_json(&req).await.map_err(explain_auth)?;
        Ok(version.server_version)
    }

    async fn get_user(&self, mxid: &str) -> Result<Option<RemoteUser>, HomeserverError> {
        let (endpoint, path) = Self::user_path(mxid);
        let req = self.request(Method::Get, endpoint, &path, &[], None);
        match self.get_json::<WireUser>(&req).await {
            Ok(user) => Ok(Some(user.into())),
            // Only Synapse's own "no such user": a bare 404 (a wrong base URL, a proxy) must
            // not make every account look absent.
            Err(HomeserverError::Status {
                status: 404,
                errcode: Some(code),
                ..
            }) if code == "M_NOT_FOUND" => Ok(None),
            Err(e) => Err(explain_auth(e)),
        }
    }

    async fn upsert_user(
        &self,
        mxid: &str,
        changes: &UserChanges,
    ) -> Result<Upserted, HomeserverError> {
        let (endpoint, path) = Self::user_path(mxid);
        let body = upsert_body(changes);
        let req = self.request(Method::Put, endpoint, &path, &[], Some(&body));
        let reply = self.send(&req).await.map_err(explain_auth)?;
        match reply.status {
            201 => Ok(Upserted::Created),
            200 => Ok(Upserted::Updated),
            other => Err(HomeserverError::BadReply {
                method: req.method.as_str().to_string(),
                endpoint: req.endpoint.clone(),
                message: format!("HTTP {other}, expected 200 or 201"),
            }),
        }
    }

    async fn user_by_external_id(
        &self,
        id: &ExternalId,
    ) -> Result<Option<String>, HomeserverError> {
        let encode = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
        let prefix = "/_synapse/admin/v1/auth_providers/";
        let endpoint = format!("{prefix}{}/users/{}", id.auth_provider, id.external_id);
        let path = format!(
            "{prefix}{}/users/{}",
            encode(&id.auth_provider),
            encode(&id.external_id)
        );
        let req = self.request(Method::Get, endpoint, &path, &[], None);
        match self.get_json::<UserId>(&req).await {
            Ok(user) => Ok(Some(user.user_id)),
            // As for `get_user`: only Synapse's own "not found" means nobody holds it.
            Err(HomeserverError::Status {
                status: 404,
                errcode: Some(code),
                ..
            }) if code == "M_NOT_FOUND" => Ok(None),
            Err(e) => Err(explain_auth(e)),
        }
    }

    async fn set_suspended(&self, mxid: &str, suspended: bool) -> Result<(), HomeserverError> {
        let path = Self::admin_path("/_synapse/admin/v1/suspend/", mxid, "");
        self.send_about_user(
            Method::Put,
            path,
            &serde_json::json!({ "suspend": suspended }),
        )
        .await
    }

    async fn set_locked(&self, mxid: &str, locked: bool) -> Result<(), HomeserverError> {
        self.send_about_user(
            Method::Put,
            Self::user_path(mxid),
            &serde_json::json!({ "locked": locked }),
        )
        .await
    }

    async fn logout_devices(&self, mxid: &str) -> Result<usize, HomeserverError> {
        let (endpoint, path) = Self::admin_path("/_synapse/admin/v2/users/", mxid, "/devices");
        let req = self.request(Method::Get, endpoint, &path, &[], None);
        let list: DeviceList = self.get_json(&req).await.map_err(explain_auth)?;
        if list.devices.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = list.devices.iter().map(|d| d.device_id.as_str()).collect();
        let path = Self::admin_path("/_synapse/admin/v2/users/", mxid, "/delete_devices");
        self.send_about_user(Method::Post, path, &serde_json::json!({ "devices": ids }))
            .await?;
        Ok(ids.len())
    }

    async fn deactivate(&self, mxid: &str, erase: bool) -> Result<(), HomeserverError> {
        let path = Self::admin_path("/_synapse/admin/v1/deactivate/", mxid, "");
        self.send_about_user(Method::Post, path, &serde_json::json!({ "erase": erase }))
            .await
    }

    async fn reactivate(&self, mxid: &str) -> Result<(), HomeserverError> {
        let first = self
            .send_about_user(
                Method::Put,
                Self::user_path(mxid),
                &serde_json::json!({ "deactivated": false }),
            )
            .await;
        match first {
            // Where local passwords are enabled, Synapse wants one to reactivate.
            Err(HomeserverError::Status {
                status: 400,
                message,
                ..
            }) if message.to_lowercase().contains("password") => {
                let body = serde_json::json!({
                    "deactivated": false,
                    "password": unusable_password()?,
                    "logout_devices": true,
                });
                self.send_about_user(Method::Put, Self::user_path(mxid), &body)
                    .await
            }
            other => other,
        }
    }

    async fn list_users_if_cheaper(
        &self,
        lookups: usize,
    ) -> Result<Option<Vec<RemoteUser>>, HomeserverError> {
        let lookups = u64::try_from(lookups).unwrap_or(u64::MAX);
        if lookups < MIN_LOOKUPS_TO_LIST {
            return Ok(None);
        }
        let path = "/_synapse/admin/v2/users";
        let query = [("limit", "1"), ("deactivated", "true"), ("locked", "true")];
        let req = self.request(Method::Get, path.into(), path, &query, None);
        let first: UserPage = self.get_json(&req).await.map_err(explain_auth)?;
        let Some(total) = first.total else {
            return Ok(None);
        };
        let pages = total.div_ceil(u64::from(self.page_size)).max(1);
        if pages + total / USERS_LISTED_PER_LOOKUP >= lookups {
            return Ok(None);
        }
        self.list_users().await.map(Some)
    }

    /// Every local account. The list endpoint does not report threepids: `emails` is empty
    /// in what this returns (use [`Homeserver::get_user`] for an account's e-mails).
    async fn list_users(&self) -> Result<Vec<RemoteUser>, HomeserverError> {
        let path = "/_synapse/admin/v2/users";
        let limit = self.page_size.to_string();
        let mut from: Option<String> = None;
        let mut seen = HashSet::new();
        let mut users = Vec::new();
        loop {
            let mut query = vec![
                ("limit", limit.as_str()),
                ("deactivated", "true"),
                ("locked", "true"),
            ];
            if let Some(from) = &from {
                query.push(("from", from.as_str()));
            }
            let req = self.request(Method::Get, path.into(), path, &query, None);
            let page: UserPage = self.get_json(&req).await.map_err(explain_auth)?;
            let empty = page.users.is_empty();
            for user in page.users {
                // Offset paging can repeat a user when accounts are created meanwhile.
                if seen.insert(user.name.clone()) {
                    users.push(RemoteUser::from(user));
                }
            }
            let next = match page.next_token {
                None | Some(serde_json::Value::Null) => break,
                Some(serde_json::Value::String(s)) => s,
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(other) => {
                    return Err(HomeserverError::BadReply {
                        method: "GET".into(),
                        endpoint: path.into(),
                        message: format!("next_token {other} is neither a string nor a number"),
                    })
                }
            };
            if empty || from.as_deref() == Some(next.as_str()) {
                return Err(HomeserverError::BadReply {
                    method: "GET".into(),
                    endpoint: path.into(),
                    message: format!("paging does not advance (next_token {next})"),
                });
            }
            from = Some(next);
        }
        Ok(users)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        let cfg = HomeserverConfig {
            url: Url::parse("https://matrix.example.org/").unwrap(),
            server_name: "example.org".into(),
            access_token: crate::secret::Secret::new("syt_very_secret"),
            concurrency: 2,
            timeout: Duration::from_secs(5),
            max_retries: 1,
            retry_refused_after: std::time::Duration::from_secs(86_400),
            breaker_failures: 3,
            run_deadline: Duration::from_secs(3600),
        };
        let client = SynapseClient::new(&cfg).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("syt_very_secret"), "{debug}");
        assert!(debug.contains("matrix.example.org"), "{debug}");
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_a_config_error_without_the_token() {
        let cfg = HomeserverConfig {
            url: Url::parse("https://matrix.example.org/").unwrap(),
            server_name: "example.org".into(),
            access_token: crate::secret::Secret::new("syt_line\nbreak"),
            concurrency: 2,
            timeout: Duration::from_secs(5),
            max_retries: 1,
            retry_refused_after: std::time::Duration::from_secs(86_400),
            breaker_failures: 3,
            run_deadline: Duration::from_secs(3600),
        };
        let err = SynapseClient::new(&cfg).unwrap_err();
        assert!(matches!(err, HomeserverError::Config { .. }), "{err:?}");
        assert!(!err.to_string().contains("syt_line"), "{err}");
    }

    #[test]
    fn paths_keep_a_base_url_prefix() {
        let cfg = HomeserverConfig {
            url: Url::parse("https://example.org/matrix/?x=1").unwrap(),
            server_name: "example.org".into(),
            access_token: crate::secret::Secret::new("t"),
            concurrency: 1,
            timeout: Duration::from_secs(5),
            max_retries: 0,
            retry_refused_after: std::time::Duration::from_secs(86_400),
            breaker_failures: 3,
            run_deadline: Duration::from_secs(3600),
        };
        let client = SynapseClient::new(&cfg).unwrap();
        let (endpoint, path) = SynapseClient::user_path("@a:example.org");
        let req = client.request(Method::Get, endpoint, &path, &[("limit", "1")], None);
        assert_eq!(
            req.url.as_str(),
            "https://example.org/matrix/_synapse/admin/v2/users/%40a%3Aexample.org?limit=1"
        );
    }

    #[test]
    fn mxids_are_percent_encoded_in_paths() {
        let (endpoint, path) = SynapseClient::user_path("@a/b?c#d%é:example.org");
        assert_eq!(endpoint, "/_synapse/admin/v2/users/@a/b?c#d%é:example.org");
        assert_eq!(
            path,
            "/_synapse/admin/v2/users/%40a%2Fb%3Fc%23d%25%C3%A9%3Aexample.org"
        );
    }

    #[test]
    fn upsert_sends_only_what_is_set() {
        assert_eq!(upsert_body(&UserChanges::default()), serde_json::json!({}));
        let only_name = UserChanges {
            displayname: Some("Alice".into()),
            ..UserChanges::default()
        };
        assert_eq!(
            upsert_body(&only_name),
            serde_json::json!({"displayname": "Alice"})
        );
        let no_emails = UserChanges {
            emails: Some(vec![]),
            ..UserChanges::default()
        };
        assert_eq!(
            upsert_body(&no_emails),
            serde_json::json!({"threepids": []})
        );
        let sso = UserChanges {
            external_ids: Some(vec![ExternalId {
                auth_provider: "oidc-agentconnect".into(),
                external_id: "4f1c".into(),
            }]),
            ..UserChanges::default()
        };
        assert_eq!(
            upsert_body(&sso),
            serde_json::json!({"external_ids": [
                {"auth_provider": "oidc-agentconnect", "external_id": "4f1c"}
            ]})
        );
    }

    #[test]
    fn wire_users_accept_old_and_new_flag_forms() {
        let new: WireUser = serde_json::from_str(
            r#"{"name":"@a:x","displayname":null,"admin":true,"deactivated":false,"locked":true,
                "threepids":[{"medium":"msisdn","address":"123"},{"medium":"email","address":"a@x"}]}"#,
        )
        .unwrap();
        let u = RemoteUser::from(new);
        assert_eq!(u.emails, vec!["a@x".to_string()]);
        assert!(u.admin && u.locked && !u.deactivated);
        assert_eq!(u.displayname, None);
        let old: WireUser =
            serde_json::from_str(r#"{"name":"@b:x","admin":0,"deactivated":1}"#).unwrap();
        let u = RemoteUser::from(old);
        assert!(!u.admin && u.deactivated && !u.locked);
        assert!(u.emails.is_empty());
        let sso: WireUser = serde_json::from_str(
            r#"{"name":"@c:x","external_ids":[{"auth_provider":"oidc-x","external_id":"42"}]}"#,
        )
        .unwrap();
        assert_eq!(
            RemoteUser::from(sso).external_ids,
            vec![ExternalId {
                auth_provider: "oidc-x".into(),
                external_id: "42".into()
            }]
        );
    }
}
