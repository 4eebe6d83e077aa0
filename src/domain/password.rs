use std::{
    fmt,
    sync::{Arc, Mutex},
};

use argon2::{
    password_hash::{
        self, rand_core::OsRng, Output, ParamsString, PasswordHash, PasswordVerifier, SaltString,
    },
    Algorithm, Argon2, Block, Params, Version,
};

use tokio::sync::{mpsc, oneshot};

use super::{DomainError, ValidationError};

const PASSWORD_MIN_CHARS: usize = 8;
const PASSWORD_MAX_CHARS: usize = 1024;

/// A plaintext password on its way to the hasher. It cannot be printed:
/// `Debug` is redacted and there is no `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let chars = raw.chars().count();
        if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
            return Err(ValidationError::single(
                "password",
                format!("must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters long"),
            ));
        }
        Ok(Self(raw))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Hashes passwords with argon2id on a small pool of dedicated threads.
///
/// Hashing is deliberately slow and memory-hard (~19 MiB each with the
/// default parameters), so it must never run on the async workers, and the
/// number of hashes in flight is capped. The queue in front of the threads
/// is bounded too: [`PasswordHasher::try_hash`] (CreateUser) is refused at
/// once when it is full, so a burst of sign-ups is answered
/// RESOURCE_EXHAUSTED in microseconds instead of waiting, each holding its
/// request, until the deadline; [`PasswordHasher::hash`] (BulkCreateUsers,
/// a few items ahead per stream) waits for room.
///
/// Why dedicated threads rather than `spawn_blocking`: the blocking pool
/// starts fresh threads over time, and glibc gives each new thread its own
/// malloc arena that keeps its 19 MiB buffers after the thread is gone. A
/// load test reached 800 MiB RSS that way; a fixed set of long-lived threads
/// reuses its buffers and stays near `workers` x 19 MiB.
#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    password: Password,
    reply: oneshot::Sender<Result<String, DomainError>>,
}

impl PasswordHasher {
    /// Starts `workers` hashing threads with room for `queue` waiting jobs
    /// (both at least 1). The threads exit when the last clone of the
    /// hasher is dropped.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let (jobs, queue) = mpsc::channel::<Job>(queue.max(1));
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..workers {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&queue));
            if let Err(err) = spawned {
                // Fewer workers is slower, not broken: callers still get
                // served by the ones that started (at least one must).
                tracing::error!(error = %err, "cannot start a password hashing thread");
            }
        }
        Self { jobs }
    }

    /// Returns the PHC string (`$argon2id$v=19$...`) for `password`,
    /// waiting for room in the queue if needed.
    pub async fn hash(&self, password: Password) -> Result<String, DomainError> {
        let (reply, answer) = oneshot::channel();
        // Waiting for queue space and for the answer are both cancelled
        // with the request (deadline or client gone); a job whose caller
        // left is skipped by the worker.
        self.jobs
            .send(Job { password, reply })
            .await
            .map_err(|_| gone())?;
        Self::answer(answer).await
    }

    /// Like [`PasswordHasher::hash`], but a full queue is
    /// [`DomainError::Overloaded`] at once.
    pub async fn try_hash(&self, password: Password) -> Result<String, DomainError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { password, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => DomainError::Overloaded(
                    "too many passwords are being hashed (limits.password_hash_queue); retry with backoff"
                        .into(),
                ),
                mpsc::error::TrySendError::Closed(_) => gone(),
            })?;
        Self::answer(answer).await
    }

    async fn answer(
        answer: oneshot::Receiver<Result<String, DomainError>>,
    ) -> Result<String, DomainError> {
        answer
            .await
            .map_err(|_| DomainError::Internal("password hashing thread failed".into()))?
    }

    /// Checks `password` against a stored PHC string (used by tests and by
    /// whoever adds authentication on top of this service).
    pub fn verify(password: &str, phc: &str) -> bool {
        PasswordHash::new(phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

fn gone() -> DomainError {
    DomainError::Internal("password hashing threads are gone".into())
}

/// Hashing threads run at the lowest CPU priority (nice 19), the async
/// workers at the process's own. Where they share a core (a pod with one
/// CPU or less), a hash would otherwise keep the CPU for its timeslice
/// while the worker waits to answer other calls, sign-up refusals
/// included: at twice the hashing capacity on one core, refusals took p99
/// 2.9 ms at equal priority, 1.2 ms at nice 10 and 0.45 ms at nice 19
/// (RELIABILITY.md, "Overload"). On a core with spare time hashes still
/// get all of it; only when cheap calls saturate the core do sign-ups
/// wait, and then their bounded queue refuses them at once, which is the
/// overload answer we want. Linux only: there the nice value belongs to
/// the thread, elsewhere to the whole process.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::process::setpriority_process(None, 19) {
        // Slower answers next to a running hash, nothing worse.
        tracing::warn!(error = %err, "cannot lower the priority of a password hashing thread");
    }
}

fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    let argon2 = Argon2::default();
    // Allocated on the first job (an idle service keeps no 19 MiB per
    // thread), then reused: see the type's doc comment.
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        // One idle worker waits on the channel, the others on the lock.
        let next = match queue.lock() {
            Ok(mut queue) => queue.blocking_recv(),
            Err(poisoned) => poisoned.into_inner().blocking_recv(),
        };
        let Some(job) = next else { return };
        if job.reply.is_closed() {
            continue;
        }
        blocks.resize(argon2.params().block_count(), Block::default());
        let hashed = hash_with(&argon2, &mut blocks, job.password.0.as_bytes())
            .map_err(|e| DomainError::Internal(format!("password hashing failed: {e}")));
        let _ = job.reply.send(hashed);
    }
}

/// What `argon2::PasswordHasher::hash_password` does, with caller-owned
/// memory: random salt, raw hash, PHC string.
fn hash_with(
    argon2: &Argon2<'_>,
    blocks: &mut [Block],
    password: &[u8],
) -> Result<String, password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let params = argon2.params();
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(output_len, |out| {
        argon2
            .hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks)
            .map_err(password_hash::Error::from)
    })?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_characters() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("ü".repeat(1024)).is_ok());
        assert!(Password::parse("ü".repeat(1025)).is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::parse("hunter2hunter2".into()).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    /// The nice value of each of this process's threads whose name starts
    /// with `prefix` (field 19 of `/proc/self/task/TID/stat`).
    #[cfg(target_os = "linux")]
    fn nice_of_threads(prefix: &str) -> Vec<i64> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // The name may hold spaces: fields are counted after its ')'.
            let after_name = &stat[stat.rfind(')').unwrap() + 1..];
            let nice = after_name.split_whitespace().nth(16).unwrap();
            found.push(nice.parse().unwrap());
        }
        found
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_the_lowest_priority() {
        let hasher = PasswordHasher::new(2, 4);
        // A hash answered: the threads have started and set their nice value.
        hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        // The answer proves one thread ran; the other, and the threads of
        // hashers other tests start meanwhile, may be between getting
        // their name and lowering their priority. Each gets there within
        // microseconds, so look until they all have.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut hashing = nice_of_threads("argon2-");
        while !(hashing.len() >= 2 && hashing.iter().all(|&nice| nice == 19))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            hashing = nice_of_threads("argon2-");
        }
        assert!(hashing.len() >= 2, "{hashing:?}");
        assert!(hashing.iter().all(|&nice| nice == 19), "{hashing:?}");
        // The rest keeps the process's priority: only the hashing threads
        // were lowered, not the process (as setpriority would elsewhere).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let process: i64 = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
        let mine = nice_of_threads(me.trim_end());
        assert!(mine.contains(&process), "{mine:?}, process {process}");
    }

    #[tokio::test]
    async fn hashes_are_salted_argon2id_and_verify() {
        let hasher = PasswordHasher::new(2, 4);
        let a = hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        let b = hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(PasswordHasher::verify("correct horse", &a));
        assert!(!PasswordHasher::verify("wrong horse", &a));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_hash_at_once_and_hash_waits() {
        let hasher = PasswordHasher::new(1, 1);
        let password = || Password::parse("correct horse".into()).unwrap();
        // One job on the thread, one waiting: the queue is full until the
        // thread takes the next.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.try_hash(password()).await })
            })
            .collect();
        let mut refused = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => {}
                Err(DomainError::Overloaded(message)) => {
                    assert!(message.contains("password_hash_queue"), "{message}");
                    refused += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(refused >= 1, "8 at once cannot all fit in a queue of 1");
        // Waiting callers all get served.
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(password()).await })
            })
            .collect();
        for call in waiting {
            call.await.unwrap().unwrap();
        }
    }
}
