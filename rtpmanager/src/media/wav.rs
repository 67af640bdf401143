//! WAV (RIFF/WAVE) files for playback.
//!
//! API: [`Wav::parse`] reads a file's bytes into 16-bit samples;
//! [`Wav::to_mono`] downmixes; [`Wav::to_telephony`] gives the mono 8 kHz signal
//! playback sends (then [`super::resample::frames_20ms`] and a G.711 encoder).
//!
//! Accepted: 16-bit PCM (format 1, or WAVE_FORMAT_EXTENSIBLE with a PCM
//! sub-format), mono or stereo, at any rate; 8-bit G.711 A-law (6) and µ-law (7)
//! at 8 kHz. Chunks other than `fmt ` and `data` (LIST, fact, cue …) are skipped.
//! Everything else is refused with an error naming the reason and the fix. A
//! `data` chunk cut short by the end of the file (a recording that was never
//! finalised) is read up to the last whole sample frame.

use super::g711::{alaw_decode, ulaw_decode};
use super::resample::{resample_to_8k, ResampleError, TARGET_RATE};

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xfffe;

/// How the samples were stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// 16-bit linear PCM.
    Pcm16,
    /// G.711 µ-law.
    Ulaw,
    /// G.711 A-law.
    Alaw,
}

/// Why a file cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// The file does not start with a RIFF/WAVE header.
    #[error("not a WAV file: no RIFF/WAVE header")]
    NotWave,
    /// A chunk header or the fmt chunk is cut short.
    #[error("truncated WAV file: {0}")]
    Truncated(&'static str),
    /// No `fmt ` chunk was found.
    #[error("WAV file has no fmt chunk")]
    MissingFormat,
    /// No `data` chunk was found.
    #[error("WAV file has no data chunk")]
    MissingData,
    /// Samples are IEEE floats.
    #[error("{bits}-bit IEEE float samples are not supported; convert to 16-bit PCM")]
    Float {
        /// Bits per sample.
        bits: u16,
    },
    /// PCM with a sample size other than 16 bits.
    #[error("{bits}-bit PCM is not supported; convert to 16-bit PCM")]
    PcmBits {
        /// Bits per sample.
        bits: u16,
    },
    /// A compressed or unknown format tag.
    #[error("WAV format tag {tag:#06x} ({name}) is not supported; convert to 16-bit PCM")]
    Compressed {
        /// The format tag.
        tag: u16,
        /// Its usual name.
        name: &'static str,
    },
    /// G.711 at a rate other than 8 kHz, or not 8 bits per sample.
    #[error("G.711 WAV must be 8-bit at 8000 Hz, found {bits}-bit at {rate} Hz")]
    G711Layout {
        /// Sample rate.
        rate: u32,
        /// Bits per sample.
        bits: u16,
    },
    /// More than two channels, or none.
    #[error("{0} channels are not supported; use mono or stereo")]
    Channels(u16),
    /// A sample rate of zero.
    #[error("WAV sample rate is zero")]
    ZeroRate,
}

/// Decoded WAV audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wav {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// 1 or 2.
    pub channels: u16,
    /// How the samples were stored.
    pub encoding: Encoding,
    /// Samples, interleaved when stereo.
    pub samples: Vec<i16>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The usual names of format tags people meet, for error messages.
fn format_name(tag: u16) -> &'static str {
    match tag {
        0x0002 => "MS ADPCM",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0040 => "G.721 ADPCM",
        0x0050 => "MPEG",
        0x0055 => "MP3",
        0x0064 => "G.726 ADPCM",
        0x0161 | 0x0162 => "WMA",
        0x1610 => "AAC",
        0xf1ac => "FLAC",
        _ => "unknown",
    }
}

/// The `fmt ` chunk fields that matter.
struct Format {
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
}

fn parse_format(body: &[u8]) -> Result<Format, WavError> {
    if body.len() < 16 {
        return Err(WavError::Truncated("fmt chunk shorter than 16 bytes"));
    }
    let mut tag = u16_at(body, 0);
    if tag == WAVE_FORMAT_EXTENSIBLE {
        // cbSize (2), valid bits (2), channel mask (4), then the sub-format GUID
        // whose first two bytes are the real format tag.
        if body.len() < 26 {
            return Err(WavError::Truncated("WAVE_FORMAT_EXTENSIBLE fmt chunk"));
        }
        tag = u16_at(body, 24);
    }
    Ok(Format {
        tag,
        channels: u16_at(body, 2),
        rate: u32_at(body, 4),
        bits: u16_at(body, 14),
    })
}

