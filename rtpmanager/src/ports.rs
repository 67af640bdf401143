//! The media port pool: even RTP ports with RTCP on the next odd one.
