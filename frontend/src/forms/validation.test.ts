import { describe, expect, it } from 'vitest';
import { JobConfigSchema } from '../client/schemas.gen';
import {
  boundsOf, boundsText, configBounds, defaultConfigValues, defaultModelValues, fieldErrorsFrom422, jobCreate,
  modelMetadata, parseShape, validateConfig, validateModel, withinBounds,
} from './validation';

const file = new File(['x'], 'cnn.pt');

describe('validateModel', () => {
  it('accepts a complete model', () => {
    expect(validateModel({ ...defaultModelValues, file, name: 'cnn' })).toEqual({});
  });
  it('names each missing or malformed field', () => {
    const errors = validateModel({ ...defaultModelValues, file: null, name: ' ', input_shape: '8,8', num_classes: '1', input_max: '0' });
    expect(Object.keys(errors).sort()).toEqual(['file', 'input_max', 'input_shape', 'name', 'num_classes']);
  });
  it('checks class names against the class count', () => {
    expect(validateModel({ ...defaultModelValues, file, name: 'c', num_classes: '3', class_names: 'a,b' }).class_names)
      .toBe('2 names for 3 classes');
  });
  it('parses shapes written several ways', () => {
    expect(parseShape('3, 32, 32')).toEqual([3, 32, 32]);
    expect(parseShape('1x8x8')).toEqual([1, 8, 8]);
    expect(parseShape('1,0,8')).toBeNull();
  });
  it('builds the metadata the API expects', () => {
    expect(modelMetadata({ ...defaultModelValues, file, name: ' cnn ', class_names: '' }))
      .toEqual({ name: 'cnn', kind: 'classifier', input_shape: [1, 8, 8], num_classes: 10, input_max: 1 });
  });
});

describe('a denoiser', () => {
  const denoiser = { ...defaultModelValues, file, name: 'drunet', kind: 'denoiser' as const };
  it('ignores the class and scaling fields the API refuses for it', () => {
    expect(validateModel({ ...denoiser, num_classes: '', class_names: 'a,b,c', input_max: '255' })).toEqual({});
  });
  it('still needs a file, a name and a shape', () => {
    expect(Object.keys(validateModel({ ...denoiser, file: null, name: '', input_shape: '8,8' })).sort())
      .toEqual(['file', 'input_shape', 'name']);
  });
  it('sends no classes, class names or input scaling', () => {
    expect(modelMetadata({ ...denoiser, format: 'state_dict', class_names: '0,1,2,3,4,5,6,7,8,9', input_max: '255' }))
      .toEqual({ name: 'drunet', kind: 'denoiser', format: 'state_dict', input_shape: [1, 8, 8] });
  });
});

describe('validateConfig', () => {
  it('accepts the defaults', () => expect(validateConfig(defaultConfigValues)).toEqual({}));
  it('rejects values outside the API schema', () => {
    const errors = validateConfig({ ...defaultConfigValues, sigma: '0', alpha: '1', n: '1.5', n0: '', batch_size: '-3', count: '0' });
    expect(Object.keys(errors).sort()).toEqual(['alpha', 'batch_size', 'count', 'n', 'n0', 'sigma']);
  });
  it("asks DSRS for Q's sigma and generalized Gaussian for k", () => {
    const errors = validateConfig({ ...defaultConfigValues, method: 'dsrs', q_sigma: '', noise: 'general_gaussian', k: 'x' });
    expect(errors.q_sigma).toMatch(/Q/);
    expect(errors.k).toBeDefined();
  });
  it('treats an empty ISS budget as fixed N', () => {
    expect(validateConfig({ ...defaultConfigValues, iss_delta: '' })).toEqual({});
    expect(jobCreate(1, defaultConfigValues).config?.iss_delta).toBeNull();
    expect(validateConfig({ ...defaultConfigValues, iss_delta: '-1' }).iss_delta).toBeDefined();
  });
  it('checks the sequential delta as the API does: > 0, not with an ISS budget', () => {
    expect(validateConfig({ ...defaultConfigValues, sequential_delta: '0.1' })).toEqual({});
    expect(jobCreate(1, { ...defaultConfigValues, sequential_delta: '0.1' }).config?.sequential_delta).toBe(0.1);
    expect(jobCreate(1, defaultConfigValues).config?.sequential_delta).toBeNull();
    expect(validateConfig({ ...defaultConfigValues, sequential_delta: '0' }).sequential_delta).toMatch(/> 0/);
    expect(validateConfig({ ...defaultConfigValues, sequential_delta: 'x' }).sequential_delta).toMatch(/> 0/);
    expect(validateConfig({ ...defaultConfigValues, iss_delta: '0.05', sequential_delta: '0.1' }).sequential_delta)
      .toMatch(/one of/);
  });
  it('checks pack as the API does: a whole number from 1 to 1024, not with a sequential delta', () => {
    expect(validateConfig({ ...defaultConfigValues, pack: '1024', iss_delta: '0.05' })).toEqual({});
    for (const pack of ['0', '1025', '2.5', 'x']) expect(validateConfig({ ...defaultConfigValues, pack }).pack).toMatch(/1 to 1024/);
    expect(validateConfig({ ...defaultConfigValues, pack: '8', sequential_delta: '0.1' }).pack).toMatch(/not a sequential delta/);
    expect(validateConfig({ ...defaultConfigValues, pack: '1', sequential_delta: '0.1' })).toEqual({});
  });
  it('sends pack for method np only, 1 when empty', () => {
    expect(jobCreate(1, { ...defaultConfigValues, pack: '16' }).config?.pack).toBe(16);
    expect(jobCreate(1, defaultConfigValues).config?.pack).toBe(1);
    const dsrs = { ...defaultConfigValues, method: 'dsrs' as const, q_sigma: '0.2', pack: '16' };
    expect(validateConfig(dsrs)).toEqual({});
    expect(jobCreate(1, dsrs).config?.pack).toBe(1);
  });
  it('sends sample-size schedules for method np only', () => {
    const dsrs = { ...defaultConfigValues, method: 'dsrs' as const, q_sigma: '0.2', iss_delta: '-1', sequential_delta: '0.1' };
    expect(validateConfig(dsrs)).toEqual({});
    expect(jobCreate(1, dsrs).config).toMatchObject({ iss_delta: null, sequential_delta: null });
  });
  it('sends only the fields that apply', () => {
    const body = jobCreate(5, { ...defaultConfigValues, count: '20' });
    expect(body).toMatchObject({ model_id: 5, dataset: 'digits', subset: { count: 20 } });
    expect(body.config).toMatchObject({ method: 'np', noise: 'gaussian', k: 0, sigma: 0.25, q_sigma: null, denoiser_id: null });
  });
  it('asks for bfloat16 only when chosen', () => {
    expect(jobCreate(1, defaultConfigValues).config?.bf16).toBe(false);
    expect(jobCreate(1, { ...defaultConfigValues, precision: 'bf16' }).config?.bf16).toBe(true);
  });
  it('asks for torch.compile or a frozen graph only when chosen, never both, with either precision', () => {
    expect(jobCreate(1, defaultConfigValues).config).toMatchObject({ compile: false, freeze: false });
    expect(jobCreate(1, { ...defaultConfigValues, graph: 'compile' }).config)
      .toMatchObject({ compile: true, freeze: false, bf16: false });
    expect(jobCreate(1, { ...defaultConfigValues, graph: 'compile', precision: 'bf16' }).config)
      .toMatchObject({ compile: true, freeze: false, bf16: true });
    expect(jobCreate(1, { ...defaultConfigValues, graph: 'freeze' }).config)
      .toMatchObject({ compile: false, freeze: true, bf16: false });
  });
});

