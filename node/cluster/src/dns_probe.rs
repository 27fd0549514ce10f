//! One DNS question over UDP, to tell whether a node's DNS server answers.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RecordType};

/// Whether `server` answers an A query for `name` with at least one address (within 1 s).
pub fn resolves(server: SocketAddr, name: &str) -> bool {
    let Ok(name) = Name::from_ascii(name) else {
        return false;
    };
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(name, RecordType::A));
    let Ok(bytes) = request.to_vec() else {
        return false;
    };
    let Ok(socket) = UdpSocket::bind(("0.0.0.0", 0)) else {
        return false;
    };
    if socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
        || socket.send_to(&bytes, server).is_err()
    {
        return false;
    }
    let mut buffer = [0u8; 1500];
    match socket.recv(&mut buffer) {
        Ok(len) => Message::from_vec(&buffer[..len])
            .map(|answer| !answer.answers.is_empty())
            .unwrap_or(false),
        Err(_) => false,
    }
}
