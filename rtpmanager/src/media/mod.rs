//! Media primitives: RTP/RTCP packets, RFC 3550 statistics, G.711, RFC 4733 DTMF, WAV and resampling.
