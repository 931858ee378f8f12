//! Databases for the crate's own tests on PostgreSQL: a fresh database on
//! the server `KAKEHASHI_TEST_PG_URL` names (`scripts/test` starts one and
//! sets it), left behind for inspection (`scripts/drop-test-databases`).

use super::PgStore;

/// A fresh PostgreSQL store named after `what`, or `None` when the suite
/// was given no server: then the test that asked says so on stderr rather
/// than passing as if it had run.
pub(crate) async fn fresh_postgres(what: &str) -> Option<PgStore> {
    use sqlx::Connection;
    let Some(base) = std::env::var("KAKEHASHI_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "NOT RUN on PostgreSQL: {what} (KAKEHASHI_TEST_PG_URL is unset; scripts/test sets it)"
        );
        return None;
    };
    let name = format!("kk_test_{what}_{}", hex::encode(rand::random::<[u8; 6]>()));
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to KAKEHASHI_TEST_PG_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let _ = admin.close().await;
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base.as_str(), None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let host = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    let url = match query {
        Some(q) => format!("{host}/{name}?{q}"),
        None => format!("{host}/{name}"),
    };
    Some(
        PgStore::open(&url, 4)
            .await
            .expect("open the test database"),
    )
}
