//! Real-time push against the real `cti-server` binary (spec §4.5 and group L, T117–T126), on
//! SQLite and (when reachable) PostgreSQL: handshakes, delivery and isolation, one message per
//! logical event with a gap-free `seq`, fixture lifecycles on a CRM user's channel, resume with
//! `since` after a disconnect mid-call, heartbeat, inbound frame rules, close codes (4001 on key
//! rotation/revocation/deactivation — also from the admin CLI in another process — and 1001 on
//! shutdown), a stalled client that must not delay others, and two server processes sharing one
//! PostgreSQL schema.
//!
//! What needs in-process control (queue overflow → `lagged`/4008, a resume position older than
//! the retained window → 4002, long backlogs) is tested in `cti-axum/tests/ws.rs`.

use std::time::Duration;

use cti_e2e::ws::*;
use cti_e2e::{Server, ServerOptions, postgres_url};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cti-server");

/// Dialpad user of the fixture calls `call_inbound_*` and `call_hold_*` (Avery).
const AVERY: u64 = 5_151_009_844_330_496;
/// Dialpad user of the fixture calls `call_voicemail_*` (Jordan).
const JORDAN: u64 = 6_287_001_192_443_904;

/// Defines `<name>::sqlite` and `<name>::postgres` running the same scenario against a fresh
/// server (options adjusted by the optional closure).
macro_rules! scenario {
    ($name:ident, $body:ident) => {
        scenario!($name, $body, |o: ServerOptions| o);
    };
    ($name:ident, $body:ident, $opts:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let s = Server::start(BIN, ($opts)(ServerOptions::sqlite())).await;
                $body(&s.url).await;
            }
            #[tokio::test]
            async fn postgres() {
                let Some(url) = postgres_url().await else {
                    return;
                };
                let s = Server::start(BIN, ($opts)(ServerOptions::postgres(url))).await;
                $body(&s.url).await;
            }
        }
    };
}

/// Like [`scenario!`] for bodies that need a [`Cluster`] (several processes or the admin CLI).
macro_rules! cluster_scenario {
    ($name:ident, $body:ident, $n:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let c = Cluster::start(BIN, SharedDb::Sqlite, $n, &[]).await;
                $body(&c).await;
            }
            #[tokio::test]
            async fn postgres() {
                let Some(url) = postgres_url().await else {
                    return;
                };
                let c = Cluster::start(BIN, SharedDb::Postgres(url), $n, &[]).await;
                $body(&c).await;
            }
        }
    };
}

const SHORT: Duration = Duration::from_millis(300);
const DELIVERY: Duration = Duration::from_secs(2);
const CLOSE: Duration = Duration::from_secs(5);

fn key_query(key: &str) -> String {
    format!("api_key={key}")
}

/// Next message, which must arrive within [`DELIVERY`].
async fn expect_json(ws: &mut Client, what: &str) -> Value {
    match next_json(ws, DELIVERY).await {
        Some(v) => v,
        None => panic!("{what}: no message within {DELIVERY:?}"),
    }
}

/// `n` messages, each within [`DELIVERY`] of the previous one.
async fn expect_n(ws: &mut Client, n: usize, what: &str) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match next_json(ws, DELIVERY).await {
            Some(v) => out.push(v),
            None => panic!("{what}: only {i} of {n} messages; got {out:?}"),
        }
    }
    out
}

fn names(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect()
}

