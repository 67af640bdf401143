//! RFC 1624 incremental checksum updates for the XDP rewrite (TC uses the
//! skb csum helpers instead, which also cope with CHECKSUM_PARTIAL).
//!
//! Words are big-endian 16-bit values as read from the wire; the running
//! sum is HC' = ~(~HC + Σ(~m + m')) in one's complement arithmetic.

/// Σ(~m + m') over the 16-bit words of `old` → `new` (N even).
#[inline(always)]
pub fn diff<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        let m = u16::from_be_bytes([old[i], old[i + 1]]);
        let m_new = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += u32::from(!m) + u32::from(m_new);
        i += 2;
    }
    sum
}

/// The checksum `check` after adding `diff` (a sum from [`diff`]).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    let mut sum = u64::from(!check) + u64::from(diff);
    // At most 23 words of 0x1FFFE each (IPv6 addresses, ports and the
    // rewritten RTP words): three folds reach 16 bits.
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}

/// The UDP form of a checksum: a computed 0 is sent as 0xFFFF (RFC 768),
/// since 0 means "no checksum" on IPv4 and is invalid on IPv6.
#[inline(always)]
pub fn udp(check: u16) -> u16 {
    if check == 0 {
        0xFFFF
    } else {
        check
    }
}
