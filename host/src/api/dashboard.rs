//! `GET /dashboard`: a single web page (no build step) over the API.
//!
//! The page itself is public and holds no data; it asks for the API key (kept in the
//! browser's session storage, or taken once from `#key=...` in the URL; `&view=workers` or
//! `&view=strategies` opens another view) and calls the API
//! with it: runs with a state filter and pagination, a run's detail (progress, events,
//! attempts, logs), workers with their resources and running ops, and strategies.

use axum::response::Html;

/// The page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/dashboard.html"))
}
