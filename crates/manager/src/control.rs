//! The control protocol of a running VM's process: JSON lines over the Unix socket
//! `control.sock` in its bundle (docs/CONTROL.md). One request per line, one response line
//! each, in order; a client may send several on one connection.
//!
//! ```text
//! → {"command":"pause"}
//! ← {"ok":true,"state":"paused","pid":4242}
//! → {"command":"jump"}
//! ← {"ok":false,"error":"unknown command `jump`: use state, pause, resume, suspend, snapshot, request_stop, stop, balloon, addresses, stats or screenshot"}
//! → {"command":"balloon","target_bytes":268435456}
//! ← {"ok":true,"state":"running","pid":4242,"balloon":{"target_bytes":268435456,"actual_bytes":0}}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use virtkit::{BalloonStatus, ExitStatistics, NicAddresses};

use crate::agent::AgentStatus;

pub use crate::control_framing::MAX_REQUEST_BYTES;
pub use crate::control_server::{serve, MAX_CLIENTS, MAX_UNSENT_BYTES, QUIET_EVICT_AFTER};

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlCommand {
    /// Report the state.
    State,
    Pause,
    Resume,
    /// Press the ACPI power button: ask the guest to shut down.
    RequestStop,
    /// Stop at once, as pulling the plug.
    Stop,
    /// Report the memory balloon, after setting its target if `target_bytes` is given.
    Balloon,
    /// Report each network card's MAC and the guest's addresses on it.
    Addresses,
    /// Report the exits that reached the VMM, by vCPU and reason and by device.
    Stats,
    /// Pause, save the whole state into the bundle's `state.vksave`, and stop: the next run
    /// restores it.
    Suspend,
    /// Take the snapshot `name` (memory, devices and disk) and run on.
    Snapshot,
    /// What the display shows, as a PNG image.
    Screenshot,
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    pub command: ControlCommand,
    /// For `balloon`: the memory the balloon should take from the guest, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bytes: Option<u64>,
    /// For `snapshot`: the snapshot's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ControlRequest {
    pub fn new(command: ControlCommand) -> ControlRequest {
        ControlRequest {
            command,
            target_bytes: None,
            name: None,
        }
    }
}

/// One response line: `ok` with the state after the command, or the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `balloon`: the balloon's target, what the guest gave and its statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Box<BalloonStatus>>,
    /// For `addresses`: each network card and the addresses the guest uses on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<NicAddresses>>,
    /// The guest agent, once it said hello (docs/AGENT.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    /// For `stats`: the exits that reached the VMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<Box<ExitStatistics>>,
    /// For `screenshot`: the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<Box<crate::screenshot::Screenshot>>,
}

impl ControlResponse {
    pub fn success(state: impl ToString) -> ControlResponse {
        ControlResponse {
            ok: true,
            state: Some(state.to_string()),
            pid: Some(std::process::id()),
            error: None,
            balloon: None,
            addresses: None,
            agent: None,
            exits: None,
            screenshot: None,
        }
    }

    pub fn failure(error: impl ToString) -> ControlResponse {
        ControlResponse {
            ok: false,
            state: None,
            pid: Some(std::process::id()),
            error: Some(error.to_string()),
            balloon: None,
            addresses: None,
            agent: None,
            exits: None,
            screenshot: None,
        }
    }
}

/// Parses a request line; the error is the response to send back.
// The error is the response itself, sent once per bad line: its size does not matter.
#[allow(clippy::result_large_err)]
pub fn parse_request(line: &str) -> Result<ControlRequest, ControlResponse> {
    serde_json::from_str(line).map_err(|e| {
        let text = e.to_string();
        if text.contains("unknown variant") {
            let name = text.split('`').nth(1).unwrap_or("?");
            ControlResponse::failure(format!(
                "unknown command `{name}`: use state, pause, resume, suspend, snapshot, request_stop, stop, balloon, addresses, stats or screenshot"
            ))
        } else {
            ControlResponse::failure(format!(
                "not a request ({text}); send one JSON object per line, like {{\"command\":\"state\"}}"
            ))
        }
    })
}

/// Why talking to a VM's process failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the VM's process at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM's process stopped answering")]
    Io(#[from] std::io::Error),
    #[error("the VM's process answered something that is not a response: {0}")]
    BadResponse(String),
}

/// A connection to a running VM's control socket.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<ControlClient, ControlError> {
        let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(ControlClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and returns the response.
    pub fn send(&mut self, command: ControlCommand) -> Result<ControlResponse, ControlError> {
        self.request(&ControlRequest::new(command))
    }

    /// Sends one request and returns the response.
    pub fn request(&mut self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        let mut line = serde_json::to_string(request).unwrap_or_default();
        line.push('\n');
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            // A server that refuses the connection (too many clients) answers and closes before
            // reading: the write fails, but its answer is there to read.
            if !matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(e.into());
            }
        }
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ControlError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&answer).map_err(|_| ControlError::BadResponse(answer.trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_get_a_helpful_answer() {
        assert_eq!(
            parse_request(r#"{"command":"request_stop"}"#).unwrap().command,
            ControlCommand::RequestStop
        );
        let e = parse_request(r#"{"command":"jump"}"#).unwrap_err();
        assert!(!e.ok);
        assert!(e.error.unwrap().contains("unknown command `jump`"));
        let e = parse_request("pause").unwrap_err();
        assert!(e.error.unwrap().contains("one JSON object per line"));
    }

    #[test]
    fn responses_are_the_documented_json() {
        let r = serde_json::to_string(&ControlResponse::success("paused")).unwrap();
        assert!(r.starts_with(r#"{"ok":true,"state":"paused","pid":"#), "{r}");
        let r = serde_json::to_string(&ControlResponse::failure("nope")).unwrap();
        assert!(
            r.contains(r#""ok":false"#) && r.contains(r#""error":"nope""#),
            "{r}"
        );
    }
}
