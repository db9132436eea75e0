//! Group F — webhook intake, Dialpad JWT path (spec §10.7).
//!
//! T70 and T71 start "after T101" / "after T110": the per-app webhook secret and the Dialpad
//! company id come from the webhook-management and OAuth flows (groups J and K, not part of this
//! suite). Their setup therefore writes the same rows through the `cti-sqlx` store the server
//! uses (the secret encrypted with the suite's `DATA_ENCRYPTION_KEY`); the scenarios themselves
//! go over HTTP.

use std::sync::Arc;

use cti_core::model::{DialpadConnection, DialpadEnvironment, DialpadId, DialpadWebhook};
use cti_core::secrets::DataCipher;
use cti_core::store::Store;

use crate::*;

/// A's per-app webhook secret (`WA`, what the mock would have captured in T101).
const WA: &str = "per-app-secret-of-tenant-A-0123456789abcdef";
/// The Dialpad company id the mock's `GET /api/v2/company` returns in T110.
const ORG_ID: u64 = 4_993_497_561_530_368;

fn bad_jwt() -> Value {
    json!({"error": "Invalid JWT signature"})
}

fn received() -> Value {
    json!({"received": true})
}

/// T55–T71 on one server (apps A, B and the inactive C).
async fn jwt_intake(opts: ServerOptions) {
    let s = start(opts).await;
    let (a, ka) = s.create_app("Tenant A").await;
    let (b, _) = s.create_app("Tenant B").await;
    let (c, _) = s.create_app("Tenant C").await;
    s.deactivate(&c).await;

    let first = call_states(&s, &ka).await;
    voicemail(&s, &a, &ka).await;
    rejections(&s, &ka).await;
    accepted_variants(&s, &ka, &first).await;
    per_app_route(&s, &a, &ka, &b, &c).await;
    org_routing(&s, &a, &ka).await;
}
crate::on_both_backends!(t55_t71_jwt_webhook_intake, super::jwt_intake);

/// T55–T58; returns the T55 token (for T68).
async fn call_states(s: &Server, ka: &str) -> String {
    // T55
    let first = jwt(&call(2001, "ringing", json!({})));
    assert_eq!(s.jhook(ka, &first).await.pair(), (200, received()), "T55");
    let v = s
        .settle_api("/api/calls/active", ka, |v| {
            find(v, "dialpad_call_id", "2001").is_some()
        })
        .await;
    let c = find(&v, "dialpad_call_id", "2001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            &c["status"],
            &c["direction"],
            &c["from_number"],
            &c["to_number"],
            &c["dialpad_user_id"],
            &c["started_at"]
        ),
        (
            &json!("ringing"),
            &json!("inbound"),
            &json!("+15557770000"),
            &json!("+15558880000"),
            &json!("12345"),
            &json!("2026-01-29T12:00:00.000Z")
        ),
        "T55: {c}"
    );
    // T56
    let connected = json!({"date_connected": 1_769_688_005_000i64});
    let r = s.jhook(ka, &jwt(&call(2001, "connected", connected))).await;
    assert_eq!(r.pair(), (200, received()), "T56 connected");
    settle_call(s, ka, "2001", |c| c["status"] == "active").await;
    let hangup = json!({"date_connected": 1_769_688_005_000i64, "date_ended": 1_769_688_125_000i64, "duration": 120000.0});
    let r = s.jhook(ka, &jwt(&call(2001, "hangup", hangup))).await;
    assert_eq!(r.pair(), (200, received()), "T56 hangup");
    let c = settle_call(s, ka, "2001", |c| c["status"] == "ended").await;
    assert_eq!(
        (&c["ended_at"], &c["duration_seconds"]),
        (&json!("2026-01-29T12:02:05.000Z"), &json!(120)),
        "T56: {c}"
    );
    // T57
    let r = s
        .jhook(
            ka,
            &jwt(&call(2002, "calling", json!({"direction": "outbound"}))),
        )
        .await;
    assert_eq!(r.pair(), (200, received()), "T57");
    let c = settle_call(s, ka, "2002", |c| c["status"] == "ringing").await;
    assert_eq!(
        (&c["direction"], &c["from_number"], &c["to_number"]),
        (
            &json!("outbound"),
            &json!("+15558880000"),
            &json!("+15557770000")
        ),
        "T57: {c}"
    );
    // T58
    for state in ["ringing", "missed", "hangup"] {
        let r = s.jhook(ka, &jwt(&call(2003, state, json!({})))).await;
        assert_eq!(r.pair(), (200, received()), "T58 {state}");
    }
    s.drained().await;
    assert_eq!(call_now(s, ka, "2003").await["status"], "missed", "T58");
    first
}

