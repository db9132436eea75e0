//! Group B — internal authentication (spec §10.3).

use crate::*;

/// The T08 body.
pub fn missing_bearer() -> Value {
    json!({"error":"Unauthorized","message":"Missing or invalid Authorization header. Use: Authorization: Bearer <secret>"})
}

/// T08–T12 on one server.
async fn internal_auth(opts: ServerOptions) {
    let s = start(opts).await;
    let (a, _) = s.create_app("Tenant A").await;
    let uri = format!("/internal/apps/{a}/api-key/status");
    // T08
    assert_eq!(
        s.get(&uri, &[]).await.pair(),
        (401, missing_bearer()),
        "T08"
    );
    // T09
    let r = s
        .get(&uri, &[("authorization", "Basic dXNlcjpwYXNz")])
        .await;
    assert_eq!(r.pair(), (401, missing_bearer()), "T09");
    // T10
    let r = s
        .get(&uri, &[("authorization", "Bearer wrong-secret")])
        .await;
    assert_eq!(
        r.pair(),
        (
            403,
            json!({"error":"Forbidden","message":"Invalid authentication token"})
        ),
        "T10"
    );
    // T11
    let r = s.ia("GET", &uri, None).await;
    assert_eq!(r.status, 200, "T11: {}", r.text);
    // T12
    let r = s.get("/internal/anything-unknown", &[]).await;
    assert_eq!(r.pair(), (401, missing_bearer()), "T12");
    let r = s.ia("GET", "/internal/anything-unknown", None).await;
    assert_eq!(r.status, 404, "T12: {}", r.text);
}
crate::on_both_backends!(t08_t12_internal_auth, super::internal_auth);
