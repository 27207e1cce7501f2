//! The S3 requests opendal does not make: Object Lock. A few signed (`SigV4`) requests sent with
//! reqwest, the same HTTP client and signer opendal uses underneath:
//!
//! - `PutObject` with `x-amz-object-lock-mode` / `x-amz-object-lock-retain-until-date`
//!   (and `If-None-Match: *`, `Content-MD5` as S3 requires for locked writes);
//! - `PutObjectRetention` to extend a lock;
//! - `GetObjectLockConfiguration` to check that the bucket has Object Lock enabled.

use std::time::Duration;

use base64::Engine;
use md5::Digest;
use reqsign_aws_v4::{
    Credential, DefaultCredentialProvider, RequestSigner, StaticCredentialProvider,
};
use reqsign_core::{Context, OsEnv, Signer};

use crate::backend::S3Location;
use crate::error::{Error, ErrorKind, Result};

/// Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete: protects against mistakes
    /// and against credentials that lack that permission.
    Governance,
    /// Nobody, not even the account root, can delete before the date.
    Compliance,
}

impl LockMode {
    fn header(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// reqsign's HTTP hook (used to fetch credentials: web identity, container, instance).
#[derive(Debug, Clone)]
struct Http(reqwest::Client);

impl reqsign_core::HttpSend for Http {
    async fn http_send(
        &self,
        req: http::Request<bytes::Bytes>,
    ) -> reqsign_core::Result<http::Response<bytes::Bytes>> {
        let req = reqwest::Request::try_from(req).map_err(|e| {
            reqsign_core::Error::unexpected("building a credential request").with_source(e)
        })?;
        let resp = self.0.execute(req).await.map_err(|e| {
            reqsign_core::Error::unexpected("sending a credential request").with_source(e)
        })?;
        let mut b = http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            b = b.header(k, v);
        }
        let body = resp.bytes().await.map_err(|e| {
            reqsign_core::Error::unexpected("reading a credential response").with_source(e)
        })?;
        b.body(body)
            .map_err(|e| reqsign_core::Error::unexpected("credential response").with_source(e))
    }
}

/// A signed-request client for one bucket and prefix.
pub struct S3Raw {
    client: reqwest::Client,
    signer: Signer<Credential>,
    /// `https://host/bucket` (path-style, as opendal uses by default).
    base: String,
    prefix: String,
}

/// What one request got back.
struct Reply {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl S3Raw {
    /// A client for `s3`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(s3: &S3Location, timeout: Duration) -> Result<Self> {
        let region = s3.region.clone().unwrap_or_else(|| "us-east-1".into());
        let endpoint = s3
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::new(ErrorKind::Storage, format!("HTTP client: {e}")))?;
        let ctx = Context::new()
            .with_env(OsEnv)
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_http_send(Http(client.clone()));
        let builder = RequestSigner::new("s3", &region);
        let signer = match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(secret)) => {
                let mut p = StaticCredentialProvider::new(&id, &secret);
                if let Ok(t) = std::env::var("AWS_SESSION_TOKEN") {
                    p = p.with_session_token(&t);
                }
                Signer::new(ctx, p, builder)
            }
            _ => Signer::new(ctx, DefaultCredentialProvider::new(), builder),
        };
        Ok(Self {
            client,
            signer,
            base: format!("{}/{}", endpoint.trim_end_matches('/'), s3.bucket),
            prefix: s3.prefix.clone(),
        })
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Send one signed request; returns the status, headers and body. Transient failures
    /// (connection errors, 5xx, 429) are retried with backoff.
    async fn send(
        &self,
        method: http::Method,
        path_query: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .send_once(method.clone(), path_query, headers, body)
                .await;
            let retry = match &r {
                Ok(r) => {
                    r.status.is_server_error() || r.status == http::StatusCode::TOO_MANY_REQUESTS
                }
                Err(_) => true,
            };
            if !retry || attempt >= 4 {
                return r;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    async fn send_once(
        &self,
        method: http::Method,
        path_query: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply> {
        let url = format!("{}/{path_query}", self.base);
        let mut b = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header("content-length", body.len().to_string());
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let (mut parts, ()) = b
            .body(())
            .map_err(|e| Error::invalid(format!("request for {url}: {e}")))?
            .into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| Error::new(ErrorKind::Storage, format!("signing a request: {e}")))?;
        let req = http::Request::from_parts(parts, bytes::Bytes::copy_from_slice(body));
        let req = reqwest::Request::try_from(req)
            .map_err(|e| Error::invalid(format!("request for {url}: {e}")))?;
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| Error::new(ErrorKind::Storage, format!("{url}: {e}")).temporary())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::new(ErrorKind::Storage, format!("{url}: {e}")).temporary())?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn fail(what: &str, status: http::StatusCode, body: &[u8]) -> Error {
        // S3 error bodies are XML naming a code and a message; keep the first line's gist.
        let text = String::from_utf8_lossy(body);
        let code = text
            .split("<Code>")
            .nth(1)
            .and_then(|s| s.split("</Code>").next())
            .unwrap_or("");
        Error::new(ErrorKind::Storage, format!("{what}: HTTP {status} {code}"))
    }

    /// Create `name` locked until `until`, only if absent. Returns whether it was created.
    ///
    /// # Errors
    /// Storage errors (a bucket without Object Lock refuses the headers).
    pub async fn put_locked(
        &self,
        name: &str,
        data: &[u8],
        mode: LockMode,
        until: jiff::Timestamp,
    ) -> Result<bool> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data));
        let headers = [
            ("if-none-match", "*".to_owned()),
            ("content-md5", md5),
            ("x-amz-object-lock-mode", mode.header().to_owned()),
            ("x-amz-object-lock-retain-until-date", iso(until)),
        ];
        let Reply {
            status: s, body, ..
        } = self
            .send(http::Method::PUT, &self.key(name), &headers, data)
            .await?;
        match s.as_u16() {
            200..=299 => Ok(true),
            412 => Ok(false),
            _ => Err(Self::fail(&format!("writing {name}"), s, &body)),
        }
    }

    /// Set the retention of the current version of `name` to `until` (only ever later).
    ///
    /// # Errors
    /// Storage errors; `Missing` when the object does not exist.
    pub async fn extend(&self, name: &str, mode: LockMode, until: jiff::Timestamp) -> Result<()> {
        let xml = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.header(),
            iso(until)
        );
        let md5 =
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(xml.as_bytes()));
        let Reply {
            status: s, body, ..
        } = self
            .send(
                http::Method::PUT,
                &format!("{}?retention", self.key(name)),
                &[("content-md5", md5)],
                xml.as_bytes(),
            )
            .await?;
        match s.as_u16() {
            200..=299 => Ok(()),
            404 => Err(Error::new(
                ErrorKind::Missing,
                format!("{name} does not exist"),
            )),
            _ => Err(Self::fail(
                &format!("extending the lock of {name}"),
                s,
                &body,
            )),
        }
    }

    /// The retain-until date of the current version of `name` (`None`: not locked or absent).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn retain_until(&self, name: &str) -> Result<Option<jiff::Timestamp>> {
        let r = self
            .send(http::Method::HEAD, &self.key(name), &[], &[])
            .await?;
        if r.status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(Error::new(
                ErrorKind::Storage,
                format!("reading the retention of {name}: HTTP {}", r.status),
            ));
        }
        Ok(r.headers
            .get("x-amz-object-lock-retain-until-date")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<jiff::Timestamp>().ok()))
    }

    /// Whether the bucket has Object Lock enabled.
    ///
    /// # Errors
    /// Storage errors other than "no lock configuration".
    pub async fn lock_enabled(&self) -> Result<bool> {
        let Reply {
            status: s, body, ..
        } = self
            .send(http::Method::GET, "?object-lock", &[], &[])
            .await?;
        if s.is_success() {
            return Ok(String::from_utf8_lossy(&body).contains("<ObjectLockEnabled>Enabled<"));
        }
        if s.as_u16() == 404 {
            return Ok(false);
        }
        Err(Self::fail(
            "reading the bucket's Object Lock configuration",
            s,
            &body,
        ))
    }
}

/// S3's timestamp format: ISO 8601 in UTC with whole seconds.
fn iso(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
