//! Commands into a running guest over SSH (the `ssh2` crate, i.e. libssh2), each under a deadline.
//!
//! libssh2 knows only a per-call timeout, and QEMU's user-mode network keeps the host side of a TCP
//! connection open whatever the guest does: a guest that live-locks mid-command would leave a
//! blocking call waiting forever. So the session runs non-blocking and every operation is a loop
//! that polls the socket until its own deadline. While a command runs without printing, the lab
//! probes the guest by opening a second channel; a guest whose SSH server does not answer that
//! within `LOST_AFTER` has stopped answering (`Error::Lost`).
//!
//! Invariant: the guest's host key is known before the first connection (the image stage made it)
//! and a guest presenting another is refused before authentication.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use ssh2::Session;

/// Who the guest is and how the lab logs in. QEMU forwards a port on 127.0.0.1 to its port 22.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    /// The OpenSSH public key line the image was built with (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    pub private_key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no SSH server answered on 127.0.0.1:{port} within {waited_s}s (last attempt: {last})")]
    NotReady { port: u16, waited_s: u64, last: String },
    #[error("the guest on 127.0.0.1:{port} presented host key {got}, not the key its image was built with ({expected}): refused")]
    HostKey { port: u16, expected: String, got: String },
    #[error("{what}: the guest stopped answering (no reply over SSH for {silent_s}s)")]
    Lost { what: String, silent_s: u64 },
    #[error("{what}: still running after its deadline of {limit_s}s")]
    Deadline { what: String, limit_s: u64 },
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("interrupted")]
    Interrupted,
}

/// How long a quiet command runs before the lab probes the guest, and how long the probe may take.
const PROBE_AFTER: Duration = Duration::from_secs(5);
pub const LOST_AFTER: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// What a finished command said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or `None` when the command was killed by a signal (named in `signal`).
    pub code: Option<i32>,
    pub signal: Option<String>,
}

pub struct Connection {
    session: Session,
    stream: TcpStream,
    port: u16,
    interrupted: Interrupted,
}

