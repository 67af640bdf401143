//! Sample-rate conversion to the 8 kHz telephony rate and 20 ms framing, for playback.
//!
//! API: [`resample_to_8k`]`(samples, rate)` for a whole mono buffer, or
//! [`Resampler::new`]`(from, to)` + [`Resampler::process`] to reuse a filter;
//! [`frames_20ms`] cuts 8 kHz audio into [`FRAME_SAMPLES`]-sample frames, the
//! last one zero-padded.
//!
//! The converter is a rational polyphase FIR: the ratio is reduced to `L/M`, a
//! Kaiser-windowed sinc low-pass is designed at `L` times the input rate, and
//! each output sample takes the one phase of it that lines up with the input.
//! Its passband ends at 42.5 % of the lower of the two rates (3.4 kHz for 8 kHz
//! output) and its stopband starts at half of it (the 4 kHz Nyquist frequency) with
//! [`STOPBAND_DB`] of attenuation, so content above 4 kHz is removed rather than
//! folded back into the voice band. The filter's delay is compensated: output
//! sample `n` is aligned with input time `n / to`.

/// The telephony sample rate.
pub const TARGET_RATE: u32 = 8000;
/// Samples in a 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Stopband attenuation of the anti-aliasing filter.
pub const STOPBAND_DB: f64 = 70.0;
/// Largest reduced upsampling factor accepted; it bounds the filter's size
/// (44.1 kHz needs 80, 22.05 kHz 160, 11.025 kHz 320).
pub const MAX_INTERPOLATION: u32 = 640;

/// Why a conversion cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResampleError {
    /// A rate of zero.
    #[error("sample rate must be above zero")]
    ZeroRate,
    /// The ratio between the rates does not reduce to a small enough fraction.
    #[error(
        "cannot resample {from} Hz to {to} Hz: the ratio {l}/{m} needs an interpolation \
         factor above {MAX_INTERPOLATION}; use a common rate (8000, 11025, 16000, 22050, \
         32000, 44100 or 48000 Hz)"
    )]
    UnsupportedRatio {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// Reduced interpolation factor.
        l: u32,
        /// Reduced decimation factor.
        m: u32,
    },
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Zeroth-order modified Bessel function of the first kind, by its power series.
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..64 {
        term *= half / f64::from(k);
        let t2 = term * term;
        sum += t2;
        if t2 < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// A polyphase rational resampler between two fixed rates.
#[derive(Clone, Debug)]
pub struct Resampler {
    l: usize,
    m: usize,
    taps: usize,
    /// `phases[p][k]` is prototype coefficient `p + k·L`.
    phases: Vec<Vec<f64>>,
    /// Filter delay in upsampled samples.
    delay: usize,
}

impl Resampler {
    /// Designs the filter converting `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Resampler, ResampleError> {
        if from == 0 || to == 0 {
            return Err(ResampleError::ZeroRate);
        }
        let g = gcd(from, to);
        let (l, m) = (to / g, from / g);
        if l > MAX_INTERPOLATION {
            return Err(ResampleError::UnsupportedRatio { from, to, l, m });
        }
        let up_rate = f64::from(from) * f64::from(l);
        let band = f64::from(from.min(to));
        let pass = 0.425 * band;
        let stop = 0.5 * band;
        let cutoff = (pass + stop) / 2.0 / up_rate;
        let transition = (stop - pass) / up_rate;
        // Kaiser's estimates for the window length and shape at this attenuation.
        let length_estimate = ((STOPBAND_DB - 7.95) / (14.36 * transition)).ceil() as usize + 1;
        let taps = length_estimate.div_ceil(l as usize);
        let beta = 0.1102 * (STOPBAND_DB - 8.7);
        let l = l as usize;
        let len = taps * l;
        let centre = (len - 1) as f64 / 2.0;
        let i0_beta = bessel_i0(beta);
        let prototype = (0..len).map(|j| {
            let t = j as f64 - centre;
            let x = 2.0 * cutoff * t;
            let sinc = if t == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            let r = t / centre;
            let window = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            // Gain L makes up for the zeros the upsampling inserts.
            2.0 * cutoff * sinc * window * l as f64
        });
        let mut phases = vec![Vec::with_capacity(taps); l];
        for (j, h) in prototype.enumerate() {
            phases[j % l].push(h);
        }
        Ok(Resampler {
            l,
            m: m as usize,
            taps,
            phases,
            delay: (len - 1) / 2,
        })
    }

    /// Converts a whole mono buffer; the output has `ceil(len · to / from)` samples.
    pub fn process(&self, input: &[i16]) -> Vec<i16> {
        let out_len = (input.len() * self.l).div_ceil(self.m);
        (0..out_len)
            .map(|n| {
                let position = n * self.m + self.delay;
                let phase = &self.phases[position % self.l];
                let newest = position / self.l;
                // Input samples newest, newest-1, … meet taps 0, 1, …; those outside the buffer are silence.
                let first_tap = newest.saturating_sub(input.len() - 1);
                let last_tap = self.taps.min(newest + 1);
                let acc: f64 = (first_tap..last_tap)
                    .map(|k| phase[k] * f64::from(input[newest - k]))
                    .sum();
                acc.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
            })
            .collect()
    }
}