/// T59.
async fn voicemail(s: &Server, a: &str, ka: &str) {
    let link = json!({"voicemail_link": "https://dialpad.example/vm/2004"});
    for (state, extra) in [
        ("ringing", json!({})),
        ("voicemail", json!({})),
        ("voicemail_uploaded", link),
    ] {
        let r = s.jhook(ka, &jwt(&call(2004, state, extra))).await;
        assert_eq!(r.pair(), (200, received()), "T59 {state}");
    }
    settle_call(s, ka, "2004", |c| c["status"] == "voicemail").await;
    let v = s
        .settle_ia(&format!("/internal/apps/{a}/voicemails"), |v| {
            find(v, "dialpad_call_id", "2004").is_some()
        })
        .await;
    let vm = find(&v, "dialpad_call_id", "2004")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&vm["dialpad_user_id"], &vm["recording_url"]),
        (&json!("12345"), &json!("https://dialpad.example/vm/2004")),
        "T59: {vm}"
    );
}

/// T60–T64, T66, T67.
async fn rejections(s: &Server, ka: &str) {
    let post = |ct: &'static str, body: Vec<u8>| async move {
        s.req(
            "POST",
            "/webhooks/dialpad",
            &[("content-type", ct), ("x-app-api-key", ka)],
            Some(body),
        )
        .await
    };
    // T60
    let forged = jwt_with(&call(2010, "ringing", json!({})), "not-W");
    assert_eq!(s.jhook(ka, &forged).await.pair(), (401, bad_jwt()), "T60");
    // T61
    for body in ["abc.def", "not-a-jwt"] {
        assert_eq!(
            s.jhook(ka, body).await.pair(),
            (401, bad_jwt()),
            "T61 {body}"
        );
    }
    // T62
    let none = jwt_alg_none(&call(2011, "ringing", json!({})));
    assert_eq!(s.jhook(ka, &none).await.pair(), (401, bad_jwt()), "T62");
    // T63
    let exp = chrono::Utc::now().timestamp() - 3600;
    let expired = jwt(&call(2005, "ringing", json!({"exp": exp})));
    assert_eq!(s.jhook(ka, &expired).await.pair(), (401, bad_jwt()), "T63");
    // T64
    let token = jwt(&call(2012, "ringing", json!({})));
    let r = s.jhook(ka, &format!("{token}!!")).await;
    assert_eq!(r.status, 401, "T64: {}", r.text);
    // T66
    assert_eq!(
        post("application/jwt", Vec::new()).await.pair(),
        (401, bad_jwt()),
        "T66"
    );
    // T67
    let hello = jwt_raw_payload(b"hello");
    assert_eq!(
        post("application/jwt", hello.into_bytes()).await.pair(),
        (400, json!({"error": "Invalid JWT format"})),
        "T67"
    );
    s.drained().await;
    let ids = column(
        &s.api("/api/calls?limit=100", ka).await.body,
        "dialpad_call_id",
    );
    for n in ["2005", "2010", "2011", "2012"] {
        assert!(!ids.contains(&n.to_string()), "T60–T64: call {n} appeared");
    }
}

/// T65, T68, T69.
async fn accepted_variants(s: &Server, ka: &str, first: &str) {
    // T65
    let token = jwt(&call(2006, "ringing", json!({})));
    let r = s
        .req(
            "POST",
            "/webhooks/dialpad",
            &[
                ("content-type", "application/jwt; charset=utf-8"),
                ("x-app-api-key", ka),
            ],
            Some(token.into_bytes()),
        )
        .await;
    assert_eq!(r.pair(), (200, received()), "T65");
    settle_call(s, ka, "2006", |c| c["status"] == "ringing").await;
    // T68
    assert_eq!(
        s.jhook(ka, first).await.pair(),
        (200, json!({"received": true, "duplicate": true})),
        "T68"
    );
    // T69
    let sms = json!({"id":6001,"created_date":1_769_688_000_000i64,"direction":"inbound","from_number":"+15551112222","to_number":["+15558880000"],"text":"Yo","target":{"id":12345,"type":"user"}});
    assert_eq!(
        s.jhook(ka, &jwt(&sms)).await.pair(),
        (200, received()),
        "T69"
    );
    let v = s
        .settle_api("/api/messages", ka, |v| {
            find(v, "dialpad_message_id", "6001").is_some()
        })
        .await;
    let m = find(&v, "dialpad_message_id", "6001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            &m["direction"],
            &m["from_number"],
            &m["to_number"],
            &m["text"],
            &m["dialpad_user_id"],
            &m["sent_at"]
        ),
        (
            &json!("inbound"),
            &json!("+15551112222"),
            &json!("+15558880000"),
            &json!("Yo"),
            &json!("12345"),
            &json!("2026-01-29T12:00:00.000Z")
        ),
        "T69: {m}"
    );
}

