//! Own retention periods of personal data (R15): identity-confirmation data
//! one year after their last confirmation, persons and their copies five
//! years after loss of eligibility. Real brokers, both backends.

use anyhow::{bail, Context, Result};
use kakehashi_broker::records::{self, Verdict};
use kakehashi_broker::retention::{self, RetentionConfig};
use kakehashi_interfaces::RegistrationReport;
use kakehashi_tests::exchange::{
    exchange_broker, income_of, individual_number, post_ok, registration_line,
    registration_line_lost, scenario,
};
use kakehashi_tests::{
    both_backends, sql_column, sql_count, sql_exec, Backend, TestBroker, TestClient,
};

/// The union asks the city for one person's income; the error code or "provided".
async fn ask_income(union: &mut TestClient, union_code: &str) -> Result<String> {
    Ok(match income_of(union, union_code).await? {
        Ok(_) => "provided".into(),
        Err(code) => code,
    })
}

/// Runs the erasure now with the default periods, as `ops-suzuki`.
async fn erase_now(broker: &TestBroker) -> Result<retention::ErasureReport> {
    Ok(retention::erase(
        &broker.store.pools(),
        &broker.broker.state().records,
        &RetentionConfig::default(),
        time::OffsetDateTime::now_utc(),
        "ops-suzuki",
    )
    .await?)
}

/// The stored bytes of one person (by the union's code) that an erasure
/// must remove: the number's hash and ciphertext, the facts' ciphertext,
/// every org's copy.
async fn stored_blobs_of(broker: &TestBroker, union_code: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let person = format!("(SELECT person_id FROM person_codes WHERE code = '{union_code}')");
    let queries = [
        (
            "number hash",
            format!("SELECT number_hash FROM persons WHERE id = {person}"),
        ),
        (
            "number",
            format!("SELECT number_cipher FROM persons WHERE id = {person}"),
        ),
        (
            "facts",
            format!("SELECT facts_cipher FROM person_facts WHERE person_id = {person}"),
        ),
        (
            "copy",
            format!(
                "SELECT cipher FROM copies WHERE (provider, person_code) IN
                 (SELECT org_id, code FROM person_codes WHERE number_hash =
                  (SELECT number_hash FROM persons WHERE id = {person}))"
            ),
        ),
    ];
    let mut blobs = Vec::new();
    for (what, sql) in queries {
        let found: Vec<Vec<u8>> = sql_column(&broker.store.pools(), &sql).await?;
        if found.is_empty() {
            bail!("the person has no {what} stored");
        }
        blobs.extend(found.into_iter().map(|b| (what.to_string(), b)));
    }
    Ok(blobs)
}

