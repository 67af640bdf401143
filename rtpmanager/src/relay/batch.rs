//! Batched UDP I/O: `recvmmsg` into preallocated buffers, `sendmmsg` from
//! them. No allocation per packet; one system call per batch and socket.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Packets read per `recvmmsg` call. A socket with a backlog is drained in
/// batches of this size, then the worker moves on to the next ready socket,
/// so one flooded leg cannot starve the others.
pub const BATCH: usize = 32;

/// Largest datagram the relay carries; longer ones are truncated by the
/// kernel (`MSG_TRUNC`) and dropped.
pub const MAX_DATAGRAM: usize = 2048;

/// Room for one `SO_RXQ_OVFL` control message (a `u32`), in `u64`s so the
/// buffer is aligned as `cmsghdr` wants.
const CONTROL_WORDS: usize = 4;

/// Asks the kernel to report, with each datagram read from `fd`, how many
/// datagrams it dropped so far because the socket's receive queue was full
/// (`SO_RXQ_OVFL`): the relay's own overflow, counted per leg.
pub fn count_queue_drops(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket option with a c_int value of the right size.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The drop count of an `SO_RXQ_OVFL` control message in `header`'s
/// control buffer, if the kernel wrote one.
fn queue_drops(header: &libc::msghdr) -> Option<u32> {
    // SAFETY: the control buffer and its length are the ones the kernel
    // filled; the CMSG macros stay within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                return Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<u32>(),
                ));
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Reads an IPv4 or IPv6 address the kernel wrote into `storage`.
fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, which it is large enough for.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One received datagram inside a [`RecvBatch`].
pub struct Datagram<'a> {
    pub source: SocketAddr,
    pub data: &'a mut [u8],
}

/// Buffers for one `recvmmsg` call, reused for every call.
pub struct RecvBatch {
    buffers: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    addrs: [libc::sockaddr_storage; BATCH],
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    lengths: [usize; BATCH],
    sources: [Option<SocketAddr>; BATCH],
    control: [[u64; CONTROL_WORDS]; BATCH],
    /// The highest `SO_RXQ_OVFL` count of the last `recv`.
    queue_drops: Option<u32>,
    count: usize,
}

// SAFETY: the raw pointers inside iovecs/headers only ever point into the
// struct's own buffers and are rebuilt before each use.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
        // which all-zero bytes are a valid (empty) value.
        let zeroed =
            unsafe { MaybeUninit::<[libc::sockaddr_storage; BATCH]>::zeroed().assume_init() };
        let iovecs = unsafe { MaybeUninit::<[libc::iovec; BATCH]>::zeroed().assume_init() };
        let headers = unsafe { MaybeUninit::<[libc::mmsghdr; BATCH]>::zeroed().assume_init() };
        RecvBatch {
            buffers: Box::new([[0u8; MAX_DATAGRAM]; BATCH]),
            addrs: zeroed,
            iovecs,
            headers,
            lengths: [0; BATCH],
            sources: [None; BATCH],
            control: [[0; CONTROL_WORDS]; BATCH],
            queue_drops: None,
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Reads up to [`BATCH`] datagrams from a non-blocking socket. Returns
    /// the number read; 0 when the socket has nothing (EAGAIN).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = self.control[i].as_mut_ptr().cast();
            header.msg_controllen = std::mem::size_of::<[u64; CONTROL_WORDS]>() as _;
            header.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            self.count = 0;
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        self.queue_drops = None;
        for i in 0..n {
            if let Some(drops) = queue_drops(&self.headers[i].msg_hdr) {
                self.queue_drops = Some(self.queue_drops.map_or(drops, |d| d.max(drops)));
            }
            let truncated = self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lengths[i] = if truncated {
                0
            } else {
                self.headers[i].msg_len as usize
            };
            self.sources[i] = to_socket_addr(&self.addrs[i]);
        }
        self.count = n;
        Ok(n)
    }

    /// The socket's count of datagrams dropped on a full receive queue, as
    /// of the last `recv` (cumulative since [`count_queue_drops`]); `None`
    /// when none was dropped yet.
    pub fn queue_drops(&self) -> Option<u32> {
        self.queue_drops
    }

    /// The `index`-th datagram of the last `recv`; `None` for a truncated
    /// datagram or one without an IP source.
    pub fn get(&mut self, index: usize) -> Option<Datagram<'_>> {
        if index >= self.count || self.lengths[index] == 0 {
            return None;
        }
        let source = self.sources[index]?;
        let len = self.lengths[index];
        Some(Datagram {
            source,
            data: &mut self.buffers[index][..len],
        })
    }

    /// The bytes of datagram `index`, for building a send batch after the
    /// datagram was processed (possibly rewritten in place).
    fn bytes(&self, index: usize, len: usize) -> &[u8] {
        &self.buffers[index][..len]
    }
}

/// Datagrams to send from one socket, pointing into a [`RecvBatch`].
pub struct SendBatch {
    addrs: [libc::sockaddr_storage; BATCH],
    addr_lens: [libc::socklen_t; BATCH],
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    count: usize,
}

