//! The claims we read from a token.

use serde::{Deserialize, Serialize};

/// What a verified token says. `exp`, `iss` and `aud` are checked by
/// `jsonwebtoken` against the settings; they are declared here too so a
/// malformed value (an `iss` array, a string `exp`) fails decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The caller: a user id for ordinary users.
    pub sub: String,
    /// Role names; `admin` may act on every user.
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several; checked by `jsonwebtoken` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}
