//! The same store suite on SQLite and on PostgreSQL.

use anyhow::Result;
use kakehashi_broker::store::{self, NewOrg, Store};
use kakehashi_interfaces::{ErrorCode, OrgId, OrgKind, OrgStatus};
use kakehashi_tests::{storage_config, Backend};

async fn open(
    backend: Backend,
    dir: &std::path::Path,
) -> Result<Option<std::sync::Arc<dyn Store>>> {
    match storage_config(backend, dir).await? {
        Some(config) => Ok(Some(store::open(&config).await?)),
        None => Ok(None),
    }
}

async fn org_suite(store: &dyn Store) -> Result<()> {
    store.ping().await?;
    let id = OrgId::new("city-kawagoe")?;
    let added = store
        .add_org(&NewOrg {
            id: id.clone(),
            kind: OrgKind::Municipality,
            name: "川越市".into(),
            cert_fingerprint: None,
        })
        .await?;
    assert_eq!(added.status, OrgStatus::Active);
    assert_eq!(added.name, "川越市");
    assert!(added.created_at.ends_with('Z'), "{}", added.created_at);

    let duplicate = store
        .add_org(&NewOrg {
            id: id.clone(),
            kind: OrgKind::Agency,
            name: "other".into(),
            cert_fingerprint: None,
        })
        .await
        .expect_err("duplicate id accepted");
    assert_eq!(duplicate.code(), ErrorCode::InvalidInput);
    // The refused duplicate changed nothing.
    assert_eq!(
        store.get_org(&id).await?.map(|o| o.kind),
        Some(OrgKind::Municipality)
    );

    store
        .add_org(&NewOrg {
            id: OrgId::new("agency-pension")?,
            kind: OrgKind::Agency,
            name: "年金機構".into(),
            cert_fingerprint: Some("ab".repeat(32)),
        })
        .await?;
    let ids: Vec<String> = store
        .list_orgs()
        .await?
        .into_iter()
        .map(|o| o.id.to_string())
        .collect();
    assert_eq!(ids, ["agency-pension", "city-kawagoe"]);

    assert_eq!(
        store
            .set_org_status(&id, OrgStatus::Suspended)
            .await?
            .status,
        OrgStatus::Suspended
    );
    assert_eq!(
        store.get_org(&id).await?.map(|o| o.status),
        Some(OrgStatus::Suspended)
    );
    assert_eq!(
        store.set_org_status(&id, OrgStatus::Active).await?.status,
        OrgStatus::Active
    );

    let pinned = store.set_org_pin(&id, Some(&"cd".repeat(32))).await?;
    assert_eq!(pinned.cert_fingerprint, Some("cd".repeat(32)));
    assert_eq!(store.set_org_pin(&id, None).await?.cert_fingerprint, None);

    let missing = OrgId::new("city-nowhere")?;
    assert!(store.get_org(&missing).await?.is_none());
    let err = store
        .set_org_status(&missing, OrgStatus::Suspended)
        .await
        .expect_err("unknown org");
    assert_eq!(err.code(), ErrorCode::NotFound);
    Ok(())
}

#[tokio::test]
async fn org_store_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open(Backend::Sqlite, dir.path()).await?.expect("sqlite");
    org_suite(&*store).await?;
    // Reopening the file keeps the data and re-running migrations is harmless.
    drop(store);
    let store = open(Backend::Sqlite, dir.path()).await?.expect("sqlite");
    assert_eq!(store.list_orgs().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn org_store_on_postgres() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(store) = open(Backend::Postgres, dir.path()).await? else {
        return Ok(());
    };
    assert_eq!(store.backend(), "postgres");
    org_suite(&*store).await
}

/// On PostgreSQL the lookup generation (what the query path's cache trusts)
/// moves once per transaction that changes copies or person codes, at its
/// commit: not before it (a reader would cache what is about to change
/// under a number already new), not per row, not for a rollback; and a
/// second writer is not held up by the first one's uncommitted bump.
#[tokio::test]
async fn lookup_generation_on_postgres_moves_once_per_commit() -> Result<()> {
    use sqlx::{Connection, PgConnection};
    let dir = tempfile::tempdir()?;
    let Some(store) = open(Backend::Postgres, dir.path()).await? else {
        return Ok(());
    };
    store
        .add_org(&NewOrg {
            id: OrgId::new("city-kawagoe")?,
            kind: OrgKind::Municipality,
            name: "川越市".into(),
            cert_fingerprint: None,
        })
        .await?;
    let store::Pools::Postgres(pool) = store.pools() else {
        anyhow::bail!("not PostgreSQL");
    };
    let options = pool.connect_options();
    let generation = || async {
        let n: i64 = sqlx::query_scalar("SELECT n FROM lookup_generation WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        anyhow::Ok(n)
    };
    let insert = |code: &str| {
        format!(
            "INSERT INTO copies (provider, person_code, cipher, deposited_at) \
             VALUES ('city-kawagoe', '{code}', '\\x00', '2026-01-01T00:00:00Z')"
        )
    };
    let g0 = generation().await?;

    // Writer A changes three rows and has not committed: nothing moves yet.
    let mut a = PgConnection::connect_with(&options).await?;
    sqlx::raw_sql("BEGIN").execute(&mut a).await?;
    for code in ["a1", "a2", "a3"] {
        sqlx::raw_sql(&insert(code)).execute(&mut a).await?;
    }
    assert_eq!(generation().await?, g0, "moved before the commit");

    // Writer B commits meanwhile, without waiting for A.
    let mut b = PgConnection::connect_with(&options).await?;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        sqlx::raw_sql("BEGIN").execute(&mut b).await?;
        sqlx::raw_sql(&insert("b1")).execute(&mut b).await?;
        sqlx::raw_sql("COMMIT").execute(&mut b).await?;
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("B waited for A's uncommitted transaction"))??;
    assert_eq!(generation().await?, g0 + 1);

    // A commits: one step for its three rows.
    sqlx::raw_sql("COMMIT").execute(&mut a).await?;
    assert_eq!(generation().await?, g0 + 2);

    // A rolled-back change leaves the number alone.
    sqlx::raw_sql(&format!("BEGIN; {}; ROLLBACK", insert("c1")))
        .execute(&mut a)
        .await?;
    assert_eq!(generation().await?, g0 + 2);

    // A deletion and a TRUNCATE (no row triggers) each move it, even in a
    // session that set the trigger's own marker itself.
    sqlx::raw_sql("SET kakehashi.lookup_generation_bumped = 'on'")
        .execute(&mut a)
        .await?;
    sqlx::raw_sql("DELETE FROM copies WHERE person_code = 'a1'")
        .execute(&mut a)
        .await?;
    assert_eq!(generation().await?, g0 + 3);
    sqlx::raw_sql("TRUNCATE copies").execute(&mut a).await?;
    assert_eq!(generation().await?, g0 + 4);
    a.close().await?;
    b.close().await?;
    Ok(())
}
