//! Faults a real Synapse cannot be made to produce on demand (429, 5xx, cut connections,
//! silence), played by a tiny HTTP stub on a loopback port. Each test checks what the
//! *client* does about them: how long it waits, how often it retries, what error it gives,
//! how many requests it has in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_ldap_sync::config::HomeserverConfig;
use matrix_ldap_sync::homeserver::{
    Backoff, Halt, Homeserver, HomeserverError, SynapseClient, Upserted, UserChanges,
};
use matrix_ldap_sync::secret::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "syt_c2VjcmV0_dontLogMe_0123";

// ---------------------------------------------------------------- the stub

/// What the stub does with one request.
#[derive(Clone)]
enum Action {
    /// Answer after `delay`.
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        delay: Duration,
    },
    /// Send the status line, headers announcing a longer body, part of it, then close.
    Cut,
    /// Read the request and never answer (the connection stays open until the client leaves).
    Hang,
}

fn json(status: u16, body: &str) -> Action {
    Action::Respond {
        status,
        headers: vec![],
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

fn user_json(mxid: &str) -> String {
    format!(
        r#"{{"name":"{mxid}","displayname":"Someone","threepids":[{{"medium":"email","address":"a@example.org"}}],"admin":false,"deactivated":false,"locked":false}}"#
    )
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
    body: String,
    at: Instant,
}

type Handler = Arc<dyn Fn(usize, &Seen) -> Action + Send + Sync>;

struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Stub {
    /// Starts a stub whose `handler` gets the request's index (0 for the first) and the request.
    async fn start(handler: impl Fn(usize, &Seen) -> Action + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stub = Stub {
            addr,
            seen: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let handler: Handler = Arc::new(handler);
        let (seen, in_flight, max_in_flight) = (
            stub.seen.clone(),
            stub.in_flight.clone(),
            stub.max_in_flight.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen, in_flight, max_in_flight) = (
                    handler.clone(),
                    seen.clone(),
                    in_flight.clone(),
                    max_in_flight.clone(),
                );
                tokio::spawn(async move {
                    serve(conn, handler, seen, in_flight, max_in_flight).await;
                });
            }
        });
        stub
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn config(&self, concurrency: usize, timeout: Duration, max_retries: u32) -> HomeserverConfig {
        config_at(self.addr, concurrency, timeout, max_retries)
    }

    fn client(&self, max_retries: u32) -> SynapseClient {
        client(&self.config(4, Duration::from_secs(5), max_retries))
    }
}

/// The config of a client of the homeserver at `addr` (breaker_failures = 3).
fn config_at(
    addr: SocketAddr,
    concurrency: usize,
    timeout: Duration,
    max_retries: u32,
) -> HomeserverConfig {
    HomeserverConfig {
        url: url::Url::parse(&format!("http://{addr}")).unwrap(),
        server_name: "example.org".into(),
        access_token: Secret::new(TOKEN),
        concurrency,
        timeout,
        max_retries,
        retry_refused_after: std::time::Duration::from_secs(86_400),
        breaker_failures: 3,
        run_deadline: std::time::Duration::from_secs(3600),
    }
}

fn client(cfg: &HomeserverConfig) -> SynapseClient {
    SynapseClient::new(cfg)
        .unwrap()
        .with_backoff(fast_backoff())
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(40),
        max: Duration::from_millis(400),
        max_retry_after: Duration::from_secs(10),
    }
}

/// One request per connection (`Connection: close`), so a fault never leaks into the next.
async fn serve(
    mut conn: TcpStream,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(req.clone());
        seen.len() - 1
    };
    // Counted from "request fully received" to "about to answer": a window inside the
    // client's own, so the peak is a lower bound of what the client had in flight.
    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    max_in_flight.fetch_max(now, Ordering::SeqCst);
    let action = handler(index, &req);
    match action {
        Action::Respond {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
        Action::Cut => {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = conn
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"name\":\"@cut",
                )
                .await;
            let _ = conn.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(conn);
        }
        Action::Hang => {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut sink = [0u8; 256];
            // Until the client gives up and closes (or 30 s, so the stub never lingers).
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

async fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let mut length = 0usize;
    let mut authorization = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_string();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok()?,
                "authorization" => authorization = Some(value),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        target,
        authorization,
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
        at: Instant::now(),
    })
}

