//! Signals to child processes a test started: the one place the process
//! harnesses (memstore's chaos, raftify-redis's and cache-service's tests)
//! send them from.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Sends `sig` (`libc::SIGSTOP`, `SIGCONT`, ...) to `child`.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this process started and has
    // not reaped (a `Child` still held), so the pid is not reused.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// SIGTERM, then waits up to `timeout` for the exit: its status, or `None`
/// when it had to be killed (SIGKILL) after the timeout.
pub fn terminate(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    signal(&child, libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
