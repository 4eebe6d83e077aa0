//! A typed client for `user.v1.UserService`, for other Rust services and
//! for `userctl`.
//!
//! What it adds over the generated stub: a deadline on every call, HTTP/2
//! keepalive, bounded retries with backoff for idempotent reads on
//! UNAVAILABLE, a bearer token on every call, and errors a caller can
//! match on. TLS when the endpoint is `https://` or [`ClientConfig::tls`]
//! is set.
//!
//! What lives where: `config.rs` the settings a caller fills in,
//! `error.rs` how failures are classified, `follow.rs` the self-resuming
//! watch; this file the client and its calls. Nothing here depends on the
//! server crate: only on the contract (`user_service_api`).

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, ClientTlsConfig},
    Code, Request, Status,
};
use user_service_api::backoff::Backoff;

mod config;
mod error;
mod follow;

pub use config::{ClientConfig, ClientTls, Token};
use error::error_chain;
pub use error::{never_sent, ClientError};

/// The contract's wire types, as the client's calls take and return them.
pub use user_service_api::v1 as pb;

use pb::{
    user_service_client::UserServiceClient, CreateUserRequest, DeleteUserRequest, GetUserRequest,
    ListUsersRequest, UpdateUserRequest, WatchUsersRequest,
};

/// Attempts of a call whose request never reached the server (see
/// `UserClient::send`).
const UNSENT_ATTEMPTS: u32 = 3;

/// The delays of read retries and watch reconnects: 100 ms doubling up to
/// 2 s, the shared policy of `user_service_api::backoff`. No jitter: a
/// client's retries are few (`read_attempts`) and their timing is what
/// callers size their own deadlines by; spreading them is a behaviour
/// change of its own (`Backoff::with_jitter`).
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

#[derive(Clone)]
pub struct UserClient {
    inner: UserServiceClient<Channel>,
    config: ClientConfig,
    /// `Bearer <token>`, built once; marked sensitive so HTTP/2 header
    /// compression never indexes it.
    authorization: Option<MetadataValue<Ascii>>,
}

