use super::*;
use std::collections::HashSet;
use x509_parser::revocation_list::CertificateRevocationList;

fn ca() -> Ca {
    Ca::generate("Test CA").unwrap()
}

fn with_crl<T>(pem: &str, f: impl FnOnce(&CertificateRevocationList<'_>) -> T) -> T {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    assert_eq!(block.label, "X509 CRL");
    let (rest, crl) = x509_parser::parse_x509_crl(&block.contents).unwrap();
    assert!(rest.is_empty());
    f(&crl)
}

fn crl_serials(crl: &CertificateRevocationList<'_>) -> Vec<String> {
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.serial().to_bytes_be()))
        .collect()
}

fn ca_spki(ca: &Ca) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    c.public_key().raw.to_vec()
}

#[test]
fn org_id_rules() {
    for ok in ["abc", "city-saitama", "a1-2b", "x0y", &"a".repeat(64)] {
        assert!(validate_org_id(ok).is_ok(), "{ok} should be valid");
    }
    for bad in [
        "",
        "ab",
        &"a".repeat(65),
        "1abc",
        "-abc",
        "abc-",
        "City",
        "ab_c",
        "ab c",
        "ab.c",
        "さいたま市",
    ] {
        assert!(
            matches!(validate_org_id(bad), Err(CertError::InvalidOrgId { .. })),
            "{bad:?} should be invalid"
        );
    }
}

#[test]
fn issue_org_rejects_invalid_id() {
    let err = ca()
        .issue_org("Bad_Org", &OrgCertOptions::default())
        .unwrap_err();
    assert!(matches!(err, CertError::InvalidOrgId { .. }), "{err}");
}

#[test]
fn org_cert_has_san_uri_and_client_auth() {
    let ca = ca();
    let issued = ca
        .issue_org("city-saitama", &OrgCertOptions::default())
        .unwrap();
    let info = inspect_der(&issued.cert_der).unwrap();
    assert_eq!(info.org_id.as_deref(), Some("city-saitama"));
    assert_eq!(info.subject, "CN=city-saitama");
    assert_eq!(info.issuer, "CN=Test CA");
    assert!(info.client_auth);
    assert!(!info.server_auth);
    assert!(!info.is_ca);
    assert!(info.dns_names.is_empty() && info.ip_addresses.is_empty());
    assert_eq!(info.serial_hex, issued.serial_hex);
    assert_eq!(info.fingerprint_sha256, issued.fingerprint_sha256);
    assert_eq!(
        issued.fingerprint_sha256,
        fingerprint_sha256(&issued.cert_der)
    );
    assert_eq!(
        org_id_from_der(&issued.cert_der).unwrap().as_deref(),
        Some("city-saitama")
    );
    // PEM and DER agree.
    assert_eq!(
        inspect_pem(&issued.cert_pem).unwrap().fingerprint_sha256,
        info.fingerprint_sha256
    );
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    // Signed by the CA.
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
}

#[test]
fn org_cert_without_client_auth() {
    let opts = OrgCertOptions {
        client_auth_eku: false,
        ..OrgCertOptions::default()
    };
    let issued = ca().issue_org("city-saitama", &opts).unwrap();
    let info = inspect_der(&issued.cert_der).unwrap();
    assert!(!info.client_auth);
    assert!(info.server_auth);
    assert_eq!(info.org_id.as_deref(), Some("city-saitama"));
}

#[test]
fn server_cert_sans() {
    let issued = ca()
        .issue_server(
            &["localhost", "127.0.0.1", "::1", "broker.example.jp"],
            Validity::days_from_now(30),
        )
        .unwrap();
    let info = inspect_der(&issued.cert_der).unwrap();
    assert_eq!(info.subject, "CN=localhost");
    assert_eq!(info.dns_names, vec!["localhost", "broker.example.jp"]);
    assert_eq!(info.ip_addresses, vec!["127.0.0.1", "::1"]);
    assert!(info.server_auth && !info.client_auth);
    assert_eq!(info.org_id, None);
}

#[test]
fn server_cert_rejects_bad_names() {
    let ca = ca();
    let v = Validity::days_from_now(1);
    assert!(matches!(
        ca.issue_server(&[], v),
        Err(CertError::InvalidName(..))
    ));
    assert!(matches!(
        ca.issue_server(&["bad name"], v),
        Err(CertError::InvalidName(..))
    ));
}

#[test]
fn ca_cert_properties() {
    let ca = ca();
    let info = inspect_der(ca.cert_der()).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.subject, "CN=Test CA");
    let (_, c) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    let ku = c.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let years = (c.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_days();
    assert!((3640..=3651).contains(&years), "{years}");
}

fn times(issued: &IssuedCert) -> (OffsetDateTime, OffsetDateTime) {
    let (_, c) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
    (
        c.validity().not_before.to_datetime(),
        c.validity().not_after.to_datetime(),
    )
}

