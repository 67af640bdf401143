//! The sans-IO core of a playback: audio clips prepared once per file, the
//! order in which frames, start and progress notices come out of a playlist,
//! and the absolute 20 ms schedule they are sent on.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::media::g711::Law;
use crate::media::resample::{frames_20ms, ResampleError, FRAME_SAMPLES};
use crate::media::wav::{Wav, WavError};

use super::path::{self, PathError};

/// Duration of one frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames between two progress notices (one second).
const PROGRESS_FRAMES: usize = 50;
/// A sender this late for a frame restarts its schedule rather than sending
/// the backlog in a burst the peer's jitter buffer would overflow on.
pub const MAX_LATE: Duration = Duration::from_millis(100);

/// Why one file of a playlist cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The name is refused or does not resolve.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The file exists but cannot be read.
    #[error("cannot read the file: {0}")]
    Read(#[source] std::io::Error),
    /// The file is not a WAV the manager plays.
    #[error(transparent)]
    Wav(#[from] WavError),
    /// The file's sample rate cannot be converted to 8 kHz.
    #[error(transparent)]
    Resample(#[from] ResampleError),
    /// The file has no samples.
    #[error("the file holds no audio")]
    Empty,
}

/// One file, resampled to 8 kHz and encoded in a G.711 law, cut in 20 ms frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clip {
    /// The name as requested.
    pub name: String,
    pub frames: Vec<[u8; FRAME_SAMPLES]>,
}

impl Clip {
    /// Decodes a WAV file's bytes and encodes them in `law`.
    pub fn from_wav(name: &str, bytes: &[u8], law: Law) -> Result<Clip, FileError> {
        let samples = Wav::parse(bytes)?.to_telephony()?;
        let mut encoded = Vec::with_capacity(FRAME_SAMPLES);
        let frames: Vec<[u8; FRAME_SAMPLES]> = frames_20ms(&samples)
            .map(|frame| {
                law.encode(&frame, &mut encoded);
                let mut out = [0u8; FRAME_SAMPLES];
                out.copy_from_slice(&encoded);
                out
            })
            .collect();
        if frames.is_empty() {
            return Err(FileError::Empty);
        }
        Ok(Clip {
            name: name.to_owned(),
            frames,
        })
    }

    /// Resolves `name` under `audio_dir`, reads and prepares it.
    pub fn load(audio_dir: &Path, name: &str, law: Law) -> Result<Clip, FileError> {
        let file = path::resolve(audio_dir, name)?;
        let bytes = std::fs::read(file).map_err(FileError::Read)?;
        Clip::from_wav(name, &bytes, law)
    }

    /// Playing time of the frames.
    pub fn duration_ms(&self) -> u64 {
        self.frames.len() as u64 * FRAME.as_millis() as u64
    }
}

/// What a playlist produces next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A file starts.
    Started { file: &'a str },
    /// The next frame to send, one [`FRAME`] after the previous one.
    Frame(&'a [u8; FRAME_SAMPLES]),
    /// Frames of the current file sent so far; after every second of audio
    /// and after a file's last frame.
    Progress {
        file: &'a str,
        position_ms: u64,
        duration_ms: u64,
    },
    /// The playlist has been played the requested number of times.
    Completed,
}

/// A playlist played `passes` times (forever when `None`).
#[derive(Debug)]
pub struct Playout {
    clips: Arc<[Clip]>,
    passes: Option<u32>,
    pass: u32,
    file: usize,
    /// Frames of the current file handed out; `None` before its start notice.
    frame: Option<usize>,
    progress_due: bool,
}

impl Playout {
    /// `clips` must not be empty, and no clip is empty ([`Clip::from_wav`]
    /// refuses that), so a playlist looped forever always makes progress.
    pub fn new(clips: Arc<[Clip]>, passes: Option<u32>) -> Playout {
        Playout {
            clips,
            passes,
            pass: 0,
            file: 0,
            frame: None,
            progress_due: false,
        }
    }

    pub fn next_step(&mut self) -> Step<'_> {
        loop {
            let done = self.clips.is_empty() || self.passes.is_some_and(|p| self.pass >= p.max(1));
            if done {
                return Step::Completed;
            }
            let len = self.clips[self.file].frames.len();
            match self.frame {
                None => {
                    self.frame = Some(0);
                    return Step::Started {
                        file: &self.clips[self.file].name,
                    };
                }
                Some(sent) if self.progress_due => {
                    self.progress_due = false;
                    let clip = &self.clips[self.file];
                    return Step::Progress {
                        file: &clip.name,
                        position_ms: sent as u64 * FRAME.as_millis() as u64,
                        duration_ms: clip.duration_ms(),
                    };
                }
                Some(sent) if sent < len => {
                    let sent = sent + 1;
                    self.frame = Some(sent);
                    self.progress_due = sent % PROGRESS_FRAMES == 0 || sent == len;
                    return Step::Frame(&self.clips[self.file].frames[sent - 1]);
                }
                Some(_) => {
                    self.frame = None;
                    self.file += 1;
                    if self.file == self.clips.len() {
                        self.file = 0;
                        self.pass += 1;
                    }
                }
            }
        }
    }
}

/// The absolute send schedule: frame `n` is due at `start + n × interval`,
/// so timer lateness never accumulates into drift.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
}

impl Pacer {
    pub fn new(start: Instant, interval: Duration) -> Pacer {
        Pacer { start, interval }
    }

