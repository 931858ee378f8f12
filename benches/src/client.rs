//! Mutual-TLS HTTP client connections for the load generator: one rustls
//! config per run, one hyper connection per TCP connection (HTTP/1.1 or h2).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// HTTP version spoken on every connection of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN http/1.1), one request in flight per connection.
    #[serde(rename = "http/1.1")]
    #[value(name = "http1")]
    Http1,
    /// HTTP/2 (ALPN h2); `--streams` requests in flight per connection.
    #[serde(rename = "h2")]
    #[value(name = "http2")]
    Http2,
}

/// Certificate, key and trust anchor of the org the generator acts as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// CA certificate(s) that sign the server certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate chain (PEM).
    pub cert: PathBuf,
    /// Client private key (PKCS#8 PEM).
    pub key: PathBuf,
}

impl Identity {
    /// The files of `org` in a `kakehashi-broker dev` PKI directory.
    pub fn from_pki(pki: &Path, org: &str) -> Identity {
        Identity {
            ca: pki.join("ca.crt"),
            cert: pki.join(format!("{org}.crt")),
            key: pki.join(format!("{org}.key")),
        }
    }
}

/// Where to connect: a resolved address plus the name the server certificate must carry.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given, for reports.
    pub url: String,
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// `host[:port]` for the Host header / :authority.
    pub authority: String,
    /// TLS server name (DNS name or IP address).
    pub server_name: ServerName<'static>,
}

impl Target {
    /// Parses `https://host:port[/…]` and resolves the host.
    pub async fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("{url}: only https:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest).to_string();
        if authority.is_empty() {
            bail!("{url}: missing host");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.clone()
        } else {
            format!("{authority}:443")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolve {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} did not resolve"))?;
        let host = with_port
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&with_port)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| anyhow!("{host}: not a valid TLS server name"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            authority,
            server_name,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// A rustls client config for `identity`. `resumption` false forces a full
/// handshake on every connection (what the `handshake` scenario measures).
pub fn tls_connector(
    identity: &Identity,
    protocol: Protocol,
    resumption: bool,
) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&identity.ca)?) {
        roots
            .add(cert.with_context(|| format!("parse {}", identity.ca.display()))?)
            .with_context(|| format!("trust {}", identity.ca.display()))?;
    }
    let chain = CertificateDer::pem_slice_iter(&read(&identity.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", identity.cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no certificate", identity.cert.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&identity.key)?)
        .with_context(|| format!("parse {}", identity.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("client certificate and key do not match")?;
    config.alpn_protocols = match protocol {
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
        Protocol::Http2 => vec![b"h2".to_vec()],
    };
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One request sender on an established connection. For h2, clones share
/// the connection (one stream each); for HTTP/1.1 there is one per connection.
pub struct Conn {
    sender: Sender,
    authority: Arc<str>,
    driver: Arc<JoinHandle<()>>,
}

/// A response: status and whole body.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Bytes,
}

impl Conn {
    /// TCP connect, TLS handshake and HTTP handshake.
    pub async fn connect(target: &Target, tls: &TlsConnector, protocol: Protocol) -> Result<Conn> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        // Small request/response pairs: Nagle would add delayed-ACK stalls.
        tcp.set_nodelay(true)?;
        let stream = tls
            .connect(target.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let io = TokioIo::new(stream);
        let (sender, driver) = match protocol {
            Protocol::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                (
                    Sender::H1(sender),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            Protocol::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                (
                    Sender::H2(sender),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        Ok(Conn {
            sender,
            authority: Arc::from(target.authority.as_str()),
            driver: Arc::new(driver),
        })
    }

    /// Another sender on the same connection (h2 only: a second concurrent stream).
    pub fn clone_stream(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
                authority: self.authority.clone(),
                driver: self.driver.clone(),
            }),
            Sender::H1(_) => None,
        }
    }

    /// True while the connection's driver task runs (the peer has not closed it).
    pub fn is_open(&self) -> bool {
        !self.driver.is_finished()
    }

    /// Sends one request and reads the whole response body.
    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<Reply> {
        let builder = Request::builder().method(method);
        let builder = match &self.sender {
            Sender::H1(_) => builder
                .uri(path)
                .header(http::header::HOST, &*self.authority),
            Sender::H2(_) => builder.uri(format!("https://{}{path}", self.authority)),
        };
        let req = builder.body(Full::new(body))?;
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }
}
