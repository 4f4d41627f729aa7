//! Signalling and watching a process by identity, through a pidfd.
//!
//! Opening a pidfd and then checking the identity closes the pid-reuse race: if
//! the identity still matches after the pidfd is open, the pidfd refers to that
//! process for the rest of its life, and a signal sent through it can never reach
//! a newcomer with the same pid. On kernels without pidfd (< 5.3) we fall back to
//! check-then-kill, which leaves a window of microseconds instead of seconds.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;

use super::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "process {pid} is no longer the one obhostd identified (it exited, or its pid was reused); nothing was signalled"
    )]
    NotThatProcess { pid: i32 },
    #[error("refusing to signal process {pid}: it is obhostd itself or init")]
    Protected { pid: i32 },
    #[error("cannot signal process {pid}: {cause}")]
    Signal { pid: i32, cause: nix::errno::Errno },
}

/// A handle on one identified process.
pub struct Handle {
    identity: Identity,
    /// Registered with the runtime so that `exited` wakes when the process dies.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Handle {
    /// Opens a handle on `identity`, failing if that process is gone or its pid
    /// now belongs to another process.
    /// Must be called within the tokio runtime.
    pub fn open(identity: Identity) -> Result<Handle, ControlError> {
        let pidfd = pidfd_open(identity.pid).and_then(|fd| {
            // SAFETY: the OwnedFd moves into the AsyncFd, so the fd stays open and
            // the same for the AsyncFd's whole life.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
        });
        if !identity.is_alive() {
            return Err(ControlError::NotThatProcess { pid: identity.pid });
        }
        Ok(Handle { identity, pidfd })
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn signal(&self, sig: Signal) -> Result<(), ControlError> {
        let pid = self.identity.pid;
        tracing::debug!(pid, signal = %sig, pidfd = self.pidfd.is_some(), "signalling");
        if self.identity.is_protected() {
            return Err(ControlError::Protected { pid });
        }
        match &self.pidfd {
            Some(fd) => {
                // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.get_ref().as_raw_fd(),
                        sig as i32,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                if r == 0 {
                    return Ok(());
                }
                match nix::errno::Errno::last() {
                    // Exited meanwhile: nothing to signal, and nobody else was.
                    nix::errno::Errno::ESRCH => Err(ControlError::NotThatProcess { pid }),
                    cause => Err(ControlError::Signal { pid, cause }),
                }
            }
            None => {
                if !self.identity.is_alive() {
                    return Err(ControlError::NotThatProcess { pid });
                }
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                    .map_err(|cause| ControlError::Signal { pid, cause })
            }
        }
    }

    /// Resolves when the process has exited (a zombie counts). With a pidfd this
    /// wakes as the process dies; without, it polls every 20 ms.
    pub async fn exited(&self) {
        if let Some(fd) = &self.pidfd {
            // Readiness is sticky once the process has exited, so the guard is
            // dropped without clearing it.
            if fd.readable().await.is_ok() {
                return;
            }
        }
        while self.identity.is_alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the exit, at most `within`; true if it exited.
    pub async fn exited_within(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.exited()).await.is_ok()
    }
}

/// Sends SIGKILL to `identity` now, without a runtime (for `Drop`): through a
/// pidfd opened and then verified, so a recycled pid is never hit.
pub fn kill_now(identity: &Identity) -> Result<(), ControlError> {
    let pid = identity.pid;
    if identity.is_protected() {
        return Err(ControlError::Protected { pid });
    }
    let Some(fd) = pidfd_open(pid) else {
        return Err(ControlError::NotThatProcess { pid });
    };
    if !identity.is_alive() {
        return Err(ControlError::NotThatProcess { pid });
    }
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(ControlError::Signal {
            pid,
            cause: nix::errno::Errno::last(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn obhostd_never_signals_itself_or_init() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        let handle = Handle::open(me).unwrap();
        assert!(matches!(
            handle.signal(Signal::SIGTERM),
            Err(ControlError::Protected { .. })
        ));
        assert!(matches!(kill_now(&me), Err(ControlError::Protected { .. })));
        if let Some(init) = Identity::of(1) {
            assert!(matches!(
                kill_now(&init),
                Err(ControlError::Protected { .. })
            ));
        }
    }
}
