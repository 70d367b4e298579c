//! SIGTERM and SIGINT as a request to stop, for the long-running binaries
//! (`dkv-node`, `dkv-server`), without signal handlers: [`Termination::block`]
//! blocks both signals in the calling thread before any other thread exists
//! (every thread spawned later inherits the mask, so no thread is ever
//! interrupted by them), and [`Termination::wait`] takes one with
//! `sigwait(2)`. A signal that arrives while the process is still starting
//! stays pending and is taken by the first `wait`.

use std::io;

/// The signals that stop a process.
pub struct Termination {
    set: libc::sigset_t,
}

impl Termination {
    /// Blocks SIGTERM and SIGINT in this thread and every thread it spawns
    /// from now on. Call first thing in `main`, before any thread starts.
    pub fn block() -> io::Result<Termination> {
        // SAFETY: the set is initialised by sigemptyset before any other use,
        // and pthread_sigmask only reads it.
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            // SIGHUP reloads (see `on_hangup`) instead of killing the process.
            libc::sigaddset(&mut set, libc::SIGHUP);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Termination { set })
        }
    }

    /// Waits until SIGTERM or SIGINT arrives and returns its name.
    pub fn wait(&self) -> &'static str {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` was initialised in `block`; `sig` is ours.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc == 0 && sig == libc::SIGHUP {
                match HANGUP.get() {
                    Some(f) => f(),
                    None => log::info!("SIGHUP: nothing to reload"),
                }
                continue;
            }
            if rc == 0 {
                return name(sig);
            }
        }
    }

    /// After the first signal: a second one ends the process at once with
    /// `code`, for an operator who does not want to wait for a clean stop.
    pub fn exit_on_second(self, code: i32) {
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = self.wait();
                log::warn!("{sig} again: exiting without finishing the shutdown");
                std::process::exit(code);
            });
    }
}

static HANGUP: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> = std::sync::OnceLock::new();

/// What SIGHUP does (once set; the TLS certificates' reload): run on the
/// thread that waits for signals.
pub fn on_hangup(f: impl Fn() + Send + Sync + 'static) {
    let _ = HANGUP.set(Box::new(f));
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}
