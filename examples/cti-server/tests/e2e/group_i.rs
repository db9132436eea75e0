//! Group I — user mappings (spec §10.10).

use crate::*;

/// T91–T100 on one server (apps A, B).
async fn user_mappings(opts: ServerOptions) {
    let s = start(opts).await;
    let (a, _) = s.create_app("Tenant A").await;
    let (b, _) = s.create_app("Tenant B").await;
    let map = format!("/internal/apps/{a}/users/map");
    let mappings = format!("/internal/apps/{a}/users/mappings");
    let not_found = json!({"error": "Mapping not found"});
    let deleted = json!({"success": true, "message": "Mapping deleted"});
    let bad_user = invalid("dialpad_user_id must be a positive integer");
    let bad_app = invalid("app_id must be a valid UUID");

    // T91
    let missing =
        json!({"error":"Missing required fields","required":["dialpad_user_id","crm_user_id"]});
    for body in [json!({}), json!({"dialpad_user_id": 0, "crm_user_id": "x"})] {
        let r = s.ia("POST", &map, Some(body.clone())).await;
        assert_eq!(r.pair(), (400, missing.clone()), "T91 {body}");
    }
    assert_eq!(
        s.ia("POST", &map, None).await.pair(),
        (400, missing),
        "T91 no body"
    );
    // T92 (and a decimal id beyond the signed 64-bit range)
    for d in [
        json!("12a"),
        json!(-5),
        json!("007"),
        json!(12.5),
        json!("9223372036854775808"),
    ] {
        let body = json!({"dialpad_user_id": d, "crm_user_id": "x"});
        let r = s.ia("POST", &map, Some(body)).await;
        assert_eq!(r.pair(), (400, bad_user.clone()), "T92 {d}");
    }
    // T93
    let r = s
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id": 777, "crm_user_id": "crm_7"})),
        )
        .await;
    assert_eq!(r.status, 200, "T93: {}", r.text);
    let data = r.body["data"].clone();
    assert!(
        data["id"]
            .as_str()
            .is_some_and(|i| uuid::Uuid::parse_str(i).is_ok()),
        "T93 id: {}",
        r.text
    );
    assert!(
        is_rfc3339(&data["created_at"]) && is_rfc3339(&data["updated_at"]),
        "T93 timestamps: {}",
        r.text
    );
    assert_eq!(
        r.body,
        json!({"success": true, "message": "User mapping created/updated", "data": {
            "id": data["id"], "app_id": a, "dialpad_user_id": "777", "crm_user_id": "crm_7",
            "created_at": data["created_at"], "updated_at": data["updated_at"]}}),
        "T93"
    );
    let id777 = data["id"].clone();
    let r = s
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id": 777, "crm_user_id": "crm_8"})),
        )
        .await;
    assert_eq!(
        (
            r.status,
            &r.body["data"]["id"],
            &r.body["data"]["crm_user_id"]
        ),
        (200, &id777, &json!("crm_8")),
        "T93 update: {}",
        r.text
    );
    let r = s
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id": "778", "crm_user_id": "crm_x"})),
        )
        .await;
    assert_eq!(r.status, 200, "T93 string id: {}", r.text);
    let r = s
        .ia(
            "POST",
            &map,
            Some(json!({"dialpad_user_id": "9223372036854775807", "crm_user_id": "big"})),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["data"]["dialpad_user_id"]),
        (200, &json!("9223372036854775807")),
        "T93 largest id: {}",
        r.text
    );

    // T94
    let r = s.ia("GET", &format!("{mappings}/dialpad/777"), None).await;
    assert_eq!(
        (r.status, &r.body["success"], &r.body["data"]["crm_user_id"]),
        (200, &json!(true), &json!("crm_8")),
        "T94 dialpad: {}",
        r.text
    );
    let r = s.ia("GET", &format!("{mappings}/crm/crm_8"), None).await;
    assert_eq!(
        (r.status, &r.body["data"]["id"]),
        (200, &id777),
        "T94 crm: {}",
        r.text
    );
    assert_eq!(
        s.ia("GET", &format!("{mappings}/dialpad/779"), None)
            .await
            .pair(),
        (404, not_found.clone()),
        "T94 779"
    );
    let r = s
        .ia(
            "GET",
            &format!("/internal/apps/{b}/users/mappings/dialpad/777"),
            None,
        )
        .await;
    assert_eq!(r.status, 404, "T94 B: {}", r.text);

    // T95
    let r = s
        .ia(
            "POST",
            &format!("/internal/apps/{}/users/map", uuid::Uuid::new_v4()),
            Some(json!({"dialpad_user_id": 1, "crm_user_id": "x"})),
        )
        .await;
    assert_eq!(r.pair(), (404, json!({"error": "App not found"})), "T95");

    // T96
    assert_eq!(
        s.ia("GET", &format!("{mappings}/dialpad/abc"), None)
            .await
            .pair(),
        (400, bad_user),
        "T96 user"
    );
    assert_eq!(
        s.ia(
            "GET",
            "/internal/apps/not-a-uuid/users/mappings/dialpad/777",
            None
        )
        .await
        .pair(),
        (400, bad_app),
        "T96 app"
    );

    // T97
    assert_eq!(
        s.ia("DELETE", &format!("{mappings}/not-a-uuid"), None)
            .await
            .pair(),
        (400, invalid("mapping_id must be a valid UUID")),
        "T97 bad id"
    );
    let by_id = format!("{mappings}/{}", id777.as_str().unwrap_or_default());
    assert_eq!(
        s.ia("DELETE", &by_id, None).await.pair(),
        (200, deleted.clone()),
        "T97"
    );
    assert_eq!(
        s.ia("DELETE", &by_id, None).await.pair(),
        (404, not_found.clone()),
        "T97 repeated"
    );

    // T98
    let by_user = format!("{mappings}/dialpad/778");
    assert_eq!(
        s.ia("DELETE", &by_user, None).await.pair(),
        (200, deleted),
        "T98"
    );
    assert_eq!(
        s.ia("DELETE", &by_user, None).await.pair(),
        (404, not_found),
        "T98 repeated"
    );

    // T99
    let batch = format!("/internal/apps/{a}/users/batch-map");
    assert_eq!(
        s.ia("POST", &batch, Some(json!({"mappings": "x"})))
            .await
            .pair(),
        (
            400,
            json!({"error":"Invalid request","expected":{"mappings":"array of {dialpad_user_id, crm_user_id}"}})
        ),
        "T99 not an array"
    );
    assert_eq!(
        s.ia("POST", &batch, Some(json!({"mappings": []})))
            .await
            .pair(),
        (
            200,
            json!({"success":true,"message":"Batch mapped 0 users","count":0})
        ),
        "T99 empty"
    );
    let two = json!({"mappings":[{"dialpad_user_id":801,"crm_user_id":"crm_a"},{"dialpad_user_id":802,"crm_user_id":"crm_b"}]});
    assert_eq!(
        s.ia("POST", &batch, Some(two)).await.pair(),
        (
            200,
            json!({"success":true,"message":"Batch mapped 2 users","count":2})
        ),
        "T99 two"
    );
    let r = s.ia("GET", &mappings, None).await;
    let users = column(&r.body, "dialpad_user_id");
    assert!(
        users.contains(&"801".to_string()) && users.contains(&"802".to_string()),
        "T99 listed: {}",
        r.text
    );

    // T100
    let partial =
        json!({"mappings":[{"dialpad_user_id":803,"crm_user_id":"crm_c"},{"dialpad_user_id":804}]});
    assert_eq!(
        s.ia("POST", &batch, Some(partial)).await.pair(),
        (400, invalid("mappings[1]: crm_user_id is required")),
        "T100 partial"
    );
    let r = s.ia("GET", &format!("{mappings}/dialpad/803"), None).await;
    assert_eq!(r.status, 404, "T100: 803 was created");
    let r = s.ia("GET", &format!("{mappings}?limit=abc"), None).await;
    assert_eq!(
        (r.status, &r.body["pagination"]["limit"]),
        (200, &json!(100)),
        "T100 limit: {}",
        r.text
    );
    let big: Vec<Value> = (1..=1001)
        .map(|i| json!({"dialpad_user_id": i, "crm_user_id": format!("c{i}")}))
        .collect();
    let r = s.ia("POST", &batch, Some(json!({ "mappings": big }))).await;
    assert_eq!(r.status, 400, "T100 1001 items: {}", r.text);
    let r = s
        .ia(
            "POST",
            &format!("/internal/apps/{}/users/batch-map", uuid::Uuid::new_v4()),
            Some(json!({"mappings": [{"dialpad_user_id": 1, "crm_user_id": "x"}]})),
        )
        .await;
    assert_eq!(
        r.pair(),
        (404, json!({"error": "App not found"})),
        "T95 batch"
    );
}
crate::on_both_backends!(t91_t100_user_mappings, super::user_mappings);
