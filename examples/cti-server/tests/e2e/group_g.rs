//! Group G — calls and messages query semantics (spec §10.8).
//!
//! Setup replays the group E webhooks the queries rely on (calls 1001, 1002, 1010, messages
//! 5001, 5002, the voicemail of 1010) on a fresh server.

use crate::bodies::*;
use crate::*;

/// T72–T85 on one server (apps A, B, F).
async fn queries(opts: ServerOptions) {
    let s = start(opts).await;
    let (_, ka) = s.create_app("Tenant A").await;
    let (_, kb) = s.create_app("Tenant B").await;
    let (_, kf) = s.create_app("Tenant F").await;
    hooks(
        &s,
        &ka,
        &[
            ring_1001(),
            started_1001(),
            ended_1001(),
            ended_first_1002(),
            sms_5001(),
            sms_5002(),
            ring_1010(),
            voicemail_1010(),
        ],
    )
    .await;
    s.drained().await;
    settle_call(&s, &ka, "1001", |c| c["status"] == "ended").await;

    call_lists(&s, &ka).await;
    call_by_id(&s, &ka, &kb).await;
    pagination(&s, &kf).await;
    message_queries(&s, &ka).await;
    client_voicemails(&s, &ka, &kb).await;
}
crate::on_both_backends!(t72_t85_query_semantics, super::queries);

fn page_of(r: &Resp) -> (u16, Value, Value) {
    (
        r.status,
        r.body["pagination"]["limit"].clone(),
        r.body["pagination"]["offset"].clone(),
    )
}

fn items(v: &Value) -> Vec<Value> {
    v["data"].as_array().cloned().unwrap_or_default()
}

/// T72–T77.
async fn call_lists(s: &Server, ka: &str) {
    // T72
    let r = s.api("/api/calls?limit=500", ka).await;
    assert_eq!(r.status, 200, "T72: {}", r.text);
    assert_eq!(r.body["pagination"]["limit"], 100, "T72");
    assert!(items(&r.body).len() <= 100, "T72");
    // T73
    let r = s.api("/api/calls?limit=-5", ka).await;
    assert_eq!(page_of(&r).0, 200, "T73: {}", r.text);
    assert_eq!(page_of(&r).1, json!(50), "T73");
    // T74
    let r = s.api("/api/calls?limit=0&offset=-10", ka).await;
    assert_eq!(page_of(&r), (200, json!(50), json!(0)), "T74");
    let r = s.api("/api/calls?limit=abc", ka).await;
    assert_eq!(page_of(&r).1, json!(50), "T74 abc");
    let r = s.api("/api/calls?limit=2abc", ka).await;
    assert_eq!(page_of(&r).1, json!(2), "T74 2abc");
    // T75
    let all = s.total("/api/calls", ka).await;
    assert_eq!(
        s.total("/api/calls?status=bogus&direction=sideways", ka)
            .await,
        all,
        "T75"
    );
    // T76
    for (q, field, value) in [
        ("direction=INBOUND", "direction", "inbound"),
        ("status=ENDED", "status", "ended"),
    ] {
        let r = s.api(&format!("/api/calls?limit=100&{q}"), ka).await;
        let list = items(&r.body);
        assert!(
            !list.is_empty() && list.iter().all(|c| c[field] == value),
            "T76 {q}: {}",
            r.text
        );
    }
    // T77
    let r = s.api("/api/calls?limit=100&from=%2B15550001111", ka).await;
    let list = items(&r.body);
    assert!(
        column(&r.body, "dialpad_call_id").contains(&"1001".to_string())
            && list.iter().all(|c| c["from_number"] == "+15550001111"),
        "T77 from: {}",
        r.text
    );
    let r = s
        .api(
            "/api/calls?limit=100&to=%2B15550002222&direction=inbound",
            ka,
        )
        .await;
    let list = items(&r.body);
    assert!(
        !list.is_empty()
            && list
                .iter()
                .all(|c| c["to_number"] == "+15550002222" && c["direction"] == "inbound"),
        "T77 to+direction: {}",
        r.text
    );
}

/// T78–T80.
async fn call_by_id(s: &Server, ka: &str, kb: &str) {
    // T78
    assert_eq!(
        s.api("/api/calls/not-a-uuid", ka).await.pair(),
        (
            400,
            json!({"success":false,"error":"Bad Request","message":"Invalid call ID format"})
        ),
        "T78"
    );
    // T79
    let not_found = json!({"success":false,"error":"Not Found","message":"Call not found"});
    for id in [
        "00000000-0000-0000-0000-000000000000",
        "550e8400-e29b-01d4-a716-446655440000",
    ] {
        assert_eq!(
            s.api(&format!("/api/calls/{id}"), ka).await.pair(),
            (404, not_found.clone()),
            "T79 {id}"
        );
    }
    // T80
    let c = call_now(s, ka, "1001").await;
    let id = c["id"].as_str().unwrap_or_default();
    assert_eq!(
        s.api(&format!("/api/calls/{id}"), kb).await.pair(),
        (404, not_found),
        "T80 KB"
    );
    let r = s.api(&format!("/api/calls/{id}"), ka).await;
    assert_eq!(
        (r.status, &r.body["success"], keys(&r.body["data"])),
        (200, &json!(true), sorted(&CALL_KEYS)),
        "T80 KA: {}",
        r.text
    );
    assert_eq!(r.body["data"], c, "T80 item");
}

