//! Stdout for the log, written by a thread of its own, so that a call
//! never waits for the log pipe.
//!
//! A line is appended to one shared buffer under a short lock: no
//! allocation, no channel message per line. The thread swaps the buffer
//! for an empty one and writes it out in one `write`. The first line of a
//! batch wakes it; it then lets lines gather for [`LINGER`] (or until
//! [`FLUSH_AT`] bytes wait), so under load a batch is hundreds of lines,
//! and an idle service costs no wake-ups at all. Without the linger, the
//! thread woke for nearly every line on a busy core and the server spent
//! twice the CPU per call (BENCHMARKS.md).
//!
//! Past [`LIMIT`] waiting bytes (a stalled log pipe), new lines are
//! dropped whole and counted, never cut, and never block the caller.

use std::{
    io::{self, Write},
    mem,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the first line of a batch waits for company.
pub const LINGER: Duration = Duration::from_millis(10);
/// Waiting bytes that start a write at once.
pub const FLUSH_AT: usize = 128 * 1024;
/// Waiting bytes past which lines are dropped: ~6000 `finished call`
/// lines, some 100 ms of a stalled log pipe at 60k calls/s. The buffers
/// grow to what is used, so an idle service holds none of it.
pub const LIMIT: usize = 2 * 1024 * 1024;

/// How long the last lines may take to go out at exit. A log pipe that
/// takes none (its reader stuck) must not hold the process past its
/// shutdown; the lines still waiting are then lost.
pub const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The writer handed to the `fmt` layer. Cloning it is cheap.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the thread when dropped, after it has written every line
/// accepted so far.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    waiting: Mutex<Waiting>,
    /// The thread waits on it for lines.
    wake: Condvar,
    /// The [`Flusher`] waits on it for the thread to finish.
    done: Condvar,
    dropped: AtomicU64,
    /// Bytes that may wait; 0: no thread, every line goes out at once.
    limit: usize,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    closed: bool,
    /// The thread has written its last batch and ended.
    finished: bool,
}

impl Shared {
    fn new(limit: usize) -> Self {
        Self {
            waiting: Mutex::default(),
            wake: Condvar::new(),
            done: Condvar::new(),
            dropped: AtomicU64::new(0),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // The lock guards plain bytes; a panic while holding it leaves
        // them whole (appends are single `extend_from_slice` calls).
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer and its thread, writing to stdout. Should the thread not
/// start, lines go straight to stdout from the caller (and a warning to
/// stderr says so).
pub fn stdout() -> (LogWriter, Flusher) {
    spawn(io::stdout(), LIMIT).unwrap_or_else(|err| {
        eprintln!(
            "user-service: cannot start the log writer thread ({err}); writing the log directly"
        );
        let shared = Arc::new(Shared::new(0));
        let writer = LogWriter {
            shared: Arc::clone(&shared),
        };
        (
            writer,
            Flusher {
                shared,
                thread: None,
            },
        )
    })
}

fn spawn<W: Write + Send + 'static>(out: W, limit: usize) -> io::Result<(LogWriter, Flusher)> {
    let shared = Arc::new(Shared::new(limit));
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                run(&shared, out);
                shared.lock().finished = true;
                shared.done.notify_all();
            })?
    };
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut waiting = shared.lock();
            while waiting.bytes.is_empty() && !waiting.closed {
                waiting = shared
                    .wake
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if !waiting.closed && waiting.bytes.len() < FLUSH_AT {
                // Woken by a batch's first line: let the rest join it. An
                // early wake-up (FLUSH_AT, close) only ends the wait sooner.
                waiting = shared
                    .wake
                    .wait_timeout(waiting, LINGER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            mem::swap(&mut waiting.bytes, &mut batch);
            waiting.closed
        };
        if !batch.is_empty() {
            // A log pipe that fails (closed by its reader) loses what it
            // was given; the lines are counted like the ones refused.
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                let lines = batch.iter().filter(|&&b| b == b'\n').count();
                shared.dropped.fetch_add(lines as u64, Ordering::Relaxed);
            }
            batch.clear();
            if batch.capacity() > 2 * FLUSH_AT {
                // Grown by a stall: give the memory back.
                batch = Vec::new();
            }
        }
        // Closed was seen at the swap, under the lock: no line has been
        // accepted since, so that batch was the last.
        if closed {
            return;
        }
    }
}