#[test]
fn validity_windows_come_out_as_asked() {
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    let issue = |validity| {
        times(
            &ca.issue_org(
                "city-saitama",
                &OrgCertOptions {
                    validity,
                    client_auth_eku: true,
                },
            )
            .unwrap(),
        )
    };

    let (nb, na) = issue(Validity::expired());
    assert!(na < now && nb < na, "expired: {nb} .. {na}");

    let (nb, na) = issue(Validity::not_yet_valid());
    assert!(nb > now && na > nb, "not yet valid: {nb} .. {na}");

    let (nb, na) = issue(Validity::days_from_now(10));
    assert!(nb < now && nb > now - Duration::minutes(6));
    assert!((na - now - Duration::days(10)).abs() < Duration::seconds(5));

    // Explicit window, second precision survives.
    let nb0 = time::macros::datetime!(2030-01-02 03:04:05 UTC);
    let na0 = time::macros::datetime!(2031-01-02 03:04:05 UTC);
    assert_eq!(
        issue(Validity {
            not_before: nb0,
            not_after: na0
        }),
        (nb0, na0)
    );
}

#[test]
fn bad_validity_is_an_error() {
    let ca = ca();
    let now = OffsetDateTime::now_utc();
    let inverted = OrgCertOptions {
        validity: Validity {
            not_before: now,
            not_after: now - Duration::days(1),
        },
        client_auth_eku: true,
    };
    assert!(matches!(
        ca.issue_org("city-saitama", &inverted),
        Err(CertError::InvalidValidity(_))
    ));
    // Would panic inside rcgen without our range check.
    let ancient = Validity {
        not_before: time::macros::datetime!(-0005-01-01 00:00 UTC),
        not_after: now,
    };
    assert!(matches!(
        ca.issue_server(&["localhost"], ancient),
        Err(CertError::InvalidValidity(_))
    ));
    // Saturates at the year 9999 instead of overflowing.
    let far = ca
        .issue_server(&["localhost"], Validity::days_from_now(i64::MAX))
        .unwrap();
    assert_eq!(times(&far).1.year(), 9999);
}

#[test]
fn serials_are_unique_random_and_positive() {
    let ca = ca();
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let s = ca
            .issue_server(&["localhost"], Validity::days_from_now(1))
            .unwrap()
            .serial_hex;
        assert_eq!(s.len(), 32, "{s}");
        assert!(matches!(s.as_bytes()[0], b'4'..=b'7'), "{s}");
        assert_eq!(s, s.to_lowercase());
        assert!(seen.insert(s));
    }
}

