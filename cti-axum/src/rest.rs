//! REST routes (in progress).
use crate::AppState;
/// REST + webhook routes.
pub fn routes(state: AppState) -> axum::Router {
    axum::Router::new().with_state(state)
}
