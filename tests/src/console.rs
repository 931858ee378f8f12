//! The console listener under test: people logging in with a password and
//! TOTP over server-authenticated TLS, with the session cookie and CSRF
//! token carried like a browser carries them.

use anyhow::{bail, Context, Result};
use http::{Method, StatusCode};
use kakehashi_broker::people::{NewUser, People, PeopleConfig, Role};
use kakehashi_interfaces::people::UserId;
use kakehashi_interfaces::OrgId;
use serde_json::{json, Value};

use crate::{Protocol, TestBroker, TestClient, TestResponse};

/// A person's console connection: cookie and CSRF token kept between calls.
pub struct ConsoleClient {
    client: TestClient,
    cookie: Option<String>,
    csrf: Option<String>,
}

/// A console user made for a test: id and current password.
pub struct Person {
    /// The user id.
    pub user_id: String,
    /// The password in force.
    pub password: String,
    /// The enrolled TOTP secret (raw bytes), once enrolled.
    pub totp_secret: Option<Vec<u8>>,
}

impl ConsoleClient {
    /// Connects to the broker's console listener (no client certificate).
    pub async fn connect(broker: &TestBroker) -> Result<ConsoleClient> {
        let addr = broker
            .broker
            .console_addr()
            .context("the broker has no console listener")?;
        let client =
            TestClient::connect(addr, broker.pki.ca.cert_pem(), None, Protocol::Http1).await?;
        Ok(ConsoleClient {
            client,
            cookie: None,
            csrf: None,
        })
    }

    /// Connects to a console listener at `addr` whose server certificate
    /// `ca_pem` signed (a broker running as a process of its own).
    pub async fn connect_to(addr: std::net::SocketAddr, ca_pem: &str) -> Result<ConsoleClient> {
        let client = TestClient::connect(addr, ca_pem, None, Protocol::Http1).await?;
        Ok(ConsoleClient {
            client,
            cookie: None,
            csrf: None,
        })
    }

    /// Carries the person's login (cookie and CSRF token) over to the console
    /// listener at `addr`, as a browser sent to another node does.
    pub async fn move_to(&mut self, addr: std::net::SocketAddr, ca_pem: &str) -> Result<()> {
        self.client = TestClient::connect(addr, ca_pem, None, Protocol::Http1).await?;
        Ok(())
    }

