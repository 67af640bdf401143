//! Media primitives: RTP/RTCP packets, RFC 3550 statistics, G.711, RFC 4733 DTMF, WAV and resampling.
//!
//! Everything here is sans-IO: parsers over byte slices, state machines fed
//! with explicit arrival instants, and pure sample conversions. The session
//! table and the userspace relay own the sockets and the clock.

pub mod dtmf;
pub mod g711;
pub mod resample;
pub mod rtp;
pub mod stats;
pub mod wav;