impl UserClient {
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let authorization = match &config.token {
            Some(token) => {
                let mut value = MetadataValue::try_from(format!("Bearer {}", token.0.trim()))
                    // The message must not quote the token.
                    .map_err(|_| {
                        ClientError::Connect(
                            "the token contains characters a header cannot carry".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        // TLS options mean TLS: tonic only speaks it to https:// URIs.
        let endpoint = match (&config.tls, config.endpoint.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => config.endpoint.clone(),
        };
        let mut builder = Channel::from_shared(endpoint.clone())
            .map_err(|e| ClientError::Connect(error_chain(&e)))?
            .connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if endpoint.starts_with("https://") {
            let tls = config
                .tls
                .as_ref()
                .map_or_else(
                    || ClientTlsConfig::new().with_enabled_roots(),
                    ClientTls::to_tonic,
                )
                .timeout(config.connect_timeout);
            builder = builder
                .tls_config(tls)
                .map_err(|e| ClientError::Connect(error_chain(&e)))?;
        }
        let channel = builder
            .connect()
            .await
            .map_err(|e| ClientError::Connect(error_chain(&e)))?;
        Ok(Self {
            inner: UserServiceClient::new(channel),
            config,
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.authorized(message);
        request.set_timeout(self.config.request_timeout);
        request
    }

    /// A request carrying the token, if there is one.
    fn authorized<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Runs `call`, and again (at once, at most [`UNSENT_ATTEMPTS`] times)
    /// when the request never left this process: tonic hands a request to
    /// a connection that is closing, after the server's GOAWAY (its
    /// `grpc.max_connection_age`, a rolling restart), and hyper cancels it
    /// unsent; or the server refused its stream (REFUSED_STREAM, at a small
    /// `grpc.max_concurrent_streams`). The server never processed it, so
    /// sending it again is safe for every call, creates included; grpc-go
    /// does the same transparently.
    async fn send<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(UserServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut attempt = 1;
        loop {
            match call(self.inner.clone()).await {
                Err(status) if attempt < UNSENT_ATTEMPTS && never_sent(&status) => attempt += 1,
                result => return result,
            }
        }
    }

    /// Retries `call` on UNAVAILABLE with exponential backoff. Only for
    /// idempotent calls: a retried create could run twice.
    async fn read_with_retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(UserServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut backoff = retry_backoff();
        let mut attempt = 1;
        loop {
            match self.send(&mut call).await {
                Err(status)
                    if status.code() == Code::Unavailable
                        && attempt < self.config.read_attempts =>
                {
                    tokio::time::sleep(backoff.next_delay()).await;
                    attempt += 1;
                }
                result => return result.map_err(ClientError::from),
            }
        }
    }

    pub async fn create_user(
        &self,
        email: &str,
        name: &str,
        password: &str,
    ) -> Result<pb::User, ClientError> {
        let message = CreateUserRequest {
            email: email.into(),
            name: name.into(),
            password: password.into(),
        };
        let user = self
            .send(|mut client| {
                let request = self.request(message.clone());
                async move { client.create_user(request).await }
            })
            .await?;
        Ok(user.into_inner())
    }

    pub async fn get_user(&self, user_id: &str) -> Result<pb::User, ClientError> {
        self.read_with_retry(|mut client| {
            let request = self.request(GetUserRequest {
                user_id: user_id.into(),
            });
            async move { client.get_user(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn update_user(&self, request: UpdateUserRequest) -> Result<pb::User, ClientError> {
        let user = self
            .send(|mut client| {
                let request = self.request(request.clone());
                async move { client.update_user(request).await }
            })
            .await?;
        Ok(user.into_inner())
    }

    pub async fn delete_user(&self, user_id: &str) -> Result<(), ClientError> {
        self.send(|mut client| {
            let request = self.request(DeleteUserRequest {
                user_id: user_id.into(),
            });
            async move { client.delete_user(request).await }
        })
        .await?;
        Ok(())
    }

    /// Streams users; the whole stream must finish within `timeout`.
    pub async fn list_users(
        &self,
        page_size: i32,
        page_token: &str,
        timeout: Duration,
    ) -> Result<impl Stream<Item = Result<pb::User, ClientError>>, ClientError> {
        let stream = self
            .send(|mut client| {
                let mut request = self.authorized(ListUsersRequest {
                    page_size,
                    page_token: page_token.into(),
                });
                request.set_timeout(timeout);
                async move { client.list_users(request).await }
            })
            .await?
            .into_inner();
        Ok(stream.map(|item| item.map_err(ClientError::from)))
    }

    /// Follows changes; ends when the server drains (reconnect then) or
    /// after `timeout`, if given. Live changes only; see
    /// [`UserClient::watch_users_since`] and [`UserClient::follow_users`].
    pub async fn watch_users(
        &self,
        user_ids: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<impl Stream<Item = Result<pb::UserEvent, ClientError>>, ClientError> {
        self.watch_users_since(user_ids, 0, timeout).await
    }

    /// Like [`UserClient::watch_users`], but first replays every change
    /// after `since_revision` (0 = live only). A revision the server no
    /// longer retains is `ClientError::Other { code: OutOfRange, .. }`.
    pub async fn watch_users_since(
        &self,
        user_ids: Vec<String>,
        since_revision: u64,
        timeout: Option<Duration>,
    ) -> Result<impl Stream<Item = Result<pb::UserEvent, ClientError>>, ClientError> {
        let stream = self
            .send(|mut client| {
                let mut request = self.authorized(WatchUsersRequest {
                    user_ids: user_ids.clone(),
                    since_revision,
                });
                if let Some(timeout) = timeout {
                    request.set_timeout(timeout);
                }
                async move { client.watch_users(request).await }
            })
            .await?
            .into_inner();
        Ok(stream.map(|item| item.map_err(ClientError::from)))
    }
}
