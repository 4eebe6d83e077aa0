//! A typed client for `user.v1.UserService`, for other Rust services and
//! for `userctl`.
//!
//! What it adds over the generated stub: a deadline on every call, HTTP/2
//! keepalive, bounded retries with backoff for idempotent reads on
//! UNAVAILABLE, a bearer token on every call, and errors a caller can
//! match on.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
    Code, Request, Status,
};
use tonic_types::StatusExt;

use crate::config::Secret;
use crate::pb::{
    self, user_service_client::UserServiceClient, CreateUserRequest, DeleteUserRequest,
    GetUserRequest, ListUsersRequest, UpdateUserRequest, WatchUsersRequest,
};

/// How to reach the service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `http://localhost:50051`.
    pub endpoint: String,
    pub connect_timeout: Duration,
    /// Deadline of each unary call (sent as `grpc-timeout`).
    pub request_timeout: Duration,
    /// Attempts for idempotent reads that fail with UNAVAILABLE.
    pub read_attempts: u32,
    /// A JWT sent as `authorization: Bearer <token>` on every call (see
    /// `user-service token`). Redacted in `Debug`.
    pub token: Option<Secret>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://localhost:50051".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            read_attempts: 3,
            token: None,
        }
    }
}

/// Why a call failed, in the terms a caller acts on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("invalid request: {}", format_violations(.0))]
    Invalid(Vec<(String, String)>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{code:?}: {message}")]
    Other { code: Code, message: String },
}

fn format_violations(violations: &[(String, String)]) -> String {
    violations
        .iter()
        .map(|(field, description)| format!("{field}: {description}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => {
                let violations = status
                    .get_details_bad_request()
                    .map(|br| {
                        br.field_violations
                            .into_iter()
                            .map(|v| (v.field, v.description))
                            .collect()
                    })
                    .unwrap_or_else(|| vec![(String::new(), message.clone())]);
                ClientError::Invalid(violations)
            }
            Code::NotFound => ClientError::NotFound(message),
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::Unauthenticated => ClientError::Unauthenticated(message),
            Code::PermissionDenied => ClientError::PermissionDenied(message),
            Code::Unavailable => ClientError::Unavailable(message),
            code => ClientError::Other { code, message },
        }
    }
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
                let mut value =
                    MetadataValue::try_from(format!("Bearer {}", token.expose().trim()))
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
        let channel = Channel::from_shared(config.endpoint.clone())
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
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

    /// Retries `call` on UNAVAILABLE with exponential backoff. Only for
    /// idempotent calls: a retried create could run twice.
    async fn read_with_retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(UserServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match call(self.inner.clone()).await {
                Err(status)
                    if status.code() == Code::Unavailable
                        && attempt < self.config.read_attempts =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
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
        let request = self.request(CreateUserRequest {
            email: email.into(),
            name: name.into(),
            password: password.into(),
        });
        Ok(self.inner.clone().create_user(request).await?.into_inner())
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
        let request = self.request(request);
        Ok(self.inner.clone().update_user(request).await?.into_inner())
    }

    pub async fn delete_user(&self, user_id: &str) -> Result<(), ClientError> {
        let request = self.request(DeleteUserRequest {
            user_id: user_id.into(),
        });
        self.inner.clone().delete_user(request).await?;
        Ok(())
    }

    /// Streams users; the whole stream must finish within `timeout`.
    pub async fn list_users(
        &self,
        page_size: i32,
        page_token: &str,
        timeout: Duration,
    ) -> Result<impl Stream<Item = Result<pb::User, ClientError>>, ClientError> {
        let mut request = self.authorized(ListUsersRequest {
            page_size,
            page_token: page_token.into(),
        });
        request.set_timeout(timeout);
        let stream = self.inner.clone().list_users(request).await?.into_inner();
        Ok(stream.map(|item| item.map_err(ClientError::from)))
    }

    /// Follows changes; ends when the server drains (reconnect then) or
    /// after `timeout`, if given.
    pub async fn watch_users(
        &self,
        user_ids: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<impl Stream<Item = Result<pb::UserEvent, ClientError>>, ClientError> {
        let mut request = self.authorized(WatchUsersRequest { user_ids });
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let stream = self.inner.clone().watch_users(request).await?.into_inner();
        Ok(stream.map(|item| item.map_err(ClientError::from)))
    }
}
