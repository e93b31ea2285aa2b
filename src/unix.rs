//! Unix-only pieces of the listeners: a Unix domain socket whose file permissions decide who
//! may call, the peer credentials of its connections (`SO_PEERCRED`), and on Linux the user
//! owning a loopback TCP peer (from `/proc/net/tcp`).

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// A listening Unix domain socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct Socket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
}

impl Socket {
    /// Listens at `path` with permissions `mode`, owned by `group` (a name or a number) when
    /// given. A stale socket left by a crash is replaced; one that a live process still
    /// listens on is not. The socket is made in a private directory beside `path`, given
    /// its mode and group there, then moved into place: it is never reachable with the
    /// process's default permissions.
    pub fn bind(path: &Path, mode: u32, group: Option<&str>) -> io::Result<Socket> {
        remove_stale(path)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let private = parent.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let made = (|| -> io::Result<UnixListener> {
            let staged = private.join("sock");
            let listener = UnixListener::bind(&staged)?;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
            if let Some(group) = group {
                std::os::unix::fs::chown(&staged, None, Some(group_id(group)?))?;
            }
            std::fs::rename(&staged, path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        Ok(Socket {
            listener: made?,
            path: path.to_path_buf(),
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes a socket file nobody listens on; refuses to touch anything else at `path`.
fn remove_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process listens on {}", path.display()),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// A group's ID: a number, or a name looked up in `/etc/group`.
fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group {group:?}")))
}

/// The user and process on the other end of a Unix socket connection.
pub fn peer_cred(stream: &UnixStream) -> (Option<u32>, Option<i32>) {
    match stream.peer_cred() {
        Ok(c) => (Some(c.uid()), c.pid()),
        Err(_) => (None, None),
    }
}

/// The user owning the loopback TCP connection whose far end is `peer` and near end
/// `local`, as `/proc/net/tcp` (or `tcp6`) lists it; `None` elsewhere.
pub fn tcp_peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    if !peer.ip().is_loopback() {
        return None;
    }
    let table = match peer {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    let (theirs, ours) = (proc_addr(peer), proc_addr(local));
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1)?.eq_ignore_ascii_case(&theirs) && f.get(2)?.eq_ignore_ascii_case(&ours))
            .then(|| f.get(7)?.parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the address as 32-bit words in host (little
/// endian) order, in hex, then `:` and the port in hex.
fn proc_addr(addr: SocketAddr) -> String {
    let words: Vec<u8> = match addr {
        SocketAddr::V4(a) => a.ip().octets().to_vec(),
        SocketAddr::V6(a) => a.ip().octets().to_vec(),
    };
    let hex: String = words
        .chunks(4)
        .map(|w| {
            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            format!("{word:08X}")
        })
        .collect();
    format!("{hex}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_proc_net_tcp_does() {
        assert_eq!(
            proc_addr("127.0.0.1:8080".parse().unwrap()),
            "0100007F:1F90"
        );
        assert_eq!(
            proc_addr("[::1]:443".parse().unwrap()),
            "00000000000000000000000001000000:01BB"
        );
    }

    #[tokio::test]
    async fn a_loopback_tcp_peer_is_found_with_its_user() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(local).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        assert_eq!(tcp_peer_uid(peer, local), uid.ok());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        let first = Socket::bind(&path, 0o600, None).unwrap();
        let again = Socket::bind(&path, 0o600, None);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(first);
        // A crash leaves the file behind with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = Socket::bind(&path, 0o640, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        drop(second);
        assert!(!path.exists(), "removed on shutdown");
        std::fs::write(&path, "not a socket").unwrap();
        assert!(Socket::bind(&path, 0o600, None).is_err());
    }
}
