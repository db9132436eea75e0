//! Database outage: a `PgStore` whose connections go through a TCP forwarder that the test
//! stops and restarts. While it is down every call fails quickly with
//! `StoreError::Unavailable` (HTTP answers 503, Dialpad retries) and nothing panics; once it is
//! back, calls succeed again without restarting the store.

mod pg_support;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use cti_core::model::*;
use cti_core::store::*;
use cti_sqlx::pg::PgOptions;
use pg_support::TestDb;
use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use uuid::Uuid;

fn t0() -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 1, 29, 12, 0, 0)
        .single()
        .unwrap()
}

/// A TCP forwarder to the database that can be stopped (listener closed, every forwarded
/// connection cut) and restarted on the same port.
struct Proxy {
    port: u16,
    upstream: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let mut p = Proxy {
            port: 0,
            upstream,
            accept: None,
            conns: Arc::default(),
        };
        p.listen().await;
        p
    }

    async fn listen(&mut self) {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .unwrap();
        let listener = sock.listen(128).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (upstream, conns) = (self.upstream, self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap_or_else(|e| e.into_inner()).push(task);
            }
        }));
    }

    /// Closes the listening socket and cuts every forwarded connection.
    fn stop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    async fn restart(&mut self) {
        self.stop();
        // The aborted accept task releases the socket asynchronously.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.listen().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn upstream_of(url: &str) -> SocketAddr {
    let opts = PgConnectOptions::from_str(url).unwrap();
    let host = match opts.get_host() {
        "localhost" => "127.0.0.1".to_string(),
        h => h.to_string(),
    };
    tokio::net::lookup_host((host.as_str(), opts.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap()
}

fn event(app: AppId, i: usize) -> NewInboxEvent {
    NewInboxEvent {
        id: Uuid::new_v4(),
        app_id: app,
        dedupe_key: format!("outage-{i}"),
        event_type: Some("ringing".into()),
        call_id: Some(DialpadId(1 + i as u64)),
        state: Some("ringing".into()),
        event_timestamp: None,
        payload: serde_json::json!({ "i": i }).into(),
        received_at: t0(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_with_unavailable_during_an_outage_and_recover() {
    let Some(db) = TestDb::new("outage").await else {
        return;
    };
    // Migrate directly, then talk to the database only through the proxy.
    let direct = db.store().await;
    let mut proxy = Proxy::start(upstream_of(&db.url).await).await;
    let via = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .host("127.0.0.1")
        .port(proxy.port);
    let opts = PgOptions {
        max_connections: 3,
        acquire_timeout: Duration::from_millis(400),
        ..db.options()
    };
    let store = db.store_via(via, opts).await;

    let app = store
        .create_app(
            NewApp {
                id: AppId::new(),
                name: "Outage".into(),
                key: NewKey {
                    lookup: "9".repeat(64),
                    hint: "h".into(),
                },
                now: t0(),
            },
            AuditContext::default(),
        )
        .await
        .unwrap();
    store.ping().await.unwrap();
    assert_eq!(
        store
            .inbox_insert(vec![event(app.id, 0)])
            .await
            .unwrap()
            .len(),
        1
    );

    proxy.stop();
    for i in 0..2 {
        let started = Instant::now();
        let results: Vec<StoreError> = vec![
            store.ping().await.unwrap_err(),
            store.get_app(app.id).await.unwrap_err(),
            store
                .inbox_insert(vec![event(app.id, 100 + i)])
                .await
                .unwrap_err(),
            store
                .inbox_claim(10, Duration::from_secs(30), t0())
                .await
                .unwrap_err(),
            store
                .list_calls(app.id, &CallFilter::default(), PageRequest::new(10, 0))
                .await
                .unwrap_err(),
        ];
        for e in &results {
            assert!(
                e.is_unavailable(),
                "round {i}: expected Unavailable, got {e:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "round {i}: five failing calls took {:?}",
            started.elapsed()
        );
    }

    proxy.restart().await;
    // The pool reconnects on demand; a connection cut during the outage may fail once more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.ping().await {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                assert!(Instant::now() < deadline, "store did not recover: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for i in 0..5 {
        store.ping().await.unwrap();
        assert_eq!(store.get_app(app.id).await.unwrap().unwrap().id, app.id);
        let out = store
            .inbox_insert(vec![event(app.id, 200 + i)])
            .await
            .unwrap();
        assert!(matches!(out[0], InsertOutcome::Inserted(_)));
    }
    // Nothing half-written during the outage: only the events accepted before and after.
    assert_eq!(direct.inbox_stats().await.unwrap().unprocessed, 6);
    direct.close().await;
}
