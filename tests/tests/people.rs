//! `kakehashi-broker users …` as an administrator runs it on the host: a
//! real subprocess against a broker.toml with a SQLite file. The temporary
//! password is printed once and works; `list` never shows a hash or
//! secret. Nothing here prints a password: failures show stderr only.

use std::path::PathBuf;
use std::process::Command;

use kakehashi_broker::keys::Keyring;
use kakehashi_broker::people::{People, PeopleConfig, PeopleError, Stage};
use kakehashi_broker::store::{SqliteStore, Store};
use kakehashi_interfaces::people::{Password, Role, UserId, UserList};

fn broker_binary() -> PathBuf {
    kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")
        .expect("build the kakehashi-broker binary")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A host with a broker config; TLS files are not read by `users` or `orgs`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("broker.toml"),
            r#"
[listen]
address = "127.0.0.1:0"
[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = ["pki/ca.crt"]
[storage]
sqlite = "kakehashi.db"
"#,
        )
        .unwrap();
        Host { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("broker.toml")
    }

    fn run(&self, group: &str, args: &[&str]) -> Run {
        let config = self.config();
        let out = Command::new(broker_binary())
            .arg(group)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("KAKEHASHI_LOG", "warn")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and requires success; on failure shows stderr (never stdout,
    /// which may hold a temporary password).
    fn ok(&self, group: &str, args: &[&str]) -> Run {
        let run = self.run(group, args);
        assert_eq!(run.code, 0, "{group} {args:?} failed: {}", run.stderr);
        run
    }

    /// The people service on the host's database, with the host's keys
    /// (logins hash unknown user ids with its lookup key).
    async fn people(&self) -> HostPeople {
        let store = SqliteStore::open(&self.dir.path().join("kakehashi.db"))
            .await
            .unwrap();
        let keys = Keyring::open(&self.dir.path().join("keys"), store.pools())
            .await
            .unwrap();
        HostPeople {
            people: People::new(store.pools(), PeopleConfig::default()).unwrap(),
            keys,
        }
    }
}

/// The people service as the broker on the host runs it.
struct HostPeople {
    people: People,
    keys: Keyring,
}

/// The temporary password in `users add` / `users reset` output: the one
/// line that announces it, and it appears nowhere else.
fn temporary_password(run: &Run) -> String {
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("仮パスワード / temporary password: "))
        .collect();
    assert_eq!(lines.len(), 1, "one line announces the temporary password");
    let password = lines[0].rsplit(": ").next().unwrap().trim().to_string();
    assert!(password.chars().count() >= 16, "16 or more characters");
    assert_eq!(
        run.stdout.matches(password.as_str()).count(),
        1,
        "printed exactly once"
    );
    assert!(!run.stderr.contains(password.as_str()), "never on stderr");
    assert!(run.stdout.contains("初回ログイン時に変更が必要です"));
    assert!(run.stdout.contains("must be changed at first login"));
    password
}

fn assert_no_secrets(text: &str, passwords: &[&str]) {
    assert!(!text.contains("$argon2"), "no password hash in the output");
    for p in passwords {
        assert!(!text.contains(p), "no password in the output");
    }
}

async fn login_stage(host: &HostPeople, user: &str, password: &str) -> Result<Stage, PeopleError> {
    host.people
        .login(
            &host.keys,
            &UserId::new(user).unwrap(),
            &Password::new(password).unwrap(),
            None,
        )
        .await
        .map(|login| login.session.stage)
}

#[tokio::test]
async fn users_command_bootstraps_and_recovers_accounts() {
    let host = Host::new();
    host.ok(
        "orgs",
        &[
            "add",
            "city-kawaguchi",
            "--kind",
            "municipality",
            "--name",
            "川口市",
        ],
    );

    // The first administrator comes from the host.
    let added = host.ok(
        "users",
        &[
            "add",
            "taro.yamada",
            "--org",
            "city-kawaguchi",
            "--role",
            "administrator",
            "--role",
            "auditor",
        ],
    );
    assert!(added.stdout.contains("taro.yamada"));
    let first = temporary_password(&added);

    // The printed password is the account's: it opens a session that must
    // change it first.
    let people = host.people().await;
    assert_eq!(
        login_stage(&people, "taro.yamada", &first).await.unwrap(),
        Stage::PasswordChange
    );

    let list = host.ok("users", &["list"]);
    assert!(list.stdout.contains("taro.yamada"));
    assert!(list.stdout.contains("auditor,administrator"));
    assert!(list.stdout.contains("temporary"));
    assert_no_secrets(&list.stdout, &[&first]);
    let json = host.ok("users", &["list", "--json"]);
    assert_no_secrets(&json.stdout, &[&first]);
    let parsed: UserList = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed.users.len(), 1);
    let user = &parsed.users[0];
    assert!(user.temporary_password && !user.totp_enrolled && !user.disabled);
    assert_eq!(
        user.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::Auditor, Role::Administrator]
    );

    // Reset: a new temporary password replaces the old one.
    let reset = host.ok("users", &["reset", "taro.yamada"]);
    let second = temporary_password(&reset);
    assert!(second != first, "a new password");
    assert!(matches!(
        login_stage(&people, "taro.yamada", &first).await,
        Err(PeopleError::WrongCredentials)
    ));
    assert_eq!(
        login_stage(&people, "taro.yamada", &second).await.unwrap(),
        Stage::PasswordChange
    );

    // Grant and revoke.
    host.ok("users", &["grant", "taro.yamada", "--number-privilege"]);
    host.ok("users", &["revoke", "taro.yamada", "--role", "auditor"]);
    let json = host.ok("users", &["list", "--json"]);
    let parsed: UserList = serde_json::from_str(&json.stdout).unwrap();
    assert!(parsed.users[0].number_privilege);
    assert_eq!(
        parsed.users[0].roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::Administrator]
    );
    let both = host.run(
        "users",
        &[
            "grant",
            "taro.yamada",
            "--role",
            "operator",
            "--number-privilege",
        ],
    );
    assert_ne!(both.code, 0, "one privilege at a time");

    // Disable: logins refused; enable: allowed again.
    host.ok("users", &["disable", "taro.yamada"]);
    let list = host.ok("users", &["list"]);
    assert!(list.stdout.contains("disabled"));
    assert!(matches!(
        login_stage(&people, "taro.yamada", &second).await,
        Err(PeopleError::Disabled)
    ));
    host.ok("users", &["enable", "taro.yamada"]);
    assert!(login_stage(&people, "taro.yamada", &second).await.is_ok());

    // Clear refusals, nothing printed to stdout.
    for (args, needle) in [
        (
            vec![
                "add",
                "taro.yamada",
                "--org",
                "city-kawaguchi",
                "--role",
                "operator",
            ],
            "already taken",
        ),
        (
            vec![
                "add",
                "hanako",
                "--org",
                "city-nowhere",
                "--role",
                "operator",
            ],
            "not registered",
        ),
        (
            vec![
                "add",
                "Hanako",
                "--org",
                "city-kawaguchi",
                "--role",
                "operator",
            ],
            "user_id",
        ),
        (vec!["reset", "nobody"], "no user nobody"),
    ] {
        let run = host.run("users", &args);
        assert_ne!(run.code, 0, "{args:?} should fail");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert!(
            !run.stdout.contains("temporary password"),
            "no password issued by a refused command"
        );
    }
    let run = host.run("users", &["add", "hanako", "--org", "city-kawaguchi"]);
    assert_ne!(run.code, 0, "a role is required");
    let run = host.run(
        "users",
        &["add", "hanako", "--org", "city-kawaguchi", "--role", "root"],
    );
    assert_ne!(run.code, 0, "unknown role");
    assert!(
        run.stderr.contains("operator, auditor or administrator"),
        "{}",
        run.stderr
    );
    let list = host.ok("users", &["list"]);
    assert!(!list.stdout.contains("hanako"));
    assert_no_secrets(&list.stdout, &[&first, &second]);
}

#[test]
fn the_users_command_is_documented() {
    let out = Command::new(broker_binary())
        .args(["users", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "add", "list", "reset", "disable", "enable", "grant", "revoke",
    ] {
        assert!(help.contains(sub), "users --help names {sub}");
    }
}
