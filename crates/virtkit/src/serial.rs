//! Turning a serial attachment into the byte sink and source the machine's UART uses.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::SerialAttachment;

/// The host ends of COM1 and whatever keeps them alive.
pub(crate) struct SerialEnds {
    pub output: Box<dyn Write + Send>,
    pub input: Option<OwnedFd>,
    pub server: Option<SocketServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the serial output file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
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
        });
    };
    match attachment {
        SerialAttachment::Stdio => {
            let out: OwnedFd = io::stdout().as_fd_owned().map_err(SerialError::Stdio)?;
            let input: OwnedFd = io::stdin().as_fd_owned().map_err(SerialError::Stdio)?;
            Ok(SerialEnds {
                output: Box::new(File::from(out)),
                input: Some(input),
                server: None,
            })
        }
        SerialAttachment::File { path, append } => {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(*append)
                .truncate(!*append)
                .open(&*path)
                .map_err(|source| SerialError::File {
                    path: path.clone(),
                    source,
                })?;
            Ok(SerialEnds {
                output: Box::new(file),
                input: None,
                server: None,
            })
        }
        SerialAttachment::UnixSocket { path } => {
            let (server, output, input) = SocketServer::listen(path)?;
            Ok(SerialEnds {
                output: Box::new(output),
                input: Some(input),
                server: Some(server),
            })
        }
        SerialAttachment::FileHandles { read, write } => {
            if read.is_none() && write.is_none() {
                return Err(SerialError::HandlesUsed);
            }
            let output: Box<dyn Write + Send> = match write.take() {
                Some(fd) => Box::new(File::from(fd)),
                None => Box::new(Discard),
            };
            Ok(SerialEnds {
                output,
                input: read.take(),
                server: None,
            })
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

/// Output to whichever client is connected; nothing is kept while none is.
#[derive(Clone)]
pub(crate) struct ClientWriter(Arc<Mutex<Option<UnixStream>>>);

impl Write for ClientWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut client = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stream) = client.as_mut() {
            if stream.write_all(b).is_err() {
                *client = None;
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Accepts one console client at a time on a Unix socket.
pub(crate) struct SocketServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl SocketServer {
    fn listen(path: &Path) -> Result<(SocketServer, ClientWriter, OwnedFd), SerialError> {
        let err = |source| SerialError::Socket {
            path: path.to_owned(),
            source,
        };
        // A socket left by a VMM that died would make bind fail; only remove sockets.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let (reader, writer) = io::pipe().map_err(err)?;
        let client = ClientWriter(Arc::new(Mutex::new(None)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let client = client.clone();
            let stop = stop.clone();
            virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::SerialSocket)
                .name("serial-socket".into())
                .spawn(move || serve(&listener, &client, writer, &stop))
                .map_err(err)?
        };
        Ok((
            SocketServer {
                stop,
                thread: Some(thread),
                path: path.to_owned(),
            },
            client,
            reader.into(),
        ))
    }
}

fn serve(listener: &UnixListener, client: &ClientWriter, mut to_guest: io::PipeWriter, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(_) => return,
        };
        let Ok(mut reading) = stream.try_clone() else {
            continue;
        };
        let _ = reading.set_read_timeout(Some(Duration::from_millis(100)));
        *client.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::Relaxed) {
            match reading.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to_guest.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        *client.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
