//! Group D — client API authentication (spec §10.5).

use std::time::{Duration, Instant};

use crate::*;

/// T27–T31 on one server.
async fn client_auth(opts: ServerOptions) {
    let s = start(opts).await;
    let invalid_key = json!({"error":"Unauthorized","message":"Invalid API key"});
    let zeros = format!("raw_{}", "0".repeat(64));
    // T27
    let r = s.get("/api/calls", &[]).await;
    assert_eq!(
        r.pair(),
        (
            401,
            json!({"error":"Unauthorized","message":"Missing x-app-api-key header"})
        ),
        "T27"
    );
    // T28
    assert_eq!(
        s.api("/api/calls", &zeros).await.pair(),
        (401, invalid_key.clone()),
        "T28"
    );
    // T29
    let (c, kc) = s.create_app("Tenant C").await;
    s.deactivate(&c).await;
    assert_eq!(
        s.api("/api/calls", &kc).await.pair(),
        (401, invalid_key),
        "T29"
    );
    // T30
    let (_, ke) = s.create_app("Tenant E").await;
    let empty = json!({"success":true,"data":[],"pagination":{"limit":50,"offset":0,"total":0,"has_more":false}});
    for uri in [
        "/api/messages",
        "/api/calls",
        "/api/calls/active",
        "/api/voicemails",
    ] {
        assert_eq!(
            s.api(uri, &ke).await.pair(),
            (200, empty.clone()),
            "T30 {uri}"
        );
    }
    // T31: 50 active apps, 100 sequential requests with an invalid key in < 2 s.
    for i in 0..49 {
        s.create_app(&format!("Tenant T31-{i}")).await;
    }
    let r = s.ia("GET", "/internal/apps?limit=1", None).await;
    assert!(
        r.body["pagination"]["total"].as_u64().unwrap_or(0) >= 51,
        "T31 apps: {}",
        r.text
    );
    let t0 = Instant::now();
    for _ in 0..100 {
        assert_eq!(s.api("/api/calls", &zeros).await.status, 401, "T31");
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "T31: 100 invalid-key requests took {took:?}"
    );
}
crate::on_both_backends!(t27_t31_client_auth, super::client_auth);
