//! `PgBus`: signals cross instances, a killed listener reconnects and emits `Resync`, dropping
//! the last handle stops the listener.

mod pg_support;

use std::time::{Duration, Instant};

use cti_core::fanout::{BusSignal, EventBus};
use cti_core::model::AppId;
use cti_sqlx::pg::{PgBus, PgBusOptions};
use pg_support::TestDb;
use tokio::sync::broadcast;

fn channel() -> String {
    format!(
        "cti_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The next signal other than `Resync` noise filtered by `pred`, within `within`.
async fn wait_for(
    rx: &mut broadcast::Receiver<BusSignal>,
    within: Duration,
    pred: impl Fn(&BusSignal) -> bool,
) -> Option<BusSignal> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(s)) if pred(&s) => return Some(s),
            Ok(Ok(_)) => continue,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

async fn backends_named(db: &TestDb, name: &str) -> i64 {
    let mut c = db.conn().await;
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(name)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_every_instance_including_the_sender() {
    let Some(db) = TestDb::new("bus").await else {
        return;
    };
    let ch = channel();
    let one = PgBus::connect(&db.url, &ch).await.unwrap();
    let two = PgBus::connect(&db.url, &ch).await.unwrap();
    let (mut rx1, mut rx2) = (one.subscribe(), two.subscribe());
    let app = AppId::new();
    let sent = [
        BusSignal::Events {
            app_id: app,
            seq: 1,
        },
        BusSignal::Inbox,
        BusSignal::AppChanged { app_id: app },
        BusSignal::Events {
            app_id: app,
            seq: u64::MAX,
        },
    ];
    for s in &sent {
        one.notify(s.clone()).await.unwrap();
    }
    for rx in [&mut rx2, &mut rx1] {
        for s in &sent {
            let got = wait_for(rx, Duration::from_secs(5), |_| true).await;
            assert_eq!(got.as_ref(), Some(s));
        }
    }
    // Another channel hears nothing.
    let other = PgBus::connect(&db.url, &channel()).await.unwrap();
    let mut rx3 = other.subscribe();
    two.notify(BusSignal::Inbox).await.unwrap();
    assert_eq!(
        wait_for(&mut rx1, Duration::from_secs(5), |_| true).await,
        Some(BusSignal::Inbox)
    );
    assert!(
        wait_for(&mut rx3, Duration::from_millis(300), |_| true)
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_listener_reconnects_and_emits_resync() {
    let Some(db) = TestDb::new("busterm").await else {
        return;
    };
    let ch = channel();
    // The sender listens too: give the listener under test a name of its own.
    let opts = PgBusOptions {
        reconnect_min: Duration::from_millis(50),
        application_name: Some(format!("cti-bus-victim {ch}")),
        ..PgBusOptions::default()
    };
    let listener = PgBus::connect_with(&db.url, &ch, opts).await.unwrap();
    let sender = PgBus::connect(&db.url, &ch).await.unwrap();
    let mut rx = listener.subscribe();
    let app = AppId::new();
    let name = listener.application_name().to_string();
    assert_eq!(backends_named(&db, &name).await, 1);
    let pid_before = listener.listener_pid().unwrap();

    for round in 1..=3u64 {
        let mut c = db.conn().await;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()) t",
        )
        .bind(&name)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(killed, 1, "round {round}");
        assert_eq!(
            wait_for(&mut rx, Duration::from_secs(10), |s| *s
                == BusSignal::Resync)
            .await,
            Some(BusSignal::Resync),
            "round {round}: no resync after the listener was terminated"
        );
        // Listening again: new signals arrive.
        sender
            .notify(BusSignal::Events {
                app_id: app,
                seq: round,
            })
            .await
            .unwrap();
        assert_eq!(
            wait_for(&mut rx, Duration::from_secs(5), |s| matches!(
                s,
                BusSignal::Events { .. }
            ))
            .await,
            Some(BusSignal::Events {
                app_id: app,
                seq: round
            }),
            "round {round}"
        );
    }
    assert_ne!(listener.listener_pid(), Some(pid_before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_listener() {
    let Some(db) = TestDb::new("busdrop").await else {
        return;
    };
    let ch = channel();
    let bus = PgBus::connect(&db.url, &ch).await.unwrap();
    let name = bus.application_name().to_string();
    let clone = bus.clone();
    let mut rx = bus.subscribe();
    drop(bus);
    // A clone keeps it alive.
    clone.notify(BusSignal::Inbox).await.unwrap();
    assert_eq!(
        wait_for(&mut rx, Duration::from_secs(5), |_| true).await,
        Some(BusSignal::Inbox)
    );
    drop(clone);
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await,
        Ok(Err(broadcast::error::RecvError::Closed))
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backends_named(&db, &name).await > 0 {
        assert!(Instant::now() < deadline, "listener connection still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unreachable_database_is_an_error_not_a_hang() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = PgBusOptions {
        connect_timeout: Duration::from_millis(500),
        ..PgBusOptions::default()
    };
    let started = Instant::now();
    let err = PgBus::connect_with(
        &format!("postgres://postgres@127.0.0.1:{port}/test"),
        "cti_x",
        opts,
    )
    .await;
    assert!(err.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        PgBus::connect("postgres://postgres@127.0.0.1/test", "bad channel")
            .await
            .is_err()
    );
}
