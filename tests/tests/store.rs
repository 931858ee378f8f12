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
