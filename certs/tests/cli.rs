//! Runs the real `kakehashi-certs` binary as a subprocess.

use std::path::Path;
use std::process::{Command, Output};

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kakehashi-certs"))
        .args(args)
        .output()
        .expect("run kakehashi-certs")
}

fn ok(args: &[&str]) -> String {
    let out = certs(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The value of a `key: value` output line.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in output:\n{out}"))
}

fn crl_serials(crl_path: &Path) -> Vec<String> {
    let pem = std::fs::read(crl_path).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.serial().to_bytes_be()))
        .collect()
}

#[test]
fn ca_org_inspect_revoke_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let orgs = tmp.path().join("orgs");

    ok(&["ca", "init", "--dir", p(&ca)]);
    for f in ["ca.crt", "ca.key", "ca.crl"] {
        assert!(ca.join(f).exists(), "{f} missing");
    }
    assert!(crl_serials(&ca.join("ca.crl")).is_empty());

    let out = ok(&[
        "org",
        "--ca",
        p(&ca),
        "--org-id",
        "city-saitama",
        "--out",
        p(&orgs),
    ]);
    assert!(!out.contains("PRIVATE KEY"));
    let serial = field(&out, "serial").to_string();
    let fingerprint = field(&out, "sha256").to_string();
    assert_eq!(serial.len(), 32);
    assert_eq!(fingerprint.len(), 64);

    let crt = orgs.join("city-saitama.crt");
    let out = ok(&["inspect", p(&crt)]);
    assert_eq!(field(&out, "org id"), "city-saitama");
    assert_eq!(field(&out, "serial"), serial);
    assert_eq!(field(&out, "sha256"), fingerprint);
    assert_eq!(field(&out, "eku"), "clientAuth");
    assert_eq!(field(&out, "status"), "valid now");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", p(&crt)])).unwrap();
    assert_eq!(json["org_id"], "city-saitama");
    assert_eq!(json["serial_hex"], serial.as_str());
    assert_eq!(json["client_auth"], true);

    let out = ok(&["revoke", "--ca", p(&ca), "--serial", &serial]);
    let crl_path = field(&out, "crl");
    assert_eq!(Path::new(crl_path), ca.join("ca.crl"));
    assert_eq!(crl_serials(&ca.join("ca.crl")), vec![serial.clone()]);

    // Revoking by certificate file is idempotent.
    ok(&["revoke", "--ca", p(&ca), "--cert", p(&crt)]);
    ok(&["crl", "--ca", p(&ca)]);
    assert_eq!(crl_serials(&ca.join("ca.crl")), vec![serial]);
}

#[test]
fn refuses_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let orgs = tmp.path().join("orgs");
    ok(&["ca", "init", "--dir", p(&ca)]);
    let args = [
        "org",
        "--ca",
        p(&ca),
        "--org-id",
        "city-saitama",
        "--out",
        p(&orgs),
    ];
    ok(&args);
    let key = orgs.join("city-saitama.key");
    let crt = orgs.join("city-saitama.crt");
    let (key_before, crt_before) = (std::fs::read(&key).unwrap(), std::fs::read(&crt).unwrap());

    let out = certs(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exists; pass --force to replace it"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    assert_eq!(std::fs::read(&crt).unwrap(), crt_before);

    let mut forced = args.to_vec();
    forced.push("--force");
    ok(&forced);
    assert_ne!(std::fs::read(&key).unwrap(), key_before);
    assert_ne!(std::fs::read(&crt).unwrap(), crt_before);

    // The CA itself is protected the same way.
    let out = certs(&["ca", "init", "--dir", p(&ca)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_non_certificate_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "just some text\n").unwrap();
    let out = certs(&["inspect", p(&file)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a certificate"), "{stderr}");
    assert!(stderr.contains("notes.txt"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", p(&ca)]);
    let bad_id = certs(&[
        "org",
        "--ca",
        p(&ca),
        "--org-id",
        "Bad_Id",
        "--out",
        p(tmp.path()),
    ]);
    assert_eq!(bad_id.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("invalid org id"));

    // Missing a required argument: clap's own usage error.
    assert_eq!(certs(&["revoke", "--ca", p(&ca)]).status.code(), Some(2));

    // No CA there: says how to make one.
    let missing = certs(&["crl", "--ca", p(&tmp.path().join("nope"))]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ca init"));
}

#[test]
fn expired_and_server_certs() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", p(&ca)]);
    ok(&[
        "org",
        "--ca",
        p(&ca),
        "--org-id",
        "old-org",
        "--out",
        p(tmp.path()),
        "--not-before",
        "2024-01-01T00:00:00Z",
        "--not-after",
        "2024-02-01T00:00:00Z",
        "--no-client-auth",
    ]);
    let out = ok(&["inspect", p(&tmp.path().join("old-org.crt"))]);
    assert_eq!(field(&out, "status"), "EXPIRED");
    assert_eq!(field(&out, "not after"), "2024-02-01T00:00:00Z");
    assert_eq!(field(&out, "eku"), "serverAuth");

    ok(&[
        "server",
        "--ca",
        p(&ca),
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
        "--out",
        p(tmp.path()),
        "--days",
        "30",
    ]);
    let out = ok(&["inspect", p(&tmp.path().join("server.crt"))]);
    assert_eq!(field(&out, "sans"), "DNS:localhost, IP:127.0.0.1");
    assert_eq!(field(&out, "org id"), "-");
}