impl Wav {
    /// Parses a whole WAV file.
    pub fn parse(bytes: &[u8]) -> Result<Wav, WavError> {
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(WavError::NotWave);
        }
        let mut format = None;
        let mut data = None;
        let mut at = 12;
        while at + 8 <= bytes.len() {
            let id = &bytes[at..at + 4];
            let size = u32_at(bytes, at + 4) as usize;
            let start = at + 8;
            let end = start.saturating_add(size);
            match id {
                b"fmt " => {
                    if end > bytes.len() {
                        return Err(WavError::Truncated("fmt chunk runs past the end"));
                    }
                    format = Some(parse_format(&bytes[start..end])?);
                }
                // A data chunk cut short is read as far as it goes.
                b"data" => data = Some(&bytes[start..end.min(bytes.len())]),
                _ => {}
            }
            // Chunks are padded to an even length.
            at = end.saturating_add(size % 2);
        }
        let format = format.ok_or(WavError::MissingFormat)?;
        let data = data.ok_or(WavError::MissingData)?;
        if format.channels == 0 || format.channels > 2 {
            return Err(WavError::Channels(format.channels));
        }
        if format.rate == 0 {
            return Err(WavError::ZeroRate);
        }
        let encoding = match format.tag {
            WAVE_FORMAT_PCM if format.bits == 16 => Encoding::Pcm16,
            WAVE_FORMAT_PCM => return Err(WavError::PcmBits { bits: format.bits }),
            WAVE_FORMAT_IEEE_FLOAT => return Err(WavError::Float { bits: format.bits }),
            WAVE_FORMAT_ALAW | WAVE_FORMAT_MULAW => {
                if format.rate != TARGET_RATE || format.bits != 8 {
                    return Err(WavError::G711Layout {
                        rate: format.rate,
                        bits: format.bits,
                    });
                }
                if format.tag == WAVE_FORMAT_ALAW {
                    Encoding::Alaw
                } else {
                    Encoding::Ulaw
                }
            }
            tag => {
                return Err(WavError::Compressed {
                    tag,
                    name: format_name(tag),
                })
            }
        };
        let frame_bytes = usize::from(format.channels) * usize::from(format.bits / 8);
        let data = &data[..data.len() - data.len() % frame_bytes];
        let samples = match encoding {
            Encoding::Pcm16 => data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            Encoding::Ulaw => data.iter().map(|c| ulaw_decode(*c)).collect(),
            Encoding::Alaw => data.iter().map(|c| alaw_decode(*c)).collect(),
        };
        Ok(Wav {
            sample_rate: format.rate,
            channels: format.channels,
            encoding,
            samples,
        })
    }

    /// Mono samples: stereo frames are averaged.
    pub fn to_mono(&self) -> Vec<i16> {
        if self.channels == 1 {
            return self.samples.clone();
        }
        self.samples
            .chunks_exact(2)
            .map(|lr| ((i32::from(lr[0]) + i32::from(lr[1])) / 2) as i16)
            .collect()
    }

    /// Mono samples at 8 kHz, ready for framing and G.711 encoding.
    pub fn to_telephony(&self) -> Result<Vec<i16>, ResampleError> {
        resample_to_8k(&self.to_mono(), self.sample_rate)
    }

    /// Playing time in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        let frames = (self.samples.len() / usize::from(self.channels)) as u64;
        frames * 1000 / u64::from(self.sample_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV file with a LIST chunk before fmt and an odd-sized chunk to test padding.
    fn build(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        let block = u32::from(channels) * u32::from(bits / 8);
        fmt.extend_from_slice(&(rate * block).to_le_bytes());
        fmt.extend_from_slice(&(block as u16).to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        let mut body = b"WAVE".to_vec();
        for (id, chunk) in [
            (b"LIST", &b"INFOabc"[..]),
            (b"fmt ", &fmt[..]),
            (b"data", data),
        ] {
            body.extend_from_slice(id);
            body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            body.extend_from_slice(chunk);
            if chunk.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        file
    }

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn parses_pcm16_mono_and_skips_unknown_chunks() {
        let file = build(1, 1, 16000, 16, &pcm(&[0, 1000, -1000, i16::MAX, i16::MIN]));
        let wav = Wav::parse(&file).expect("valid PCM WAV");
        assert_eq!(
            wav,
            Wav {
                sample_rate: 16000,
                channels: 1,
                encoding: Encoding::Pcm16,
                samples: vec![0, 1000, -1000, i16::MAX, i16::MIN],
            }
        );
        assert_eq!(wav.to_mono(), wav.samples);
    }

    #[test]
    fn downmixes_stereo() {
        let file = build(
            1,
            2,
            48000,
            16,
            &pcm(&[100, 300, -100, -301, i16::MAX, i16::MAX]),
        );
        let wav = Wav::parse(&file).expect("valid stereo WAV");
        assert_eq!(wav.channels, 2);
        assert_eq!(wav.to_mono(), [200, -200, i16::MAX]);
        assert_eq!(wav.duration_ms(), 0);
    }

    #[test]
    fn decodes_g711_at_8k_and_passes_it_through() {
        let wav = Wav::parse(&build(7, 1, 8000, 8, &[0xff, 0x00, 0x80])).expect("µ-law WAV");
        assert_eq!(wav.encoding, Encoding::Ulaw);
        assert_eq!(wav.samples, [0, -32124, 32124]);
        let wav = Wav::parse(&build(6, 1, 8000, 8, &[0xd5, 0x55, 0xaa])).expect("A-law WAV");
        assert_eq!(wav.encoding, Encoding::Alaw);
        assert_eq!(wav.to_telephony(), Ok(vec![8, -8, 32256]));
        assert_eq!(
            Wav::parse(&build(7, 1, 16000, 8, &[0xff])).expect_err("µ-law at 16 kHz"),
            WavError::G711Layout {
                rate: 16000,
                bits: 8
            }
        );
    }

    #[test]
    fn reads_wave_format_extensible_pcm() {
        let mut file = build(0xfffe, 1, 8000, 16, &pcm(&[5, 6]));
        // Grow fmt to 40 bytes: cbSize 22, valid bits, mask, PCM sub-format GUID.
        let fmt_at = 12 + 8 + 8; // after RIFF header and LIST chunk (7 bytes + pad)
        assert_eq!(&file[fmt_at..fmt_at + 4], b"fmt ");
        let mut ext = vec![22, 0, 16, 0, 4, 0, 0, 0];
        ext.extend_from_slice(&[
            1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xaa, 0, 0x38, 0x9b, 0x71,
        ]);
        file.splice(fmt_at + 8 + 16..fmt_at + 8 + 16, ext);
        file[fmt_at + 4] = 40;
        let wav = Wav::parse(&file).expect("extensible PCM");
        assert_eq!((wav.encoding, wav.samples), (Encoding::Pcm16, vec![5, 6]));
    }

    #[test]
    fn rejects_unsupported_formats_with_reasons() {
        let cases: [(Vec<u8>, &str); 7] = [
            (
                build(1, 1, 44100, 24, &[0; 6]),
                "24-bit PCM is not supported; convert to 16-bit PCM",
            ),
            (
                build(3, 1, 44100, 32, &[0; 8]),
                "32-bit IEEE float samples are not supported; convert to 16-bit PCM",
            ),
            (
                build(0x55, 2, 44100, 16, &[0; 8]),
                "WAV format tag 0x0055 (MP3) is not supported; convert to 16-bit PCM",
            ),
            (
                build(2, 1, 8000, 4, &[0; 8]),
                "WAV format tag 0x0002 (MS ADPCM) is not supported; convert to 16-bit PCM",
            ),
            (
                build(1, 6, 48000, 16, &[0; 12]),
                "6 channels are not supported; use mono or stereo",
            ),
            (
                b"RIFF\0\0\0\0AVI ".to_vec(),
                "not a WAV file: no RIFF/WAVE header",
            ),
            (b"RIFF\x04\0\0\0WAVE".to_vec(), "WAV file has no fmt chunk"),
        ];
        for (file, message) in cases {
            assert_eq!(Wav::parse(&file).expect_err(message).to_string(), message);
        }
        let mut no_data = build(1, 1, 8000, 16, &[]);
        let data_at = no_data.len() - 8;
        no_data[data_at..data_at + 4].copy_from_slice(b"junk");
        assert_eq!(Wav::parse(&no_data), Err(WavError::MissingData));
    }

    #[test]
    fn truncated_data_is_read_to_the_last_whole_frame() {
        let mut file = build(1, 2, 8000, 16, &pcm(&[1, 2, 3, 4]));
        file.truncate(file.len() - 3); // cuts into the second frame
        let wav = Wav::parse(&file).expect("truncated data");
        assert_eq!(wav.samples, [1, 2]);
    }

    #[test]
    fn to_telephony_resamples_to_8k_mono() {
        let samples: Vec<i16> = vec![1000; 4800 * 2];
        let wav = Wav::parse(&build(1, 2, 48000, 16, &pcm(&samples))).expect("stereo 48 kHz");
        assert_eq!(wav.duration_ms(), 100);
        let out = wav.to_telephony().expect("48 kHz is supported");
        assert_eq!(out.len(), 800);
        // Away from the edges a constant stays constant (unit DC gain).
        assert!(
            out[200..600].iter().all(|s| (999..=1001).contains(s)),
            "{:?}",
            &out[200..210]
        );
    }
}
