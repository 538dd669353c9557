//! A QEMU Machine Protocol client: JSON lines over a unix socket, one command at a time.
//!
//! Only what host-side diagnosis needs: run-state control (`stop`, `cont`, `query-status`),
//! `human-monitor-command` for a vCPU's registers, `memsave` for its view of guest memory, and
//! `inject-nmi`. Asynchronous events arriving between replies are skipped: the lab asks for the
//! state it needs instead of tracking it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// QEMU refused a command (the command exists but does not apply: `inject-nmi` on a machine
/// without one, say). Callers branch on this; a broken socket is an ordinary error.
#[derive(Debug, thiserror::Error)]
#[error("QMP {command}: {class}: {desc}")]
pub struct Refused {
    pub command: String,
    pub class: String,
    pub desc: String,
}

impl Qmp {
    /// Connects and leaves capabilities negotiation mode. Every read waits at most `timeout`: a
    /// QEMU that does not answer must not hang the lab.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to QMP socket {}", socket.display()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut qmp = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let greeting = qmp.read_message().context("no QMP greeting (is another client connected?)")?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            request["arguments"] = arguments;
        }
        writeln!(self.writer, "{request}").with_context(|| format!("cannot send QMP {command}"))?;
        loop {
            let mut reply = self.read_message().with_context(|| format!("no reply to QMP {command}"))?;
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = reply.get("error") {
                let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(Refused { command: command.to_string(), class: text("class"), desc: text("desc") }.into());
            }
            // An event ({"event": ...}): not the reply we wait for.
        }
    }

    /// A human monitor command, run with `cpu` as the monitor's current vCPU (what `info
    /// registers` shows and what `x` translates through).
    pub fn hmp(&mut self, command_line: &str, cpu: Option<u32>) -> Result<String> {
        let mut arguments = json!({ "command-line": command_line });
        if let Some(cpu) = cpu {
            arguments["cpu-index"] = json!(cpu);
        }
        let value = self.execute("human-monitor-command", arguments)?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP socket closed");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent something that is not JSON: {}", line.trim()))
    }
}
