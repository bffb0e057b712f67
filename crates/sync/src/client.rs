//! [`CloudApi`]: galaxy-cloud's player and sync routes, over HTTP.
//!
//! Every call maps the cloud's `{"error":{"code","message"}}` answers to a
//! [`TransportError`], so callers tell "try later" (network, 5xx) from
//! "renumber" (`ClientStateNotFound`) from "this device was revoked" (401).
//! The token travels only in the `Authorization` header and is never
//! logged.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::protocol::{
    Chain, DeviceCredentials, LinkCode, PlayerInfo, Poke, PullResponse, PushRequest, PushResponse,
    RegisterRequest, CLIENT_STATE_NOT_FOUND, MUTATION_GAP, MUTATION_ID_REUSED,
};
use crate::sse;
use crate::transport::{Transport, TransportError};

/// How long one request (not the live stream) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A live stream silent this long is taken for dead (the server sends a
/// keep-alive every 15 s): a half-open connection after a laptop slept or
/// a NAT entry expired would otherwise wait forever.
pub const STREAM_IDLE: Duration = Duration::from_secs(45);

/// The next chunk of a live stream, or `Unavailable` after [`STREAM_IDLE`].
async fn next_chunk(
    url: &str,
    response: &mut reqwest::Response,
) -> Result<Option<bytes::Bytes>, TransportError> {
    match tokio::time::timeout(STREAM_IDLE, response.chunk()).await {
        Ok(chunk) => chunk.map_err(|e| unavailable(url, &e)),
        Err(_) => Err(TransportError::Unavailable(format!(
            "{url} sent nothing for {} s",
            STREAM_IDLE.as_secs()
        ))),
    }
}

