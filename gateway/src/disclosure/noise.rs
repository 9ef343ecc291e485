//! Noise for released numbers: integers drawn exactly from the discrete
//! Gaussian distribution with OpenDP's sampler (Canonne, Kamath and Steinke
//! 2020), so no floating-point artefact can give the true value away.
//!
//! Each draw is fresh: an answer is kept and replayed (see
//! [`crate::storage::Storage::record_release`]) rather than drawn again, so
//! asking twice never averages the noise away.

use dashu::integer::IBig;
use dashu::rational::RBig;

/// Why no noise could be drawn.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("a noise scale of {0} cannot be used")]
    Scale(f64),
    #[error("the system's random source failed: {0}")]
    Entropy(String),
}

/// A source of discrete Gaussian noise.
#[derive(Debug, Default)]
pub struct Noise;

impl Noise {
    /// An integer from the discrete Gaussian with mean 0 and scale `sd`
    /// (its standard deviation, to within 0.1% for any scale above 1).
    pub fn gaussian(&mut self, sd: f64) -> Result<i64, NoiseError> {
        let scale = RBig::try_from(sd)
            .ok()
            .filter(|_| sd.is_finite() && sd >= 0.0)
            .ok_or(NoiseError::Scale(sd))?;
        let draw: IBig = opendp::traits::samplers::sample_discrete_gaussian(scale)
            .map_err(|e| NoiseError::Entropy(e.to_string()))?;
        // Beyond i64 would need a scale beyond any agreement's.
        Ok(i64::try_from(&draw).unwrap_or(0))
    }

    /// `value` with noise of scale `sd` added.
    pub fn add(&mut self, value: u64, sd: f64) -> Result<i64, NoiseError> {
        Ok(i64::try_from(value).unwrap_or(i64::MAX) + self.gaussian(sd)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_have_mean_zero_and_the_standard_deviation_asked_for() {
        let mut noise = Noise;
        let n = 20_000;
        let draws: Vec<f64> = (0..n)
            .map(|_| noise.gaussian(5.0).unwrap() as f64)
            .collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        // Standard error of the mean 5 / sqrt(20000) = 0.035; of the sd 0.025.
        assert!(mean.abs() < 0.2, "mean {mean}");
        assert!((sd - 5.0).abs() < 0.15, "sd {sd}");
        assert!(draws.iter().any(|d| *d != draws[0]), "draws vary");
    }

    #[test]
    fn a_bad_scale_is_an_error_not_a_panic() {
        assert!(Noise.gaussian(f64::NAN).is_err());
        assert!(Noise.gaussian(-1.0).is_err());
        assert_eq!(Noise.gaussian(0.0).unwrap(), 0);
    }
}