    /// One call with the session's cookie and CSRF token, JSON body if any.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<TestResponse> {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let cookie = self.cookie.clone();
        let csrf = self.csrf.clone();
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie));
        }
        if let Some(csrf) = &csrf {
            headers.push(("x-csrf-token", csrf));
        }
        let bytes = match &body {
            Some(v) => {
                headers.push(("content-type", "application/json"));
                v.to_string()
            }
            None => String::new(),
        };
        let response = self
            .client
            .request_with(method, path, bytes, &headers)
            .await?;
        if let Some(set) = response
            .headers
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
        {
            let pair = set.split(';').next().unwrap_or("").to_string();
            self.cookie = pair
                .split_once('=')
                .filter(|(_, v)| !v.is_empty())
                .map(|_| pair.clone());
        }
        if let Ok(v) = response.json() {
            if let Some(token) = v.get("csrf_token").and_then(Value::as_str) {
                self.csrf = Some(token.to_string());
            }
        }
        Ok(response)
    }

    /// Forgets the CSRF token (to show a call without it is refused).
    pub fn drop_csrf(&mut self) {
        self.csrf = None;
    }

    /// `GET path` as a browser asks for a page (`Accept: text/html`), with
    /// the session cookie if any.
    pub async fn page(&mut self, path: &str) -> Result<TestResponse> {
        let cookie = self.cookie.clone();
        let mut headers = vec![("accept", "text/html")];
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie));
        }
        self.client
            .request_with(Method::GET, path, String::new(), &headers)
            .await
    }

    /// Logs in with a password only; the answer says which step is next.
    pub async fn password(&mut self, user_id: &str, password: &str) -> Result<TestResponse> {
        self.call(
            Method::POST,
            "/api/session",
            Some(json!({"user_id": user_id, "password": password})),
        )
        .await
    }

    /// Logs `person` in fully: password, then (first time) a new password
    /// and TOTP enrolment, else a TOTP code `steps_ahead` steps after now
    /// (0 or 1: a code is used once, so a second login in the same 30 s uses
    /// the next step, which the broker's ±1-step window accepts).
    pub async fn log_in(&mut self, person: &mut Person, steps_ahead: u64) -> Result<Value> {
        let first = self.password(&person.user_id, &person.password).await?;
        expect_ok(&first)?;
        let mut stage = first.json()?["stage"].as_str().unwrap_or("").to_string();
        if stage == "password_change" {
            let new_password = format!("{}-新しいパスワード-2026", person.user_id);
            let changed = self
                .call(
                    Method::POST,
                    "/api/session/password",
                    Some(
                        json!({"current_password": person.password, "new_password": new_password}),
                    ),
                )
                .await?;
            expect_ok(&changed)?;
            person.password = new_password;
            stage = changed.json()?["stage"].as_str().unwrap_or("").to_string();
        }
        if stage == "totp_enrolment" {
            let enrol = self
                .call(Method::POST, "/api/session/totp/enrolment", None)
                .await?;
            expect_ok(&enrol)?;
            let uri = enrol.json()?["otpauth_uri"]
                .as_str()
                .unwrap_or("")
                .to_string();
            person.totp_secret = Some(secret_of(&uri)?);
            stage = "totp".into();
        }
        if stage != "totp" {
            bail!("unexpected stage {stage}");
        }
        let code = totp_code(person, steps_ahead)?;
        let done = self
            .call(
                Method::POST,
                "/api/session/totp",
                Some(json!({"code": code})),
            )
            .await?;
        expect_ok(&done)?;
        done.json()
    }
}

/// The TOTP code of `person` for the step `steps_ahead` after now.
pub fn totp_code(person: &Person, steps_ahead: u64) -> Result<String> {
    let secret = person.totp_secret.clone().context("not enrolled")?;
    let totp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, secret);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(totp.generate(now + 30 * steps_ahead))
}

/// The raw secret of an otpauth URI (base32 in `secret=`).
pub fn secret_of(uri: &str) -> Result<Vec<u8>> {
    let encoded = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .context("otpauth URI without a secret")?;
    totp_rs::Secret::Encoded(encoded.to_string())
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("bad base32 secret: {e:?}"))
}

/// Fails with the response's body unless it is 200.
pub fn expect_ok(response: &TestResponse) -> Result<()> {
    if response.status != StatusCode::OK {
        bail!(
            "{}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

/// Adds a console user to the broker's store; returns it with its temporary password.
/// A person added with `roles` in `org` and logged in on a console client
/// of their own.
pub async fn logged_in(
    broker: &TestBroker,
    user_id: &str,
    org: &str,
    roles: &[Role],
) -> Result<ConsoleClient> {
    let mut person = add_person(broker, user_id, org, roles).await?;
    let mut console = ConsoleClient::connect(broker).await?;
    console.log_in(&mut person, 0).await?;
    Ok(console)
}

pub async fn add_person(
    broker: &TestBroker,
    user_id: &str,
    org: &str,
    roles: &[Role],
) -> Result<Person> {
    let people = People::new(broker.broker.state().store.pools(), PeopleConfig::default())?;
    let password = people
        .add_user(NewUser {
            user_id: UserId::new(user_id)?,
            org: OrgId::new(org)?,
            roles: roles.iter().copied().collect(),
            number_privilege: false,
        })
        .await?;
    Ok(Person {
        user_id: user_id.to_string(),
        password: password.expose().to_string(),
        totp_secret: None,
    })
}
