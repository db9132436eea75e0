//! WebSocket route (in progress).
use crate::AppState;
/// `/ws`.
pub fn routes(state: AppState) -> axum::Router {
    axum::Router::new().with_state(state)
}
