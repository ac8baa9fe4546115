//! Detached service processes, tracked by pid files.
//!
//! Services run in their own process group, so a Ctrl-C in the terminal that started them does
//! not reach them; they are stopped by pid (`stack down`).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::StackError;

/// Starts `cmd` detached, output appended to `log`, and writes its pid to `pidfile`.
pub fn spawn_detached(mut cmd: Command, log: &Path, pidfile: &Path) -> Result<u32, StackError> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(StackError::io(format!("creating {}", dir.display())))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(StackError::io(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(StackError::io(format!("opening {}", log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(StackError::io(format!("starting {:?}", cmd.get_program())))?;
    let pid = child.id();
    std::fs::write(pidfile, format!("{pid}\n"))
        .map_err(StackError::io(format!("writing {}", pidfile.display())))?;
    // The child is not waited for: it outlives this process and is reaped by init. A
    // long-lived caller (a test restarting services) reaps it in `stop`.
    std::mem::forget(child);
    Ok(pid)
}

/// The pid recorded in `pidfile`, if the file exists and parses.
pub fn read_pid(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Whether `pid` is a running (not zombie) process.
pub fn is_alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A zombie still accepts signal 0; its state in /proc says it is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The live pid recorded in `pidfile`.
pub fn running_pid(pidfile: &Path) -> Option<i32> {
    read_pid(pidfile).filter(|p| is_alive(*p))
}

/// Stops the process in `pidfile`: SIGTERM, then SIGKILL after `grace`. Removes the pid file.
/// Returns whether a process was running.
pub fn stop(pidfile: &Path, grace: Duration) -> bool {
    let Some(pid) = running_pid(pidfile) else {
        let _ = std::fs::remove_file(pidfile);
        return false;
    };
    let target = Pid::from_raw(pid);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while is_alive(pid) && Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_alive(pid) {
        let _ = kill(target, Signal::SIGKILL);
        while is_alive(pid) {
            reap(pid);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    reap(pid);
    let _ = std::fs::remove_file(pidfile);
    true
}

/// SIGKILL, as a crash would. Leaves the pid file so `status` shows the service as dead.
pub fn kill_hard(pidfile: &Path) -> bool {
    let Some(pid) = running_pid(pidfile) else {
        return false;
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    while is_alive(pid) {
        reap(pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(pid);
    true
}

/// Collects the exit status if `pid` is our child; harmless otherwise.
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

/// Runs `cmd` to completion, returning stdout; the error names the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, StackError> {
    let out = cmd
        .output()
        .map_err(StackError::io(format!("running {:?}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(StackError::Other(format!(
            "{:?} failed ({}): {}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_then_stop_by_pid() {
        let dir = std::env::temp_dir().join(format!("stack-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pidfile = dir.join("sleep.pid");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let pid = spawn_detached(cmd, &dir.join("sleep.log"), &pidfile).expect("spawns");
        assert_eq!(running_pid(&pidfile), Some(pid as i32));
        assert!(stop(&pidfile, Duration::from_secs(5)));
        assert!(!is_alive(pid as i32));
        assert!(!pidfile.exists());
        assert!(!stop(&pidfile, Duration::from_secs(1)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
