//! After a full run of registrations, deposits and queries, neither the SQLite
//! files nor the broker's logs hold a deposited item value, a person's name or
//! an Individual Number (R2, R4). Searched as raw bytes.

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use kakehashi_tests::exchange::{all_bytes_under, exchange_broker, query_body, scenario};
use kakehashi_tests::Backend;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn database_and_logs_hold_no_item_value_or_individual_number() -> Result<()> {
    let logs = Captured::default();
    let writer = logs.clone();
    // Debug level for everything: the most the broker could ever write.
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 20).await?;
    for (i, code) in s.union_codes.clone().iter().enumerate() {
        let (body, _) = query_body(
            "F-0120",
            "premium-calculation",
            "city-saitama",
            code,
            &["local_tax.income", "local_tax.taxable_status"],
        );
        assert_eq!(s.union.post("/v1/queries", body).await?.status, 200);
        // Refusals and pending answers too.
        let (body, _) = query_body(
            "F-0120",
            "premium-calculation",
            "city-saitama",
            code,
            &["resident.address"],
        );
        s.union.post("/v1/queries", body).await?;
        if i % 5 == 0 {
            let (body, _) = query_body(
                "F-0121",
                "benefit-reduction",
                "city-saitama",
                code,
                &["welfare.public_assistance", "local_tax.income"],
            );
            s.union.post("/v1/queries", body).await?;
        }
    }
    // Bad input that carries a number in the wrong place.
    s.city
        .post(
            "/v1/copies",
            format!(
                "{{\"person\": \"{}\", \"items\": {{\"x\": 1}}, \"individual_number\": \"{}\"}}",
                s.city_codes[0], s.numbers[0]
            ),
        )
        .await?;

    let data = broker.data.path().to_path_buf();
    // Shut down first so SQLite has checkpointed; `broker.data` lives on to the end.
    broker.broker.shutdown().await;

    let stored = all_bytes_under(&data)?;
    assert!(stored.len() > 10_000, "the database files were not found");
    let logs = logs.0.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(!logs.is_empty(), "no logs were captured");
    for (i, number) in s.numbers.iter().enumerate() {
        let income = (2_000_000 + i as u64).to_string();
        let name = format!("被保険者 {i}");
        for (what, bytes) in [("database", &stored), ("logs", &logs)] {
            assert!(
                !contains(bytes, number),
                "an Individual Number is in the {what}"
            );
            assert!(
                !contains(bytes, &income),
                "a deposited income is in the {what}"
            );
            assert!(!contains(bytes, &name), "a person's name is in the {what}");
        }
    }
    for (what, bytes) in [("database", &stored), ("logs", &logs)] {
        assert!(
            !contains(bytes, "課税"),
            "a deposited text value is in the {what}"
        );
        assert!(!contains(bytes, "高砂"), "an address is in the {what}");
    }
    Ok(())
}
