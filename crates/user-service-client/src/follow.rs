//! `follow_users`: a watch that reconnects by itself and resumes from the
//! last revision it yielded, so its caller sees one unbroken stream.

use futures_util::{Stream, StreamExt};
use tonic::Code;
use user_service_api::backoff::Backoff;

use crate::{pb, pb::WatchUsersRequest, retry_backoff, ClientError, UserClient};

impl UserClient {
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
