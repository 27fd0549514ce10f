//! Power requests over vsock, without ACPI: `baton vmm`'s API `shutdown` connects to guest port
//! [`POWER_PORT`] through the VM's vsock device and sends `shutdown\n` (`baton_vmm::api`). On a
//! machine whose kernel has vsock, init listens there once its modules are loaded, and turns
//! `shutdown` (or `poweroff`) from the host (CID 2) into a power-off request and `reboot` into a
//! reboot, as the node API's calls do. Where nothing can connect (no vsock device) the listener
//! just waits; a kernel without vsock is logged once: power requests come through signals and
//! the node API.

use std::io::Read;
use std::time::Duration;

use vsock::VsockListener;

use crate::power::PowerAction;
use crate::vsock_host::{ReadByDeadline, bind, serve_host_connections};

/// The guest port the VMM's `shutdown` connects to (`baton_vmm::api::SHUTDOWN_PORT`).
pub const POWER_PORT: u32 = 1024;
/// How long a connection may take to send its whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request read; a longer line is not a request.
const MAX_REQUEST: usize = 64;

/// The power request a line names.
pub fn power_request(line: &str) -> Option<PowerAction> {
    match line.trim() {
        "shutdown" | "poweroff" => Some(PowerAction::PowerOff),
        "reboot" => Some(PowerAction::Reboot),
        _ => None,
    }
}

/// Reads one request line (up to a newline, the end of the stream, or [`MAX_REQUEST`] bytes)
/// and says which power request it names, if any.
pub fn read_request(stream: &mut impl Read) -> std::io::Result<Option<PowerAction>> {
    let mut line = Vec::with_capacity(MAX_REQUEST);
    let mut byte = [0u8; 1];
    loop {
        if line.len() == MAX_REQUEST {
            return Ok(None);
        }
        match stream.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(std::str::from_utf8(&line).ok().and_then(power_request))
}

/// Reads one request from `stream` within [`REQUEST_TIMEOUT`] in all.
fn read_request_in_time(stream: &mut vsock::VsockStream) -> std::io::Result<Option<PowerAction>> {
    read_request(&mut ReadByDeadline::new(stream, REQUEST_TIMEOUT))
}

/// Takes requests from the host on `listener` on a thread of its own, handing each to
/// `request`.
pub fn serve(
    listener: VsockListener,
    request: impl Fn(PowerAction) + Send + 'static,
) -> std::io::Result<()> {
    serve_host_connections(
        listener,
        "vsock-power",
        "a power request",
        move |mut stream| match read_request_in_time(&mut stream) {
            Ok(Some(action)) => {
                tracing::info!(?action, "power request over vsock");
                request(action);
            }
            Ok(None) => tracing::warn!(
                port = POWER_PORT,
                "not a power request (shutdown, poweroff or reboot) on vsock"
            ),
            Err(err) => tracing::warn!(%err, "reading a power request on vsock"),
        },
    )
}

/// On a machine whose kernel has vsock: takes power requests on [`POWER_PORT`] from now on.
pub fn listen(request: impl Fn(PowerAction) + Send + 'static) {
    match bind(POWER_PORT).and_then(|listener| serve(listener, request)) {
        Ok(()) => tracing::info!(port = POWER_PORT, "taking power requests on vsock"),
        Err(err) => tracing::info!(%err, "no power requests on vsock (the kernel has no vsock)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn request_of(bytes: &[u8]) -> Option<PowerAction> {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        host.write_all(bytes).unwrap();
        drop(host);
        read_request(&mut guest).unwrap()
    }

    #[test]
    fn the_vmm_s_shutdown_line_powers_off_and_other_lines_do_nothing() {
        // What `baton vmm`'s API sends after its CONNECT.
        assert_eq!(request_of(b"shutdown\n"), Some(PowerAction::PowerOff));
        assert_eq!(request_of(b"poweroff"), Some(PowerAction::PowerOff));
        assert_eq!(request_of(b"reboot\r\n"), Some(PowerAction::Reboot));
        assert_eq!(request_of(b"hello\n"), None);
        assert_eq!(request_of(b""), None);
        // A line longer than any request is not read to its end.
        let mut long = vec![b'x'; 10 * MAX_REQUEST];
        long.extend_from_slice(b"shutdown\n");
        assert_eq!(request_of(&long), None);
    }

    #[test]
    fn a_request_is_read_up_to_its_newline_only() {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        host.write_all(b"reboot\nshutdown\n").unwrap();
        assert_eq!(read_request(&mut guest).unwrap(), Some(PowerAction::Reboot));
        assert_eq!(
            read_request(&mut guest).unwrap(),
            Some(PowerAction::PowerOff)
        );
    }
}