/// The store of the running server's database (the T70/T71 setup writes).
async fn store_of(s: &Server) -> Arc<dyn Store> {
    match &s.schema {
        None => match cti_sqlx::SqliteStore::connect(&s.database_url).await {
            Ok(st) => Arc::new(st),
            Err(e) => panic!("open SQLite store: {e}"),
        },
        Some(schema) => {
            let opts = cti_sqlx::pg::PgOptions::with_schema(schema.clone());
            match cti_sqlx::PgStore::connect(&s.database_url, opts).await {
                Ok(st) => Arc::new(st),
                Err(e) => panic!("open PostgreSQL store: {e}"),
            }
        }
    }
}

fn cipher() -> DataCipher {
    DataCipher::from_base64_env(DATA_KEY).unwrap_or_else(|e| panic!("DATA_KEY: {e}"))
}

fn app_id(id: &str) -> cti_core::model::AppId {
    id.parse().unwrap_or_else(|e| panic!("app id {id}: {e}"))
}

/// T70 (setup: T101 stored webhook 193 of A with secret `WA`).
async fn per_app_route(s: &Server, a: &str, ka: &str, b: &str, c: &str) {
    let now = chrono::Utc::now();
    let hook = DialpadWebhook {
        id: uuid::Uuid::new_v4(),
        app_id: app_id(a),
        webhook_id: DialpadId(193),
        hook_url: format!("https://cti.test/webhooks/dialpad/{a}"),
        secret_enc: Some(cipher().encrypt(WA)),
        algo: Some("HS256".into()),
        signature_type: Some("jwt".into()),
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = store_of(s).await.upsert_webhook(hook).await {
        panic!("T70 setup: {e}");
    }
    let token = jwt_with(&call(2007, "ringing", json!({})), WA);
    assert_eq!(
        s.post_jwt(a, &token).await.pair(),
        (200, received()),
        "T70 A"
    );
    settle_call(s, ka, "2007", |c| c["status"] == "ringing").await;
    assert_eq!(
        s.post_jwt(b, &token).await.pair(),
        (401, bad_jwt()),
        "T70 B"
    );
    let unknown = json!({"error": "Unknown or unauthorized app"});
    let w_token = jwt(&call(2009, "ringing", json!({})));
    assert_eq!(
        s.post_jwt(c, &w_token).await.pair(),
        (401, unknown.clone()),
        "T70 C"
    );
    assert_eq!(
        s.post_jwt("not-a-uuid", &w_token).await.pair(),
        (401, unknown),
        "T70 not-a-uuid"
    );
}

/// T71 (setup: T110 stored A's Dialpad connection with company id [`ORG_ID`]).
async fn org_routing(s: &Server, a: &str, ka: &str) {
    let now = chrono::Utc::now();
    let cipher = cipher();
    let conn = DialpadConnection {
        id: uuid::Uuid::new_v4(),
        app_id: app_id(a),
        dialpad_org_id: Some(DialpadId(ORG_ID)),
        access_token_enc: cipher.encrypt("at1"),
        refresh_token_enc: cipher.encrypt("rt1"),
        token_expires_at: now + chrono::Duration::hours(1),
        environment: DialpadEnvironment::Sandbox,
        status: "active".into(),
        created_at: now,
        updated_at: now,
    };
    if let Err(e) = store_of(s).await.upsert_connection(conn).await {
        panic!("T71 setup: {e}");
    }
    let token = jwt(&call(2008, "ringing", json!({"organization_id": ORG_ID})));
    let r = s
        .req(
            "POST",
            "/webhooks/dialpad",
            &[("content-type", "application/jwt")],
            Some(token.into_bytes()),
        )
        .await;
    assert_eq!(r.pair(), (200, received()), "T71");
    settle_call(s, ka, "2008", |c| c["status"] == "ringing").await;
}
