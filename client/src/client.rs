//! [`Client`]: typed calls to a broker's exchange listener.

use std::sync::Arc;

use http::StatusCode;
use kakehashi_interfaces::{ErrorBody, WhoAmI};
use serde::de::DeserializeOwned;

use crate::config::Profile;
use crate::error::ClientError;
use crate::transport::{Call, ClientOptions, RawResponse, Transport};

/// A connection to one broker as one org. Cheap to clone; clones share the
/// connection (one HTTP/2 connection, or a pool of HTTP/1.1 ones) and caches.
///
/// ```no_run
/// # async fn run() -> Result<(), kakehashi_client::ClientError> {
/// use kakehashi_client::{Client, Profile};
///
/// let profile = Profile::new(
///     "https://127.0.0.1:17443",
///     "/tmp/kk/pki/ca.crt",
///     "/tmp/kk/pki/city-saitama.crt",
///     "/tmp/kk/pki/city-saitama.key",
/// );
/// let client = Client::connect(&profile).await?;
/// let me = client.whoami().await?;
/// println!("connected as {} ({})", me.org_id, me.name);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) transport: Transport,
    pub(crate) broker: String,
    pub(crate) caches: crate::calls::Caches,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.inner.broker)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Reads the profile's CA, certificate and key, and opens a mutual-TLS
    /// connection to its broker with default options.
    pub async fn connect(profile: &Profile) -> Result<Client, ClientError> {
        Self::connect_with(profile, ClientOptions::default()).await
    }

    /// Like [`Client::connect`] with chosen timeouts and retries.
    pub async fn connect_with(
        profile: &Profile,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let client = Self::new(profile, options)?;
        client.inner.transport.warm_up().await?;
        Ok(client)
    }

    /// Builds a client without connecting; the first call connects.
    pub fn new(profile: &Profile, options: ClientOptions) -> Result<Client, ClientError> {
        let transport = Transport::new(profile, options)?;
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
                broker: profile.broker.clone(),
                caches: Default::default(),
            }),
        })
    }

    /// The broker URL this client talks to.
    pub fn broker(&self) -> &str {
        &self.inner.broker
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        self.inner.transport.options()
    }

    /// `GET /v1/whoami`: the org the broker identified from the certificate.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get_json("/v1/whoami").await
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.inner.transport.execute(&Call::get(path)).await?;
        decode(response)
    }

    pub(crate) async fn send_json<T: DeserializeOwned>(
        &self,
        call: Call,
    ) -> Result<T, ClientError> {
        let response = self.inner.transport.execute(&call).await?;
        decode(response)
    }
}

/// A serde_json error without the offending value (it may be an item value).
pub(crate) fn safe_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected content",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    if e.line() > 0 {
        format!("{kind} at line {} column {}", e.line(), e.column())
    } else {
        kind.to_string()
    }
}

/// A success body as `T`, or the broker's refusal as [`ClientError::Refused`].
pub(crate) fn decode<T: DeserializeOwned>(response: RawResponse) -> Result<T, ClientError> {
    let status = response.status;
    if status.is_success() {
        return serde_json::from_slice(&response.body).map_err(|e| ClientError::Protocol {
            status: Some(status.as_u16()),
            message: format!("cannot decode the answer: {}", safe_json_error(&e)),
        });
    }
    Err(refusal(&response))
}

pub(crate) fn refusal(response: &RawResponse) -> ClientError {
    let status = response.status;
    match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => ClientError::Refused {
            code: body.code,
            message: body.message,
            request_id: body.request_id,
            retry_after: if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                response.retry_after()
            } else {
                None
            },
        },
        Err(_) => ClientError::Protocol {
            status: Some(status.as_u16()),
            message: format!(
                "not an error body ({} bytes{})",
                response.body.len(),
                status
                    .canonical_reason()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            ),
        },
    }
}
