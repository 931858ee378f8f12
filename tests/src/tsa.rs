//! A real RFC 3161 Time-Stamp Authority for tests: `openssl ts -reply`
//! behind a small HTTP responder on 127.0.0.1. It makes its own CA and a TSA
//! certificate (extendedKeyUsage critical timeStamping) with `openssl`
//! subprocesses, and answers each `application/timestamp-query` POST with
//! the DER reply `openssl ts` produces. No token is made by hand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// The TSA's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsaKey {
    /// ECDSA P-256 (signs with SHA-256).
    P256,
    /// RSA 2048 (PKCS#1 v1.5 with SHA-256).
    Rsa,
}

/// A running TSA.
pub struct TestTsa {
    dir: TempDir,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    requests: Arc<AtomicU64>,
}

/// Runs a command and fails with its stderr when it fails.
async fn run(cmd: &mut tokio::process::Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .context("run openssl")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn openssl(dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.current_dir(dir);
    cmd
}

impl TestTsa {
    /// Makes a CA and a TSA certificate with a key of `key`, and starts the
    /// responder on 127.0.0.1.
    pub async fn start(key: TsaKey) -> Result<TestTsa> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let newkey: &[&str] = match key {
            TsaKey::P256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            TsaKey::Rsa => &["-newkey", "rsa:2048"],
        };
        run(openssl(d)
            .args(["req", "-x509", "-nodes", "-days", "3650"])
            .args(newkey)
            .args([
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=Test TSA CA",
            ]))
        .await?;
        run(openssl(d).args(["req", "-nodes"]).args(newkey).args([
            "-keyout",
            "tsa.key",
            "-out",
            "tsa.csr",
            "-subj",
            "/CN=Test TSA",
        ]))
        .await?;
        std::fs::write(
            d.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=critical,timeStamping\nsubjectKeyIdentifier=hash\n",
        )?;
        run(openssl(d).args([
            "x509",
            "-req",
            "-in",
            "tsa.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            "tsa.pem",
            "-extfile",
            "ext.cnf",
        ]))
        .await?;
        std::fs::write(d.join("serial"), "01\n")?;
        std::fs::write(
            d.join("ts.cnf"),
            format!(
                "[ tsa ]\ndefault_tsa = tsa_config1\n[ tsa_config1 ]\nserial = {dir}/serial\n\
                 crypto_device = builtin\nsigner_cert = {dir}/tsa.pem\nsigner_key = {dir}/tsa.key\n\
                 signer_digest = sha256\ndefault_policy = 1.2.3.4.1\ndigests = sha256\n\
                 accuracy = secs:1\nordering = yes\ntsa_name = yes\ness_cert_id_alg = sha256\n",
                dir = d.display()
            ),
        )?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        // One reply at a time: `openssl ts` keeps its serial number in a file.
        let one = Arc::new(Mutex::new(()));
        let work = d.to_path_buf();
        let counted = requests.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let work = work.clone();
                let one = one.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let work = work.clone();
                        let one = one.clone();
                        let counted = counted.clone();
                        async move {
                            let answer = async {
                                let body = req.into_body().collect().await?.to_bytes();
                                let _one = one.lock().await;
                                counted.fetch_add(1, Ordering::Relaxed);
                                reply(&work, &body).await
                            }
                            .await;
                            Ok::<_, Infallible>(match answer {
                                Ok(der) => hyper::Response::builder()
                                    .header("content-type", "application/timestamp-reply")
                                    .body(Full::new(Bytes::from(der)))
                                    .unwrap_or_default(),
                                Err(e) => hyper::Response::builder()
                                    .status(500)
                                    .body(Full::new(Bytes::from(e.to_string())))
                                    .unwrap_or_default(),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TestTsa {
            dir,
            addr,
            server: Some(server),
            requests,
        })
    }

    /// The URL for `[records] tsa_url`.
    pub fn url(&self) -> String {
        format!("http://{}/tsa", self.addr)
    }

    /// The TSA certificate (PEM), for `[records] tsa_cert` and `--tsa-cert`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tsa.pem")
    }

    /// Time-stamp requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops answering: connections to its address are refused from now on.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// A token (DER `TimeStampToken`) for a SHA-256 `digest`, made by
    /// `openssl ts -query` and `openssl ts -reply -token_out`.
    pub async fn token_for(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let d = self.dir.path();
        let name = format!("q-{}", hex::encode(&digest[..8]));
        run(openssl(d).args([
            "ts",
            "-query",
            "-sha256",
            "-digest",
            &hex::encode(digest),
            "-no_nonce",
            "-out",
            &format!("{name}.tsq"),
        ]))
        .await?;
        run(openssl(d).args([
            "ts",
            "-reply",
            "-queryfile",
            &format!("{name}.tsq"),
            "-config",
            "ts.cnf",
            "-token_out",
            "-out",
            &format!("{name}.tst"),
        ]))
        .await?;
        Ok(std::fs::read(d.join(format!("{name}.tst")))?)
    }
}

impl Drop for TestTsa {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// `openssl ts -reply` for one request body.
async fn reply(dir: &Path, query: &[u8]) -> Result<Vec<u8>> {
    let query_file = dir.join("request.tsq");
    let reply_file = dir.join("reply.tsr");
    std::fs::write(&query_file, query)?;
    run(openssl(dir).args([
        "ts",
        "-reply",
        "-queryfile",
        "request.tsq",
        "-config",
        "ts.cnf",
        "-out",
        "reply.tsr",
    ]))
    .await?;
    Ok(std::fs::read(reply_file)?)
}
