//! COM1: a 16550A-compatible UART (vm-superio) at port 0x3f8 on IRQ 4, writing the guest's
//! output to the console destination; input comes from the console socket's client
//! (`console_socket.rs`).

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use super::console_socket::ConsoleBacklog;

/// COM1's base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Ports a UART occupies.
pub const SERIAL_PORT_LEN: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line raised by writing an eventfd registered with KVM as an irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where the serial port's output goes.
#[derive(Debug)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout(std::io::Stdout),
    /// A file.
    File(File),
    /// Memory, for the self-test and tests.
    Buffer(Arc<Mutex<Vec<u8>>>),
    /// The console socket's backlog.
    Socket(Arc<ConsoleBacklog>),
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ConsoleOutput::Stdout(out) => out.write(buf),
            ConsoleOutput::File(file) => file.write(buf),
            ConsoleOutput::Buffer(buffer) => {
                buffer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            ConsoleOutput::Socket(backlog) => {
                backlog.push(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ConsoleOutput::Stdout(out) => out.flush(),
            ConsoleOutput::File(file) => file.flush(),
            ConsoleOutput::Buffer(_) | ConsoleOutput::Socket(_) => Ok(()),
        }
    }
}

/// What the UART reports: its receive FIFO became empty (the console socket then reads more
/// of its client's input).
#[derive(Debug, Default)]
pub struct InputRoom(pub Option<EventFd>);

impl SerialEvents for InputRoom {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(room) = &self.0 {
            let _ = room.write(1);
        }
    }
}

/// The UART model on the port I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqLine, InputRoom, ConsoleOutput>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq`, writing to `output` and reporting to `room` when its receive
    /// FIFO has emptied.
    pub fn new(irq: IrqLine, output: ConsoleOutput, room: InputRoom) -> Self {
        Self {
            uart: Serial::with_events(irq, room, output),
        }
    }

    /// Puts `input` into the receive FIFO (raising the received-data interrupt) as far as
    /// it fits; returns how many bytes it took.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        match self.uart.enqueue_raw_bytes(input) {
            Ok(_) | Err(vm_superio::serial::Error::FullFifo) => {}
            // The bytes are in the FIFO even when the interrupt could not be raised.
            Err(error) => tracing::warn!(?error, "serial input interrupt not raised"),
        }
        room - self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte, rest @ ..]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(offset);
            rest.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(error) = self.uart.write(offset, value) {
            tracing::warn!(?error, "serial output lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;

    #[test]
    fn output_and_transmit_interrupt() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialDevice::new(
            IrqLine(irq.try_clone().unwrap()),
            ConsoleOutput::Buffer(buffer.clone()),
            InputRoom::default(),
        );
        for byte in b"hi\n" {
            serial.write(0, &[*byte]);
        }
        assert_eq!(buffer.lock().unwrap().as_slice(), b"hi\n");
        assert!(irq.read().is_err(), "no interrupt while IER is 0");

        serial.write(IER, &[0x02]);
        assert_eq!(irq.read().unwrap(), 1, "THR-empty interrupt when enabled");
        serial.write(0, b"x");
        assert!(irq.read().is_err(), "not again until the driver reads IIR");
        let mut iir = [0u8; 1];
        serial.read(IIR, &mut iir);
        assert_eq!(iir[0] & 0x0f, 0x02, "IIR names THR empty");
        serial.write(0, b"y");
        assert_eq!(irq.read().unwrap(), 1, "then after the next byte");
        assert_eq!(buffer.lock().unwrap().as_slice(), b"hi\nxy");

        let mut lsr = [0u8; 1];
        serial.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "transmitter always empty");
        let mut wide = [0xffu8; 2];
        serial.read(LSR, &mut wide);
        assert_eq!(wide[1], 0);
    }
}
