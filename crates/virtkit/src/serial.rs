//! Turning a serial attachment into the byte sink and source the machine's UART uses.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::buffered_output::{BufferedOutput, DrainThread, SERIAL_OUTPUT_BUFFER};
use crate::config::SerialAttachment;
use crate::console_server::{ConsoleServer, ConsoleServerOptions};

/// The host ends of COM1 and whatever keeps them alive.
pub(crate) struct SerialEnds {
    pub output: Box<dyn Write + Send>,
    pub input: Option<OwnedFd>,
    pub server: Option<ConsoleServer>,
    /// The buffer behind `output`, when there is one: flushed once the machine stopped, so the
    /// guest's last lines are written before the VM reports it stopped.
    pub buffered: Option<BufferedOutput>,
}

impl SerialEnds {
    /// Ends whose output goes through a [`BufferedOutput`] to `sink`.
    fn buffered(
        sink: impl Write + Send + 'static,
        input: Option<OwnedFd>,
    ) -> Result<SerialEnds, SerialError> {
        let output = buffered(sink)?;
        Ok(SerialEnds {
            output: Box::new(output.clone()),
            input,
            server: None,
            buffered: Some(output),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the serial output file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: crate::regular_file::RegularFileError,
    },
    #[error("cannot listen on the serial socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot duplicate the standard input/output descriptors")]
    Stdio(#[source] io::Error),
    #[error("the serial attachment's file handles were already used by an earlier start")]
    HandlesUsed,
    #[error("cannot start the serial output thread")]
    Thread(#[source] io::Error),
}

/// `sink` behind a bounded buffer and a thread of its own: the vCPU that writes the port never
/// waits on a terminal, pipe or file.
fn buffered(sink: impl Write + Send + 'static) -> Result<BufferedOutput, SerialError> {
    BufferedOutput::spawn(
        sink,
        SERIAL_OUTPUT_BUFFER,
        "serial-out",
        DrainThread::Sandboxed(virtkit_sandbox::ThreadRole::SerialOutput),
    )
    .map_err(SerialError::Thread)
}

/// Writes go nowhere: a port with no output attached.
struct Discard;

impl Write for Discard {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the host side of `attachment`. File handles are taken out of the attachment, so a
/// second start needs new ones.
pub(crate) fn open_attachment(attachment: Option<&mut SerialAttachment>) -> Result<SerialEnds, SerialError> {
    let Some(attachment) = attachment else {
        return Ok(SerialEnds {
            output: Box::new(Discard),
            input: None,
            server: None,
            buffered: None,
        });
    };
    match attachment {
        SerialAttachment::Stdio => {
            let out: OwnedFd = io::stdout().as_fd_owned().map_err(SerialError::Stdio)?;
            let input: OwnedFd = io::stdin().as_fd_owned().map_err(SerialError::Stdio)?;
            SerialEnds::buffered(File::from(out), Some(input))
        }
        SerialAttachment::File { path, append } => {
            let file =
                crate::regular_file::open_output(path, *append).map_err(|source| SerialError::File {
                    path: path.clone(),
                    source,
                })?;
            SerialEnds::buffered(file, None)
        }
        SerialAttachment::UnixSocket { path } => {
            let err = |source| SerialError::Socket {
                path: path.clone(),
                source,
            };
            let (input, to_guest) = io::pipe().map_err(err)?;
            let mut server = ConsoleServer::new(ConsoleServerOptions::one_client("serial-socket"), to_guest)
                .map_err(err)?;
            server.listen(path).map_err(err)?;
            Ok(SerialEnds {
                output: Box::new(server.output()),
                input: Some(input.into()),
                server: Some(server),
                buffered: None,
            })
        }
        SerialAttachment::FileHandles { read, write } => {
            if read.is_none() && write.is_none() {
                return Err(SerialError::HandlesUsed);
            }
            match write.take() {
                Some(fd) => SerialEnds::buffered(File::from(fd), read.take()),
                None => Ok(SerialEnds {
                    output: Box::new(Discard),
                    input: read.take(),
                    server: None,
                    buffered: None,
                }),
            }
        }
    }
}

trait DupFd {
    fn as_fd_owned(&self) -> io::Result<OwnedFd>;
}

impl<T: std::os::fd::AsFd> DupFd for T {
    fn as_fd_owned(&self) -> io::Result<OwnedFd> {
        self.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn socket_client_receives_output_and_its_input_reaches_the_pipe() {
        let path = std::env::temp_dir().join(format!("virtkit-serial-{}.sock", std::process::id()));
        let mut attachment = SerialAttachment::UnixSocket { path: path.clone() };
        let mut ends = open_attachment(Some(&mut attachment)).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"typed").unwrap();
        let mut input = File::from(ends.input.take().unwrap());
        let mut got = [0u8; 5];
        input.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"typed");
        // The server registers the client before reading from it, so output now reaches it.
        ends.output.write_all(b"guest says hi").unwrap();
        let mut out = [0u8; 13];
        client.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"guest says hi");
        drop(ends);
        assert!(!path.exists(), "socket file removed when the VM ends");
    }

    #[test]
    fn file_attachment_truncates_unless_appending() {
        let path = std::env::temp_dir().join(format!("virtkit-serial-{}.log", std::process::id()));
        std::fs::write(&path, b"old\n").unwrap();
        let mut a = SerialAttachment::File {
            path: path.clone(),
            append: true,
        };
        open_attachment(Some(&mut a))
            .unwrap()
            .output
            .write_all(b"new\n")
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew\n");
        let mut t = SerialAttachment::File {
            path: path.clone(),
            append: false,
        };
        open_attachment(Some(&mut t))
            .unwrap()
            .output
            .write_all(b"only\n")
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"only\n");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn file_handles_are_used_once() {
        let (_r, w) = io::pipe().unwrap();
        let mut a = SerialAttachment::FileHandles {
            read: None,
            write: Some(w.into()),
        };
        assert!(open_attachment(Some(&mut a)).is_ok());
        assert!(matches!(
            open_attachment(Some(&mut a)),
            Err(SerialError::HandlesUsed)
        ));
    }
}
