//! `user.v1.UserService` over tonic: unwraps requests, calls the domain,
//! wraps responses. No business rule lives here.

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    codes::code_name,
    convert,
    status::{invalid_argument, to_status},
    streams::{bounded, deadline, ResponseStream},
};
use crate::{
    domain::{Actor, CreateUser, DomainError, UserService},
    pb::{self, user_service_server::UserService as UserServiceApi, WATCH_REVISION_HEADER},
};

/// The gRPC face of [`UserService`].
#[derive(Clone)]
pub struct UserGrpc {
    users: UserService,
    /// Cancelled when the server stops accepting calls: endless streams
    /// (WatchUsers) end so clients move to another replica.
    draining: CancellationToken,
    /// Cancelled when the shutdown timeout has passed: every stream ends.
    aborting: CancellationToken,
}

impl UserGrpc {
    pub fn new(
        users: UserService,
        draining: CancellationToken,
        aborting: CancellationToken,
    ) -> Self {
        Self {
            users,
            draining,
            aborting,
        }
    }

    /// The tonic service, with `max_message_size` on both directions. (The
    /// call layer refuses larger requests first, with the spec's
    /// RESOURCE_EXHAUSTED; tonic's own limit is the backstop.)
    pub fn into_server(
        self,
        max_message_size: usize,
    ) -> pb::user_service_server::UserServiceServer<Self> {
        pb::user_service_server::UserServiceServer::new(self)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size)
    }
}

/// The caller the auth layer (`crate::auth`) put into the request. Its
/// absence means the layer did not run: refuse rather than guess.
fn actor<T>(request: &Request<T>) -> Result<Actor, Status> {
    request
        .extensions()
        .get::<Actor>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing credentials"))
}

/// Prefixes a stream item's error with its index, keeping code and details.
fn item_status(index: usize, err: DomainError) -> Status {
    let prefix = format!("item {index}");
    match err {
        DomainError::Invalid(v) => invalid_argument(&v, Some(&prefix)),
        other => {
            let status = to_status(other);
            Status::with_details(
                status.code(),
                format!("{prefix}: {}", status.message()),
                status.details().to_vec().into(),
            )
        }
    }
}

#[tonic::async_trait]
impl UserServiceApi for UserGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let req = request.into_inner();
        let user = self
            .users
            .create(&req.email, &req.name, req.password)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::user(user)))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = actor(&request)?;
        let user = self
            .users
            .get(&actor, &request.get_ref().user_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::user(user)))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let actor = actor(&request)?;
        let update = convert::update_request(request.into_inner());
        let user = self.users.update(&actor, update).await.map_err(to_status)?;
        Ok(Response::new(convert::user(user)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        self.users
            .delete(&request.get_ref().user_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    type ListUsersStream = ResponseStream<pb::User>;

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let deadline = deadline(request.extensions());
        let req = request.into_inner();
        let users = self
            .users
            .list(req.page_size, &req.page_token)
            .map_err(to_status)?
            .map(|item| item.map(convert::user).map_err(to_status));
        Ok(Response::new(bounded(
            users,
            deadline,
            self.aborting.clone(),
        )))
    }

    async fn bulk_create_users(
        &self,
        request: Request<Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        let items = request.into_inner().map(|item| {
            item.map(|req| CreateUser {
                email: req.email,
                name: req.name,
                password: req.password,
            })
        });
        let outcome = self.users.bulk_create(items).await?;
        let errors = outcome
            .refused
            .into_iter()
            .map(|(index, err)| {
                let status = to_status(err);
                pb::BulkCreateError {
                    index: i32::try_from(index).unwrap_or(i32::MAX),
                    code: code_name(status.code()).to_owned(),
                    message: status.message().to_owned(),
                }
            })
            .collect();
        Ok(Response::new(pb::BulkCreateUsersResponse {
            created_count: i32::try_from(outcome.created.len()).unwrap_or(i32::MAX),
            user_ids: outcome.created.iter().map(ToString::to_string).collect(),
            errors,
        }))
    }

    type UserUpdatesStream = ResponseStream<pb::User>;

    async fn user_updates(
        &self,
        request: Request<Streaming<pb::UpdateUserRequest>>,
    ) -> Result<Response<Self::UserUpdatesStream>, Status> {
        let deadline = deadline(request.extensions());
        let actor = actor(&request)?;
        let users = self.users.clone();
        // Each request is applied as it arrives and answered at once; the
        // next one is read only when the client has room for the answer.
        let answers = request.into_inner().enumerate().then(move |(index, item)| {
            let users = users.clone();
            let actor = actor.clone();
            async move {
                let req = item?;
                users
                    .update(&actor, convert::update_request(req))
                    .await
                    .map(convert::user)
                    .map_err(|err| item_status(index, err))
            }
        });
        Ok(Response::new(bounded(
            answers,
            deadline,
            self.aborting.clone(),
        )))
    }

    type WatchUsersStream = ResponseStream<pb::UserEvent>;

    async fn watch_users(
        &self,
        request: Request<pb::WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        let deadline = deadline(request.extensions());
        let req = request.get_ref();
        // Subscribed before we return: once the client has the response
        // headers, every later change reaches it (and, with since_revision,
        // every change after that revision).
        let (start, events) = self
            .users
            .watch(&req.user_ids, req.since_revision)
            .await
            .map_err(to_status)?;
        let events = events.map(|item| item.map(convert::event).map_err(to_status));
        // Endless, so it ends when draining begins, not at the abort.
        let mut response = Response::new(bounded(events, deadline, self.draining.clone()));
        response
            .metadata_mut()
            .insert(WATCH_REVISION_HEADER, start.into());
        Ok(response)
    }
}
