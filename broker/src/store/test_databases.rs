//! Databases for the crate's own tests on PostgreSQL: a fresh database on
//! the server `KAKEHASHI_TEST_PG_URL` names (`scripts/test` starts one and
//! sets it), left behind for inspection (`scripts/drop-test-databases`).

use super::PgStore;

/// A fresh PostgreSQL store named after `what`. Without a server the test
/// fails, as the integration tests do (`kakehashi_tests::pg_base_url`),
/// unless `KAKEHASHI_SKIP_PG=1`: then it is `None`, and the test says on
/// stderr, past the harness's capture, that it did not run.
pub(crate) async fn fresh_postgres(what: &str) -> Option<PgStore> {
    use std::io::Write as _;
    let base = match std::env::var("KAKEHASHI_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("KAKEHASHI_SKIP_PG").as_deref() == Ok("1") => {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! PostgreSQL variant of {what} NOT RUN: KAKEHASHI_SKIP_PG=1 and KAKEHASHI_TEST_PG_URL is not set !!!\n"
            );
            return None;
        }
        _ => panic!(
            "KAKEHASHI_TEST_PG_URL is not set: run scripts/test (it starts PostgreSQL), or set KAKEHASHI_SKIP_PG=1 to run without the PostgreSQL variants"
        ),
    };
    let (_, url) = super::create_database(&base, &format!("kk_test_{what}"))
        .await
        .expect("create a test database on KAKEHASHI_TEST_PG_URL");
    Some(
        PgStore::open(&url, 4)
            .await
            .expect("open the test database"),
    )
}

/// The pool of a fresh PostgreSQL store named after `what`, for tests that
/// speak to the database directly; `None` as [`fresh_postgres`].
pub(crate) async fn fresh_postgres_pool(what: &str) -> Option<sqlx::PgPool> {
    use super::Store as _;
    match fresh_postgres(what).await?.pools() {
        super::Pools::Postgres(pool) => Some(pool),
        _ => panic!("a PostgreSQL store has PostgreSQL pools"),
    }
}
