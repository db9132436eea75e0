//! Group H — voicemails, internal API (spec §10.9). Setup: the T53 voicemail of app A.

use crate::bodies::*;
use crate::*;

/// T86–T90 on one server (apps A, B, E).
async fn internal_voicemails(opts: ServerOptions) {
    let s = start(opts).await;
    let (a, ka) = s.create_app("Tenant A").await;
    let (b, _) = s.create_app("Tenant B").await;
    let (e, _) = s.create_app("Tenant E").await;
    hooks(&s, &ka, &[ring_1010(), voicemail_1010()]).await;
    let list = format!("/internal/apps/{a}/voicemails");
    let v = s.settle_ia(&list, |v| v["pagination"]["total"] == 1).await;
    let id = v["data"][0]["id"].as_str().unwrap_or_default().to_string();

    // T86
    assert_eq!(
        (
            &v["pagination"]["limit"],
            &v["pagination"]["offset"],
            v["success"].clone()
        ),
        (&json!(50), &json!(0), json!(true)),
        "T86: {v}"
    );
    let r = s
        .ia("GET", &format!("{list}?dialpad_user_id=12345"), None)
        .await;
    let users = column(&r.body, "dialpad_user_id");
    assert!(
        !users.is_empty() && users.iter().all(|u| u == "12345"),
        "T86 12345: {}",
        r.text
    );
    let r = s
        .ia("GET", &format!("{list}?dialpad_user_id=999"), None)
        .await;
    assert_eq!(r.body["pagination"]["total"], 0, "T86 999: {}", r.text);
    let r = s
        .ia("GET", &format!("/internal/apps/{e}/voicemails"), None)
        .await;
    assert_eq!(
        (r.status, &r.body["pagination"]["total"]),
        (200, &json!(0)),
        "T86 E: {}",
        r.text
    );

    // T87
    let r = s.ia("GET", &format!("{list}/not-a-uuid"), None).await;
    assert_eq!(
        r.pair(),
        (400, invalid("app_id and voicemail_id must be valid UUIDs")),
        "T87 voicemail id"
    );
    let r = s
        .ia("GET", "/internal/apps/not-a-uuid/voicemails", None)
        .await;
    assert_eq!(
        r.pair(),
        (400, invalid("app_id must be a valid UUID")),
        "T87 app id"
    );

    // T88
    let not_found = json!({"error": "Voicemail not found"});
    let of_b = format!("/internal/apps/{b}/voicemails/{id}");
    let of_a = format!("{list}/{id}");
    assert_eq!(
        s.ia("GET", &of_b, None).await.pair(),
        (404, not_found.clone()),
        "T88 B"
    );
    let r = s.ia("GET", &of_a, None).await;
    assert_eq!(
        (r.status, &r.body["success"], keys(&r.body["data"])),
        (200, &json!(true), sorted(&VOICEMAIL_KEYS)),
        "T88 A: {}",
        r.text
    );
    assert_eq!(r.body["data"], v["data"][0], "T88 item");

    // T90
    for (q, field, value) in [
        ("limit=-1", "limit", 50),
        ("limit=1000", "limit", 100),
        ("offset=abc", "offset", 0),
    ] {
        let r = s.ia("GET", &format!("{list}?{q}"), None).await;
        assert_eq!(
            (r.status, &r.body["pagination"][field]),
            (200, &json!(value)),
            "T90 {q}: {}",
            r.text
        );
    }

    // T89
    assert_eq!(
        s.ia("DELETE", &of_b, None).await.pair(),
        (404, not_found.clone()),
        "T89 through B"
    );
    assert_eq!(
        s.ia("DELETE", &of_a, None).await.pair(),
        (
            200,
            json!({"success": true, "message": "Voicemail deleted"})
        ),
        "T89"
    );
    assert_eq!(
        s.ia("DELETE", &of_a, None).await.pair(),
        (404, not_found),
        "T89 repeated"
    );
}
crate::on_both_backends!(t86_t90_internal_voicemails, super::internal_voicemails);