// SAFETY: see RecvBatch.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        // SAFETY: all-zero bytes are valid for these C structs.
        unsafe {
            SendBatch {
                addrs: MaybeUninit::zeroed().assume_init(),
                addr_lens: [0; BATCH],
                iovecs: MaybeUninit::zeroed().assume_init(),
                headers: MaybeUninit::zeroed().assume_init(),
                count: 0,
            }
        }
    }
}

impl SendBatch {
    pub fn clear(&mut self) {
        self.count = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Queues datagram `index` of `from` (its first `len` bytes) for `to`.
    pub fn push(&mut self, from: &RecvBatch, index: usize, len: usize, to: SocketAddr) {
        if self.count == BATCH {
            return;
        }
        let bytes = from.bytes(index, len);
        let i = self.count;
        let addr = SockAddr::from(to);
        // SAFETY: SockAddr's storage is a valid sockaddr of addr.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr().cast::<u8>(),
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                addr.len() as usize,
            );
        }
        self.addr_lens[i] = addr.len();
        self.iovecs[i] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        self.count += 1;
    }

    /// Sends everything queued from `fd`. Returns the number of datagrams the
    /// kernel took; the rest (socket buffer full) are dropped, as a router
    /// would, and counted by the caller.
    pub fn send(&mut self, fd: RawFd) -> usize {
        let mut sent = 0;
        while sent < self.count {
            for i in sent..self.count {
                let header = &mut self.headers[i].msg_hdr;
                header.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                header.msg_namelen = self.addr_lens[i];
                header.msg_iov = &mut self.iovecs[i];
                header.msg_iovlen = 1;
                header.msg_control = std::ptr::null_mut();
                header.msg_controllen = 0;
                header.msg_flags = 0;
            }
            // SAFETY: headers[sent..count] point at live addresses and at
            // buffers the caller keeps alive until this returns.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers[sent..].as_mut_ptr(),
                    (self.count - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // EAGAIN (buffer full) or a per-destination error such as
                // ECONNREFUSED from an earlier ICMP: skip the head datagram
                // and go on with the rest.
                if n < 0 && err.kind() != io::ErrorKind::WouldBlock {
                    sent += 1;
                    continue;
                }
                break;
            }
            sent += n as usize;
        }
        let done = sent.min(self.count);
        self.count = 0;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind rx");
        rx.set_nonblocking(true).expect("nonblocking");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        for i in 0..5u8 {
            tx.send_to(&[i; 10], rx.local_addr().expect("addr"))
                .expect("send");
        }
        let mut batch = RecvBatch::default();
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got < 5 && std::time::Instant::now() < deadline {
            got += batch.recv(rx.as_raw_fd()).expect("recvmmsg");
        }
        assert_eq!(got, 5, "all five datagrams in one or more batches");
        let first = batch.get(0).expect("first datagram");
        assert_eq!(first.source, tx.local_addr().expect("tx addr"));
        assert_eq!(first.data.len(), 10);

        let mut out = SendBatch::default();
        for i in 0..got.min(batch.count) {
            out.push(&batch, i, 10, sink.local_addr().expect("sink addr"));
        }
        let queued = got.min(batch.count);
        assert_eq!(out.send(tx.as_raw_fd()), queued);
        let mut buf = [0u8; 64];
        let (n, from) = sink.recv_from(&mut buf).expect("relayed datagram");
        assert_eq!((n, from), (10, tx.local_addr().expect("tx addr")));
        assert_eq!(
            batch.recv(rx.as_raw_fd()).expect("empty socket"),
            0,
            "EAGAIN reads as 0"
        );
    }

    #[test]
    fn datagrams_dropped_on_a_full_receive_queue_are_reported_with_the_next_read() {
        let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        // The smallest queue the kernel grants: a few datagrams of 1000 octets.
        rx.set_recv_buffer_size(1).expect("SO_RCVBUF");
        rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let rx: UdpSocket = rx.into();
        count_queue_drops(rx.as_raw_fd()).expect("SO_RXQ_OVFL");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let to = rx.local_addr().expect("addr");
        const SENT: usize = 200;
        for i in 0..SENT {
            tx.send_to(&[i as u8; 1000], to).expect("send");
        }
        let mut batch = RecvBatch::default();
        let (mut read, mut dropped) = (0usize, 0u32);
        loop {
            let n = batch.recv(rx.as_raw_fd()).expect("recvmmsg");
            if n == 0 {
                break;
            }
            read += n;
            dropped = batch.queue_drops().unwrap_or(dropped);
        }
        assert!(read > 0 && read < SENT, "{read} of {SENT} fitted the queue");
        // A datagram carries the count as of its own arrival: the drops
        // after the last one queued show with the next one.
        tx.send_to(&[0; 1000], to).expect("send");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while batch.recv(rx.as_raw_fd()).expect("recvmmsg") == 0 {
            assert!(std::time::Instant::now() < deadline, "the last datagram");
        }
        dropped = batch.queue_drops().unwrap_or(dropped);
        assert_eq!(
            read + dropped as usize,
            SENT,
            "every datagram is either read or counted dropped"
        );
    }
}