async fn erases_what_is_due(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let mut s = scenario(&broker, 3).await?;
    let pools = broker.store.pools();

    // Person 2 (the highest branch number) lost eligibility more than five
    // years ago, person 1 two years ago; person 0 is insured but was last
    // confirmed more than a year ago.
    let lines = [
        registration_line_lost("被保険者 2", &s.numbers[2], "2019-03-31"),
        registration_line_lost("被保険者 1", &s.numbers[1], "2024-06-30"),
    ];
    let report: RegistrationReport =
        serde_json::from_value(post_ok(&mut s.union, "/v1/persons", &lines).await?)?;
    assert_eq!(report.applied.len(), 2, "{report:?}");
    sql_exec(
        &pools,
        &format!(
            "UPDATE person_facts SET confirmed_at = '2024-01-01T00:00:00.000000Z'
             WHERE person_id = (SELECT person_id FROM person_codes WHERE code = '{}')",
            s.union_codes[0]
        ),
    )
    .await?;
    // Until erased, a person who lost eligibility is still answered for.
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[2]).await?,
        "provided"
    );

    let erased = stored_blobs_of(&broker, &s.union_codes[2]).await?;
    let report = erase_now(&broker).await?;
    assert_eq!(
        (report.identity_confirmations, report.persons, report.copies),
        (2, 1, 1),
        "{report:?}"
    );
    if backend == Backend::Postgres {
        // The dead row versions were vacuumed away at once.
        assert_eq!(
            sql_count(
                &pools,
                "SELECT COUNT(*) FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL
                 AND relname IN ('copies', 'person_codes', 'person_facts', 'persons')"
            )
            .await?,
            4
        );
    }
    if let Some(db) = &broker.config.storage.sqlite {
        // Not left in the file's free space or in the WAL either.
        for file in [db.clone(), db.with_extension("db-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            for (what, blob) in &erased {
                assert!(
                    !bytes.windows(blob.len()).any(|w| w == blob.as_slice()),
                    "person 2's {what} is still in {}",
                    file.display()
                );
            }
        }
    }
    assert!(report.record_seq.is_some());
    assert_eq!(report.codes, 2, "the union's and the city's code");

    // Person 2 is gone for every org: no copy, no code, no number.
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[2]).await?,
        "unknown_person"
    );
    assert_eq!(sql_count(&pools, "SELECT COUNT(*) FROM persons").await?, 2);
    assert_eq!(sql_count(&pools, "SELECT COUNT(*) FROM copies").await?, 2);
    assert_eq!(
        sql_count(
            &pools,
            &format!(
                "SELECT COUNT(*) FROM person_codes WHERE code IN ('{}', '{}')",
                s.union_codes[2], s.city_codes[2]
            )
        )
        .await?,
        0
    );
    // Linking the number again answers as for any number (R5): a code, and
    // a new one, since the city's old code went with the person.
    let relinked: RegistrationReport = serde_json::from_value(
        post_ok(
            &mut s.city,
            "/v1/persons",
            &[registration_line("被保険者 2", &s.numbers[2])],
        )
        .await?,
    )?;
    assert_eq!(relinked.applied.len(), 1, "{relinked:?}");
    assert_ne!(relinked.applied[0].person_code.to_string(), s.city_codes[2]);
    // Person 1 is within five years and person 0 still insured: both answered.
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[1]).await?,
        "provided"
    );
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[0]).await?,
        "provided"
    );
    // Only person 1's facts (confirmed today) remain.
    assert_eq!(
        sql_count(&pools, "SELECT COUNT(*) FROM person_facts").await?,
        1
    );

    // Re-registering person 0 confirms the facts again under the same branch;
    // a new person never gets the erased person's branch number.
    let lines = [
        registration_line("被保険者 0", &s.numbers[0]),
        registration_line("被保険者 9", &individual_number(9)),
    ];
    let again: RegistrationReport =
        serde_json::from_value(post_ok(&mut s.union, "/v1/persons", &lines).await?)?;
    let branches: Vec<String> = again
        .applied
        .iter()
        .map(|p| {
            p.branch_number
                .as_ref()
                .map(|b| b.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(branches, ["00000001", "00000004"]);
    assert_eq!(
        sql_count(&pools, "SELECT COUNT(*) FROM person_facts").await?,
        3
    );

    // The erasure left a record with its counts, and the chain verifies.
    assert_eq!(
        sql_count(&pools, "SELECT COUNT(*) FROM records WHERE outcome = 'erasure' AND detail LIKE '%\"persons\":1%' AND detail LIKE '%ops-suzuki%'").await?,
        1
    );
    broker.broker.state().records.seal().await?;
    let keys = kakehashi_broker::keys::trusted_keys(&broker.config.keys.dir)?;
    match records::verify_store(&pools, &keys).await? {
        Verdict::Intact(_) => {}
        Verdict::Broken(f) => bail!("erasure broke the records: {f}"),
    }

    // Nothing more is due: no second record.
    let second = erase_now(&broker).await?;
    assert_eq!(
        (
            second.identity_confirmations,
            second.persons,
            second.copies,
            second.record_seq
        ),
        (0, 0, 0, None)
    );
    Ok(())
}

both_backends!(erases_what_is_due: erases_what_is_due_sqlite, erases_what_is_due_postgres);

/// A linking org's code whose number no insurer keeps answers nothing
/// (every flow has the insurer on one side): it is erased with its copies
/// once its last link is older than the identity-confirmation period, and
/// linking the number again keeps it.
async fn a_link_no_insurer_keeps_is_erased_after_a_year(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let mut s = scenario(&broker, 1).await?;
    let pools = broker.store.pools();
    // The city links three numbers the union never registered, and
    // deposits a copy for each.
    let lines: Vec<_> = (7..10)
        .map(|i| registration_line(&format!("住民 {i}"), &individual_number(i)))
        .collect();
    let linked: RegistrationReport =
        serde_json::from_value(post_ok(&mut s.city, "/v1/persons", &lines).await?)?;
    let codes: Vec<String> = linked
        .applied
        .iter()
        .map(|p| p.person_code.to_string())
        .collect();
    assert_eq!(codes.len(), 3, "{linked:?}");
    let copies: Vec<String> = codes
        .iter()
        .map(|c| serde_json::json!({"person": c, "items": {"local_tax.income": 1}}).to_string())
        .collect();
    post_ok(&mut s.city, "/v1/copies", &copies).await?;
    // Numbers 7 and 8 were linked two years ago, 9 today; the city's code
    // for the union's person too was linked two years ago. Number 9's code
    // has no link time, as a code made before link times were kept: its
    // creation today keeps it.
    let two_years_ago = "2024-12-01T00:00:00.000000Z";
    sql_exec(
        &pools,
        &format!(
            "UPDATE person_codes SET linked_at = '' WHERE code = '{}'",
            codes[2]
        ),
    )
    .await?;
    sql_exec(
        &pools,
        &format!(
            "UPDATE person_codes SET linked_at = '{two_years_ago}', created_at = '{two_years_ago}'
             WHERE code IN ('{}', '{}', '{}')",
            codes[0], codes[1], s.city_codes[0]
        ),
    )
    .await?;
    // The city links number 8 again: it is kept from today, and no answer
    // changed, so lookups cached by the broker stay valid.
    let generation = "SELECT n FROM lookup_generation WHERE id = 1";
    let before = sql_count(&pools, generation).await?;
    post_ok(&mut s.city, "/v1/persons", &lines[1..2]).await?;
    assert_eq!(sql_count(&pools, generation).await?, before);
    assert_eq!(
        sql_count(
            &pools,
            &format!(
                "SELECT COUNT(*) FROM person_codes WHERE code = '{}' AND linked_at > '{two_years_ago}'",
                codes[1]
            )
        )
        .await?,
        1,
        "a link again keeps the code"
    );
    // A link again the same day writes nothing (at most once a day).
    let linked_at = format!(
        "SELECT linked_at FROM person_codes WHERE code = '{}'",
        codes[1]
    );
    let first: Vec<String> = sql_column(&pools, &linked_at).await?;
    post_ok(&mut s.city, "/v1/persons", &lines[1..2]).await?;
    assert_eq!(sql_column::<String>(&pools, &linked_at).await?, first);

    let report = erase_now(&broker).await?;
    assert_eq!(
        (
            report.identity_confirmations,
            report.persons,
            report.copies,
            report.codes
        ),
        (0, 0, 1, 1),
        "{report:?}"
    );
    let seq = report.record_seq.context("an erasure record")?;
    // Its record counts the erased code, so it does not read as erasing
    // nothing but a copy.
    assert_eq!(
        sql_count(
            &pools,
            &format!("SELECT COUNT(*) FROM records WHERE seq = {seq} AND outcome = 'erasure' AND detail LIKE '%\"codes\":1,%'")
        )
        .await?,
        1
    );
    assert!(broker.broker.state().records.verify().await?.is_intact());
    let left = |code: &str| format!("SELECT COUNT(*) FROM person_codes WHERE code = '{code}'");
    assert_eq!(sql_count(&pools, &left(&codes[0])).await?, 0, "erased");
    assert_eq!(
        sql_count(
            &pools,
            &format!(
                "SELECT COUNT(*) FROM copies WHERE person_code = '{}'",
                codes[0]
            )
        )
        .await?,
        0
    );
    for kept in [&codes[1], &codes[2], &s.city_codes[0]] {
        assert_eq!(sql_count(&pools, &left(kept)).await?, 1, "{kept} kept");
    }
    // The union's person is answered as before.
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[0]).await?,
        "provided"
    );
    Ok(())
}