/// Posts every event of a fixture lifecycle as a signed Dialpad JWT to the app's route.
async fn play(base: &str, app_id: &str, lifecycle_name: &str) {
    for file in lifecycle(lifecycle_name) {
        jwt_hook(base, app_id, &fixture_event(&file)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// T117–T121: handshakes

async fn handshakes(base: &str) {
    let (_a, ka) = create_app(base, "Tenant A").await;
    let (c, kc) = create_app(base, "Tenant C").await;
    deactivate_app(base, &c).await;

    // T117: no key → 401 before any upgrade (empty values count as missing).
    assert_eq!(
        refused(ws_url(base, "")).await,
        (401, json!({"error": "Unauthorized"}))
    );
    assert_eq!(refused(ws_url(base, "api_key=")).await.0, 401);
    // T118: unknown key, inactive app → 403.
    let zeros = format!("raw_{}", "0".repeat(64));
    assert_eq!(
        refused(ws_url(base, &key_query(&zeros))).await,
        (403, json!({"error": "Forbidden"}))
    );
    assert_eq!(
        refused(ws_url(base, &key_query(&kc))).await,
        (403, json!({"error": "Forbidden"}))
    );
    // T119: key in the query; T120: key in the header.
    let q = connect(base, &key_query(&ka)).await;
    let mut req = match ws_url(base, "").into_client_request() {
        Ok(r) => r,
        Err(e) => panic!("request: {e}"),
    };
    req.headers_mut().insert(
        "x-app-api-key",
        ka.parse().unwrap_or_else(|e| panic!("{e}")),
    );
    let h = connect_request(req).await;
    assert!(wait_ws_connections(base, 2, DELIVERY).await);
    // T121: only the exact path.
    for path in ["/wsx", "/ws/x", "/wsfoo"] {
        let url = ws_path(base, &format!("{path}?{}", key_query(&ka)));
        assert_eq!(refused(url).await.0, 404, "{path}");
    }
    // Malformed optional parameters are client errors, not silent defaults.
    for q in ["since=abc", "since=-1", "since=1.5"] {
        let url = ws_url(base, &format!("{}&{q}", key_query(&ka)));
        let (status, body) = refused(url).await;
        assert_eq!(status, 400, "{q}");
        assert!(body["error"].is_string(), "{q}: {body}");
    }
    let long = "u".repeat(256);
    assert_eq!(
        refused(ws_url(
            base,
            &format!("{}&crm_user_id={long}", key_query(&ka))
        ))
        .await
        .0,
        400
    );
    // A valid key without the upgrade handshake: a JSON client error, never HTML.
    let r = match cti_e2e::client()
        .get(format!("{base}/ws?{}", key_query(&ka)))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => panic!("GET /ws: {e}"),
    };
    let status = r.status().as_u16();
    assert!(status == 400 || status == 426, "plain GET /ws: {status}");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(body["error"].is_string(), "{body}");
    disconnect(q).await;
    disconnect(h).await;
}
scenario!(t117_t121_handshakes, handshakes);

// ---------------------------------------------------------------------------------------------
// T122–T124: delivery, one message per logical event, isolation

async fn delivery_and_isolation(base: &str) {
    let (a, ka) = create_app(base, "Tenant A").await;
    let (_b, kb) = create_app(base, "Tenant B").await;
    map_user(base, &a, 12345, "crm_1").await;
    let mut sa = connect(base, &key_query(&ka)).await;
    let mut sb = connect(base, &key_query(&kb)).await;
    let mut sa2 = connect(base, &format!("{}&crm_user_id=crm_2", key_query(&ka))).await;

    // T122
    hook(
        base,
        &ka,
        json!({"event_type":"call.ring","call_id":3001,"direction":"inbound",
               "from":"+15550007777","to":"+15550002222","user_id":12345}),
    )
    .await;
    let m = expect_json(&mut sa, "T122 SA").await;
    for (k, v) in [
        ("event", json!("call.ring")),
        ("call_id", json!("3001")),
        ("direction", json!("inbound")),
        ("from_number", json!("+15550007777")),
        ("to_number", json!("+15550002222")),
        ("status", json!("ringing")),
        ("user_id", json!("12345")),
        ("target_crm_user", json!("crm_1")),
        ("seq", json!(1)),
    ] {
        assert_eq!(m[k], v, "T122 {k}: {m}");
    }
    assert!(is_timestamp(&m["timestamp"]), "{m}");
    assert_eq!(
        next_json(&mut sa, Duration::from_secs(3)).await,
        None,
        "T122: exactly one message"
    );
    assert_eq!(next_json(&mut sb, SHORT).await, None, "T122: SB");
    assert_eq!(next_json(&mut sa2, SHORT).await, None, "T122: SA2 (crm_2)");

    // T123
    hook(
        base,
        &ka,
        json!({"event_type":"call.ended","call_id":3001,"duration":42}),
    )
    .await;
    let m = expect_json(&mut sa, "T123").await;
    assert_eq!(
        (
            &m["event"],
            &m["call_id"],
            &m["status"],
            &m["duration_seconds"],
            &m["seq"]
        ),
        (
            &json!("call.ended"),
            &json!("3001"),
            &json!("ended"),
            &json!(42),
            &json!(2)
        ),
        "{m}"
    );
    assert_eq!(next_json(&mut sa, SHORT).await, None, "T123: exactly one");

    // T124
    hook(
        base,
        &ka,
        json!({"event_type":"call.ring","call_id":3002,"user_id":12345,"direction":"inbound"}),
    )
    .await;
    hook(
        base,
        &ka,
        json!({"event_type":"voicemail.received","voicemail":{"call_id":3002,"user_id":12345,
               "from":"+15550008888","to":"+15550002222",
               "recording_url":"https://files.example.com/vm3002.mp3","duration":12}}),
    )
    .await;
    let msgs = drain_json(&mut sa, Duration::from_millis(1500)).await;
    let voicemails: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["event"] == "voicemail.received")
        .collect();
    assert_eq!(voicemails.len(), 1, "T124: {msgs:?}");
    let vm = voicemails[0];
    assert!(
        vm["voicemail_id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{vm}"
    );
    assert_eq!(vm["call_id"], "3002");
    assert_eq!(vm["recording_url"], "https://files.example.com/vm3002.mp3");
    assert_eq!(vm["duration_seconds"], 12);
    assert_eq!(vm["target_crm_user"], "crm_1");
    // Every message of the app so far, in order, numbered without gaps.
    let want: Vec<u64> = (3..3 + msgs.len() as u64).collect();
    assert_eq!(seqs(&msgs), want, "{msgs:?}");
    assert_eq!(next_json(&mut sb, SHORT).await, None, "T124: SB");
    assert_eq!(next_json(&mut sa2, SHORT).await, None, "T124: SA2");
}
scenario!(t122_t124_delivery_and_isolation, delivery_and_isolation);

// ---------------------------------------------------------------------------------------------
// T125 (+ rotation): key changes through the internal API close sockets with 4001

async fn key_changes_close_4001(base: &str) {
    // T125: revocation.
    let (a, ka) = create_app(base, "Tenant A").await;
    let mut sa = connect(base, &key_query(&ka)).await;
    let mut sa_user = connect(base, &format!("{}&crm_user_id=crm_1", key_query(&ka))).await;
    revoke_key(base, &a).await;
    assert_eq!(close_code(&mut sa, CLOSE).await, 4001);
    assert_eq!(close_code(&mut sa_user, CLOSE).await, 4001);
    assert_eq!(refused(ws_url(base, &key_query(&ka))).await.0, 403);

    // Rotation: old-key sockets close, the old key stops working, the new one connects.
    let (d, kd) = create_app(base, "Tenant D").await;
    let (e, ke) = create_app(base, "Tenant E").await;
    let mut sd = connect(base, &key_query(&kd)).await;
    let mut se = connect(base, &key_query(&ke)).await;
    let new_key = rotate_key(base, &d).await;
    let (code, reason) = close_frame(&mut sd, CLOSE).await;
    assert_eq!(code, 4001);
    assert!(!reason.is_empty());
    assert_eq!(refused(ws_url(base, &key_query(&kd))).await.0, 403);
    let mut sd2 = connect(base, &key_query(&new_key)).await;
    // Other tenants are untouched.
    assert!(send_text(&mut se, r#"{"type":"ping"}"#).await);
    assert_eq!(expect_json(&mut se, "E still open").await["type"], "pong");
    assert!(send_text(&mut sd2, r#"{"type":"ping"}"#).await);
    assert_eq!(expect_json(&mut sd2, "new key").await["type"], "pong");

    // Deactivation closes too.
    let mut se_user = connect(base, &format!("{}&crm_user_id=crm_9", key_query(&ke))).await;
    deactivate_app(base, &e).await;
    assert_eq!(close_code(&mut se, CLOSE).await, 4001);
    assert_eq!(close_code(&mut se_user, CLOSE).await, 4001);
}
scenario!(t125_key_changes_close_4001, key_changes_close_4001);

// ---------------------------------------------------------------------------------------------
// T126: heartbeat (WS_HEARTBEAT_MS=300 instead of 30 s)

async fn heartbeat(base: &str) {
    let (_a, ka) = create_app(base, "Tenant A").await;
    let mut live = connect(base, &key_query(&ka)).await;
    let silent = connect(base, &key_query(&ka)).await; // never read: never answers a ping
    assert!(wait_ws_connections(base, 2, DELIVERY).await);

    // The live client reads, so tungstenite answers each ping; it sees several.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(msg) = tokio::time::timeout_at(until, live.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("live client got {other:?}"),
        }
    }
    assert!(pings >= 3, "pings in 1.5 s at 300 ms: {pings}");

    // The silent one missed a ping window: the server dropped it (counted from the server).
    assert!(
        wait_ws_connections(base, 1, Duration::from_secs(3)).await,
        "silent peer still connected"
    );
    let mut silent = silent;
    assert!(ends_within(&mut silent, DELIVERY).await);

    // The live one is still served.
    assert!(send_text(&mut live, r#"{"type":"ping"}"#).await);
    assert_eq!(expect_json(&mut live, "pong").await["type"], "pong");
}
scenario!(t126_heartbeat, heartbeat, |o: ServerOptions| o
    .with_env("WS_HEARTBEAT_MS", "300"));

// ---------------------------------------------------------------------------------------------
// Inbound frames: JSON ping → pong, everything else ignored, 64 KiB limit

async fn inbound_frames(base: &str) {
    let (_a, ka) = create_app(base, "Tenant A").await;
    let mut ws = connect(base, &key_query(&ka)).await;
    for junk in [
        "not json",
        "[]",
        r#"{"type":"subscribe"}"#,
        r#"{"type":"pong"}"#,
    ] {
        assert!(send_text(&mut ws, junk).await);
    }
    assert!(send_text(&mut ws, r#"{"type":"ping"}"#).await);
    let pong = expect_json(&mut ws, "pong").await;
    assert_eq!(pong["type"], "pong");
    assert!(is_timestamp(&pong["timestamp"]), "{pong}");
    assert_eq!(
        next_json(&mut ws, SHORT).await,
        None,
        "one pong, nothing for junk"
    );

    // Exactly 64 KiB is accepted (and ignored) …
    assert!(send_text(&mut ws, &"x".repeat(64 * 1024)).await);
    assert!(send_text(&mut ws, r#"{"type":"ping"}"#).await);
    assert_eq!(expect_json(&mut ws, "after 64 KiB").await["type"], "pong");
    // … one byte more drops the socket.
    let _ = send_text(&mut ws, &"x".repeat(64 * 1024 + 1)).await;
    assert!(
        ends_within(&mut ws, CLOSE).await,
        "oversized frame accepted"
    );
}
scenario!(inbound_frames_and_json_ping, inbound_frames);

// ---------------------------------------------------------------------------------------------
// Fixture lifecycles on a CRM user's channel

async fn lifecycle_on_crm_user_channel(base: &str) {
    let (a, ka) = create_app(base, "Tenant A").await;
    // One CRM user with two Dialpad lines; another CRM user with none of these calls.
    map_user(base, &a, AVERY, "crm_1").await;
    map_user(base, &a, JORDAN, "crm_1").await;
    let mut user1 = connect(base, &format!("{}&crm_user_id=crm_1", key_query(&ka))).await;
    let mut user2 = connect(base, &format!("{}&crm_user_id=crm_2", key_query(&ka))).await;
    let mut app = connect(base, &key_query(&ka)).await;

    // ring → connected → hangup, connected → hold → resume → hangup, ring → voicemail.
    let plan = [
        (
            "inbound_answered",
            vec!["call.ring", "call.started", "call.ended"],
        ),
        (
            "hold_and_resume",
            vec!["call.started", "call.held", "call.resumed", "call.ended"],
        ),
        (
            "inbound_voicemail",
            vec!["call.ring", "call.voicemail", "voicemail.received"],
        ),
    ];
    let mut all = Vec::new();
    for (name, want) in plan {
        play(base, &a, name).await;
        // One lifecycle at a time, so the expected order is the lifecycle's order.
        let got = expect_n(&mut app, want.len(), name).await;
        assert_eq!(names(&got), want, "{name} on the app channel");
        let mine = expect_n(&mut user1, want.len(), name).await;
        assert_eq!(mine, got, "{name}: crm_1 receives the same messages");
        for m in &mine {
            assert_eq!(m["target_crm_user"], "crm_1", "{m}");
            assert!(m["call_id"].is_string() && m["user_id"].is_string(), "{m}");
        }
        all.extend(got);
    }
    let want: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(seqs(&all), want);
    let vm = &all[all.len() - 1];
    assert_eq!(vm["dialpad_call_id"], "5609872347414528", "{vm}");
    assert!(vm["recording_url"].is_string(), "{vm}");
    assert_eq!(
        next_json(&mut user1, SHORT).await,
        None,
        "crm_1: nothing more"
    );
    assert_eq!(next_json(&mut user2, SHORT).await, None, "crm_2: nothing");
    assert_eq!(
        next_json(&mut app, SHORT).await,
        None,
        "one message per event"
    );
}
scenario!(lifecycle_on_crm_user_channel, lifecycle_on_crm_user_channel);

// ---------------------------------------------------------------------------------------------
// Resume with `since` after a disconnect in the middle of a call

async fn resume_mid_call(base: &str) {
    let (a, ka) = create_app(base, "Tenant A").await;
    map_user(base, &a, AVERY, "crm_1").await;
    let user_q = format!("{}&crm_user_id=crm_1", key_query(&ka));
    let mut watcher = connect(base, &key_query(&ka)).await;
    let mut ws = connect(base, &user_q).await;
    let hold = lifecycle("hold_and_resume");
    assert_eq!(hold.len(), 4);

    // connected, hold → seen live.
    for f in &hold[..2] {
        jwt_hook(base, &a, &fixture_event(f)).await;
    }
    let live = expect_n(&mut ws, 2, "before the disconnect").await;
    assert_eq!(names(&live), ["call.started", "call.held"]);
    let last = live[1]["seq"].as_u64().unwrap_or(0);
    disconnect(ws).await;

    // resume, hangup happen while the client is away.
    for f in &hold[2..] {
        jwt_hook(base, &a, &fixture_event(f)).await;
    }
    let missed = expect_n(&mut watcher, 4, "watcher").await;
    assert_eq!(names(&missed[2..]), ["call.resumed", "call.ended"]);

    // Reconnect with since=<last seq seen>: exactly the missed events, in order, no duplicate;
    // then the live stream continues.
    let mut ws = connect(base, &format!("{user_q}&since={last}")).await;
    let replay = expect_n(&mut ws, 2, "replay").await;
    assert_eq!(names(&replay), ["call.resumed", "call.ended"]);
    assert_eq!(seqs(&replay), [last + 1, last + 2]);
    assert_eq!(next_json(&mut ws, SHORT).await, None, "no duplicate");
    play(base, &a, "inbound_answered").await;
    let more = expect_n(&mut ws, 3, "live after resume").await;
    assert_eq!(names(&more), ["call.ring", "call.started", "call.ended"]);
    assert_eq!(seqs(&more), [last + 3, last + 4, last + 5]);

    // A resume from 0 replays everything retained, in order.
    let mut from_zero = connect(base, &format!("{}&since=0", key_query(&ka))).await;
    let everything = expect_n(&mut from_zero, 7, "since=0").await;
    assert_eq!(seqs(&everything), (1..=7).collect::<Vec<u64>>());
    // A position ahead of the stream is simply "up to date".
    let mut ahead = connect(base, &format!("{}&since=1000", key_query(&ka))).await;
    assert_eq!(next_json(&mut ahead, SHORT).await, None);
}
scenario!(resume_after_disconnect_mid_call, resume_mid_call);

// ---------------------------------------------------------------------------------------------
// A stalled client (never reads, 4 KiB receive buffer) does not delay another client

async fn stalled_client(base: &str) {
    // 30 transcriptions of 300 kB: 9 MB for the stalled socket, more than the kernel buffers of a
    // loopback connection hold (send buffer autotuned to ≤ 4 MB by default), so the server's
    // writes to it really block — and each message exceeds 256 kB.
    const BIG: u64 = 30;
    const SMALL: u64 = 100;
    let (a, ka) = create_app(base, "Tenant A").await;
    let mut stalled = connect_stalled(base, &key_query(&ka), 4096).await;
    let mut fast = connect(base, &key_query(&ka)).await;
    let transcript = "Avery Quinn: thanks for calling. ".repeat(300_000 / 33);
    let mut next_seq = 1;
    for i in 0..BIG {
        let mut event = fixture_event("call_inbound_06_call_transcription.json");
        event["call_id"] = json!(30_000 + i);
        event["transcription_text"] = json!(transcript);
        jwt_hook(base, &a, &event).await;
        let m = expect_json(&mut fast, "transcription").await;
        assert_eq!(
            (&m["event"], &m["seq"]),
            (&json!("call.transcription"), &json!(next_seq))
        );
        assert_eq!(
            m["transcript"].as_str().map(str::len),
            Some(transcript.len())
        );
        next_seq += 1;
    }
    // Meanwhile small events still reach the other client at once.
    for i in 0..SMALL {
        let started = tokio::time::Instant::now();
        hook(
            base,
            &ka,
            json!({"event_type":"call.ring","call_id":40_000 + i,"direction":"inbound"}),
        )
        .await;
        let m = expect_json(&mut fast, "fast client").await;
        assert_eq!(m["seq"], next_seq, "{m}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "event {next_seq} took {:?}",
            started.elapsed()
        );
        next_seq += 1;
    }
    // The stalled client finally reads: everything, in order — the server waited for it without
    // dropping or reordering anything while the other client was served.
    for want in 1..next_seq {
        let m = match next_json(&mut stalled, Duration::from_secs(10)).await {
            Some(m) => m,
            None => panic!("stalled client: missing seq {want}"),
        };
        assert_eq!(m["seq"], want);
    }
}
scenario!(stalled_client_does_not_delay_others, stalled_client);

// ---------------------------------------------------------------------------------------------
// Shutdown: 1001

async fn shutdown_closes_1001(s: &mut Server) {
    let (_a, ka) = create_app(&s.url, "Tenant A").await;
    let mut ws = connect(&s.url, &key_query(&ka)).await;
    let mut user = connect(&s.url, &format!("{}&crm_user_id=crm_1", key_query(&ka))).await;
    assert!(wait_ws_connections(&s.url, 2, DELIVERY).await);
    s.sigterm();
    assert_eq!(close_code(&mut ws, Duration::from_secs(10)).await, 1001);
    assert_eq!(close_code(&mut user, Duration::from_secs(10)).await, 1001);
    let status = s.wait_exit(Duration::from_secs(25)).await;
    assert!(
        status.is_some_and(|st| st.success()),
        "exit: {status:?}; stderr:\n{}",
        s.stderr()
    );
}

mod shutdown_closes_sockets_with_1001 {
    use super::*;
    #[tokio::test]
    async fn sqlite() {
        let mut s = Server::start(BIN, ServerOptions::sqlite()).await;
        shutdown_closes_1001(&mut s).await;
    }
    #[tokio::test]
    async fn postgres() {
        let Some(url) = postgres_url().await else {
            return;
        };
        let mut s = Server::start(BIN, ServerOptions::postgres(url)).await;
        shutdown_closes_1001(&mut s).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Admin CLI in another process: rotate / revoke / deactivate close a running server's sockets

async fn cli_closes_sockets(c: &Cluster) {
    let base = &c.at(0).url;
    let (x, kx) = create_app(base, "Rotated").await;
    let (y, ky) = create_app(base, "Revoked").await;
    let (z, kz) = create_app(base, "Deactivated").await;
    let (_k, kk) = create_app(base, "Kept").await;
    let mut sx = connect(base, &key_query(&kx)).await;
    let mut sy = connect(base, &format!("{}&crm_user_id=crm_1", key_query(&ky))).await;
    let mut sz = connect(base, &key_query(&kz)).await;
    let mut sk = connect(base, &key_query(&kk)).await;

    let out = c.cli_ok(&["keys", "rotate", &x]);
    let new_key = serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(new_key.starts_with("raw_"), "{out}");
    assert_eq!(close_code(&mut sx, CLOSE).await, 4001, "keys rotate");
    assert_eq!(refused(ws_url(base, &key_query(&kx))).await.0, 403);
    let _new = connect(base, &key_query(&new_key)).await;

    c.cli_ok(&["keys", "revoke", &y]);
    assert_eq!(close_code(&mut sy, CLOSE).await, 4001, "keys revoke");
    assert_eq!(refused(ws_url(base, &key_query(&ky))).await.0, 403);

    c.cli_ok(&["apps", "deactivate", &z]);
    assert_eq!(close_code(&mut sz, CLOSE).await, 4001, "apps deactivate");
    assert_eq!(refused(ws_url(base, &key_query(&kz))).await.0, 403);

    // The untouched tenant's socket is still served.
    assert!(send_text(&mut sk, r#"{"type":"ping"}"#).await);
    assert_eq!(expect_json(&mut sk, "kept").await["type"], "pong");
}
cluster_scenario!(
    admin_cli_closes_running_servers_sockets,
    cli_closes_sockets,
    1
);

// ---------------------------------------------------------------------------------------------
// Two server processes on one PostgreSQL schema

#[tokio::test]
async fn two_instances_share_events_and_key_changes() {
    let Some(url) = postgres_url().await else {
        return;
    };
    const N: u64 = 30;
    let c = Cluster::start(BIN, SharedDb::Postgres(url), 2, &[]).await;
    let (one, two) = (&c.at(0).url, &c.at(1).url);
    let (a, ka) = create_app(one, "Tenant A").await;
    map_user(one, &a, 12345, "crm_1").await;

    // Sockets on instance 2 (and one on instance 1 for comparison).
    let mut all2 = connect(two, &key_query(&ka)).await;
    let mut user2 = connect(two, &format!("{}&crm_user_id=crm_1", key_query(&ka))).await;
    let mut other2 = connect(two, &format!("{}&crm_user_id=crm_2", key_query(&ka))).await;
    let mut all1 = connect(one, &key_query(&ka)).await;

    // Webhooks go to instance 1 only; even call ids target crm_1, odd ones nobody.
    let mut posted = Vec::new();
    for i in 0..N {
        let id = 20_000 + i;
        let mut body = json!({"event_type":"call.ring","call_id":id,"direction":"inbound"});
        if i % 2 == 0 {
            body["user_id"] = json!(12345);
        }
        hook(one, &ka, body).await;
        posted.push(id.to_string());
    }
    let got2 = expect_n(&mut all2, N as usize, "instance 2").await;
    let want: Vec<u64> = (1..=N).collect();
    assert_eq!(seqs(&got2), want, "every event once, in seq order");
    let mut ids: Vec<String> = got2
        .iter()
        .map(|m| m["call_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, posted, "exactly the posted calls");
    assert_eq!(
        next_json(&mut all2, Duration::from_secs(1)).await,
        None,
        "no duplicate"
    );
    assert_eq!(expect_n(&mut all1, N as usize, "instance 1").await, got2);
    assert_eq!(
        expect_n(&mut user2, N as usize, "crm_1 on instance 2").await,
        got2
    );
    let untargeted: Vec<&Value> = got2
        .iter()
        .filter(|m| m.get("target_crm_user").is_none_or(Value::is_null))
        .collect();
    assert_eq!(untargeted.len(), N as usize / 2);
    let others = expect_n(&mut other2, untargeted.len(), "crm_2 on instance 2").await;
    assert!(others.iter().zip(&untargeted).all(|(m, u)| m == *u));
    assert_eq!(next_json(&mut other2, SHORT).await, None);

    // Resume on instance 2 from events instance 1 processed.
    let mut resumed = connect(two, &format!("{}&since=20", key_query(&ka))).await;
    let tail = expect_n(&mut resumed, 10, "resume on instance 2").await;
    assert_eq!(tail, got2[20..].to_vec());

    // A key rotated through instance 1 closes the sockets on instance 2 (AppChanged over
    // LISTEN/NOTIFY); instance 2 refuses the old key at once and accepts the new one.
    let new_key = rotate_key(one, &a).await;
    for (ws, name) in [
        (&mut all2, "all2"),
        (&mut user2, "user2"),
        (&mut other2, "other2"),
        (&mut resumed, "resumed"),
    ] {
        assert_eq!(close_code(ws, CLOSE).await, 4001, "{name}");
    }
    assert_eq!(refused(ws_url(two, &key_query(&ka))).await.0, 403);
    let mut fresh = connect(two, &key_query(&new_key)).await;
    hook(
        one,
        &new_key,
        json!({"event_type":"call.ring","call_id":29_999}),
    )
    .await;
    assert_eq!(
        expect_json(&mut fresh, "after rotation").await["seq"],
        N + 1
    );
}
