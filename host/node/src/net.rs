//! The network side of the driver: the UDP socket, the receive task that drains it in batches,
//! the verifier threads that decode and verify those batches off the tokio workers, and the
//! machine's addresses (interfaces, our LAN address).

use std::net::SocketAddr;
use std::sync::Arc;

use dispersy_core::member::KeyCache;
use dispersy_core::verifier::Verifier;
use dispersy_core::wire::{self, DecodeError, Packet};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mutex::lock;

/// A decoded datagram on its way to the protocol task (with its bytes: one naming a member
/// whose key only the protocol task knows is decoded again there).
pub(crate) struct Datagram {
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
    pub decoded: Result<Packet, DecodeError>,
}

/// A batch of received datagrams: (source, bytes).
pub(crate) type RawBatch = Vec<(SocketAddr, Vec<u8>)>;

/// The receive task: reads every datagram waiting (up to `batch`) and hands them to the
/// verifiers as one batch.
pub(crate) async fn receive(
    socket: Arc<UdpSocket>,
    verifiers: mpsc::Sender<RawBatch>,
    max_datagram: usize,
    batch: usize,
    shutdown: CancellationToken,
) {
    // One byte more than the limit, so an oversized datagram is seen as such, not truncated.
    let mut buffer = vec![0u8; max_datagram + 1];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            () = shutdown.cancelled() => break,
        };
        let mut datagrams = Vec::with_capacity(batch.min(64));
        match received {
            Ok((len, from)) => datagrams.push((from, buffer[..len].to_vec())),
            // ICMP errors from earlier sends surface here on Linux; they concern nobody.
            Err(error) => tracing::trace!(%error, "receive error"),
        }
        // Whatever else is already waiting, without waiting for more.
        for _ in 1..batch {
            match socket.try_recv_from(&mut buffer) {
                Ok((len, from)) => datagrams.push((from, buffer[..len].to_vec())),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => tracing::trace!(%error, "receive error"),
            }
        }
        if !datagrams.is_empty() && verifiers.send(datagrams).await.is_err() {
            break;
        }
    }
}

/// A verifier thread: takes the next batch from the shared queue, decodes and verifies its
/// datagrams (the CPU-heavy part; all signatures of a batch checked together, see
/// `dispersy_core::verifier`) and hands them on as one batch. A datagram longer than the buffer
/// arrived truncated to `max_datagram + 1` bytes, which decoding reports as oversized. Ends when
/// the receive task or the protocol task is gone.
pub(crate) fn verify(
    raw: &std::sync::Mutex<mpsc::Receiver<RawBatch>>,
    datagrams: &mpsc::Sender<Vec<Datagram>>,
    max_datagram: usize,
    keys: &KeyCache,
    verifier: &mut Verifier,
) {
    loop {
        // Whoever holds the lock waits for the next batch; the others wait for the lock.
        let Some(batch) = lock(raw).blocking_recv() else {
            break;
        };
        let bytes: Vec<&[u8]> = batch.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        let decoded = wire::decode_batch(&bytes, max_datagram, keys, verifier);
        let verified: Vec<Datagram> = batch
            .into_iter()
            .zip(decoded)
            .map(|((from, bytes), decoded)| Datagram {
                decoded,
                from,
                bytes,
            })
            .collect();
        if datagrams.blocking_send(verified).is_err() {
            break;
        }
    }
}

/// The machine's interfaces, for telling LAN from WAN peers.
pub(crate) fn local_interfaces() -> Vec<dispersy_core::address::Interface> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .map(|i| match i.addr {
                if_addrs::IfAddr::V4(v4) => dispersy_core::address::Interface {
                    address: v4.ip.into(),
                    netmask: v4.netmask.into(),
                },
                if_addrs::IfAddr::V6(v6) => dispersy_core::address::Interface {
                    address: v6.ip.into(),
                    netmask: v6.netmask.into(),
                },
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot list network interfaces; private ranges count as LAN");
            Vec::new()
        }
    }
}

/// Our LAN address: the bound address, or for a wildcard bind the first non-loopback IPv4
/// interface (loopback when there is none), with the bound port.
pub(crate) fn lan_address(
    bound: SocketAddr,
    interfaces: &[dispersy_core::address::Interface],
) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = interfaces
        .iter()
        .map(|i| i.address)
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    SocketAddr::new(ip, bound.port())
}

/// Binds the UDP socket to `address`, non-blocking, with a receive buffer of `recv_buffer` bytes
/// asked for (a refusal is only logged).
pub(crate) fn bind_udp(address: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(IpProtocol::UDP),
    )?;
    // The default buffer holds about a hundred datagrams; bursts need more (rust-stack.md §4.12).
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// The kernel's number for `socket` (its inode), by which `/proc/net/udp` lists it; `None` off
/// Linux.
pub(crate) fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped for the UDP socket of inode `inode` because its receive buffer
/// was full (the `drops` column of `/proc/net/udp` or `/proc/net/udp6`); `None` when the
/// tables cannot be read.
pub(crate) fn receive_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|text| drops_of(&text, inode))
}

/// The `drops` of the line of socket `inode` in the text of a `/proc/net/udp` table.
fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let line_inode: u64 = fields.get(9)?.parse().ok()?;
        if line_inode != inode {
            return None;
        }
        fields.get(12)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::drops_of;

    #[test]
    fn the_drops_of_a_socket_are_read_from_its_line_of_the_udp_table() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops             \n\
              4: 0100007F:9313 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 81234 2 0000000000000000 0          \n\
             12: 00000000:1F90 00000000:0000 07 00000000:00030000 00:00000000 00000000  1000        0 99871 2 0000000000000000 1742       \n";
        assert_eq!(drops_of(table, 99871), Some(1742));
        assert_eq!(drops_of(table, 81234), Some(0));
        assert_eq!(drops_of(table, 5), None);
        assert_eq!(drops_of("header only\n", 99871), None);
    }
}