/// Captures every log line of this test binary. A global subscriber (not a per-thread one:
/// tracing caches callsite interest across threads, which makes `set_default` flaky in
/// parallel tests); tests look for lines naming their own endpoints.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn global() -> &'static Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            logs
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------- 429

#[tokio::test]
async fn a_429_waits_retry_after_ms_then_succeeds_and_logs_without_the_token() {
    let logs = Logs::global();
    let stub = Stub::start(|i, _| match i {
        0 => json(
            429,
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":700}"#,
        ),
        _ => json(200, &user_json("@ratelimited:example.org")),
    })
    .await;
    let client = stub.client(3);

    let start = Instant::now();
    let user = client.get_user("@ratelimited:example.org").await.unwrap();
    let elapsed = start.elapsed();

    assert_eq!(user.unwrap().mxid, "@ratelimited:example.org");
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(700), "retried after {gap:?}");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(client.retries(), 1);

    let text = logs.text();
    let ours: Vec<_> = text
        .lines()
        .filter(|l| l.contains("/_synapse/admin/v2/users/@ratelimited:example.org"))
        .collect();
    assert_eq!(ours.len(), 1, "{text}");
    assert!(
        ours[0].contains("WARN") && ours[0].contains("429"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "token leaked into the logs: {text}");
    // The token was sent, as a bearer token, on every attempt.
    for s in &seen {
        assert_eq!(
            s.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
}

#[tokio::test]
async fn a_429_without_retry_after_ms_uses_the_retry_after_header() {
    let stub = Stub::start(|i, _| match i {
        0 => Action::Respond {
            status: 429,
            headers: vec![("Retry-After", "1".into())],
            body: r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests"}"#.into(),
            delay: Duration::ZERO,
        },
        _ => json(200, r#"{"user_id":"@admin:example.org"}"#),
    })
    .await;
    let client = stub.client(3);
    assert_eq!(client.whoami().await.unwrap(), "@admin:example.org");
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_429_that_never_ends_gives_up_with_status_429() {
    let stub = Stub::start(|_, _| {
        json(
            429,
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":50}"#,
        )
    })
    .await;
    let err = stub.client(2).whoami().await.unwrap_err();
    match err {
        HomeserverError::Status {
            status, errcode, ..
        } => {
            assert_eq!(status, 429);
            assert_eq!(errcode.as_deref(), Some("M_LIMIT_EXCEEDED"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.count(), 3);
}

// ---------------------------------------------------------------- 5xx

#[tokio::test]
async fn two_500s_then_200_succeeds_with_growing_waits() {
    let stub = Stub::start(|i, _| match i {
        0 | 1 => json(
            500,
            r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#,
        ),
        _ => json(201, "{}"),
    })
    .await;
    let client = stub.client(5);
    let changes = UserChanges {
        displayname: Some("Bob".into()),
        ..UserChanges::default()
    };
    assert_eq!(
        client
            .upsert_user("@bob:example.org", &changes)
            .await
            .unwrap(),
        Upserted::Created
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 3);
    // Equal jitter: the first wait is at least base/2, the second at least base.
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(20));
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(40));
    // The PUT is sent whole each time.
    assert!(seen
        .iter()
        .all(|s| s.method == "PUT" && s.body == seen[0].body));
    assert_eq!(client.retries(), 2);
}

#[tokio::test]
async fn a_500_forever_gives_up_after_max_retries_with_the_status() {
    let stub = Stub::start(|_, _| {
        json(
            500,
            r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#,
        )
    })
    .await;
    let client = stub.client(3);
    let err = client.get_user("@carol:example.org").await.unwrap_err();
    match &err {
        HomeserverError::Status {
            method,
            status,
            errcode,
            message,
            ..
        } => {
            assert_eq!((method.as_str(), *status), ("GET", 500));
            assert_eq!(errcode.as_deref(), Some("M_UNKNOWN"));
            assert!(message.contains("after 3 retries"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_auth());
    assert_eq!(stub.count(), 4, "1 try + max_retries retries");
    assert_eq!(client.retries(), 3);
}

#[tokio::test]
async fn a_502_without_a_json_body_is_retried_and_reported_with_its_text() {
    let stub = Stub::start(|_, _| json(502, "<html>Bad Gateway</html>")).await;
    let err = stub.client(1).whoami().await.unwrap_err();
    match err {
        HomeserverError::Status {
            status,
            errcode,
            message,
            ..
        } => {
            assert_eq!(status, 502);
            assert_eq!(errcode, None);
            assert!(message.contains("Bad Gateway"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.count(), 2);
}

// ---------------------------------------------------------------- 4xx

#[tokio::test]
async fn a_401_is_an_auth_error_and_is_not_retried() {
    let stub = Stub::start(|_, _| {
        json(
            401,
            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed."}"#,
        )
    })
    .await;
    let client = stub.client(5);
    let err = client.check_admin().await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    assert!(err.to_string().contains("M_UNKNOWN_TOKEN"), "{err}");
    assert!(err.to_string().contains("not valid"), "{err}");
    assert_eq!(stub.count(), 1);
    assert_eq!(client.retries(), 0);
}

#[tokio::test]
async fn a_non_admin_token_fails_check_admin_with_a_clear_message() {
    let stub = Stub::start(|_, s| {
        if s.target.starts_with("/_synapse/admin/v1/server_version") {
            json(200, r#"{"server_version":"1.163.0"}"#)
        } else {
            json(
                403,
                r#"{"errcode":"M_FORBIDDEN","error":"You are not a server admin"}"#,
            )
        }
    })
    .await;
    let err = stub.client(5).check_admin().await.unwrap_err();
    assert!(err.is_auth());
    assert!(err.to_string().contains("not a server admin"), "{err}");
    assert_eq!(stub.count(), 2);
}

#[tokio::test]
async fn a_404_is_none_only_when_synapse_says_m_not_found() {
    let stub = Stub::start(|_, s| {
        if s.target.contains("ghost") {
            json(404, r#"{"errcode":"M_NOT_FOUND","error":"User not found"}"#)
        } else {
            // e.g. a wrong base URL behind a reverse proxy
            json(404, "<html>Not Found</html>")
        }
    })
    .await;
    let client = stub.client(5);
    assert_eq!(client.get_user("@ghost:example.org").await.unwrap(), None);
    let err = client.get_user("@alice:example.org").await.unwrap_err();
    assert!(
        matches!(
            err,
            HomeserverError::Status {
                status: 404,
                errcode: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(stub.count(), 2, "404s are not retried");
}

#[tokio::test]
async fn a_400_is_final_and_keeps_errcode_and_message() {
    let stub = Stub::start(|_, _| {
        json(
            400,
            r#"{"errcode":"M_INVALID_PARAM","error":"An account can't be both locked and deactivated"}"#,
        )
    })
    .await;
    let err = stub
        .client(5)
        .upsert_user("@dan:example.org", &UserChanges::default())
        .await
        .unwrap_err();
    match err {
        HomeserverError::Status {
            status,
            errcode,
            message,
            ..
        } => {
            assert_eq!(status, 400);
            assert_eq!(errcode.as_deref(), Some("M_INVALID_PARAM"));
            assert!(message.contains("both locked and deactivated"));
            assert!(!message.contains("retries"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.count(), 1);
}

// ---------------------------------------------------------------- transport

#[tokio::test]
async fn a_connection_cut_mid_response_is_retried() {
    let stub = Stub::start(|i, _| match i {
        0 => Action::Cut,
        _ => json(200, &user_json("@erin:example.org")),
    })
    .await;
    let client = stub.client(3);
    let user = client.get_user("@erin:example.org").await.unwrap().unwrap();
    assert_eq!(user.emails, vec!["a@example.org".to_string()]);
    assert_eq!(stub.count(), 2);
    assert_eq!(client.retries(), 1);
}

#[tokio::test]
async fn connections_always_cut_end_in_a_transport_error() {
    let stub = Stub::start(|_, _| Action::Cut).await;
    let err = stub
        .client(2)
        .get_user("@erin:example.org")
        .await
        .unwrap_err();
    match &err {
        HomeserverError::Transport { message, .. } => {
            assert!(message.contains("cut short"), "{message}");
            assert!(message.contains("after 2 retries"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.count(), 3);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_configured_timeout() {
    let stub = Stub::start(|_, _| Action::Hang).await;
    let timeout = Duration::from_millis(500);
    let first = client(&stub.config(4, timeout, 0));
    let start = Instant::now();
    let err = first.whoami().await.unwrap_err();
    let elapsed = start.elapsed();
    match &err {
        HomeserverError::Transport { message, .. } => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    assert!(elapsed < timeout * 3, "took {elapsed:?}");
    assert_eq!(stub.count(), 1);

    // Retries allowed or not, a request that got no answer within the timeout is not sent
    // again: a retry would only double the wait (the breaker judges across requests).
    let client = client(&stub.config(4, timeout, 2));
    let start = Instant::now();
    assert!(client.whoami().await.is_err());
    let elapsed = start.elapsed();
    assert_eq!(stub.count(), 1 + 1);
    assert_eq!(client.retries(), 0);
    assert!(elapsed < timeout * 2, "{elapsed:?}");
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = HomeserverConfig {
        url: url::Url::parse(&format!("http://{addr}")).unwrap(),
        server_name: "example.org".into(),
        access_token: Secret::new(TOKEN),
        concurrency: 2,
        timeout: Duration::from_secs(2),
        max_retries: 2,
        retry_refused_after: std::time::Duration::from_secs(86_400),
        breaker_failures: 3,
        run_deadline: std::time::Duration::from_secs(3600),
    };
    let client = client(&cfg);
    let err = client.whoami().await.unwrap_err();
    match &err {
        HomeserverError::Transport { message, .. } => {
            assert!(message.contains("cannot connect"), "{message}");
            assert!(!message.contains(TOKEN));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.retries(), 2);
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_never_exceed_concurrency_even_while_retrying() {
    // Every other request fails once with a 503, all are slow: plenty of chances to
    // overshoot if the bound were per call rather than per client.
    let failed_once = Mutex::new(std::collections::HashSet::new());
    let stub = Stub::start(move |i, s| {
        if i % 2 == 0 && failed_once.lock().unwrap().insert(s.target.clone()) {
            json(503, r#"{"errcode":"M_UNKNOWN","error":"busy"}"#)
        } else {
            Action::Respond {
                status: 200,
                headers: vec![],
                body: user_json("@x:example.org"),
                delay: Duration::from_millis(60),
            }
        }
    })
    .await;
    let concurrency = 3;
    // The first 503s of different requests may come in a row: this test is not about the
    // breaker.
    let mut cfg = stub.config(concurrency, Duration::from_secs(5), 5);
    cfg.breaker_failures = 1000;
    let client = Arc::new(client(&cfg));
    let tasks: Vec<_> = (0..30)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.get_user(&format!("@user{n}:example.org")).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
    let peak = stub.max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= concurrency, "peak {peak} > {concurrency}");
    assert_eq!(peak, concurrency, "the client should use all its slots");
    assert!(client.retries() > 0);
}

// ---------------------------------------------------------------- what is sent

#[tokio::test]
async fn upsert_sends_only_the_fields_set_to_a_percent_encoded_path() {
    let stub = Stub::start(|i, _| json(if i == 0 { 201 } else { 200 }, "{}")).await;
    let client = stub.client(0);
    let name_only = UserChanges {
        displayname: Some("Zoë Ünicode".into()),
        ..UserChanges::default()
    };
    assert_eq!(
        client
            .upsert_user("@zoe/x?y:example.org", &name_only)
            .await
            .unwrap(),
        Upserted::Created
    );
    let emails_only = UserChanges {
        emails: Some(vec!["z@example.org".into(), "zoe@example.org".into()]),
        ..UserChanges::default()
    };
    assert_eq!(
        client
            .upsert_user("@zoe:example.org", &emails_only)
            .await
            .unwrap(),
        Upserted::Updated
    );
    let seen = stub.seen();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(
        seen[0].target,
        "/_synapse/admin/v2/users/%40zoe%2Fx%3Fy%3Aexample.org"
    );
    let body0: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body0, serde_json::json!({"displayname": "Zoë Ünicode"}));
    let body1: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(
        body1,
        serde_json::json!({"threepids": [
            {"medium": "email", "address": "z@example.org"},
            {"medium": "email", "address": "zoe@example.org"}
        ]})
    );
}

#[tokio::test]
async fn list_users_follows_next_token_and_asks_for_deactivated_and_locked() {
    let stub = Stub::start(|_, s| {
        let from = s
            .target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("from="))
            .unwrap_or("0");
        let (users, next) = match from {
            "0" => (
                r#"{"name":"@a:x"},{"name":"@b:x","deactivated":true}"#,
                r#","next_token":"2""#,
            ),
            "2" => (
                r#"{"name":"@c:x","locked":true},{"name":"@b:x","deactivated":true}"#,
                r#","next_token":"4""#,
            ),
            _ => (r#"{"name":"@d:x","admin":true}"#, ""),
        };
        json(200, &format!(r#"{{"users":[{users}],"total":5{next}}}"#))
    })
    .await;
    let client = stub.client(0).with_page_size(2);
    let users = client.list_users().await.unwrap();
    let names: Vec<_> = users.iter().map(|u| u.mxid.as_str()).collect();
    assert_eq!(
        names,
        ["@a:x", "@b:x", "@c:x", "@d:x"],
        "each once, in order"
    );
    assert!(users[1].deactivated && users[2].locked && users[3].admin);
    let seen = stub.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert!(s.target.starts_with("/_synapse/admin/v2/users?"));
        assert!(s.target.contains("limit=2"), "{}", s.target);
        assert!(s.target.contains("deactivated=true"), "{}", s.target);
        assert!(s.target.contains("locked=true"), "{}", s.target);
    }
    assert!(seen[1].target.contains("from=2") && seen[2].target.contains("from=4"));
}

#[tokio::test]
async fn list_users_refuses_a_next_token_that_does_not_advance() {
    let stub =
        Stub::start(|_, _| json(200, r#"{"users":[{"name":"@a:x"}],"next_token":"1"}"#)).await;
    let err = stub.client(0).list_users().await.unwrap_err();
    assert!(matches!(err, HomeserverError::BadReply { .. }), "{err:?}");
    assert!(stub.count() <= 2);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let stub = Stub::start(|_, _| Action::Respond {
        status: 302,
        headers: vec![("Location", "/elsewhere".into())],
        body: String::new(),
        delay: Duration::ZERO,
    })
    .await;
    let err = stub
        .client(3)
        .upsert_user("@fay:example.org", &UserChanges::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HomeserverError::Status { status: 302, .. }),
        "{err:?}"
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_holds_back_the_clients_other_requests_too() {
    let stub = Stub::start(|i, _| match i {
        0 => json(
            429,
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":600}"#,
        ),
        _ => json(200, r#"{"user_id":"@admin:example.org"}"#),
    })
    .await;
    let client = Arc::new(stub.client(3));
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.whoami().await })
    };
    // Let the 429 arrive, then start more requests while the pause is in force.
    while stub.count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let others: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.whoami().await })
        })
        .collect();
    first.await.unwrap().unwrap();
    for o in others {
        o.await.unwrap().unwrap();
    }
    let seen = stub.seen();
    assert_eq!(seen.len(), 6, "one 429, its retry, four others");
    for later in &seen[1..] {
        let gap = later.at - seen[0].at;
        assert!(
            gap >= Duration::from_millis(600),
            "a request went out {gap:?} after the 429"
        );
    }
    assert_eq!(
        client.retries(),
        1,
        "the others waited instead of being refused"
    );
}

// ---------------------------------------------------------------- breaker and halt

const SERVER_ERROR: &str = r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#;

#[tokio::test]
async fn different_requests_failing_in_a_row_open_the_breaker_one_retried_counts_once() {
    let stub = Stub::start(|_, _| json(500, SERVER_ERROR)).await;
    let client = stub.client(5); // breaker_failures = 3
                                 // Two requests, each through all its retries: one count each.
    for who in ["@a:example.org", "@b:example.org"] {
        match client.get_user(who).await.unwrap_err() {
            HomeserverError::Status { status: 500, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stub.count(), 12);
    // The third different request opens it: given up on its first failure, with one error
    // naming the homeserver.
    let err = client.get_user("@c:example.org").await.unwrap_err();
    let text = err.to_string();
    match &err {
        HomeserverError::Halted {
            halt: Halt::NotAnswering { failures: 3, .. },
            unanswered: Some(request),
        } => assert!(request.contains("@c:example.org"), "{request}"),
        other => panic!("{other:?}"),
    }
    assert!(text.starts_with("homeserver not answering: "), "{text}");
    assert!(text.contains(&stub.addr.to_string()), "{text}");
    assert_eq!(stub.count(), 13);
    // Open: nothing more is sent.
    match client.get_user("@d:example.org").await.unwrap_err() {
        HomeserverError::Halted {
            unanswered: None, ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.count(), 13);
    // A new run closes it.
    client.breaker().reset();
    assert!(client.get_user("@e:example.org").await.is_err());
    assert_eq!(stub.count(), 19);
}

#[tokio::test]
async fn any_answer_below_500_starts_the_count_again() {
    // `@ok…` users: 404 (a refusal, but an answer); everyone else: 503.
    let stub = Stub::start(|_, seen| {
        if seen.target.contains("ok") {
            json(404, r#"{"errcode":"M_NOT_FOUND","error":"User not found"}"#)
        } else {
            json(503, SERVER_ERROR)
        }
    })
    .await;
    let client = stub.client(0);
    for n in 0..5 {
        assert!(matches!(
            client.get_user(&format!("@bad{n}:example.org")).await,
            Err(HomeserverError::Status { status: 503, .. })
        ));
        assert_eq!(
            client
                .get_user(&format!("@ok{n}:example.org"))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(client.breaker().halted(), None);
    for n in 0..2 {
        assert!(client
            .get_user(&format!("@bad-again{n}:example.org"))
            .await
            .is_err());
    }
    assert!(matches!(
        client.get_user("@bad-third:example.org").await,
        Err(HomeserverError::Halted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_stops_every_request_within_about_one_timeout() {
    let stub = Stub::start(|_, _| Action::Hang).await;
    let timeout = Duration::from_millis(800);
    // The defaults that took minutes: five retries per request.
    let client = Arc::new(client(&stub.config(4, timeout, 5)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move {
                let changes = UserChanges {
                    displayname: Some(format!("User {n}")),
                    emails: None,
                    external_ids: None,
                };
                client
                    .upsert_user(&format!("@u{n}:example.org"), &changes)
                    .await
            })
        })
        .collect();
    let mut halted = 0;
    for t in tasks {
        match t.await.unwrap().unwrap_err() {
            HomeserverError::Halted { .. } => halted += 1,
            HomeserverError::Transport { message, .. } => {
                assert!(message.contains("timed out"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    let took = start.elapsed();
    eprintln!(
        "20 updates, 4 in flight, 5 retries, {timeout:?} timeout, nothing answers: all given up in {took:?}, {} sent",
        stub.count()
    );
    // Only the first wave went out; none was sent twice.
    assert_eq!(stub.count(), 4);
    assert!(halted >= 17, "{halted} halted");
    assert!(
        took < timeout * 2 + Duration::from_millis(500),
        "took {took:?}"
    );
}

#[tokio::test]
async fn a_halt_gives_up_a_request_waiting_for_its_answer_at_once() {
    let stub = Stub::start(|_, _| Action::Hang).await;
    let client = Arc::new(client(&stub.config(2, Duration::from_secs(20), 5)));
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.whoami().await })
    };
    while stub.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    client.breaker().halt(Halt::Deadline {
        after: Duration::from_secs(3600),
    });
    let err = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the request was not given up")
        .unwrap()
        .unwrap_err();
    eprintln!(
        "halted a request waiting for its answer in {:?}",
        asked.elapsed()
    );
    match &err {
        HomeserverError::Halted {
            halt: Halt::Deadline { .. },
            unanswered: Some(_),
        } => assert!(err.to_string().starts_with("run deadline reached"), "{err}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_opens_the_breaker_in_seconds_even_one_request_at_a_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // The default backoff (250 ms doubling), as a real run has it.
    let client = SynapseClient::new(&config_at(addr, 1, Duration::from_secs(30), 5)).unwrap();
    let start = Instant::now();
    let mut errors = Vec::new();
    for n in 0..5 {
        errors.push(
            client
                .get_user(&format!("@u{n}:example.org"))
                .await
                .unwrap_err(),
        );
    }
    let took = start.elapsed();
    eprintln!("nothing listening, one request at a time: breaker open after {took:?}");
    assert!(
        matches!(errors[0], HomeserverError::Transport { .. }),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(errors[1], HomeserverError::Transport { .. }),
        "{:?}",
        errors[1]
    );
    assert!(
        errors[2..].iter().all(HomeserverError::is_halt),
        "{errors:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
