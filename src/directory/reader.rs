//! The connection to the directory and the paged, complete-or-error read of a Snapshot.
//!
//! Paging is done here, not with ldap3's `PagedResults` adapter: every page is its own
//! search whose final result code is checked (ldap3 ends a stream with `Ok(None)` even when
//! the server ended it with an error), and every step is under its own timeout (a paused
//! server accepts connections and never answers).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use ldap3::controls::{Control, ControlType, PagedResults, RawControl};
use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, ResultEntry, Scope, SearchEntry,
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use url::Url;

use super::changes::SyncId;
use super::dn::{same_dn, DnKey};
use super::entry::convert;
use super::error::DirectoryError;
use super::server::{ServerKind, ROOT_DSE_ATTRIBUTES};
use super::snapshot::{Entry, SkippedEntry, Snapshot, StableId};
use super::tls;
use super::AgentQuery;
use crate::config::DirectoryConfig;

/// A bound connection to one directory server.
pub struct Directory {
    ldap: Ldap,
    driver: JoinHandle<()>,
    server: String,
    timeout: Duration,
    /// What the server is, from its root DSE (read once connected).
    kind: ServerKind,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("server", &self.server)
            .field("kind", &self.kind)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // The connection task ends when the last `Ldap` handle goes; make sure of it.
        self.driver.abort();
    }
}

/// Runs `fut` under `limit`; on expiry, a [`DirectoryError::Timeout`] naming `operation`.
async fn timed<T>(
    url: &str,
    limit: Duration,
    operation: impl FnOnce() -> String,
    fut: impl Future<Output = T>,
) -> Result<T, DirectoryError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| DirectoryError::Timeout {
            url: url.to_string(),
            operation: operation(),
            after: limit,
        })
}

