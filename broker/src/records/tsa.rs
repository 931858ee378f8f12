//! The sealer's Time-Stamp Authority client (RFC 3161 over HTTP, §3.4).
//!
//! Each checkpoint the sealer signs is sent to `[records] tsa_url` as a
//! `TimeStampReq` over SHA-256 of its signing bytes, and the token of the
//! answer is stored with it. The token proves itself (the TSA signs it), so
//! plain HTTP is enough; `https` is not spoken. A TSA that is down, slow
//! (past `tsa_timeout_ms`) or answers badly costs that checkpoint its token
//! only: the checkpoint is signed and stored without one, a warning and the
//! `records_checkpoint_timestamps_total{result="failed"}` metric say so, and
//! the next checkpoint asks again.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use kakehashi_interfaces::audit::{self, Checkpoint, TsaCertificate};

use crate::error::BrokerError;

/// The largest TSA response read (a token with a certificate chain is a
/// few KiB).
const MAX_RESPONSE: usize = 256 * 1024;

/// A configured TSA.
#[derive(Debug, Clone)]
pub(crate) struct Tsa {
    url: http::Uri,
    host: String,
    port: u16,
    timeout: Duration,
    /// When set, every token is checked against it before it is stored.
    cert: Option<TsaCertificate>,
}

/// Reads the trusted TSA certificate (PEM).
pub fn load_tsa_cert(path: &Path) -> Result<TsaCertificate, BrokerError> {
    let pem = std::fs::read(path)
        .map_err(|e| BrokerError::io(format!("read TSA certificate {}", path.display()), e))?;
    TsaCertificate::from_pem(&pem)
        .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))
}

impl Tsa {
    /// The TSA of `[records]`, if `tsa_url` is set.
    pub fn from_config(config: &super::RecordsConfig) -> Result<Option<Tsa>, BrokerError> {
        let Some(text) = &config.tsa_url else {
            return Ok(None);
        };
        let url = parse_url(text)?;
        let host = url.host().unwrap_or_default().to_string();
        let port = url.port_u16().unwrap_or(80);
        let cert = config.tsa_cert.as_deref().map(load_tsa_cert).transpose()?;
        Ok(Some(Tsa {
            url,
            host,
            port,
            timeout: Duration::from_millis(config.tsa_timeout_ms.max(1)),
            cert,
        }))
    }

    /// A token for `cp`, or why there is none (for the warning).
    pub async fn stamp(&self, cp: &Checkpoint) -> Result<Vec<u8>, String> {
        let digest = audit::checkpoint_digest(cp);
        let nonce: u64 = rand::random();
        let request = audit::timestamp_request(&digest, nonce).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(self.timeout, self.post(request))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        let token =
            audit::token_from_response(&response, &digest, nonce).map_err(|e| e.to_string())?;
        if let Some(cert) = &self.cert {
            audit::verify_token(&token, &digest, cert)
                .map_err(|e| format!("the token does not verify with [records] tsa_cert: {e}"))?;
        }
        Ok(token)
    }

    async fn post(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let conn = tokio::spawn(conn);
        let authority = match self.url.port_u16() {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        };
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let request = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, audit::REQUEST_CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            conn.abort();
            return Err(format!("HTTP status {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("read the answer: {e}"))?
            .to_bytes();
        conn.abort();
        Ok(body.to_vec())
    }
}

/// `http://host[:port]/path`.
fn parse_url(text: &str) -> Result<http::Uri, BrokerError> {
    let bad = |why: &str| BrokerError::Config(format!("[records] tsa_url {text:?}: {why}"));
    let url: http::Uri = text.parse().map_err(|_| bad("not a URL"))?;
    if url.scheme_str() != Some("http") {
        return Err(bad(
            "only http:// is spoken (a time-stamp token is signed by the TSA and needs no TLS)",
        ));
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_taken() {
        assert!(parse_url("http://127.0.0.1:3180/tsa").is_ok());
        assert!(parse_url("http://tsa.example").is_ok());
        assert!(parse_url("https://tsa.example/").is_err());
        assert!(parse_url("tsa.example").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
