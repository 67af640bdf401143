//! G.711 µ-law (PCMU) and A-law (PCMA) companding (ITU-T G.711).
//!
//! API: sample functions [`ulaw_encode`], [`ulaw_decode`], [`alaw_encode`],
//! [`alaw_decode`], [`ulaw_to_alaw`], [`alaw_to_ulaw`]; the 256-entry tables
//! behind them ([`ULAW_DECODE`], [`ALAW_DECODE`], [`ULAW_TO_ALAW`],
//! [`ALAW_TO_ULAW`]); and [`Law`], which picks a law by payload type and
//! converts whole frames ([`Law::encode`], [`Law::decode`], [`Law::transcode_in_place`]).
//!
//! Linear samples are 16-bit two's complement. The quantisation follows the ITU-T
//! G.191 reference implementation: negative inputs are folded with a one's
//! complement so decision levels are symmetric, and decoding returns the middle
//! of each quantisation interval (µ-law ±32124 and A-law ±32256 at full scale).
//! The µ-law ↔ A-law tables are built through the linear domain (decode, then
//! encode): the result is one of the two levels of the other law that bracket
//! the value, chosen by that law's decision levels (not always the nearest at
//! segment edges, exactly as an encoder fed the decoded signal would choose).

use super::rtp::PayloadType;

/// µ-law: the compressed code of a 16-bit linear sample.
pub const fn ulaw_encode(sample: i16) -> u8 {
    // 14-bit magnitude plus the bias of 33 that makes segment edges powers of two.
    let mut magnitude: i32 = if sample < 0 {
        ((!sample) >> 2) as i32 + 33
    } else {
        (sample >> 2) as i32 + 33
    };
    if magnitude > 0x1fff {
        magnitude = 0x1fff;
    }
    let mut segment = 1;
    let mut rest = magnitude >> 6;
    while rest != 0 {
        segment += 1;
        rest >>= 1;
    }
    let high = 8 - segment;
    let low = 0x0f - ((magnitude >> segment) & 0x0f);
    let code = ((high << 4) | low) as u8;
    if sample >= 0 {
        code | 0x80
    } else {
        code
    }
}

/// A-law: the compressed code of a 16-bit linear sample.
pub const fn alaw_encode(sample: i16) -> u8 {
    // 12-bit magnitude.
    let mut ix: i32 = if sample < 0 {
        ((!sample) >> 4) as i32
    } else {
        (sample >> 4) as i32
    };
    if ix > 15 {
        let mut exponent = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            exponent += 1;
        }
        ix -= 16;
        ix += exponent << 4;
    }
    if sample >= 0 {
        ix |= 0x80;
    }
    // Even bits are inverted on the line (G.711 §A.2).
    (ix as u8) ^ 0x55
}

const fn ulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0f) as i32;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_expand(code: u8) -> i16 {
    let ix = (code ^ 0x55) & 0x7f;
    let exponent = (ix >> 4) as i32;
    let mut mantissa = (ix & 0x0f) as i32;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 0x08;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    if code > 0x7f {
        mantissa as i16
    } else {
        -mantissa as i16
    }
}

/// Fills a 256-entry table by calling a const fn on every byte value (const
/// fns cannot call through function pointers, hence a macro).
macro_rules! table_256 {
    ($ty:ty, |$code:ident| $value:expr) => {{
        let mut table = [0 as $ty; 256];
        let mut i = 0;
        while i < 256 {
            let $code = i as u8;
            table[i] = $value;
            i += 1;
        }
        table
    }};
}

/// Linear value of every µ-law code.
pub const ULAW_DECODE: [i16; 256] = table_256!(i16, |code| ulaw_expand(code));
/// Linear value of every A-law code.
pub const ALAW_DECODE: [i16; 256] = table_256!(i16, |code| alaw_expand(code));
/// The A-law code of every µ-law code's linear value.
pub const ULAW_TO_ALAW: [u8; 256] = table_256!(u8, |code| alaw_encode(ULAW_DECODE[code as usize]));
/// The µ-law code of every A-law code's linear value.
pub const ALAW_TO_ULAW: [u8; 256] = table_256!(u8, |code| ulaw_encode(ALAW_DECODE[code as usize]));

/// µ-law: the linear value of a code.
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// A-law: the linear value of a code.
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

/// The A-law code for a µ-law code.
pub fn ulaw_to_alaw(code: u8) -> u8 {
    ULAW_TO_ALAW[usize::from(code)]
}

/// The µ-law code for an A-law code.
pub fn alaw_to_ulaw(code: u8) -> u8 {
    ALAW_TO_ULAW[usize::from(code)]
}

/// One of the two G.711 laws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    /// µ-law, PCMU.
    Ulaw,
    /// A-law, PCMA.
    Alaw,
}

impl Law {
    /// The law of a static payload type (0 PCMU, 8 PCMA).
    pub fn from_payload_type(pt: PayloadType) -> Option<Law> {
        match pt {
            PayloadType::PCMU => Some(Law::Ulaw),
            PayloadType::PCMA => Some(Law::Alaw),
            _ => None,
        }
    }

    /// The static payload type of the law.
    pub fn payload_type(self) -> PayloadType {
        match self {
            Law::Ulaw => PayloadType::PCMU,
            Law::Alaw => PayloadType::PCMA,
        }
    }

