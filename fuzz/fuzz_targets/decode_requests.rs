//! Arbitrary bytes as each request message of `user.v1.UserService`, and
//! whatever decodes run through the validation the server applies to it
//! before it touches a store or hashes a password.
//!
//! Why: these bytes come straight off the network from any client. prost
//! must refuse malformed input with an error, and the domain checks (email,
//! name, password, ids, update masks, page tokens, watch ids) see any
//! string a peer can encode, so none of them may panic: a panic in a
//! handler is a dropped call and a log line an attacker can mint at will.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use user_service::{
    domain::{list_position, watch_ids, Email, Password, UserId, UserName},
    grpc::convert,
};
use user_service_api::v1::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, WatchUsersRequest,
};

fuzz_target!(|data: &[u8]| {
    // CreateUser (and each BulkCreateUsers item): the three field checks
    // `UserService::prepare` runs before hashing.
    if let Ok(req) = CreateUserRequest::decode(data) {
        let _ = Email::parse(&req.email);
        let _ = UserName::parse(&req.name);
        let _ = Password::parse(req.password);
    }
    // GetUser / DeleteUser: the id.
    if let Ok(req) = GetUserRequest::decode(data) {
        let _ = UserId::parse("user_id", &req.user_id);
    }
    // UpdateUser (and each BulkUpdateUsers item): the edge's conversion,
    // then the id and patch checks `UserService::update` runs.
    if let Ok(req) = UpdateUserRequest::decode(data) {
        let _ = convert::update_request(req).validate();
    }
    // ListUsers: page size and page token.
    if let Ok(req) = ListUsersRequest::decode(data) {
        let _ = list_position(req.page_size, &req.page_token);
    }
    // WatchUsers: the ids to follow.
    if let Ok(req) = WatchUsersRequest::decode(data) {
        let _ = watch_ids(&req.user_ids);
    }
});
