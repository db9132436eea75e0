//! Group E — webhook intake, JSON/HMAC path (spec §10.6).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bodies::*;
use crate::*;

fn ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ms_of(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

/// T32–T54 on one server (apps A, B and the inactive C; the mapping fixture of A).
async fn json_intake(opts: ServerOptions) {
    let s = start(opts).await;
    let (a, ka) = s.create_app("Tenant A").await;
    let (_, kb) = s.create_app("Tenant B").await;
    let (c, kc) = s.create_app("Tenant C").await;
    s.deactivate(&c).await;
    let r = s
        .ia(
            "POST",
            &format!("/internal/apps/{a}/users/map"),
            Some(mapping_fixture()),
        )
        .await;
    assert_eq!(r.status, 200, "mapping fixture: {}", r.text);

    rejections(&s, &ka, &kc).await;
    lifecycle(&s, &ka).await;
    ignored(&s, &ka).await;
    isolation(&s, &ka, &kb).await;
    resilience(&s, &ka).await;
    messages(&s, &ka, &kb).await;
    voicemails(&s, &a, &ka).await;
}
crate::on_both_backends!(t32_t54_json_webhook_intake, super::json_intake);

/// T32–T36.
async fn rejections(s: &Server, ka: &str, kc: &str) {
    let body = json!({"event_type":"call.ring","call_id":1000}).to_string();
    let bad_sig = json!({"error": "Invalid webhook signature"});
    let unknown = json!({"error": "Unknown or unauthorized app"});
    let post = |headers: Vec<(&'static str, String)>, body: String| async move {
        let mut hs: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        hs.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        s.req("POST", "/webhooks/dialpad", &hs, Some(body.into_bytes()))
            .await
    };
    // T32
    let r = post(vec![], body.clone()).await;
    assert_eq!(r.pair(), (401, bad_sig.clone()), "T32");
    // T33
    let forged = cti_core::verify::sign_hmac_b64(body.as_bytes(), b"not-W");
    let r = post(vec![("x-dialpad-signature", forged)], body.clone()).await;
    assert_eq!(r.pair(), (401, bad_sig), "T33 forged");
    let good = sign(body.as_bytes());
    let r = post(
        vec![("x-signature", good.clone()), ("x-app-api-key", ka.into())],
        body.clone(),
    )
    .await;
    assert_eq!(
        r.pair(),
        (200, json!({"received": true})),
        "T33 x-signature"
    );
    // T34
    let r = post(vec![("x-dialpad-signature", good)], body.clone()).await;
    assert_eq!(r.pair(), (401, unknown.clone()), "T34");
    // T35
    let r = s
        .hook(kc, &json!({"event_type":"call.ring","call_id":1000}))
        .await;
    assert_eq!(r.pair(), (401, unknown), "T35");
    // T36
    let r = post(vec![], "{bad json".into()).await;
    assert_eq!(r.status, 400, "T36: {}", r.text);
}

/// T37–T42.
async fn lifecycle(s: &Server, ka: &str) {
    // T37
    hooks(s, ka, &[ring_1001()]).await;
    let v = s
        .settle_api("/api/calls/active", ka, |v| {
            find(v, "dialpad_call_id", "1001").is_some()
        })
        .await;
    let c = find(&v, "dialpad_call_id", "1001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(keys(&c), sorted(&CALL_KEYS), "T37 keys");
    let expected = json!({"dialpad_call_id":"1001","direction":"inbound","from_number":"+15550001111",
        "to_number":"+15550002222","status":"ringing","dialpad_user_id":"12345","started_at":null,
        "ended_at":null,"duration_seconds":null,"recording_url":null,
        "id": c["id"], "created_at": c["created_at"]});
    assert_eq!(c, expected, "T37");
    assert_eq!(
        column(&v, "dialpad_call_id")
            .iter()
            .filter(|i| *i == "1001")
            .count(),
        1,
        "T37 one item"
    );

    // T38
    hooks(s, ka, &[started_1001()]).await;
    let c = settle_call(s, ka, "1001", |c| c["status"] == "active").await;
    assert_eq!(
        (
            &c["started_at"],
            &c["direction"],
            &c["from_number"],
            &c["to_number"]
        ),
        (
            &json!("2026-01-29T12:00:00.000Z"),
            &json!("inbound"),
            &json!("+15550001111"),
            &json!("+15550002222")
        ),
        "T38 started"
    );
    hooks(s, ka, &[ended_1001()]).await;
    let v = s
        .settle_api("/api/calls?status=ended", ka, |v| {
            find(v, "dialpad_call_id", "1001").is_some()
        })
        .await;
    let c = find(&v, "dialpad_call_id", "1001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&c["ended_at"], &c["duration_seconds"]),
        (&json!("2026-01-29T12:02:00.000Z"), &json!(120)),
        "T38 ended"
    );
    let r = s.api("/api/calls/active", ka).await;
    assert!(
        find(&r.body, "dialpad_call_id", "1001").is_none(),
        "T38: 1001 still active: {}",
        r.text
    );
    let ended = c;

    // T39
    let r = s.hook(ka, &ended_1001()).await;
    assert_eq!(
        r.pair(),
        (200, json!({"received": true, "duplicate": true})),
        "T39"
    );
    s.drained().await;
    assert_eq!(call_now(s, ka, "1001").await, ended, "T39 call changed");

    // T40
    hooks(
        s,
        ka,
        &[json!({"event_type":"call.ring","call_id":1001,"event_id":"late-ring-1"})],
    )
    .await;
    s.drained().await;
    assert_eq!(call_now(s, ka, "1001").await["status"], "ended", "T40");

    // T41
    let sent = ms_now();
    hooks(s, ka, &[ended_first_1002()]).await;
    let c = settle_call(s, ka, "1002", |c| c["status"] == "ended").await;
    assert_eq!(
        (&c["direction"], &c["duration_seconds"], &c["started_at"]),
        (&json!("outbound"), &json!(30), &Value::Null),
        "T41: {c}"
    );
    let ended_at = ms_of(&c["ended_at"]);
    assert!(
        ended_at.is_some_and(|t| (t - sent).abs() <= 60_000),
        "T41 ended_at {} vs now",
        c["ended_at"]
    );

    // T42
    hooks(
        s,
        ka,
        &[
            json!({"event_type":"call.started","call_id":1002,"event_id":"late-start-1002","started_at":"2026-01-29T11:59:00.000Z"}),
        ],
    )
    .await;
    let c = settle_call(s, ka, "1002", |c| {
        c["started_at"] == "2026-01-29T11:59:00.000Z"
    })
    .await;
    assert_eq!(c["status"], "ended", "T42");
}

/// T43–T45: accepted but ignored.
async fn ignored(s: &Server, ka: &str) {
    let total = s.total("/api/calls", ka).await;
    // T43
    let r = s
        .hook(ka, &json!({"event_type":"call.teleported","call_id":1003}))
        .await;
    assert_eq!(r.pair(), (200, json!({"received": true})), "T43");
    // T44
    hooks(s, ka, &[json!({"call_id":1004,"direction":"inbound"})]).await;
    // T45
    hooks(
        s,
        ka,
        &[json!({"event_type":"call.ring","direction":"inbound","event_id":"no-id-1"})],
    )
    .await;
    s.drained().await;
    let r = s.api("/api/calls?limit=100", ka).await;
    let ids = column(&r.body, "dialpad_call_id");
    assert!(!ids.contains(&"1003".to_string()), "T43: {ids:?}");
    assert!(!ids.contains(&"1004".to_string()), "T44: {ids:?}");
    assert_eq!(r.body["pagination"]["total"], json!(total), "T45");
}

/// T46–T48: recordings and tenant isolation.
async fn isolation(s: &Server, ka: &str, kb: &str) {
    // T46
    hooks(
        s,
        ka,
        &[
            json!({"event_type":"call.recording.completed","event_id":"rec-1001","recording":{"call_id":1001,"url":"https://files.example.com/r1001.mp3"}}),
        ],
    )
    .await;
    let c = settle_call(s, ka, "1001", |c| {
        c["recording_url"] == "https://files.example.com/r1001.mp3"
    })
    .await;
    assert_eq!(c["status"], "ended", "T46");
    // T47
    hooks(
        s,
        kb,
        &[
            json!({"event_type":"call.ring","call_id":1001,"direction":"inbound","from":"+15553330000","to":"+15554440000"}),
        ],
    )
    .await;
    s.settle_api("/api/calls/active", kb, |v| {
        find(v, "dialpad_call_id", "1001").is_some_and(|c| c["from_number"] == "+15553330000")
    })
    .await;
    let c = call_now(s, ka, "1001").await;
    assert_eq!(
        (&c["status"], &c["from_number"]),
        (&json!("ended"), &json!("+15550001111")),
        "T47: A's call changed"
    );
    // T48
    hooks(
        s,
        kb,
        &[
            json!({"event_type":"call.recording.completed","event_id":"rec-b-1001","recording":{"call_id":1001,"url":"https://evil.example.com/x.mp3"}}),
        ],
    )
    .await;
    settle_call(s, kb, "1001", |c| {
        c["recording_url"] == "https://evil.example.com/x.mp3"
    })
    .await;
    assert_eq!(
        call_now(s, ka, "1001").await["recording_url"],
        "https://files.example.com/r1001.mp3",
        "T48: A's recording changed"
    );
}

/// T49–T50: payloads that broke the original processor.
async fn resilience(s: &Server, ka: &str) {
    // T49
    hooks(
        s,
        ka,
        &[json!({"event_type":"call.started","call_id":1020,"direction":"inbound","metadata":null})],
    )
    .await;
    settle_call(s, ka, "1020", |c| c["status"] == "active").await;
    // T50
    let before = s.total("/api/calls", ka).await;
    let stats = s.drained().await;
    let handled = |v: &Value| v["ignored"].as_u64().unwrap_or(0) + v["dead"].as_u64().unwrap_or(0);
    let poison: Vec<Value> = (1..=60)
        .map(|i| json!({"event_type":"call.ring","call_id":format!("not-a-number-{i}"),"event_id":format!("poison-{i}")}))
        .collect();
    hooks(s, ka, &poison).await;
    hooks(
        s,
        ka,
        &[json!({"event_type":"call.ring","call_id":1031,"direction":"inbound"})],
    )
    .await;
    settle_call(s, ka, "1031", |c| c["status"] == "ringing").await;
    let after = s.drained().await;
    assert_eq!(
        s.total("/api/calls", ka).await,
        before + 1,
        "T50: a poison event created a call"
    );
    assert!(
        handled(&after) >= handled(&stats) + 60,
        "T50: poison events not ignored/dead-lettered: {after}"
    );
}

/// T51–T52: SMS.
async fn messages(s: &Server, ka: &str, kb: &str) {
    // T51
    hooks(s, ka, &[sms_5001()]).await;
    let v = s
        .settle_api("/api/messages", ka, |v| {
            find(v, "dialpad_message_id", "5001").is_some()
        })
        .await;
    let m = find(&v, "dialpad_message_id", "5001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(keys(&m), sorted(&MESSAGE_KEYS), "T51 keys");
    assert_eq!(
        m,
        json!({"id": m["id"], "dialpad_message_id":"5001","direction":"inbound","from_number":"+15550003333",
            "to_number":"+15550004444","text":"Hello","dialpad_user_id":"12345",
            "sent_at":"2026-01-29T12:00:00.000Z","created_at": m["created_at"]}),
        "T51"
    );
    let r = s.api("/api/messages", kb).await;
    assert!(
        find(&r.body, "dialpad_message_id", "5001").is_none(),
        "T51: B sees A's message"
    );
    let id = m["id"].as_str().unwrap_or_default();
    assert_eq!(
        s.api(&format!("/api/messages/{id}"), kb).await.pair(),
        (
            404,
            json!({"success":false,"error":"Not Found","message":"Message not found"})
        ),
        "T51 KB"
    );
    assert_eq!(
        s.api(&format!("/api/messages/{id}"), ka).await.pair(),
        (200, json!({"success": true, "data": m})),
        "T51 KA"
    );
    // T52
    hooks(s, ka, &[sms_5002()]).await;
    let v = s
        .settle_api("/api/messages", ka, |v| {
            find(v, "dialpad_message_id", "5002").is_some()
        })
        .await;
    assert_eq!(
        find(&v, "dialpad_message_id", "5002").map(|m| &m["direction"]),
        Some(&json!("outbound")),
        "T52"
    );
}

/// T53–T54: voicemails.
async fn voicemails(s: &Server, a: &str, ka: &str) {
    let list = format!("/internal/apps/{a}/voicemails");
    // T53
    hooks(s, ka, &[ring_1010(), voicemail_1010()]).await;
    let v = s.settle_ia(&list, |v| v["pagination"]["total"] == 1).await;
    let vm = &v["data"][0];
    assert_eq!(keys(vm), sorted(&VOICEMAIL_KEYS), "T53 keys");
    assert_eq!(
        (
            &vm["dialpad_call_id"],
            &vm["dialpad_user_id"],
            &vm["from_number"],
            &vm["to_number"]
        ),
        (
            &json!("1010"),
            &json!("12345"),
            &json!("+15550005555"),
            &json!("+15550002222")
        ),
        "T53"
    );
    assert_eq!(
        (
            &vm["recording_url"],
            &vm["transcript"],
            &vm["duration_seconds"],
            &vm["app_id"]
        ),
        (
            &json!("https://files.example.com/vm1010.mp3"),
            &json!("Please call back"),
            &json!(30),
            &json!(a)
        ),
        "T53"
    );
    s.settle_api("/api/calls?status=voicemail", ka, |v| {
        find(v, "dialpad_call_id", "1010").is_some()
    })
    .await;
    // T54
    let ignored = s.drained().await["ignored"].as_u64().unwrap_or(0);
    hooks(
        s,
        ka,
        &[json!({"event_type":"voicemail.received","voicemail":{"call_id":1011,"user_id":12345,"from":"+15550006666"}})],
    )
    .await;
    let stats = s.drained().await;
    let r = s.ia("GET", &list, None).await;
    assert_eq!(r.body["pagination"]["total"], 1, "T54: {}", r.text);
    assert_eq!(
        (stats["ignored"].as_u64(), &stats["failed"]),
        (Some(ignored + 1), &json!(0)),
        "T54: not ignored: {stats}"
    );
}
