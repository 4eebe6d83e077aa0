//! A typed client for `user.v1.UserService`, for other Rust services and
//! for `userctl`.
//!
//! What it adds over the generated stub: a deadline on every call, HTTP/2
//! keepalive, bounded retries with backoff for idempotent reads on
//! UNAVAILABLE, a bearer token on every call, and errors a caller can
//! match on. TLS when the endpoint is `https://` or [`ClientConfig::tls`]
//! is set.

use std::{fmt, path::Path, time::Duration};

use futures_util::{Stream, StreamExt};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request, Status,
};
use tonic_types::StatusExt;
use user_service_api::backoff::Backoff;

/// The contract's wire types, as the client's calls take and return them.
pub use user_service_api::v1 as pb;

use pb::{
    user_service_client::UserServiceClient, CreateUserRequest, DeleteUserRequest, GetUserRequest,
    ListUsersRequest, UpdateUserRequest, WatchUsersRequest,
};

/// How to reach the service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `http://localhost:50051`, or `https://...` for TLS.
    pub endpoint: String,
    pub connect_timeout: Duration,
    /// Deadline of each unary call (sent as `grpc-timeout`).
    pub request_timeout: Duration,
    /// Attempts for idempotent reads that fail with UNAVAILABLE.
    pub read_attempts: u32,
    /// A JWT sent as `authorization: Bearer <token>` on every call (see
    /// `user-service token`). Redacted in `Debug`.
    pub token: Option<Token>,
    /// Whom to trust and who we are. `None` with an `https://` endpoint
    /// trusts the public web PKI roots; `Some` implies TLS even for an
    /// `http://` endpoint.
    pub tls: Option<ClientTls>,
}

/// A bearer token. Its `Debug` never shows the value, so a logged
/// `ClientConfig` does not leak it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// TLS options of the client, as PEM.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificate(s) to verify the server with, instead of the public
    /// roots (a private CA, such as cert-manager's).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key, for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify in the server's certificate when it differs from
    /// the endpoint's host (e.g. through a port-forward to localhost).
    pub server_name: Option<String>,
}

// The private key stays out of debug output.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<set>"))
            .field("identity_pem", &self.identity_pem.as_ref().map(|_| "<set>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Reads the PEM files: a CA to trust and/or a certificate and key to
    /// present (both or neither).
    pub fn from_files(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Connect(format!("cannot read {}: {e}", path.display())))
        };
        let identity_pem = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(ClientError::Connect(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Self {
            ca_pem: ca_file.map(read).transpose()?,
            identity_pem,
            server_name: None,
        })
    }

    fn to_tonic(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            // Only the given CA: a private deployment should not also trust
            // every public CA.
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_enabled_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        config
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://localhost:50051".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            read_attempts: 3,
            token: None,
            tls: None,
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
            // tonic reports a connection that broke under a call (e.g. the
            // server refused our certificate after a TLS 1.3 handshake) as
            // UNKNOWN "transport error"; gRPC calls that UNAVAILABLE, and
            // the cause is in the error's sources.
            Code::Unknown => match std::error::Error::source(&status) {
                Some(source) if source.is::<tonic::transport::Error>() => {
                    ClientError::Unavailable(error_chain(source))
                }
                _ => ClientError::Other {
                    code: Code::Unknown,
                    message,
                },
            },
            code => ClientError::Other { code, message },
        }
    }
}

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

/// The server cannot have processed the request: hyper cancelled it
/// before writing a byte (its connection was closing), or h2 refused or
/// ended it because of the server's GOAWAY with NO_ERROR, which by HTTP/2
/// (RFC 9113 §6.8) covers only streams the server did not process.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = err.source();
    }
    false
}

/// An error and its causes on one line: tonic's transport error alone says
/// only "transport error", the cause (refused, untrusted certificate...)
/// is in its sources.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    /// unsent. The server never saw it, so sending it again is safe for
    /// every call, creates included; grpc-go does the same transparently.
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

    /// Follows changes after `since_revision` (0 = from now on) for as
    /// long as the stream is polled, reconnecting by itself: when the
    /// server ends the watch (it drains, its feed was interrupted, we fell
    /// behind: UNAVAILABLE or RESOURCE_EXHAUSTED) or the connection breaks,
    /// it watches again from the revision of the last event it yielded,
    /// after a backoff, so nothing is missed or repeated. Other errors
    /// (OUT_OF_RANGE: the server no longer has the changes we missed) and
    /// `read_attempts` consecutive failed reconnects end the stream with
    /// the error. Before the first event it resumes from the revision the
    /// server said the watch started after (the `watch-revision` header;
    /// except on a store that has never changed, whose 0 means live-only).
    pub fn follow_users(
        &self,
        user_ids: Vec<String>,
        since_revision: u64,
    ) -> impl Stream<Item = Result<pb::UserEvent, ClientError>> + Send + 'static {
        struct Follow {
            client: UserClient,
            user_ids: Vec<String>,
            since: u64,
            current: Option<tonic::Streaming<pb::UserEvent>>,
            failures: u32,
            /// Advanced once per reconnect, reset with `failures`.
            backoff: Backoff,
            done: bool,
        }

        fn resumable(err: &ClientError) -> bool {
            matches!(
                err,
                ClientError::Unavailable(_)
                    | ClientError::Other {
                        code: Code::ResourceExhausted,
                        ..
                    }
            )
        }

        let state = Follow {
            client: self.clone(),
            user_ids,
            since: since_revision,
            current: None,
            failures: 0,
            backoff: retry_backoff(),
            done: false,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let Some(stream) = st.current.as_mut() else {
                    if st.failures > 0 {
                        tokio::time::sleep(st.backoff.next_delay()).await;
                    }
                    let request = st.client.authorized(WatchUsersRequest {
                        user_ids: st.user_ids.clone(),
                        since_revision: st.since,
                    });
                    match st.client.inner.clone().watch_users(request).await {
                        Ok(response) => {
                            if st.since == 0 {
                                st.since = response
                                    .metadata()
                                    .get(pb::WATCH_REVISION_HEADER)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0);
                            }
                            st.current = Some(response.into_inner());
                        }
                        Err(status) => {
                            let err = ClientError::from(status);
                            st.failures += 1;
                            if !resumable(&err) || st.failures >= st.client.config.read_attempts {
                                st.done = true;
                                return Some((Err(err), st));
                            }
                        }
                    }
                    continue;
                };
                match stream.next().await {
                    Some(Ok(event)) => {
                        st.failures = 0;
                        st.backoff.reset();
                        st.since = st.since.max(event.revision);
                        return Some((Ok(event), st));
                    }
                    // The server ended the watch without saying why:
                    // reconnect (after a backoff, in case it keeps doing so).
                    None => {
                        st.current = None;
                        st.failures += 1;
                    }
                    Some(Err(status)) => {
                        let err = ClientError::from(status);
                        st.current = None;
                        st.failures += 1;
                        if !resumable(&err) || st.failures > st.client.config.read_attempts {
                            st.done = true;
                            return Some((Err(err), st));
                        }
                    }
                }
            }
        })
    }
}
