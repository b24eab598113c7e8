//! Reading a process's CPU time and peak memory from `/proc`, for the
//! benches that measure capture (or themselves).

use std::process::Command;

/// utime + stime of a whole process (all threads), in clock ticks.
pub fn cpu_time_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|err| panic!("reading /proc/{pid}/stat: {err}"));
    // The command name may contain spaces; the fields after it do not.
    let after_name = stat.rfind(')').map_or("", |end| &stat[end + 1..]);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3.
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("field {n} of /proc/{pid}/stat: {stat:?}"))
    };
    field(14) + field(15)
}

/// `VmHWM` of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if it cannot be read.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}
