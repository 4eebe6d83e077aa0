//! Arbitrary strings as user ids and `ListUsers` page tokens (a page
//! token is the id of the last user received; `domain::list_position`).
//!
//! Why: ids arrive in every call but CreateUser, as text a client chose.
//! Parsing must never panic, and an id the server hands out must come back
//! as the same id: `UserId::to_string` parses back to an equal id, and a
//! page token accepted by `ListUsers` is exactly what `UserId::parse` accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use user_service::domain::{list_position, UserId};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = UserId::parse("user_id", raw);
    if let Ok(id) = &parsed {
        let text = id.to_string();
        let again = UserId::parse("user_id", &text).expect("a formatted id parses");
        assert_eq!(*id, again, "{raw:?} -> {text:?} does not round-trip");
        assert_eq!(again.to_string(), text, "formatting is not stable");
    }
    match list_position(0, raw) {
        Ok((after, remaining)) => {
            assert_eq!(remaining, usize::MAX);
            match after {
                None => assert!(raw.is_empty(), "{raw:?} accepted as no token"),
                Some(after) => assert_eq!(Ok(after), parsed.map_err(|_| ())),
            }
        }
        Err(_) => assert!(parsed.is_err(), "{raw:?} is an id but not a page token"),
    }
});
