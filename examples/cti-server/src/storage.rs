//! Opening the store (and bus) named by `DATABASE_URL`.

use std::sync::Arc;

use cti_core::fanout::EventBus;
use cti_core::store::Store;
use cti_sqlx::pg::PgOptions;
use cti_sqlx::{PgBus, PgStore, SqliteStore};

/// An opened, migrated store and, for PostgreSQL, the cross-instance bus.
pub struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// `Some` for PostgreSQL (LISTEN/NOTIFY); `None` means the in-process bus.
    pub bus: Option<Arc<dyn EventBus>>,
}

/// `true` for `postgres://` and `postgresql://` URLs.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the database (applying migrations); with `bus`, also connects the PostgreSQL bus.
pub async fn open(url: &str, schema: &str, bus: bool) -> Result<Opened, String> {
    if is_postgres(url) {
        let store = PgStore::open(url, PgOptions::with_schema(schema))
            .await
            .map_err(|e| format!("cannot open the PostgreSQL database: {e}"))?;
        let bus: Option<Arc<dyn EventBus>> = if bus {
            let channel = format!("cti_events_{schema}");
            let b = PgBus::connect(url, &channel)
                .await
                .map_err(|e| format!("cannot connect the PostgreSQL event bus: {e}"))?;
            Some(Arc::new(b))
        } else {
            None
        };
        Ok(Opened {
            store: Arc::new(store),
            bus,
        })
    } else {
        let store = SqliteStore::open(url)
            .await
            .map_err(|e| format!("cannot open the SQLite database: {e}"))?;
        Ok(Opened {
            store: Arc::new(store),
            bus: None,
        })
    }
}
