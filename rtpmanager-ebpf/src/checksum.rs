//! RFC 1624 incremental checksum updates.
//!
//! Words are 16-bit values in wire order read as native integers: a one's
//! complement sum does not depend on the byte order it is computed in
//! (RFC 1071 §2(B)), so a checksum field read the same way is updated
//! without swapping anything. HC' = ~(~HC + Σ(~m + m')).

/// ~m + m' for one word changing from `old` to `new`; the sum of several
/// stays far below 2^32 (at most 40 words per packet).
#[inline(always)]
pub fn change(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// The checksum `check` after adding `diff` (a sum of [`change`]s).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    let mut sum = u64::from(!check) + u64::from(diff);
    // At most 40 words of 0x1FFFE each: three folds reach 16 bits.
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}

/// The UDP form of a checksum: a computed 0 is sent as 0xFFFF (RFC 768),
/// since 0 means "no checksum" on IPv4 and is invalid on IPv6. Both values
/// read the same in either byte order.
#[inline(always)]
pub fn udp(check: u16) -> u16 {
    if check == 0 {
        0xFFFF
    } else {
        check
    }
}