impl Directory {
    /// Connects to the first of `cfg.urls` that answers (in order), with LDAPS or StartTLS
    /// as configured, and binds as `cfg.bind_dn`. Each step is limited by `cfg.timeout`.
    ///
    /// A server that cannot be reached, fails TLS, times out or says busy/unavailable is
    /// skipped for the next URL; a bind refusal (e.g. wrong password) stops at once, since
    /// every replica would say the same.
    pub async fn connect(cfg: &DirectoryConfig) -> Result<Directory, DirectoryError> {
        if cfg.urls.is_empty() {
            return Err(DirectoryError::Config("no directory URL given".into()));
        }
        if cfg.bind_password.is_empty() {
            // An empty password makes a simple bind anonymous ("unauthenticated"), which
            // some servers accept: never let that pass for a login.
            return Err(DirectoryError::Config(format!(
                "the bind password for `{}` is empty",
                cfg.bind_dn
            )));
        }
        let needs_tls = cfg.starttls || cfg.urls.iter().any(|u| u.scheme() == "ldaps");
        let tls_config = if needs_tls {
            Some(tls::client_config(cfg.ca_file.as_deref())?)
        } else {
            None
        };
        let mut failures = Vec::new();
        for (i, url) in cfg.urls.iter().enumerate() {
            match Self::connect_one(url, cfg, tls_config.clone()).await {
                Ok(dir) => {
                    info!(
                        server = %dir.server,
                        kind = dir.kind.name(),
                        tried = i + 1,
                        "directory: connected and bound"
                    );
                    return Ok(dir);
                }
                Err(e) if e.worth_failover() => {
                    warn!(server = %url, error = %e, "directory server unusable");
                    failures.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        if failures.len() == 1 {
            if let Some(only) = failures.pop() {
                return Err(only);
            }
        }
        Err(DirectoryError::AllServersFailed { failures })
    }

    async fn connect_one(
        url: &Url,
        cfg: &DirectoryConfig,
        tls_config: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Directory, DirectoryError> {
        let server = url.to_string();
        let starttls = cfg.starttls && url.scheme() == "ldap";
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(cfg.timeout)
            .set_starttls(starttls);
        if let Some(config) = tls_config {
            settings = settings.set_config(config);
        }
        let step = if starttls {
            "connecting and negotiating StartTLS"
        } else if url.scheme() == "ldaps" {
            "connecting and negotiating TLS"
        } else {
            "connecting"
        };
        let (conn, mut ldap) = timed(
            &server,
            cfg.timeout,
            || step.to_string(),
            LdapConnAsync::from_url_with_settings(settings, url),
        )
        .await?
        .map_err(|e| connect_error(&server, url, step, cfg.timeout, e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                debug!(error = %e, "LDAP connection ended");
            }
        });
        let mut dir = Directory {
            ldap: ldap.clone(),
            driver,
            server,
            timeout: cfg.timeout,
            kind: ServerKind::Other,
        };
        let bind = timed(
            &dir.server,
            cfg.timeout,
            || format!("binding as `{}`", cfg.bind_dn),
            ldap.simple_bind(&cfg.bind_dn, cfg.bind_password.expose()),
        )
        .await?
        .map_err(|e| {
            op_error(
                &dir.server,
                &format!("binding as `{}`", cfg.bind_dn),
                cfg.timeout,
                e,
            )
        })?;
        if bind.rc != 0 {
            return Err(DirectoryError::Bind {
                url: dir.server.clone(),
                dn: cfg.bind_dn.clone(),
                code: bind.rc,
                text: bind.text,
            });
        }
        dir.ldap = ldap;
        dir.kind = dir.read_kind(cfg.timeout).await?;
        Ok(dir)
    }

    /// What the server is, from its root DSE. A root DSE the account may not read is no
    /// error (the kind is then [`ServerKind::Other`]); a server that does not answer is.
    async fn read_kind(&mut self, timeout: Duration) -> Result<ServerKind, DirectoryError> {
        let attrs: Vec<String> = ROOT_DSE_ATTRIBUTES.iter().map(|a| a.to_string()).collect();
        match self.read_entry("", &attrs, timeout).await {
            Ok(Some(root)) => Ok(ServerKind::of_root_dse(&root)),
            Ok(None) => Ok(ServerKind::Other),
            Err(e @ DirectoryError::Search { .. }) => {
                debug!(server = %self.server, error = %e, "the root DSE cannot be read");
                Ok(ServerKind::Other)
            }
            Err(e) => Err(e),
        }
    }

    /// The URL of the server that answered.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// What kind of server answered (from its root DSE).
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Reads every entry matching `query.filter` under each of `bases` (subtree), in pages of
    /// `page_size`, each page and each entry within `timeout`. Returns a Snapshot only if
    /// every page of every base ended with result code success.
    pub async fn read_snapshot(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        page_size: i32,
        timeout: Duration,
    ) -> Result<Snapshot, DirectoryError> {
        self.read_snapshot_passing(bases, query, page_size, timeout, &mut Some)
            .await
    }

    /// [`Directory::read_snapshot`], handing each agent entry to `pass` as it is read (once,
    /// however many bases hold it): an entry `pass` takes (returns `None` for) is not kept in
    /// the Snapshot, only counted (`passed_on`), so a caller can map entries as they come
    /// without holding the whole directory.
    pub async fn read_snapshot_passing(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        page_size: i32,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<Snapshot, DirectoryError> {
        self.read_snapshot_recording(bases, query, None, page_size, timeout, pass)
            .await
    }

    /// [`Directory::read_snapshot_passing`], also reading `sync_id_attribute` (e.g. 389-DS
    /// `nsUniqueId`) and recording each agent's value of it in [`Snapshot::sync_ids`].
    pub(super) async fn read_snapshot_recording(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        sync_id_attribute: Option<&'static str>,
        page_size: i32,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<Snapshot, DirectoryError> {
        if bases.is_empty() {
            return Err(DirectoryError::Config("no search base given".into()));
        }
        let mut attrs = requested_attributes(query);
        let mut collector = Collector::passing(query, pass);
        if let Some(attr) = sync_id_attribute {
            attrs.push(attr.to_string());
            collector = collector.recording_sync_ids(attr);
        }
        let pages = self
            .read_bases(
                bases,
                &query.filter,
                &attrs,
                page_size,
                timeout,
                &mut |se| collector.add(se),
            )
            .await?;
        let snapshot = collector.into_snapshot(self.server.clone());
        info!(
            entries = snapshot.entries.len() + snapshot.passed_on,
            skipped = snapshot.skipped.len(),
            pages,
            bases = bases.len(),
            server = %self.server,
            "directory snapshot complete"
        );
        Ok(snapshot)
    }

    /// Every base in turn, page by page, each entry handed to `sink`. Returns the number of
    /// pages read.
    pub(super) async fn read_bases(
        &mut self,
        bases: &[String],
        filter: &str,
        attrs: &[String],
        page_size: i32,
        timeout: Duration,
        sink: &mut (dyn FnMut(SearchEntry) + Send),
    ) -> Result<usize, DirectoryError> {
        let mut pages = 0;
        for base in bases {
            pages += self
                .read_base(base, filter, attrs, page_size.max(1), timeout, sink)
                .await?;
        }
        Ok(pages)
    }

    /// One base, page by page, each entry handed to `sink`. Returns the number of pages read.
    pub(super) async fn read_base(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[String],
        page_size: i32,
        timeout: Duration,
        sink: &mut (dyn FnMut(SearchEntry) + Send),
    ) -> Result<usize, DirectoryError> {
        self.read_base_with(base, filter, attrs, &[], page_size, timeout, sink)
            .await
    }

    /// [`Directory::read_base`] with more request controls beside paging (e.g. AD Show
    /// Deleted).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_base_with(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[String],
        controls: &[RawControl],
        page_size: i32,
        timeout: Duration,
        sink: &mut (dyn FnMut(SearchEntry) + Send),
    ) -> Result<usize, DirectoryError> {
        let url = self.server.clone();
        let mut cookie: Vec<u8> = Vec::new();
        let mut page = 0usize;
        loop {
            page += 1;
            let what = |verb: &str| format!("{verb} page {page} of `{base}`");
            let mut request: Vec<RawControl> = vec![PagedResults {
                size: page_size,
                cookie: std::mem::take(&mut cookie),
            }
            .into()];
            request.extend_from_slice(controls);
            let (mut in_page, mut references) = (0usize, 0usize);
            let result = self
                .search_messages(
                    base,
                    Scope::Subtree,
                    filter,
                    attrs,
                    request,
                    timeout,
                    &what,
                    &mut |re| {
                        if re.is_ref() {
                            // AD continuation references (other partitions): normal, not followed.
                            references += 1;
                        } else if !re.is_intermediate() {
                            in_page += 1;
                            sink(decode_entry(&url, &what("reading"), re)?);
                        }
                        Ok(())
                    },
                )
                .await?;
            self.check_success(base, filter, &result)?;
            debug!(
                base,
                page,
                entries = in_page,
                references,
                "directory page read"
            );
            match next_cookie(&result.ctrls) {
                Ok(Some(next)) => cookie = next,
                Ok(None) => return Ok(page),
                Err(()) => {
                    return Err(DirectoryError::Protocol {
                        url,
                        operation: what("reading"),
                        cause: "an undecodable paged results control".into(),
                    })
                }
            }
        }
    }

    /// Reads `attrs` of the one entry at `dn` (a base-scope search), e.g. the next slice of a
    /// ranged attribute (`member;range=1500-*`). `None` if the server returned no entry.
    pub(super) async fn read_entry(
        &mut self,
        dn: &str,
        attrs: &[String],
        timeout: Duration,
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        self.read_entry_with(dn, attrs, &[], timeout).await
    }

    /// [`Directory::read_entry`] with request controls (e.g. AD Show Deleted).
    pub(super) async fn read_entry_with(
        &mut self,
        dn: &str,
        attrs: &[String],
        controls: &[RawControl],
        timeout: Duration,
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        let url = self.server.clone();
        let what = |_: &str| format!("reading {} of `{dn}`", attrs.join(", "));
        let filter = "(objectClass=*)";
        let mut found = None;
        let result = self
            .search_messages(
                dn,
                Scope::Base,
                filter,
                attrs,
                controls.to_vec(),
                timeout,
                &what,
                &mut |re| {
                    if !re.is_ref() && !re.is_intermediate() {
                        found = Some(decode_entry(&url, &what(""), re)?);
                    }
                    Ok(())
                },
            )
            .await?;
        self.check_success(dn, filter, &result)?;
        Ok(found)
    }

    /// One search, each message (entries, references, intermediate responses) handed to
    /// `each` as it comes, each step within `timeout`. Returns the server's final result,
    /// whatever its code: callers check it ([`Directory::check_success`]) — ldap3 ends the stream the same
    /// way on success and on error. `what(verb)` names the step for errors.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn search_messages(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        controls: Vec<RawControl>,
        timeout: Duration,
        what: &(dyn Fn(&str) -> String + Sync),
        each: &mut (dyn FnMut(ResultEntry) -> Result<(), DirectoryError> + Send),
    ) -> Result<LdapResult, DirectoryError> {
        let url = self.server.clone();
        let mut ldap = self.ldap.clone();
        if !controls.is_empty() {
            ldap.with_controls(controls);
        }
        let started = timed(
            &url,
            timeout,
            || what("requesting"),
            ldap.with_timeout(timeout)
                .streaming_search(base, scope, filter, attrs),
        )
        .await?;
        let mut stream = match started {
            Ok(stream) => stream,
            Err(LdapError::FilterParsing) => {
                return Err(DirectoryError::InvalidFilter {
                    filter: filter.to_string(),
                })
            }
            Err(e) => return Err(op_error(&url, &what("requesting"), timeout, e)),
        };
        loop {
            match timed(&url, timeout, || what("reading"), stream.next()).await? {
                Ok(Some(re)) => each(re)?,
                Ok(None) => break,
                Err(e) => return Err(op_error(&url, &what("reading"), timeout, e)),
            }
        }
        Ok(stream.finish().await)
    }

    /// Unbinds and closes the connection (best effort, within the connect timeout).
    pub async fn close(mut self) {
        let limit = self.timeout;
        if let Ok(Err(e)) = tokio::time::timeout(limit, self.ldap.unbind()).await {
            debug!(server = %self.server, error = %e, "unbind failed");
        }
        let _ = tokio::time::timeout(limit, &mut self.driver).await;
    }
}

/// Connects to `cfg.urls` (failover), reads every base of `cfg.base_dns` and closes.
pub async fn read_snapshot(
    cfg: &DirectoryConfig,
    query: &AgentQuery,
) -> Result<Snapshot, DirectoryError> {
    let mut dir = Directory::connect(cfg).await?;
    let result = dir
        .read_snapshot(&cfg.base_dns, query, cfg.page_size, cfg.timeout)
        .await;
    dir.close().await;
    result
}

/// The query's attributes plus the id attribute (once, any case). No attributes means all
/// user attributes (`*`) plus the id, which may be operational (`entryUUID`).
pub(super) fn requested_attributes(query: &AgentQuery) -> Vec<String> {
    let mut attrs: Vec<String> = Vec::new();
    if query.attributes.is_empty() {
        attrs.push("*".into());
    }
    for a in query
        .attributes
        .iter()
        .chain(std::iter::once(&query.id_attribute))
    {
        if !attrs.iter().any(|b| b.eq_ignore_ascii_case(a)) {
            attrs.push(a.clone());
        }
    }
    attrs
}

/// A search result entry, or a protocol error naming `operation`.
pub(super) fn decode_entry(
    url: &str,
    operation: &str,
    re: ResultEntry,
) -> Result<SearchEntry, DirectoryError> {
    super::decode::search_entry(re.0).ok_or_else(|| DirectoryError::Protocol {
        url: url.to_string(),
        operation: operation.to_string(),
        cause: "an undecodable search entry".into(),
    })
}

/// The cookie for the next page: `None` when the search is done (empty cookie, or the server
/// ignored the paging control and sent everything at once).
fn next_cookie(ctrls: &[Control]) -> Result<Option<Vec<u8>>, ()> {
    for Control(kind, raw) in ctrls {
        if matches!(kind, Some(ControlType::PagedResults)) {
            if raw.val.is_none() {
                return Err(());
            }
            let pr =
                catch_unwind(AssertUnwindSafe(|| raw.parse::<PagedResults>())).map_err(|_| ())?;
            return Ok(if pr.cookie.is_empty() {
                None
            } else {
                Some(pr.cookie)
            });
        }
    }
    Ok(None)
}

/// Gathers entries across pages and bases; one entry per stable id.
pub(super) struct Collector<'q, 'p> {
    query: &'q AgentQuery,
    /// Sees each entry first, and takes it (only counted then) or gives it back to be kept.
    pass: Option<&'p mut (dyn FnMut(Entry) -> Option<Entry> + Send)>,
    pub(super) entries: Vec<Entry>,
    passed_on: usize,
    skipped: Vec<SkippedEntry>,
    /// Stable id → the DN it was first read at.
    by_id: HashMap<String, String>,
    skipped_dns: HashSet<DnKey>,
    /// The attribute whose value names each agent in content-sync messages, when that is not
    /// its stable id (389-DS `nsUniqueId`), and what was recorded of it.
    sync_id_attribute: Option<&'static str>,
    sync_ids: Vec<(SyncId, StableId)>,
    /// Agents kept without a usable value of `sync_id_attribute`: how many, and the first.
    without_sync_id: (usize, Option<String>),
}

impl<'q, 'p> Collector<'q, 'p> {
    /// Keeps every entry.
    pub(super) fn new(query: &'q AgentQuery) -> Self {
        Collector {
            query,
            pass: None,
            entries: Vec::new(),
            passed_on: 0,
            skipped: Vec::new(),
            by_id: HashMap::new(),
            skipped_dns: HashSet::new(),
            sync_id_attribute: None,
            sync_ids: Vec::new(),
            without_sync_id: (0, None),
        }
    }

    /// Also records each agent's value of `attr` (read with it) as its sync id.
    pub(super) fn recording_sync_ids(self, attr: &'static str) -> Self {
        Collector {
            sync_id_attribute: Some(attr),
            ..self
        }
    }

    /// Hands each entry to `pass` first, and keeps those it gives back.
    pub(super) fn passing(
        query: &'q AgentQuery,
        pass: &'p mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Self {
        Collector {
            pass: Some(pass),
            ..Collector::new(query)
        }
    }

    pub(super) fn add(&mut self, se: SearchEntry) {
        match convert(se, self.query) {
            Ok(entry) => match self.by_id.get(&entry.id.0) {
                // The same entry seen again through an overlapping base.
                Some(first) if same_dn(first, &entry.dn) => {}
                Some(first) => self.skipped.push(SkippedEntry {
                    reason: format!(
                        "same stable id {} as `{first}` (read first, kept)",
                        entry.id
                    ),
                    dn: entry.dn,
                }),
                None => self.keep_or_pass_on(entry),
            },
            Err(skipped) => {
                if self.skipped_dns.insert(DnKey::lenient(&skipped.dn)) {
                    debug!(dn = %skipped.dn, reason = %skipped.reason, "entry skipped");
                    self.skipped.push(skipped);
                }
            }
        }
    }

    /// The Snapshot of what was gathered (no groups yet).
    pub(super) fn into_snapshot(self, server: String) -> Snapshot {
        if let (Some(attr), (missing @ 1.., Some(first))) =
            (self.sync_id_attribute, &self.without_sync_id)
        {
            warn!(
                attribute = attr,
                agents = missing,
                first = %first,
                "directory: agents read without a readable `{attr}`: their deletion is seen by \
                 complete reads only (let the bind account read `{attr}`)"
            );
        }
        let mut snapshot = Snapshot::complete(self.entries, self.skipped, server);
        snapshot.passed_on = self.passed_on;
        snapshot.sync_ids = self.sync_ids;
        snapshot
    }

    fn keep_or_pass_on(&mut self, entry: Entry) {
        self.by_id.insert(entry.id.0.clone(), entry.dn.clone());
        if let Some(attr) = self.sync_id_attribute {
            match entry.first(attr).and_then(SyncId::from_text) {
                Some(sync_id) => self.sync_ids.push((sync_id, entry.id.clone())),
                None => {
                    self.without_sync_id.0 += 1;
                    self.without_sync_id
                        .1
                        .get_or_insert_with(|| entry.dn.clone());
                }
            }
        }
        let kept = match &mut self.pass {
            Some(pass) => pass(entry),
            None => Some(entry),
        };
        match kept {
            Some(entry) => self.entries.push(entry),
            None => self.passed_on += 1,
        }
    }
}

impl Directory {
    /// A search's final result: success, or the error naming the base and filter, with advice
    /// that fits the server (never a short list taken for a whole one).
    pub(super) fn check_success(
        &self,
        base: &str,
        filter: &str,
        result: &LdapResult,
    ) -> Result<(), DirectoryError> {
        check_success(&self.server, self.kind, base, filter, result)
    }
}

fn check_success(
    url: &str,
    kind: ServerKind,
    base: &str,
    filter: &str,
    result: &LdapResult,
) -> Result<(), DirectoryError> {
    if result.rc == 0 {
        return Ok(());
    }
    Err(DirectoryError::Search {
        kind,
        url: url.to_string(),
        base: base.to_string(),
        filter: filter.to_string(),
        code: result.rc,
        text: result.text.clone(),
        matched: result.matched.clone(),
        referrals: result.refs.clone(),
    })
}

/// A failed connection attempt, told apart: TLS trust/name problems, timeouts, the rest.
fn connect_error(
    server: &str,
    url: &Url,
    step: &str,
    limit: Duration,
    e: LdapError,
) -> DirectoryError {
    let host = url.host_str().unwrap_or_default();
    match e {
        LdapError::Timeout { .. } => DirectoryError::Timeout {
            url: server.into(),
            operation: step.into(),
            after: limit,
        },
        LdapError::Rustls { source } => DirectoryError::Tls {
            url: server.into(),
            reason: describe_rustls(&source, host),
        },
        LdapError::DNSName { .. } => DirectoryError::Tls {
            url: server.into(),
            reason: format!("`{host}` cannot be checked against a certificate (not a host name)"),
        },
        LdapError::Io { source } => {
            let tls = source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls {
                Some(tls) => DirectoryError::Tls {
                    url: server.into(),
                    reason: describe_rustls(tls, host),
                },
                None => DirectoryError::Connect {
                    url: server.into(),
                    cause: source.to_string(),
                },
            }
        }
        LdapError::LdapResult { result } => DirectoryError::Tls {
            url: server.into(),
            reason: format!(
                "the server refused StartTLS (LDAP result {} {}: {})",
                result.rc,
                super::error::result_code_name(result.rc),
                result.text
            ),
        },
        other => DirectoryError::Connect {
            url: server.into(),
            cause: other.to_string(),
        },
    }
}

fn describe_rustls(e: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "the server certificate is not trusted: its issuer is not a \
                 trusted CA (set `directory.ca_file` to the CA that issued it)"
                .to_string(),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the server certificate is not valid for the name `{host}` (it must name the \
                 host in its subjectAltName; connect with the name the certificate carries)"
            ),
            C::Expired | C::ExpiredContext { .. } => {
                "the server certificate has expired".to_string()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server certificate is not valid yet (check the clocks)".to_string()
            }
            other => format!("the server certificate was refused: {other:?}"),
        },
        other => format!("TLS error: {other}"),
    }
}

