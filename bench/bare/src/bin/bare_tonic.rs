//! The yardstick: `user.v1.UserService` on plain tonic, with no layers,
//! no health, no reflection, no telemetry: GetUser and ListUsers over a
//! `HashMap` behind a lock, loaded from the harness's seed file.
//!
//!   bare-tonic --addr 127.0.0.1:50051 --seed users.jsonl

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    process::ExitCode,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use bench_bare::{
    load_seed,
    pb::{self, user_service_server::UserServiceServer},
    terminated, Flags,
};
use futures_util::Stream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Store {
    by_id: HashMap<String, pb::User>,
    /// Ids in ascending order, for ListUsers' keyset paging.
    order: Vec<String>,
}

struct Bare {
    store: Arc<RwLock<Store>>,
}

type UserStream = Pin<Box<dyn Stream<Item = Result<pb::User, Status>> + Send>>;

fn poisoned<T>(_: T) -> Status {
    Status::internal("store lock poisoned")
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for Bare {
    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let store = self.store.read().map_err(poisoned)?;
        match store.by_id.get(&req.get_ref().user_id) {
            Some(user) => Ok(Response::new(user.clone())),
            None => Err(Status::not_found("user not found")),
        }
    }

    type ListUsersStream = UserStream;

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let req = req.into_inner();
        if req.page_size < 0 {
            return Err(Status::invalid_argument("page_size must not be negative"));
        }
        let start = {
            let store = self.store.read().map_err(poisoned)?;
            if req.page_token.is_empty() {
                0
            } else {
                store
                    .order
                    .partition_point(|id| id.as_str() <= req.page_token.as_str())
            }
        };
        let limit = if req.page_size == 0 {
            usize::MAX
        } else {
            req.page_size as usize
        };
        // Lazy, one user per poll: memory stays flat for any store size and
        // HTTP/2 flow control is the backpressure.
        let store = Arc::clone(&self.store);
        let stream = futures_util::stream::unfold((start, 0usize), move |(idx, sent)| {
            let store = Arc::clone(&store);
            async move {
                if sent >= limit {
                    return None;
                }
                let item = {
                    let guard = match store.read() {
                        Ok(guard) => guard,
                        Err(e) => return Some((Err(poisoned(e)), (usize::MAX, limit))),
                    };
                    let id = guard.order.get(idx)?;
                    guard.by_id.get(id).cloned()
                };
                item.map(|user| (Ok(user), (idx + 1, sent + 1)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_user(
        &self,
        _: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }

    async fn update_user(
        &self,
        _: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }

    async fn delete_user(&self, _: Request<pb::DeleteUserRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }

    async fn bulk_create_users(
        &self,
        _: Request<tonic::Streaming<pb::CreateUserRequest>>,
    ) -> Result<Response<pb::BulkCreateUsersResponse>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }

    type UserUpdatesStream = UserStream;

    async fn user_updates(
        &self,
        _: Request<tonic::Streaming<pb::UpdateUserRequest>>,
    ) -> Result<Response<Self::UserUpdatesStream>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }

    type WatchUsersStream = Pin<Box<dyn Stream<Item = Result<pb::UserEvent, Status>> + Send>>;

    async fn watch_users(
        &self,
        _: Request<pb::WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        Err(Status::unimplemented("not part of the benchmark"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-tonic: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let flags = Flags::parse(std::env::args().skip(1))?;
    let addr: SocketAddr = flags
        .get("addr")
        .unwrap_or("127.0.0.1:50051")
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let mut store = Store::default();
    if let Some(seed) = flags.get("seed") {
        let now = prost_types::Timestamp::from(SystemTime::now());
        for user in load_seed(seed.as_ref(), now)? {
            store.order.push(user.id.clone());
            store.by_id.insert(user.id.clone(), user);
        }
        store.order.sort_unstable();
    }
    let service = Bare {
        store: Arc::new(RwLock::new(store)),
    };
    tonic::transport::Server::builder()
        .add_service(UserServiceServer::new(service))
        .serve_with_shutdown(addr, terminated())
        .await
        .map_err(|e| format!("serve {addr}: {e}"))
}
