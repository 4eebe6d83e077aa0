//! Process metrics in the Prometheus client conventions
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...),
//! read from `/proc` at scrape time. Linux only: elsewhere nothing is
//! rendered. A few file reads per scrape do not justify a dependency.

use std::fmt::Write as _;

/// `/proc` reports CPU times in USER_HZ ticks, which the kernel ABI fixes
/// at 100 per second on every architecture Linux runs containers on.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics as Prometheus text exposition, or an empty string
/// when `/proc` is not available.
pub fn render() -> String {
    let mut out = String::new();
    let Some(sample) = sample() else {
        return out;
    };
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        sample.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        sample.resident_bytes,
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        sample.virtual_bytes,
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        sample.open_fds,
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        sample.max_fds,
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        sample.start_time_seconds,
    );
    family(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        sample.threads,
    );
    out
}

#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
    threads: Option<f64>,
}

fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as f64);
    let mut sample = parse(&stat, &status, &limits, boot_time);
    sample.open_fds = open_fds;
    Some(sample)
}

fn parse(stat: &str, status: &str, limits: &str, boot_time: Option<f64>) -> Sample {
    // The command name (field 2) is in parentheses and may contain spaces
    // or parentheses itself: the fields we want follow the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(utime), Some(stime)) => Some((utime + stime) / TICKS_PER_SECOND),
        _ => None,
    };
    let start_time_seconds = match (boot_time, field(22)) {
        (Some(boot), Some(start)) => Some(boot + start / TICKS_PER_SECOND),
        _ => None,
    };
    let status_kb = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
    };
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let max_fds = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    Sample {
        cpu_seconds,
        resident_bytes: status_kb("VmRSS:"),
        virtual_bytes: status_kb("VmSize:"),
        open_fds: None,
        max_fds,
        start_time_seconds,
        threads,
    }
}

fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (user (ser) vice) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 104857600 2560 18446744073709551615";
        let status =
            "Name:\tuser-service\nVmSize:\t  102400 kB\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        let s = parse(stat, status, limits, Some(1_700_000_000.0));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(s.resident_bytes, Some(10240.0 * 1024.0));
        assert_eq!(s.virtual_bytes, Some(102400.0 * 1024.0));
        assert_eq!(s.threads, Some(9.0));
        assert_eq!(s.max_fds, Some(1_048_576.0));
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn renders_the_conventional_families() {
        let text = render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
    }
}