/// An error of an operation on an open connection.
fn op_error(server: &str, operation: &str, limit: Duration, e: LdapError) -> DirectoryError {
    match e {
        LdapError::Timeout { .. } => DirectoryError::Timeout {
            url: server.into(),
            operation: operation.into(),
            after: limit,
        },
        LdapError::EndOfStream
        | LdapError::Io { .. }
        | LdapError::OpSend { .. }
        | LdapError::ResultRecv { .. }
        | LdapError::IdScrubSend { .. }
        | LdapError::MiscSend { .. } => DirectoryError::ConnectionLost {
            url: server.into(),
            operation: operation.into(),
            cause: e.to_string(),
        },
        other => DirectoryError::Protocol {
            url: server.into(),
            operation: operation.into(),
            cause: other.to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::directory::IdFormat;

    fn query(attrs: &[&str], id: &str) -> AgentQuery {
        AgentQuery {
            filter: "(objectClass=inetOrgPerson)".into(),
            attributes: attrs.iter().map(|s| s.to_string()).collect(),
            id_attribute: id.into(),
            id_format: IdFormat::Text,
        }
    }

    #[test]
    fn id_attribute_is_always_requested_once() {
        assert_eq!(
            requested_attributes(&query(&["uid", "mail"], "entryUUID")),
            vec!["uid", "mail", "entryUUID"]
        );
        assert_eq!(
            requested_attributes(&query(&["uid", "entryuuid"], "entryUUID")),
            vec!["uid", "entryuuid"]
        );
        assert_eq!(
            requested_attributes(&query(&[], "entryUUID")),
            vec!["*", "entryUUID"]
        );
    }

    fn se(dn: &str, id: &str) -> SearchEntry {
        SearchEntry {
            dn: dn.into(),
            attrs: [("entryUUID".to_string(), vec![id.to_string()])].into(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn overlapping_bases_keep_one_entry_per_id() {
        let q = query(&[], "entryUUID");
        let mut c = Collector::new(&q);
        c.add(se("uid=a,ou=p,dc=x", "1"));
        c.add(se("UID=a,OU=p,DC=x", "1"));
        c.add(se("uid=b,ou=p,dc=x", "1"));
        c.add(se("uid=c,ou=p,dc=x", "2"));
        let nid = SearchEntry {
            dn: "uid=d,ou=p,dc=x".into(),
            attrs: HashMap::new(),
            bin_attrs: HashMap::new(),
        };
        c.add(nid.clone());
        c.add(nid);
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.skipped.len(), 2);
        assert_eq!(c.skipped[0].dn, "uid=b,ou=p,dc=x");
        assert!(c.skipped[0].reason.contains("uid=a,ou=p,dc=x"));
        assert_eq!(c.skipped[1].dn, "uid=d,ou=p,dc=x");
    }

    #[test]
    fn entries_passed_on_are_counted_once_and_not_kept() {
        let q = query(&[], "entryUUID");
        let mut seen = Vec::new();
        let mut pass = |e: Entry| {
            seen.push(e.id.0.clone());
            (e.id.0 == "2").then_some(e)
        };
        let mut c = Collector::passing(&q, &mut pass);
        c.add(se("uid=a,ou=p,dc=x", "1"));
        c.add(se("UID=a,OU=p,DC=x", "1"));
        c.add(se("uid=b,ou=p,dc=x", "1"));
        c.add(se("uid=c,ou=p,dc=x", "2"));
        let (kept, passed_on, skipped) = (c.entries.len(), c.passed_on, c.skipped.len());
        assert_eq!((kept, passed_on, skipped), (1, 1, 1));
        assert_eq!(seen, vec!["1", "2"]);
    }

    #[test]
    fn no_paging_control_means_done() {
        assert_eq!(next_cookie(&[]), Ok(None));
    }
}
