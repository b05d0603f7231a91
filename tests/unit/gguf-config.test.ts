// GGUF export reads RoPE settings from either config layout: transformers 4's top-level rope_theta / rope_scaling
// or transformers 5's single "rope_parameters" object (a model saved by transformers 5 must not export with the
// default base 10000 silently).
import { describe, expect, it } from 'vitest';

import { withRopeParameters } from '../../src-main/core/models/gguf';

describe('withRopeParameters', () => {
  it('lifts rope_theta and partial_rotary_factor out of rope_parameters', () => {
    const c = withRopeParameters({ model_type: 'gpt_neox', rope_parameters: { rope_type: 'default', rope_theta: 5e5, partial_rotary_factor: 0.25 } });
    expect(c.rope_theta).toBe(5e5);
    expect(c.partial_rotary_factor).toBe(0.25);
    expect(c.rope_scaling).toBeUndefined(); // "default" is no scaling
  });

  it('takes a non-default rope_type as the scaling (linear factor; others reach the unsupported check)', () => {
    const lin = withRopeParameters({ rope_parameters: { rope_type: 'linear', rope_theta: 1e4, factor: 4 } });
    expect(lin.rope_scaling).toEqual({ rope_type: 'linear', rope_theta: 1e4, factor: 4 });
    const l3 = withRopeParameters({ rope_scaling: null, rope_parameters: { rope_type: 'llama3', rope_theta: 5e5, factor: 8 } });
    expect((l3.rope_scaling as { rope_type: string }).rope_type).toBe('llama3');
  });

  it('keeps the top-level keys where both are present, and a config without rope_parameters unchanged', () => {
    const both = withRopeParameters({ rope_theta: 1e6, rope_scaling: { type: 'linear', factor: 2 }, rope_parameters: { rope_type: 'linear', rope_theta: 5, factor: 3 } });
    expect(both.rope_theta).toBe(1e6);
    expect(both.rope_scaling).toEqual({ type: 'linear', factor: 2 });
    const old = { rope_theta: 1e4 };
    expect(withRopeParameters(old)).toBe(old);
  });
});
