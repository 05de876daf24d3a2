// RoPE inverse frequencies for a config, with linear and Llama-3 scaling (as HF transformers computes them).
import type { ModelConfig } from '@duoattn/core';

/** inverse frequency of each channel pair: θ^(−2i/d), then scaled per `config.ropeScaling`. */
export function ropeInverseFrequencies(
  config: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>,
): Float32Array {
  const { headDim, ropeTheta, ropeScaling } = config;
  const base = Array.from({ length: headDim / 2 }, (_, i) => 1 / ropeTheta ** ((2 * i) / headDim));
  if (ropeScaling.type === 'none') return Float32Array.from(base);
  if (ropeScaling.type === 'linear') return Float32Array.from(base, (f) => f / ropeScaling.factor);
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings } = ropeScaling;
  const lowFreqWavelength = originalMaxPositionEmbeddings / lowFreqFactor;
  const highFreqWavelength = originalMaxPositionEmbeddings / highFreqFactor;
  return Float32Array.from(base, (frequency) => {
    const wavelength = (2 * Math.PI) / frequency;
    if (wavelength < highFreqWavelength) return frequency;
    if (wavelength > lowFreqWavelength) return frequency / factor;
    const smooth = (originalMaxPositionEmbeddings / wavelength - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (frequency / factor) + smooth * frequency;
  });
}