/// Converts mono samples at `rate` Hz to 8 kHz (a copy when already at 8 kHz).
pub fn resample_to_8k(samples: &[i16], rate: u32) -> Result<Vec<i16>, ResampleError> {
    if rate == TARGET_RATE {
        return Ok(samples.to_vec());
    }
    Ok(Resampler::new(rate, TARGET_RATE)?.process(samples))
}

/// Cuts 8 kHz samples into 20 ms frames; the last frame is padded with silence.
pub fn frames_20ms(samples: &[i16]) -> impl Iterator<Item = [i16; FRAME_SAMPLES]> + '_ {
    samples.chunks(FRAME_SAMPLES).map(|chunk| {
        let mut frame = [0i16; FRAME_SAMPLES];
        frame[..chunk.len()].copy_from_slice(chunk);
        frame
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, amplitude: f64, seconds: f64) -> Vec<i16> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
            })
            .collect()
    }

    /// Peak amplitude from the RMS of the middle of the signal, away from the edges.
    fn amplitude(samples: &[i16]) -> f64 {
        let middle = &samples[samples.len() / 10..samples.len() * 9 / 10];
        let power: f64 =
            middle.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / middle.len() as f64;
        (2.0 * power).sqrt()
    }

    fn zero_crossings(samples: &[i16]) -> usize {
        samples
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count()
    }

    #[test]
    fn one_khz_keeps_amplitude_and_frequency_from_common_rates() {
        for rate in [11025, 16000, 22050, 32000, 44100, 48000] {
            let input = sine(rate, 1000.0, 10000.0, 1.0);
            let out = resample_to_8k(&input, rate).expect("supported rate");
            assert_eq!(out.len(), 8000, "{rate} Hz: one second of output");
            let gain_db = 20.0 * (amplitude(&out) / 10000.0).log10();
            assert!(gain_db.abs() < 0.1, "{rate} Hz: gain {gain_db:.3} dB");
            // 1 kHz over the middle 0.8 s crosses zero 1600 times.
            let middle = &out[800..7200];
            let crossings = zero_crossings(middle);
            assert!(
                (1599..=1601).contains(&crossings),
                "{rate} Hz: {crossings} zero crossings"
            );
        }
    }

    #[test]
    fn output_is_aligned_with_input_time() {
        // A 1 kHz sine at 48 kHz resampled must match the same sine generated at 8 kHz.
        let out = resample_to_8k(&sine(48000, 1000.0, 10000.0, 0.5), 48000).expect("48 kHz");
        let reference = sine(8000, 1000.0, 10000.0, 0.5);
        let worst = out[400..3600]
            .iter()
            .zip(&reference[400..3600])
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .expect("samples");
        assert!(worst <= 10, "largest deviation {worst}");
    }

    #[test]
    fn six_khz_is_attenuated_instead_of_aliased() {
        let input = sine(48000, 6000.0, 10000.0, 1.0);
        let out = resample_to_8k(&input, 48000).expect("48 kHz");
        let level_db = 20.0 * (amplitude(&out) / 10000.0).log10();
        assert!(
            level_db < -40.0,
            "6 kHz folded to 2 kHz at {level_db:.1} dB"
        );
        let input = sine(44100, 4500.0, 10000.0, 1.0);
        let out = resample_to_8k(&input, 44100).expect("44.1 kHz");
        let level_db = 20.0 * (amplitude(&out) / 10000.0).log10();
        assert!(
            level_db < -40.0,
            "4.5 kHz folded to 3.5 kHz at {level_db:.1} dB"
        );
    }

    #[test]
    fn identity_and_errors() {
        assert_eq!(resample_to_8k(&[1, 2, 3], 8000), Ok(vec![1, 2, 3]));
        assert_eq!(resample_to_8k(&[1], 0), Err(ResampleError::ZeroRate));
        let err = resample_to_8k(&[1], 44101).expect_err("odd rate");
        assert_eq!(
            err,
            ResampleError::UnsupportedRatio {
                from: 44101,
                to: 8000,
                l: 8000,
                m: 44101
            }
        );
        assert!(err
            .to_string()
            .starts_with("cannot resample 44101 Hz to 8000 Hz"));
        assert_eq!(resample_to_8k(&[], 48000), Ok(vec![]));
    }

    #[test]
    fn frames_are_160_samples_with_padded_tail() {
        let samples: Vec<i16> = (1..=330).collect();
        let frames: Vec<[i16; FRAME_SAMPLES]> = frames_20ms(&samples).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0][0], 1);
        assert_eq!(frames[1][159], 320);
        assert_eq!(
            frames[2][..10],
            [321, 322, 323, 324, 325, 326, 327, 328, 329, 330]
        );
        assert!(frames[2][10..].iter().all(|s| *s == 0));
        assert_eq!(frames_20ms(&[]).count(), 0);
    }
}