    /// Encodes `samples` into `out`, one byte per sample; `out` is cleared first.
    pub fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        let encode = match self {
            Law::Ulaw => ulaw_encode,
            Law::Alaw => alaw_encode,
        };
        out.clear();
        out.extend(samples.iter().map(|s| encode(*s)));
    }

    /// Decodes `codes` into `out`, one sample per byte; `out` is cleared first.
    pub fn decode(self, codes: &[u8], out: &mut Vec<i16>) {
        let table = match self {
            Law::Ulaw => &ULAW_DECODE,
            Law::Alaw => &ALAW_DECODE,
        };
        out.clear();
        out.extend(codes.iter().map(|c| table[usize::from(*c)]));
    }

    /// Rewrites a payload of this law into `to` in place (same length, one byte per sample).
    pub fn transcode_in_place(self, to: Law, payload: &mut [u8]) {
        let table = match (self, to) {
            (Law::Ulaw, Law::Alaw) => &ULAW_TO_ALAW,
            (Law::Alaw, Law::Ulaw) => &ALAW_TO_ULAW,
            (Law::Ulaw, Law::Ulaw) | (Law::Alaw, Law::Alaw) => return,
        };
        for byte in payload {
            *byte = table[usize::from(*byte)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x7f), 0, "negative zero");
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xfe), 8);
        assert_eq!(ulaw_decode(0x7e), -8);
        // First level of segment 1: 256 minus the bias of 132, plus half a 16-wide step.
        assert_eq!(ulaw_decode(0xef), 132);
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(-1), 0x7f);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_encode(8), 0xfe);
        assert_eq!(ulaw_encode(-9), 0x7e);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xaa), 32256);
        assert_eq!(alaw_decode(0x2a), -32256);
        assert_eq!(alaw_decode(0xd4), 24);
        assert_eq!(alaw_decode(0xc5), 264, "first code of segment 1");
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
    }

    #[test]
    fn every_code_round_trips_through_linear() {
        for code in 0..=255u8 {
            let expected_ulaw = if code == 0x7f { 0xff } else { code };
            assert_eq!(
                ulaw_encode(ulaw_decode(code)),
                expected_ulaw,
                "µ-law code {code:#04x}"
            );
            assert_eq!(
                alaw_encode(alaw_decode(code)),
                code,
                "A-law code {code:#04x}"
            );
        }
    }

    #[test]
    fn decode_tables_are_odd_symmetric_and_monotonic() {
        for code in 0..0x80u8 {
            assert_eq!(
                ULAW_DECODE[usize::from(code)],
                -ULAW_DECODE[usize::from(code | 0x80)]
            );
            assert_eq!(
                ALAW_DECODE[usize::from(code)],
                -ALAW_DECODE[usize::from(code | 0x80)]
            );
        }
        // Positive µ-law codes 0xff down to 0x80 increase; A-law after undoing the
        // even-bit inversion increases from 0x80 to 0xff.
        for code in 0x81..=0xffu8 {
            assert!(
                ulaw_decode(code - 1) > ulaw_decode(code),
                "µ-law {code:#04x}"
            );
            assert!(
                alaw_decode(code ^ 0x55) > alaw_decode((code - 1) ^ 0x55),
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn transcoding_picks_a_bracketing_level() {
        assert_eq!(ulaw_to_alaw(0xff), 0xd5);
        assert_eq!(ulaw_to_alaw(0x00), 0x2a);
        assert_eq!(alaw_to_ulaw(0xd5), 0xfe);
        assert_eq!(alaw_to_ulaw(0xaa), 0x80);
        // -8064 sits on a µ-law decision level: it goes up to -8316, not to the nearer -7932.
        assert_eq!(alaw_decode(0x0a), -8064);
        assert_eq!(ulaw_decode(alaw_to_ulaw(0x0a)), -8316);
        for (from, to, from_table, to_table, target_table) in [
            ("µ", "A", &ULAW_DECODE, &ULAW_TO_ALAW, &ALAW_DECODE),
            ("A", "µ", &ALAW_DECODE, &ALAW_TO_ULAW, &ULAW_DECODE),
        ] {
            for code in 0..256 {
                let value = from_table[code];
                let chosen = target_table[usize::from(to_table[code])];
                let below = target_table.iter().filter(|v| **v <= value).max();
                let above = target_table.iter().filter(|v| **v >= value).min();
                assert!(
                    Some(&chosen) == below || Some(&chosen) == above,
                    "{from}-law {code:#04x} ({value}) to {to}-law {chosen}, outside {below:?}..{above:?}"
                );
            }
        }
    }

    #[test]
    fn law_converts_frames() {
        let mut codes = Vec::new();
        Law::Ulaw.encode(&[0, 8, -32124], &mut codes);
        assert_eq!(codes, [0xff, 0xfe, 0x00]);
        let mut samples = Vec::new();
        Law::Alaw.decode(&[0xd5, 0x55, 0xaa], &mut samples);
        assert_eq!(samples, [8, -8, 32256]);
        Law::Ulaw.transcode_in_place(Law::Alaw, &mut codes);
        assert_eq!(codes, [0xd5, 0xd5, 0x2a]);
        assert_eq!(Law::from_payload_type(PayloadType::PCMA), Some(Law::Alaw));
        assert_eq!(Law::Ulaw.payload_type(), PayloadType::PCMU);
        assert_eq!(
            Law::from_payload_type(PayloadType::new(18).expect("7-bit")),
            None
        );
    }
}