    /// When frame `n` is due.
    pub fn due(&self, n: u64) -> Instant {
        let micros = self.interval.as_micros() as u64 * n;
        self.start + Duration::from_micros(micros)
    }

    /// Frame `n` goes out at `now`: after a stall beyond [`MAX_LATE`] the
    /// schedule restarts with `n` due at `now` (the stall becomes a gap
    /// instead of a burst). True when the schedule moved.
    pub fn resync(&mut self, n: u64, now: Instant) -> bool {
        let due = self.due(n);
        if now.saturating_duration_since(due) <= MAX_LATE {
            return false;
        }
        self.start += now - due;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::ulaw_decode;

    fn wav_16bit_mono(rate: u32, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    fn clip(name: &str, frames: usize) -> Clip {
        Clip {
            name: name.to_owned(),
            frames: (0..frames).map(|i| [i as u8; FRAME_SAMPLES]).collect(),
        }
    }

    /// The steps of a playout, frames shown by their first byte.
    fn steps(mut p: Playout, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..limit {
            let step = p.next_step();
            out.push(match step {
                Step::Started { file } => format!("start {file}"),
                Step::Frame(f) => format!("f{}", f[0]),
                Step::Progress {
                    file,
                    position_ms,
                    duration_ms,
                } => format!("{file} {position_ms}/{duration_ms}"),
                Step::Completed => "done".to_owned(),
            });
            if out.last().is_some_and(|s| s == "done") {
                break;
            }
        }
        out
    }

    #[test]
    fn a_sixteen_khz_sine_becomes_fifty_ulaw_frames_of_the_same_amplitude() {
        let samples: Vec<i16> = (0..16000)
            .map(|i| {
                let t = f64::from(i) / 16000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()).round() as i16
            })
            .collect();
        let clip = Clip::from_wav("tone.wav", &wav_16bit_mono(16000, &samples), Law::Ulaw)
            .expect("16-bit mono WAV");
        assert_eq!(clip.frames.len(), 50, "one second in 20 ms frames");
        assert_eq!(clip.duration_ms(), 1000);
        let decoded: Vec<f64> = clip.frames[5..45]
            .iter()
            .flatten()
            .map(|c| f64::from(ulaw_decode(*c)))
            .collect();
        let rms = (decoded.iter().map(|s| s * s).sum::<f64>() / decoded.len() as f64).sqrt();
        let peak = rms * std::f64::consts::SQRT_2;
        assert!((peak - 8000.0).abs() < 250.0, "peak amplitude {peak:.0}");
    }

    #[test]
    fn unsupported_and_empty_files_are_refused_with_the_reason() {
        let mut wav24 = wav_16bit_mono(8000, &[0; 30]);
        wav24[34] = 24;
        let e = Clip::from_wav("x.wav", &wav24, Law::Alaw).expect_err("24-bit");
        assert_eq!(
            e.to_string(),
            "24-bit PCM is not supported; convert to 16-bit PCM"
        );
        let e = Clip::from_wav("x.wav", &wav_16bit_mono(8000, &[]), Law::Alaw).expect_err("empty");
        assert_eq!(e.to_string(), "the file holds no audio");
        let e = Clip::from_wav("x.wav", b"hello", Law::Alaw).expect_err("not WAV");
        assert_eq!(e.to_string(), "not a WAV file: no RIFF/WAVE header");
    }

    #[test]
    fn files_play_in_order_with_progress_every_second_and_at_each_end() {
        let clips: Arc<[Clip]> = vec![clip("a", 3), clip("b", 2)].into();
        assert_eq!(
            steps(Playout::new(clips, Some(1)), 20),
            ["start a", "f0", "f1", "f2", "a 60/60", "start b", "f0", "f1", "b 40/40", "done"]
        );
        let long: Arc<[Clip]> = vec![clip("long", 120)].into();
        let progress: Vec<String> = steps(Playout::new(long, Some(1)), 200)
            .into_iter()
            .filter(|s| s.starts_with("long"))
            .collect();
        assert_eq!(
            progress,
            ["long 1000/2400", "long 2000/2400", "long 2400/2400"]
        );
    }

    #[test]
    fn repeat_counts_passes_and_zero_means_once() {
        let clips: Arc<[Clip]> = vec![clip("a", 1)].into();
        assert_eq!(
            steps(Playout::new(Arc::clone(&clips), Some(0)), 20),
            ["start a", "f0", "a 20/20", "done"]
        );
        assert_eq!(
            steps(Playout::new(Arc::clone(&clips), Some(2)), 20),
            ["start a", "f0", "a 20/20", "start a", "f0", "a 20/20", "done"]
        );
        let forever = steps(Playout::new(clips, None), 300);
        assert_eq!(forever.len(), 300, "looping never completes");
        assert!(!forever.iter().any(|s| s == "done"));
    }

    #[test]
    fn the_schedule_is_absolute_and_restarts_after_a_stall() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, FRAME);
        assert_eq!(pacer.due(0), t0);
        assert_eq!(
            pacer.due(3000),
            t0 + Duration::from_secs(60),
            "no drift over a minute"
        );
        assert!(
            !pacer.resync(10, t0 + Duration::from_millis(290)),
            "90 ms late is caught up"
        );
        assert_eq!(pacer.due(11), t0 + Duration::from_millis(220));
        assert!(
            pacer.resync(10, t0 + Duration::from_millis(700)),
            "500 ms late restarts"
        );
        assert_eq!(pacer.due(10), t0 + Duration::from_millis(700));
        assert_eq!(pacer.due(11), t0 + Duration::from_millis(720));
    }
}