/// The cloud's player and sync routes for one device.
#[derive(Clone)]
pub struct CloudApi {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for CloudApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudApi")
            .field("base", &self.base)
            .field("has_token", &self.token.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
}

/// A readable cause: reqwest's own message names only the outermost layer.
fn unavailable(url: &str, e: &reqwest::Error) -> TransportError {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    TransportError::Unavailable(if e.is_timeout() {
        format!("no answer from {url} in time")
    } else if e.is_connect() {
        format!("cannot connect to {url}: {root}")
    } else {
        format!("request to {url} failed: {root}")
    })
}

impl CloudApi {
    /// The API at `base` (e.g. `http://127.0.0.1:7071`), with the device's
    /// token when it has one.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("an HTTP client without custom TLS settings always builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut r = self.http.request(method, &url);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        (url, r)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, TransportError> {
        let response = request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(url, &e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| unavailable(url, &e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| TransportError::Refused {
                status: status.as_u16(),
                code: "UnexpectedAnswer".into(),
                message: format!("{url} answered something this client cannot read: {e}"),
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(e) => (e.error.code, e.error.message),
            Err(_) => (
                "HttpError".into(),
                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            ),
        };
        Err(match (status.as_u16(), code.as_str()) {
            (401, _) => TransportError::Unauthorized(message),
            (409, CLIENT_STATE_NOT_FOUND) => TransportError::ClientStateNotFound(message),
            (409, MUTATION_GAP) => TransportError::MutationGap(message),
            (409, MUTATION_ID_REUSED) => TransportError::MutationIdReused(message),
            (s, _) if s >= 500 || s == 429 || s == 408 => {
                TransportError::Unavailable(format!("{url} answered HTTP {s} {code}: {message}"))
            }
            (s, _) => TransportError::Refused {
                status: s,
                code,
                message,
            },
        })
    }

    /// `POST /api/players`: a new player with this device.
    pub async fn register(&self, device_name: &str) -> Result<DeviceCredentials, TransportError> {
        let (url, r) = self.request(reqwest::Method::POST, "/api/players");
        let body = RegisterRequest {
            device_name: Some(device_name.to_string()),
            code: None,
        };
        self.send(&url, r.json(&body)).await
    }

    /// `POST /api/players/devices`: joins the player of a link code.
    pub async fn join(
        &self,
        code: &str,
        device_name: &str,
    ) -> Result<DeviceCredentials, TransportError> {
        let (url, r) = self.request(reqwest::Method::POST, "/api/players/devices");
        let body = RegisterRequest {
            device_name: Some(device_name.to_string()),
            code: Some(code.to_string()),
        };
        self.send(&url, r.json(&body)).await
    }

    /// `POST /api/players/link-codes`.
    pub async fn link_code(&self) -> Result<LinkCode, TransportError> {
        let (url, r) = self.request(reqwest::Method::POST, "/api/players/link-codes");
        self.send(&url, r).await
    }

    /// `GET /api/players/me`.
    pub async fn me(&self) -> Result<PlayerInfo, TransportError> {
        let (url, r) = self.request(reqwest::Method::GET, "/api/players/me");
        self.send(&url, r).await
    }

    /// `DELETE /api/players/devices/{id}`.
    pub async fn revoke(&self, device_id: &str) -> Result<(), TransportError> {
        let (url, r) = self.request(
            reqwest::Method::DELETE,
            &format!("/api/players/devices/{device_id}"),
        );
        self.send::<serde_json::Value>(&url, r).await.map(drop)
    }

    /// Opens `GET /api/sync/events` and calls `on_poke` for every poke
    /// until the stream ends or fails. Returns once it was open and then
    /// ended (`Ok`), or could not be opened (`Err`); `on_open` runs when the
    /// stream is open (a reconnect: time to sync).
    pub async fn follow_pokes(
        &self,
        mut on_open: impl FnMut() + Send,
        mut on_poke: impl FnMut(Poke) + Send,
    ) -> Result<(), TransportError> {
        let (url, r) = self.request(reqwest::Method::GET, "/api/sync/events");
        let mut response = r
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| unavailable(&url, &e))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            return Err(if status == 401 {
                TransportError::Unauthorized("the live stream refused the token".into())
            } else {
                TransportError::Unavailable(format!("{url} answered HTTP {status}"))
            });
        }
        on_open();
        let mut parser = sse::Parser::new();
        loop {
            match next_chunk(&url, &mut response).await {
                Ok(Some(bytes)) => {
                    for event in parser.feed(&bytes) {
                        if event.event == "poke" {
                            match serde_json::from_str::<Poke>(&event.data) {
                                Ok(p) => on_poke(p),
                                Err(e) => tracing::warn!("sync: unreadable poke: {e}"),
                            }
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// What the starter answers a device (the fields it uses).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    /// The instance id (`<player id>.<uuid>`).
    pub id: String,
    /// Its status URL (send the token as a header).
    pub status_query_get_uri: String,
}

/// One state of a cloud instance, from its live stream.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceState {
    /// The instance.
    pub instance_id: String,
    /// Durable Functions runtime status (`Pending`, `Running`, `Completed`...).
    pub runtime_status: String,
}

impl InstanceState {
    /// The instance has finished (one way or another).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.runtime_status.as_str(),
            "Completed" | "Failed" | "Terminated" | "Canceled"
        )
    }
}

impl CloudApi {
    /// `POST /api/orchestrators/Galaxy_Create/{instance_id}` with the
    /// device token: a galaxy made in the cloud for this player (it arrives
    /// through pull). `instance_id` begins with the player's id and a
    /// '.'; the cloud starts it once, so sending the same start again
    /// (its answer was lost) makes no second galaxy.
    pub async fn start_galaxy_create(&self, instance_id: &str) -> Result<Started, TransportError> {
        let path = format!(
            "/api/orchestrators/Galaxy_Create/{}",
            instance_id.replace('%', "%25").replace(' ', "%20")
        );
        let (url, r) = self.request(reqwest::Method::POST, &path);
        self.send(&url, r).await
    }

    /// `GET` a cloud instance's status (its `statusQueryGetUri`).
    pub async fn instance_status(&self, id: &str) -> Result<InstanceState, TransportError> {
        let path = format!(
            "/runtime/webhooks/durabletask/instances/{}",
            id.replace('%', "%25").replace(' ', "%20")
        );
        let (url, r) = self.request(reqwest::Method::GET, &path);
        self.send(&url, r).await
    }

    /// Follows one of the player's cloud instances on its live stream,
    /// calling `on_state` for each state, until it finishes. Returns the
    /// final state.
    pub async fn follow_instance(
        &self,
        id: &str,
        mut on_state: impl FnMut(&InstanceState) + Send,
    ) -> Result<InstanceState, TransportError> {
        let path = format!(
            "/runtime/webhooks/durabletask/instances/{}/stream",
            id.replace('%', "%25").replace(' ', "%20")
        );
        let (url, r) = self.request(reqwest::Method::GET, &path);
        let mut response = r.send().await.map_err(|e| unavailable(&url, &e))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            return Err(TransportError::Refused {
                status,
                code: "StreamRefused".into(),
                message: format!("{url} answered HTTP {status}"),
            });
        }
        let mut parser = sse::Parser::new();
        loop {
            let Some(bytes) = next_chunk(&url, &mut response).await? else {
                return Err(TransportError::Unavailable(format!(
                    "{url} ended before the instance finished"
                )));
            };
            for event in parser.feed(&bytes) {
                if event.event != "status" && event.event != "update" {
                    continue;
                }
                let Ok(state) = serde_json::from_str::<InstanceState>(&event.data) else {
                    continue;
                };
                on_state(&state);
                if state.is_terminal() {
                    return Ok(state);
                }
            }
        }
    }
}

impl Transport for CloudApi {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportError> {
        let (url, r) = self.request(reqwest::Method::POST, "/api/sync/push");
        self.send(&url, r.json(request)).await
    }

    async fn pull(
        &self,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: Option<usize>,
    ) -> Result<PullResponse, TransportError> {
        let (url, mut r) = self.request(reqwest::Method::GET, "/api/sync/pull");
        r = r.query(&[("client_id", client_id), ("cursor", &cursor.to_string())]);
        if let Chain::Fresh { latest } = chain {
            r = r.query(&[("fresh", "true")]);
            if let Some(l) = latest {
                r = r.query(&[("chain_latest", l)]);
            }
        }
        if let Some(l) = limit {
            r = r.query(&[("limit", l)]);
        }
        self.send(&url, r).await
    }
}