both_backends!(
    a_link_no_insurer_keeps_is_erased_after_a_year:
        unmatched_link_erased_sqlite,
        unmatched_link_erased_postgres
);

#[tokio::test]
async fn the_daily_task_erases_without_an_operator() -> Result<()> {
    let broker = kakehashi_tests::exchange::exchange_broker_with(Backend::Sqlite, |opts| {
        opts.retention.first_delay_secs = 1;
        opts.retention.interval_secs = 1;
    })
    .await?
    .context("sqlite")?;
    let mut s = scenario(&broker, 2).await?;
    let lapsed = registration_line_lost("被保険者 1", &s.numbers[1], "2019-03-31");
    post_ok(&mut s.union, "/v1/persons", &[lapsed]).await?;
    let pools = broker.store.pools();
    let mut erased = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if sql_count(&pools, "SELECT COUNT(*) FROM records WHERE outcome = 'erasure' AND detail LIKE '%retention-task%'").await? == 1 {
            erased = true;
            break;
        }
    }
    assert!(
        erased,
        "the retention task wrote no erasure record within 5 s"
    );
    assert_eq!(sql_count(&pools, "SELECT COUNT(*) FROM persons").await?, 1);
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[1]).await?,
        "unknown_person"
    );
    assert_eq!(
        ask_income(&mut s.union, &s.union_codes[0]).await?,
        "provided"
    );
    Ok(())
}

#[tokio::test]
async fn only_the_insurer_reports_loss_of_eligibility() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let mut s = scenario(&broker, 1).await?;
    let line = registration_line_lost("被保険者 0", &s.numbers[0], "2019-03-31");
    let report: RegistrationReport =
        serde_json::from_value(post_ok(&mut s.city, "/v1/persons", &[line]).await?)?;
    assert!(report.applied.is_empty());
    assert_eq!(report.confirmation_list[0].reason.as_str(), "invalid_input");
    assert!(report.confirmation_list[0]
        .message
        .contains("only the insurer"));
    let lost = sql_count(
        &broker.store.pools(),
        "SELECT COUNT(*) FROM persons WHERE eligibility_lost_on IS NOT NULL",
    )
    .await?;
    assert_eq!(lost, 0, "a link line changed the person's eligibility");
    // A malformed day is refused on the union's line too.
    let mut bad: serde_json::Value =
        serde_json::from_str(&registration_line("被保険者 0", &s.numbers[0]))?;
    bad["eligibility_lost_on"] = serde_json::json!("2019-02-30");
    let report: RegistrationReport =
        serde_json::from_value(post_ok(&mut s.union, "/v1/persons", &[bad.to_string()]).await?)?;
    assert_eq!(report.confirmation_list[0].reason.as_str(), "invalid_input");
    Ok(())
}