impl LogWriter {
    /// Lines dropped so far because the log pipe could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// By reference, so a line costs no reference count.
impl Write for &LogWriter {
    /// Takes one whole line (the `fmt` layer writes each in one call).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &*self.shared;
        if shared.limit == 0 {
            if io::stdout().write_all(line).is_err() {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(line.len());
        }
        let mut waiting = shared.lock();
        let before = waiting.bytes.len();
        if before + line.len() > shared.limit || waiting.closed {
            drop(waiting);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            // Reported as written: the caller must not retry or fail.
            return Ok(line.len());
        }
        waiting.bytes.extend_from_slice(line);
        let after = waiting.bytes.len();
        drop(waiting);
        // Only the first line of a batch and the one that fills it wake
        // the thread; the lines between cost no system call.
        if before == 0 || (before < FLUSH_AT && after >= FLUSH_AT) {
            shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let finished = self
            .shared
            .done
            .wait_timeout_while(self.shared.lock(), EXIT_WAIT, |w| !w.finished)
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .finished;
        if finished {
            // It has ended; joining only reaps it.
            let _ = thread.join();
        }
        // Otherwise the thread is stuck in a `write` to a pipe nobody
        // reads: leave it, the process is on its way out.
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A log pipe that hands every write to the test, or blocks until
    /// the test lets it go.
    struct Pipe {
        writes: mpsc::Sender<Vec<u8>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            let _ = self.writes.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pipe(limit: usize) -> (LogWriter, Flusher, mpsc::Receiver<Vec<u8>>, Arc<Mutex<()>>) {
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        let out = Pipe {
            writes: tx,
            gate: Arc::clone(&gate),
        };
        let (writer, flusher) = spawn(out, limit).unwrap();
        (writer, flusher, rx, gate)
    }

    #[test]
    fn a_burst_of_lines_is_written_in_few_writes_and_in_order() {
        let (writer, flusher, rx, _gate) = pipe(LIMIT);
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            (&writer).write_all(line.as_bytes()).unwrap();
        }
        drop(flusher);
        let writes: Vec<Vec<u8>> = rx.try_iter().collect();
        assert_eq!(writes.concat(), lines.concat().into_bytes());
        assert!(writes.len() < 10, "{} writes for 1000 lines", writes.len());
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn exit_waits_for_a_stuck_pipe_only_so_long() {
        let (writer, flusher, _rx, gate) = pipe(LIMIT);
        let _stuck = gate.lock().unwrap();
        (&writer).write_all(b"never written\n").unwrap();
        let started = std::time::Instant::now();
        drop(flusher);
        let waited = started.elapsed();
        assert!(waited >= EXIT_WAIT && waited < EXIT_WAIT * 3, "{waited:?}");
    }

    #[test]
    fn a_single_line_is_written_without_waiting_for_more() {
        let (writer, _flusher, rx, _gate) = pipe(LIMIT);
        (&writer).write_all(b"alone\n").unwrap();
        let write = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(write, b"alone\n");
    }

    #[test]
    fn a_stalled_pipe_drops_whole_lines_counts_them_and_never_blocks() {
        let (writer, flusher, rx, gate) = pipe(100);
        let stalled = gate.lock().unwrap();
        // The thread takes the first batch and blocks writing it.
        (&writer).write_all(b"first\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !writer.shared.lock().bytes.is_empty() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        // 100 bytes wait at most: ten of these 10-byte lines fit, the rest
        // are dropped.
        for i in 0..30 {
            (&writer)
                .write_all(
                    format!(
                        "line {i:04}
"
                    )
                    .as_bytes(),
                )
                .unwrap();
        }
        assert_eq!(writer.dropped(), 20);
        drop(stalled);
        drop(flusher);
        // Closed: later lines are refused (and counted), not kept.
        (&writer).write_all(b"late\n").unwrap();
        assert_eq!(writer.dropped(), 21);
        let written = String::from_utf8(rx.try_iter().collect::<Vec<_>>().concat()).unwrap();
        let expected: String = std::iter::once("first\n".to_owned())
            .chain((0..10).map(|i| format!("line {i:04}\n")))
            .collect();
        assert_eq!(written, expected);
    }
}
