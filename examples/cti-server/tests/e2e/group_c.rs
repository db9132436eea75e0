//! Group C — apps and API keys (spec §10.4), on app D unless stated.

use cti_core::keys::hint;

use crate::*;

fn is_key(k: &str) -> bool {
    k.len() == 68
        && k.starts_with("raw_")
        && k[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// T13–T26 on one server.
async fn apps_and_keys(opts: ServerOptions) {
    let s = start(opts).await;

    // T13
    let r = s
        .ia(
            "POST",
            "/internal/apps",
            Some(json!({"name": "  Tenant D  "})),
        )
        .await;
    assert_eq!(r.status, 201, "T13: {}", r.text);
    assert_eq!(
        keys(&r.body),
        sorted(&[
            "success",
            "message",
            "app_id",
            "app_name",
            "api_key",
            "created_at",
            "warning",
            "usage"
        ]),
        "T13"
    );
    assert_eq!(r.body["success"], true, "T13");
    assert_eq!(r.body["app_name"], "Tenant D", "T13");
    assert_eq!(
        r.body["message"],
        "App created successfully. Store the API key securely - it CANNOT be retrieved again.",
        "T13"
    );
    assert_eq!(
        r.body["warning"],
        "This is the ONLY time this API key will be displayed. Store it immediately in a secure location.",
        "T13"
    );
    assert_eq!(
        r.body["usage"],
        "Include this app_id for account identification and the api_key in the 'x-app-api-key' header when making API requests",
        "T13"
    );
    let d = str_of(&r.body["app_id"]);
    let kd = str_of(&r.body["api_key"]);
    assert_eq!(
        uuid::Uuid::parse_str(&d).map(|u| u.get_version_num()).ok(),
        Some(4),
        "T13 app_id {d}"
    );
    assert!(is_key(&kd), "T13 api_key {kd}");

    // T14
    let t14 = invalid("name is required and must be a non-empty string");
    for body in [json!({"name": "   "}), json!({"name": 123})] {
        let r = s.ia("POST", "/internal/apps", Some(body.clone())).await;
        assert_eq!(r.pair(), (400, t14.clone()), "T14 {body}");
    }
    // T15 (and other bodies that are not a JSON object with a name)
    let r = s.ia("POST", "/internal/apps", None).await;
    assert_eq!(r.pair(), (400, t14.clone()), "T15");
    let auth = format!("Bearer {S}");
    for (ct, body) in [
        ("application/json", "[1]"),
        ("application/json", "{bad"),
        ("text/plain", r#"{"name":"x"}"#),
    ] {
        let hs = [("authorization", auth.as_str()), ("content-type", ct)];
        let r = s
            .req(
                "POST",
                "/internal/apps",
                &hs,
                Some(body.as_bytes().to_vec()),
            )
            .await;
        assert_eq!(r.pair(), (400, t14.clone()), "T15 {ct} {body}");
    }

    // T16
    let bad_uuid = invalid("app_id must be a valid UUID");
    for id in ["not-a-uuid", "550e8400-e29b-01d4-a716-446655440000"] {
        let r = s
            .ia("POST", &format!("/internal/apps/{id}/api-key"), None)
            .await;
        assert_eq!(r.pair(), (400, bad_uuid.clone()), "T16 {id}");
    }
    // T17
    for id in [
        uuid::Uuid::new_v4().to_string(),
        "00000000-0000-0000-0000-000000000000".to_string(),
    ] {
        let r = s
            .ia("POST", &format!("/internal/apps/{id}/api-key"), None)
            .await;
        assert_eq!(
            r.pair(),
            (404, json!({"error": "App not found"})),
            "T17 {id}"
        );
    }
    // T18
    let (c, _) = s.create_app("Tenant C").await;
    s.deactivate(&c).await;
    let r = s
        .ia("POST", &format!("/internal/apps/{c}/api-key"), None)
        .await;
    assert_eq!(
        r.pair(),
        (403, json!({"error": "App is not active"})),
        "T18"
    );

    // T19
    let rotate = format!("/internal/apps/{d}/api-key");
    let r = s.ia("POST", &rotate, None).await;
    assert_eq!(r.status, 200, "T19: {}", r.text);
    assert_eq!(
        r.body["message"],
        "API key rotated successfully. Store this securely - it CANNOT be retrieved again.",
        "T19"
    );
    assert_eq!(
        keys(&r.body),
        sorted(&[
            "success",
            "message",
            "api_key",
            "app_id",
            "app_name",
            "generated_at",
            "warning",
            "usage"
        ]),
        "T19"
    );
    assert_eq!(
        r.body["usage"], "Include this key in the 'x-app-api-key' header when making API requests",
        "T19"
    );
    let kd2 = str_of(&r.body["api_key"]);
    assert!(is_key(&kd2) && kd2 != kd, "T19 new key {kd2}");
    let invalid_key = json!({"error":"Unauthorized","message":"Invalid API key"});
    assert_eq!(
        s.api("/api/calls", &kd).await.pair(),
        (401, invalid_key.clone()),
        "T19 old key"
    );
    assert_eq!(s.api("/api/calls", &kd2).await.status, 200, "T19 new key");

    // T20
    let status = format!("/internal/apps/{d}/api-key/status");
    let r = s.ia("GET", &status, None).await;
    assert_eq!(r.status, 200, "T20: {}", r.text);
    assert!(is_rfc3339(&r.body["last_rotated"]), "T20: {}", r.text);
    assert_eq!(
        r.body,
        json!({"success": true, "app_id": d, "app_name": "Tenant D", "has_active_key": true,
               "key_hint": hint(&kd2), "last_rotated": r.body["last_rotated"], "action_needed": null}),
        "T20"
    );

    // T21
    let audit = format!("/internal/apps/{d}/api-key/audit");
    let r = s.ia("GET", &audit, None).await;
    assert_eq!(r.status, 200, "T21: {}", r.text);
    assert_eq!(
        (&r.body["total"], &r.body["limit"], &r.body["offset"]),
        (&json!(2), &json!(50), &json!(0)),
        "T21: {}",
        r.text
    );
    let log = &r.body["audit_log"];
    assert_eq!(
        (
            &log[0]["action"],
            &log[0]["old_key_hint"],
            &log[0]["new_key_hint"]
        ),
        (&json!("rotated"), &json!(hint(&kd)), &json!(hint(&kd2))),
        "T21 [0]"
    );
    assert_eq!(
        (
            &log[1]["action"],
            &log[1]["old_key_hint"],
            &log[1]["new_key_hint"]
        ),
        (&json!("created"), &Value::Null, &json!(hint(&kd))),
        "T21 [1]"
    );
    let entry_keys = sorted(&[
        "id",
        "app_id",
        "action",
        "old_key_hint",
        "new_key_hint",
        "created_at",
    ]);
    assert_eq!(keys(&log[0]), entry_keys, "T21");
    assert_eq!(keys(&log[1]), entry_keys, "T21");

    // T22
    let r = s.ia("GET", &format!("{audit}?limit=abc"), None).await;
    assert_eq!((r.status, &r.body["limit"]), (200, &json!(50)), "T22 abc");
    let r = s.ia("GET", &format!("{audit}?limit=1000"), None).await;
    assert_eq!((r.status, &r.body["limit"]), (200, &json!(100)), "T22 1000");

    // T23
    let r = s
        .ia("POST", &format!("/internal/apps/{d}/api-key/revoke"), None)
        .await;
    assert_eq!(r.status, 200, "T23: {}", r.text);
    assert_eq!(
        (
            &r.body["success"],
            &r.body["message"],
            &r.body["app_id"],
            &r.body["app_name"]
        ),
        (
            &json!(true),
            &json!("API key revoked. App cannot authenticate until new key is generated."),
            &json!(d),
            &json!("Tenant D")
        ),
        "T23"
    );
    assert!(is_rfc3339(&r.body["revoked_at"]), "T23: {}", r.text);
    assert_eq!(
        s.api("/api/calls", &kd2).await.pair(),
        (401, invalid_key),
        "T23 revoked key"
    );
    let r = s.ia("GET", &status, None).await;
    assert_eq!(
        (
            &r.body["has_active_key"],
            &r.body["key_hint"],
            &r.body["action_needed"]
        ),
        (
            &json!(false),
            &Value::Null,
            &json!("Generate a new API key")
        ),
        "T23 status"
    );

    // T24
    let r = s.ia("POST", &rotate, None).await;
    assert_eq!(r.status, 200, "T24: {}", r.text);
    assert!(
        r.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("API key created successfully.")),
        "T24: {}",
        r.text
    );
    let r = s.ia("GET", &audit, None).await;
    assert_eq!(
        (
            &r.body["audit_log"][0]["action"],
            &r.body["audit_log"][0]["old_key_hint"]
        ),
        (&json!("created"), &Value::Null),
        "T24 audit"
    );

    // T25
    let e = s
        .ia("POST", "/internal/apps", Some(json!({"name": "Tenant E"})))
        .await;
    assert_eq!(e.status, 201, "T25: {}", e.text);
    let e_id = str_of(&e.body["app_id"]);
    let r = s
        .ia(
            "GET",
            &format!("/internal/apps/{e_id}/api-key/status"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "T25: {}", r.text);
    let (rotated, created) = (&r.body["last_rotated"], &e.body["created_at"]);
    let instant = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    assert!(
        instant(rotated).is_some() && instant(rotated) == instant(created),
        "T25 last_rotated {rotated} vs created_at {created}"
    );

    // T26
    let before = s.ia("GET", &audit, None).await.body["total"]
        .as_u64()
        .unwrap_or(0);
    let results = futures::future::join_all((0..5).map(|_| s.ia("POST", &rotate, None))).await;
    let mut working = Vec::new();
    for r in &results {
        assert_eq!(r.status, 200, "T26: {}", r.text);
        let k = str_of(&r.body["api_key"]);
        if s.api("/api/calls", &k).await.status == 200 {
            working.push(k);
        }
    }
    assert_eq!(working.len(), 1, "T26: exactly one key works");
    let r = s.ia("GET", &audit, None).await;
    assert_eq!(r.body["total"], json!(before + 5), "T26 audit total");
    let log = &r.body["audit_log"];
    assert_eq!(log[0]["new_key_hint"], hint(&working[0]), "T26 newest row");
    for i in 0..5 {
        assert_eq!(log[i]["action"], "rotated", "T26 row {i}");
        assert_eq!(
            log[i]["old_key_hint"],
            log[i + 1]["new_key_hint"],
            "T26 hint chain at row {i}"
        );
    }
}
crate::on_both_backends!(t13_t26_apps_and_keys, super::apps_and_keys);