/// T81–T82 (app F).
async fn pagination(s: &Server, kf: &str) {
    for (n, sec) in [(4001, "01"), (4002, "02"), (4003, "03")] {
        hooks(
            s,
            kf,
            &[json!({"event_type":"call.started","call_id":n,"direction":"inbound","started_at":format!("2026-01-29T12:00:{sec}.000Z")})],
        )
        .await;
    }
    s.settle_api("/api/calls", kf, |v| v["pagination"]["total"] == 3)
        .await;
    // T81
    let r = s.api("/api/calls?limit=2", kf).await;
    assert_eq!(
        (
            column(&r.body, "dialpad_call_id"),
            &r.body["pagination"]["total"],
            &r.body["pagination"]["has_more"]
        ),
        (
            vec!["4003".to_string(), "4002".into()],
            &json!(3),
            &json!(true)
        ),
        "T81 first page"
    );
    let r = s.api("/api/calls?limit=2&offset=2", kf).await;
    assert_eq!(
        (
            column(&r.body, "dialpad_call_id"),
            &r.body["pagination"]["has_more"]
        ),
        (vec!["4001".to_string()], &json!(false)),
        "T81 second page"
    );
    let r = s.api("/api/calls?offset=3", kf).await;
    assert_eq!(
        (items(&r.body).len(), &r.body["pagination"]["has_more"]),
        (0, &json!(false)),
        "T81 past the end"
    );
    // T82
    let r = s.api("/api/calls/active?status=ended", kf).await;
    assert_eq!(r.body["pagination"]["total"], 3, "T82: {}", r.text);
    assert!(
        items(&r.body).iter().all(|c| c["status"] == "active"),
        "T82: {}",
        r.text
    );
}

/// T83–T84.
async fn message_queries(s: &Server, ka: &str) {
    // T83
    assert_eq!(
        s.api("/api/messages/not-a-uuid", ka).await.pair(),
        (
            400,
            json!({"success":false,"error":"Bad Request","message":"Invalid message ID format"})
        ),
        "T83 bad id"
    );
    assert_eq!(
        s.api(&format!("/api/messages/{}", uuid::Uuid::new_v4()), ka)
            .await
            .pair(),
        (
            404,
            json!({"success":false,"error":"Not Found","message":"Message not found"})
        ),
        "T83 unknown id"
    );
    // T84
    let all = s.total("/api/messages", ka).await;
    assert_eq!(all, 2, "T84 setup");
    assert_eq!(
        s.total("/api/messages?dialpad_user_id=abc", ka).await,
        all,
        "T84 abc"
    );
    let r = s.api("/api/messages?dialpad_user_id=12345", ka).await;
    let users = column(&r.body, "dialpad_user_id");
    assert!(
        !users.is_empty() && users.iter().all(|u| u == "12345"),
        "T84 12345: {}",
        r.text
    );
    let r = s.api("/api/messages?direction=outbound", ka).await;
    assert_eq!(
        column(&r.body, "dialpad_message_id"),
        vec!["5002".to_string()],
        "T84 outbound"
    );
}

/// T85.
async fn client_voicemails(s: &Server, ka: &str, kb: &str) {
    let r = s.api("/api/voicemails", ka).await;
    assert_eq!(
        (r.status, &r.body["success"], &r.body["pagination"]["total"]),
        (200, &json!(true), &json!(1)),
        "T85 KA: {}",
        r.text
    );
    let vm = r.body["data"][0].clone();
    assert_eq!(vm["dialpad_call_id"], "1010", "T85");
    let mut expected = sorted(&VOICEMAIL_KEYS);
    expected.retain(|k| k != "app_id");
    assert_eq!(keys(&vm), expected, "T85 item keys");
    let id = vm["id"].as_str().unwrap_or_default();
    assert_eq!(s.total("/api/voicemails", kb).await, 0, "T85 KB list");
    assert_eq!(
        s.api(&format!("/api/voicemails/{id}"), kb).await.status,
        404,
        "T85 KB item"
    );
    let r = s.api(&format!("/api/voicemails/{id}"), ka).await;
    assert_eq!(
        (r.status, &r.body["data"]),
        (200, &vm),
        "T85 KA item: {}",
        r.text
    );
}
