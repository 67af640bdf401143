//! SIPp for the real-peer tests and the SIP benches: finding it, the
//! loopback command line of a scenario, its counters, and its error files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A SIPp run against loopback: scenario file `scenario`, our side on
/// `local_port` of 127.0.0.1, in `dir` (SIPp writes its logs there), no
/// standard input. The caller adds the rest (`-m`, `-r`, the remote).
pub fn command(sipp: &Path, scenario: &Path, local_port: u16, dir: &Path) -> Command {
    let mut command = Command::new(sipp);
    command
        .arg("-sf")
        .arg(scenario)
        .args(["-i", "127.0.0.1", "-p", &local_port.to_string()])
        .arg("-nostdin")
        // SIPp's own 64 KiB socket buffers overflow at a few thousand
        // messages a second: the drops (UdpRcvbufErrors) were SIPp's, and
        // its retransmissions showed as our 500 ms tail.
        .args(["-buff_size", "4194304"])
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// The last (cumulative) value of counter `name` ("Successful call",
/// "Failed call") on SIPp's final screen, `None` when it has no such line.
pub fn counter(screen: &str, name: &str) -> Option<u64> {
    screen
        .lines()
        .filter(|l| l.trim_start().starts_with(name))
        .filter_map(|l| {
            l.rsplit('|')
                .next()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .next_back()
}

/// [`counter`], 0 when the screen has no such line.
pub fn count(screen: &str, name: &str) -> u64 {
    counter(screen, name).unwrap_or(0)
}

/// Everything in the `*_errors.log` files SIPp (`-trace_err`) left in
/// `dir`.
pub fn errors(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with("_errors.log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Response times in milliseconds from the `*_rtt.csv` (`-trace_rtt`) in
/// `dir` (`date_ms;response_time_ms;rtd_no`), empty without one.
pub fn response_times_ms(dir: &Path) -> std::io::Result<Vec<f64>> {
    let file: Option<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_rtt.csv"));
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&file)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(';').nth(1)?.trim().parse::<f64>().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of SIPp 3.6's final statistics screen.
    const SCREEN: &str = "\
  Successful call        |        0                  |      299
  Failed call            |        0                  |        1
------------------------------ Test Terminated --------------------------------
";

    #[test]
    fn counters_are_the_cumulative_column_of_the_final_screen() {
        assert_eq!(counter(SCREEN, "Successful call"), Some(299));
        assert_eq!(count(SCREEN, "Failed call"), 1);
        assert_eq!(counter(SCREEN, "Retransmissions"), None);
        assert_eq!(count(SCREEN, "Retransmissions"), 0);
    }
}