#[test]
fn serial_normalisation() {
    assert_eq!(normalize_serial("AB:CD").unwrap(), "abcd");
    assert_eq!(normalize_serial("00ab").unwrap(), "ab");
    assert_eq!(normalize_serial("0x1").unwrap(), "01");
    assert_eq!(normalize_serial("0").unwrap(), "00");
    for bad in ["", "xyz", ":", &"ab".repeat(21)] {
        assert!(
            matches!(normalize_serial(bad), Err(CertError::InvalidSerial(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn crl_lists_revoked_serial() {
    let ca = ca();
    let issued = ca
        .issue_org("city-saitama", &OrgCertOptions::default())
        .unwrap();
    let next = OffsetDateTime::now_utc() + Duration::days(7);
    let pem = ca
        .crl_pem(&[issued.serial_hex.to_uppercase()], next, 42)
        .unwrap();
    with_crl(&pem, |crl| {
        assert_eq!(crl_serials(crl), vec![issued.serial_hex.clone()]);
        assert_eq!(crl.crl_number().unwrap().to_u64_digits(), vec![42]);
        assert_eq!(crl.issuer().to_string(), "CN=Test CA");
        let now = OffsetDateTime::now_utc();
        assert!(crl.last_update().to_datetime() < now);
        assert!(crl.next_update().unwrap().to_datetime() > now);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
    });
    // Empty CRL is fine too.
    let empty = ca.crl_pem(&[], next, 1).unwrap();
    with_crl(&empty, |crl| assert!(crl_serials(crl).is_empty()));
    // Garbage serials are refused rather than signed.
    assert!(matches!(
        ca.crl_pem(&["zz".to_string()], next, 1),
        Err(CertError::InvalidSerial(_))
    ));
}

#[test]
fn expired_crl_has_next_update_in_the_past() {
    let ca = ca();
    let next = OffsetDateTime::now_utc() - Duration::hours(1);
    let pem = ca.crl_pem(&["0a".to_string()], next, 1).unwrap();
    with_crl(&pem, |crl| {
        let next_update = crl.next_update().unwrap().to_datetime();
        assert!(next_update < OffsetDateTime::now_utc());
        assert!(crl.last_update().to_datetime() < next_update);
        assert_eq!(crl_serials(crl), vec!["0a"]);
    });
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = ca();
    let key_pem = ca.key.serialize_pem();
    let loaded = Ca::from_pem(ca.cert_pem(), &key_pem).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    let issued = loaded
        .issue_org("city-saitama", &OrgCertOptions::default())
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    // The loaded CA's key id must match the original so chains build.
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    let ski = ca_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski);
    assert_eq!(ca_spki(&loaded), ca_spki(&ca));
}

#[test]
fn ca_from_pem_rejects_mismatch_and_non_ca() {
    let a = ca();
    let b = ca();
    let err = Ca::from_pem(a.cert_pem(), &b.key.serialize_pem()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    let leaf = a
        .issue_server(&["localhost"], Validity::days_from_now(1))
        .unwrap();
    let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn debug_output_redacts_keys() {
    let ca = ca();
    let issued = ca
        .issue_server(&["localhost"], Validity::days_from_now(1))
        .unwrap();
    let dbg = format!("{issued:?} {ca:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    assert!(!dbg.contains(&issued.key_pem[40..80]));
}

#[test]
fn inspect_rejects_non_certificates() {
    let issued = ca()
        .issue_server(&["localhost"], Validity::days_from_now(1))
        .unwrap();
    let err = inspect_pem(&issued.key_pem).unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    assert!(matches!(
        inspect_pem("hello world"),
        Err(CertError::Parse(_))
    ));
    assert!(matches!(
        inspect_der(b"hello world"),
        Err(CertError::Parse(_))
    ));
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn private_key_is_0600_and_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.key");
    write_private_key(&path, "first", false).unwrap();
    assert_eq!(mode(&path), 0o600);

    let err = write_private_key(&path, "second", false).unwrap_err();
    assert!(
        matches!(&err, CertError::Exists { path: p } if p == &path),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "first");

    // Overwrite replaces the file and does not inherit a looser mode.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write_private_key(&path, "third", true).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "third");
    assert_eq!(mode(&path), 0o600);
    // No temp files left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn public_file_is_0644() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.crt");
    write_public(&path, "cert", false).unwrap();
    assert_eq!(mode(&path), 0o644);
    assert!(matches!(
        write_public(&path, "again", false),
        Err(CertError::Exists { .. })
    ));
}

#[test]
fn write_issued_checks_both_files_first() {
    let dir = tempfile::tempdir().unwrap();
    let issued = ca()
        .issue_org("city-saitama", &OrgCertOptions::default())
        .unwrap();
    let crt = dir.path().join("city-saitama.crt");
    let key = dir.path().join("city-saitama.key");
    fs::write(&crt, "old cert").unwrap();
    let err = write_issued(dir.path(), "city-saitama", &issued, false).unwrap_err();
    assert!(matches!(err, CertError::Exists { .. }));
    assert!(!key.exists(), "refused write must not create the key");
    assert_eq!(fs::read_to_string(&crt).unwrap(), "old cert");

    write_issued(dir.path(), "city-saitama", &issued, true).unwrap();
    assert_eq!(fs::read_to_string(&crt).unwrap(), issued.cert_pem);
    assert_eq!(fs::read_to_string(&key).unwrap(), issued.key_pem);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&crt), 0o644);

    assert!(matches!(
        write_issued(dir.path(), "../x", &issued, true),
        Err(CertError::InvalidName(..))
    ));
}

#[test]
fn ca_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    ca.save(dir.path(), false).unwrap();
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join("ca.crt")), 0o644);
    assert!(matches!(
        ca.save(dir.path(), false),
        Err(CertError::Exists { .. })
    ));
    let loaded = Ca::load(dir.path()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Ca::load(empty.path()),
        Err(CertError::NoCa { .. })
    ));
}

#[test]
fn revoke_is_idempotent_and_bumps_crl_number() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    ca.save(dir.path(), false).unwrap();
    let crl_path = write_crl(dir.path()).unwrap();
    assert_eq!(crl_path, dir.path().join("ca.crl"));
    let read = || fs::read_to_string(&crl_path).unwrap();
    with_crl(&read(), |crl| {
        assert!(crl_serials(crl).is_empty());
        assert_eq!(crl.crl_number().unwrap().to_u64_digits(), vec![1]);
    });

    let issued = ca
        .issue_org("city-saitama", &OrgCertOptions::default())
        .unwrap();
    assert_eq!(revoke(dir.path(), &issued.serial_hex).unwrap(), crl_path);
    // Same serial again, in openssl's colon form: no duplicate entry.
    let colon = issued
        .serial_hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    revoke(dir.path(), &colon).unwrap();
    with_crl(&read(), |crl| {
        assert_eq!(crl_serials(crl), vec![issued.serial_hex.clone()]);
        assert_eq!(crl.crl_number().unwrap().to_u64_digits(), vec![3]);
        let days =
            (crl.next_update().unwrap().to_datetime() - OffsetDateTime::now_utc()).whole_hours();
        assert!((167..=168).contains(&days), "{days}");
    });
    let entries = read_revoked(dir.path()).unwrap();
    assert_eq!(entries.len(), 1);

    // write_crl re-issues from revoked.json.
    write_crl(dir.path()).unwrap();
    with_crl(&read(), |crl| {
        assert_eq!(crl_serials(crl), vec![issued.serial_hex.clone()]);
        assert_eq!(crl.crl_number().unwrap().to_u64_digits(), vec![4]);
    });

    assert!(matches!(
        revoke(dir.path(), "not-hex"),
        Err(CertError::InvalidSerial(_))
    ));
}