/// Polled while waiting: true when the caller wants every operation to stop now.
pub type Interrupted = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl Connection {
    /// Connects as soon as the guest's SSH server answers, retrying until `deadline`; checks the
    /// host key, then authenticates with the lab's key.
    pub fn connect(
        port: u16,
        credentials: &Credentials,
        deadline: Instant,
        interrupted: Interrupted,
    ) -> Result<Connection, Error> {
        let started = Instant::now();
        let expected = parse_public_key(&credentials.host_key).ok_or_else(|| Error::Failed {
            what: "the image's host key".into(),
            detail: format!("not an OpenSSH public key line: {:?}", credentials.host_key),
        })?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut last = String::from("none made");
        loop {
            if interrupted() {
                return Err(Error::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady { port, waited_s: started.elapsed().as_secs(), last });
            }
            // QEMU accepts on the host side before the guest listens; the handshake tells.
            let attempt = TcpStream::connect_timeout(&address, Duration::from_secs(2))
                .map_err(|e| e.to_string())
                .and_then(|stream| {
                    Connection::handshake(
                        stream,
                        port,
                        deadline.min(Instant::now() + Duration::from_secs(20)),
                        interrupted.clone(),
                    )
                    .map_err(|e| e.to_string())
                });
            match attempt {
                Ok(connection) => {
                    connection.check_host_key(&expected)?;
                    connection.authenticate(credentials, deadline)?;
                    return Ok(connection);
                }
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn handshake(
        stream: TcpStream,
        port: u16,
        deadline: Instant,
        interrupted: Interrupted,
    ) -> Result<Connection, Error> {
        let mut session = Session::new().map_err(|e| failed("creating an SSH session", e))?;
        session.set_tcp_stream(stream.try_clone().map_err(|e| failed("cloning the socket", e))?);
        session.set_blocking(false);
        let connection = Connection { session: session.clone(), stream, port, interrupted };
        connection.retry("SSH handshake", deadline, |_| session.handshake())?;
        Ok(connection)
    }

    fn check_host_key(&self, expected: &(String, Vec<u8>)) -> Result<(), Error> {
        let got = self.session.host_key().map(|(blob, _)| blob.to_vec()).unwrap_or_default();
        if got != expected.1 {
            let got_line =
                format!("{} {}", key_type(&got).unwrap_or("?"), base64::engine::general_purpose::STANDARD.encode(&got));
            return Err(Error::HostKey {
                port: self.port,
                expected: format!("{} {}", expected.0, base64::engine::general_purpose::STANDARD.encode(&expected.1)),
                got: got_line,
            });
        }
        Ok(())
    }

    fn authenticate(&self, credentials: &Credentials, deadline: Instant) -> Result<(), Error> {
        let what = format!("authenticating as {} with {}", credentials.user, credentials.private_key.display());
        self.retry(&what, deadline, |s| {
            s.userauth_pubkey_file(&credentials.user, None, &credentials.private_key, None)
        })?;
        if !self.session.authenticated() {
            return Err(Error::Failed { what, detail: "the guest did not accept the lab's key".into() });
        }
        Ok(())
    }

    /// Runs `command` through the guest's shell, copying its stdout and stderr as they come, until
    /// it exits, `deadline` passes, or the guest stops answering. `heard` is called on every
    /// sign of life, so a caller can tell a quiet guest from a dead one.
    pub fn run(
        &self,
        command: &str,
        deadline: Instant,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        heard: &mut dyn FnMut(),
    ) -> Result<Exit, Error> {
        let what = format!("`{command}`");
        let limit_s = deadline.saturating_duration_since(Instant::now()).as_secs();
        let mut channel = self.retry(&what, deadline, |s| s.channel_session())?;
        self.retry(&what, deadline, |_| channel.exec(command))?;
        let mut last_heard = Instant::now();
        let mut probe: Option<Instant> = None;
        let mut buf = [0u8; 16384];
        loop {
            let mut progressed = false;
            for stream_id in [0, 1] {
                let mut reader = channel.stream(stream_id);
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let sink: &mut dyn Write = if stream_id == 0 { &mut *stdout } else { &mut *stderr };
                            sink.write_all(&buf[..n]).map_err(|e| failed(&what, e))?;
                            progressed = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(self.lost_or(&what, last_heard, e)),
                    }
                }
            }
            if progressed {
                last_heard = Instant::now();
                heard();
            }
            if channel.eof() {
                self.retry(&what, deadline, |_| channel.wait_close())?;
                let code = channel.exit_status().map_err(|e| failed(&what, e))?;
                let signal = channel.exit_signal().ok().and_then(|s| s.exit_signal);
                return Ok(Exit { code: if signal.is_some() { None } else { Some(code) }, signal });
            }
            if (self.interrupted)() {
                return Err(Error::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Deadline { what, limit_s });
            }
            match probe {
                Some(started) => match self.session.channel_session() {
                    Ok(mut answered) => {
                        let _ = answered.close();
                        probe = None;
                        last_heard = Instant::now();
                        heard();
                    }
                    Err(e) if would_block(&e) => {
                        if now - started > LOST_AFTER {
                            return Err(Error::Lost { what, silent_s: (now - last_heard).as_secs() });
                        }
                    }
                    Err(e) => return Err(self.lost_or(&what, last_heard, e)),
                },
                None if now - last_heard > PROBE_AFTER => probe = Some(now),
                None => {}
            }
            if !progressed {
                self.wait_for_socket(POLL);
            }
        }
    }

    /// Runs `command` and returns its stdout; a non-zero exit is an error carrying its stderr.
    pub fn output(&self, command: &str, deadline: Instant) -> Result<Vec<u8>, Error> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = self.run(command, deadline, &mut out, &mut err, &mut || {})?;
        match exit.code {
            Some(0) => Ok(out),
            _ => Err(Error::Failed { what: format!("`{command}`"), detail: describe_failure(&exit, &err) }),
        }
    }

    /// Repeats a libssh2 call that would block until it completes or `deadline` passes.
    fn retry<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut call: impl FnMut(&Session) -> Result<T, ssh2::Error>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        loop {
            match call(&self.session) {
                Ok(value) => return Ok(value),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(failed(what, e)),
            }
            if (self.interrupted)() {
                return Err(Error::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Deadline { what: what.to_owned(), limit_s: (deadline - started).as_secs() });
            }
            self.wait_for_socket(POLL.min(deadline - now));
        }
    }

    /// Sleeps until the socket is ready in the direction libssh2 waits for, at most `timeout`.
    fn wait_for_socket(&self, timeout: Duration) {
        let directions = self.session.block_directions();
        let mut events = 0;
        if matches!(directions, ssh2::BlockDirections::Inbound | ssh2::BlockDirections::Both) {
            events |= libc::POLLIN;
        }
        if matches!(directions, ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both) {
            events |= libc::POLLOUT;
        }
        if events == 0 {
            events = libc::POLLIN;
        }
        let mut fd = libc::pollfd { fd: self.stream.as_raw_fd(), events, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
    }

    /// A transport error after the guest went quiet is the guest's loss, not a protocol problem.
    fn lost_or(&self, what: &str, last_heard: Instant, error: impl std::fmt::Display) -> Error {
        let detail = error.to_string();
        if detail.contains("EOF")
            || detail.contains("reset")
            || detail.contains("disconnect")
            || detail.contains("Broken pipe")
        {
            return Error::Lost { what: what.to_owned(), silent_s: last_heard.elapsed().as_secs() };
        }
        Error::Failed { what: what.to_owned(), detail }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Never wait on a guest that may be gone: close the socket and let libssh2 find it closed.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn would_block(error: &ssh2::Error) -> bool {
    // LIBSSH2_ERROR_EAGAIN
    error.code() == ssh2::ErrorCode::Session(-37)
}

fn failed(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Failed { what: what.to_owned(), detail: error.to_string() }
}

pub fn describe_failure(exit: &Exit, stderr: &[u8]) -> String {
    let status = match (&exit.code, &exit.signal) {
        (_, Some(signal)) => format!("killed by SIG{signal}"),
        (Some(code), None) => format!("exit status {code}"),
        (None, None) => "no exit status".to_owned(),
    };
    let said = String::from_utf8_lossy(stderr);
    match said.trim() {
        "" => status,
        text => format!("{status}: {text}"),
    }
}

/// `ssh-ed25519 AAAA... comment` -> ("ssh-ed25519", key blob).
fn parse_public_key(line: &str) -> Option<(String, Vec<u8>)> {
    let mut words = line.split_whitespace();
    let kind = words.next()?.to_owned();
    let blob = base64::engine::general_purpose::STANDARD.decode(words.next()?).ok()?;
    (key_type(&blob) == Some(kind.as_str())).then_some((kind, blob))
}

/// The key type a public key blob names in its first field (RFC 4253: a string, length first).
fn key_type(blob: &[u8]) -> Option<&str> {
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + length)?).ok()
}

/// Quotes a word for the guest's POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_=,./:+@%".contains(c)) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_lines() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ root@lab";
        let (kind, blob) = parse_public_key(line).expect("parses");
        assert_eq!((kind.as_str(), blob.len()), ("ssh-ed25519", 51));
        assert_eq!(
            parse_public_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"),
            None,
            "type and blob disagree"
        );
        assert_eq!(parse_public_key("ssh-ed25519 not-base64!"), None);
        assert_eq!(parse_public_key(""), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/lab/workloads/smoke"), "/lab/workloads/smoke");
        assert_eq!(shell_quote("--duration=60"), "--duration=60");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
