//! A minimal HTTP/1.1 client for the control API (one request per connection), used by the demo
//! and by tests. It speaks just enough HTTP for our own server: `Content-Length` bodies and
//! `Connection: close`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("request timed out")]
    Timeout,
    /// Not an HTTP response.
    #[error("malformed response")]
    Malformed,
    /// The server answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The body.
        body: String,
    },
    /// The body is not JSON.
    #[error("response is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Where a running node can be reached, as it wrote to `endpoints.json` in its data folder, with
/// the API token from `api-token` there.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The node's UDP address.
    pub udp: SocketAddr,
    /// A client for its control API.
    pub client: Client,
}

/// Why a node's endpoints could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// A file is missing or unreadable (is a node running with this data folder?).
    #[error("{path}: {source} (is a node running with this data folder?)")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `endpoints.json` is not what a node writes.
    #[error("{0}: not a node's endpoints file")]
    Malformed(std::path::PathBuf),
    /// The token file is not private.
    #[error(transparent)]
    Token(#[from] crate::keys::SecretError),
}

impl Endpoints {
    /// Reads the endpoints of the node using `data_dir`.
    pub fn read(data_dir: &std::path::Path) -> Result<Endpoints, EndpointsError> {
        let path = data_dir.join("endpoints.json");
        let text = std::fs::read_to_string(&path).map_err(|source| EndpointsError::Io {
            path: path.clone(),
            source,
        })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|_| EndpointsError::Malformed(path.clone()))?;
        let address = |key: &str| {
            value[key]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        let (Some(udp), Some(api)) = (address("udp"), address("api")) else {
            return Err(EndpointsError::Malformed(path));
        };
        let token = crate::keys::read_secret(&data_dir.join("api-token"))?;
        Ok(Endpoints {
            udp,
            client: Client::new(api, token),
        })
    }
}

/// A client for one node's control API.
#[derive(Debug, Clone)]
pub struct Client {
    address: SocketAddr,
    token: String,
    timeout: Duration,
}

impl Client {
    /// A client for the API at `address` with `token`.
    pub fn new(address: SocketAddr, token: impl Into<String>) -> Self {
        Client {
            address,
            token: token.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The API address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `GET path`, parsed as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request("GET", path, None).await
    }

    /// `POST path` with a JSON body, parsed as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request("POST", path, Some(body.to_string())).await
    }

    /// Sends a request with a raw body and returns the status and the body text.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<(u16, String), ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body, token))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, ClientError> {
        let (status, text) = self.raw(method, path, body, Some(&self.token)).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status { status, body: text });
        }
        Ok(serde_json::from_str(&text)?)
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<(u16, String), ClientError> {
        let mut stream = TcpStream::connect(self.address).await?;
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let (head, rest) = text.split_once("\r\n\r\n").ok_or(ClientError::Malformed)?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(ClientError::Malformed)?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Ok((status, body))
    }
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}