describe('the config bounds come from the API schema', () => {
  it('reads each bound from openapi.json, the number branch of an optional field included', () => {
    expect(configBounds.n.maximum).toBe(JobConfigSchema.properties.n.maximum);
    expect(configBounds.pack).toEqual({ integer: true, minimum: 1, maximum: JobConfigSchema.properties.pack.maximum,
      exclusiveMinimum: undefined, exclusiveMaximum: undefined });
    expect(boundsOf(JobConfigSchema.properties.q_sigma)).toMatchObject({ integer: false, exclusiveMinimum: 0, maximum: 100 });
    expect(configBounds.alpha).toMatchObject({ exclusiveMinimum: 0, exclusiveMaximum: 1 });
  });
  it('refuses just past each ceiling and accepts it', () => {
    for (const [field, key] of [['n', 'n'], ['n0', 'n0'], ['batch_size', 'batch_size']] as const) {
      const max = configBounds[key].maximum!;
      expect(validateConfig({ ...defaultConfigValues, [field]: String(max) })[field]).toBeUndefined();
      expect(validateConfig({ ...defaultConfigValues, [field]: String(max + 1) })[field]).toMatch(`to ${max}`);
    }
    expect(validateConfig({ ...defaultConfigValues, sigma: '100.5' }).sigma).toMatch(/≤ 100/);
  });
  it('states bounds in words and checks them', () => {
    expect(boundsText({ integer: false, exclusiveMinimum: 0, maximum: 100 })).toBe('a number > 0 and ≤ 100');
    expect(boundsText({ integer: true, minimum: 1, maximum: 8 })).toBe('a whole number from 1 to 8');
    expect(withinBounds(0.5, configBounds.alpha)).toBe(true);
    expect(withinBounds(1, configBounds.alpha)).toBe(false);
    expect(withinBounds(2.5, configBounds.pack)).toBe(false);
  });
  it('mirrors the engine rules between fields: Q narrower than P, k at least 1 for generalized Gaussian noise', () => {
    const dsrs = { ...defaultConfigValues, method: 'dsrs' as const };
    expect(validateConfig({ ...dsrs, q_sigma: '0.25' }).q_sigma).toMatch(/below sigma/);
    expect(validateConfig({ ...dsrs, q_sigma: '0.2' })).toEqual({});
    expect(validateConfig({ ...defaultConfigValues, noise: 'general_gaussian', k: '0' }).k).toMatch(/k ≥ 1/);
    expect(validateConfig({ ...defaultConfigValues, noise: 'general_gaussian', k: '2' })).toEqual({});
  });
});

describe('fieldErrorsFrom422', () => {
  it('maps FastAPI locations onto field names', () => {
    const error = { detail: [{ loc: ['body', 'config', 'sigma'], msg: 'Input should be greater than 0' },
      { loc: ['input_shape'], msg: 'bad shape' }] };
    expect(fieldErrorsFrom422(error, 'form')).toEqual({ sigma: 'Input should be greater than 0', input_shape: 'bad shape' });
  });
  it('puts a sentence on the fallback field', () => {
    expect(fieldErrorsFrom422({ detail: 'the model fails on a zero input' }, 'file')).toEqual({ file: 'the model fails on a zero input' });
  });
});
