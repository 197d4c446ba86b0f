// Client-side checks mirror the API's schema (openapi.json) so most mistakes never leave the browser;
// the API's own 422 messages are mapped back onto the same field names by `fieldErrorsFrom422`.
// The certification config's bounds are read from the generated schema (engine/config.py's CertifyConfig
// within the server's limits), never written here; the rules between fields mirror CertifyConfig's.
import { JobConfigSchema, SubsetSchema } from '../client/schemas.gen';
import type { JobConfig, JobCreate, Method, ModelKind, NoiseKind } from '../client/types.gen';

export type Errors = Partial<Record<string, string>>;

/** The model part of the add-model form, as the inputs hold it (strings). */
export interface ModelValues {
  file: File | null;
  kind: ModelKind; // a denoiser has no classes and reads [0, 1] images
  name: string;
  format: string; // '' = detected by the API
  input_shape: string; // "1,8,8"
  num_classes: string;
  class_names: string; // comma separated, optional
  input_max: string;
}

/** The certification config, as the inputs hold it. */
export interface ConfigValues {
  dataset: string;
  count: string;
  method: Method;
  noise: NoiseKind;
  k: string;
  q_sigma: string;
  sigma: string;
  alpha: string;
  n: string;
  n0: string;
  batch_size: string;
  pack: string; // '' = 1, one input at a time
  iss_delta: string; // '' = fixed n
  sequential_delta: string; // '' = fixed n
  denoiser_id: string; // '' = none
  precision: 'fp32' | 'bf16';
  graph: 'eager' | 'freeze' | 'compile'; // freeze: one TorchScript graph (CPU fast path); compile: torch.compile
}

export const defaultModelValues: ModelValues = {
  file: null, kind: 'classifier', name: '', format: '', input_shape: '1,8,8', num_classes: '10', class_names: '', input_max: '1',
};

export const defaultConfigValues: ConfigValues = {
  dataset: 'digits', count: '20', method: 'np', noise: 'gaussian', k: '0', q_sigma: '', sigma: '0.25',
  alpha: '0.001', n: '10000', n0: '100', batch_size: '1000', pack: '', iss_delta: '', sequential_delta: '',
  denoiser_id: '', precision: 'fp32', graph: 'eager',
};

const isInt = (s: string) => /^\s*\d+\s*$/.test(s);
const isNum = (s: string) => s.trim() !== '' && Number.isFinite(Number(s));

function positiveInt(errors: Errors, field: string, value: string, label: string, min = 1) {
  if (!isInt(value) || Number(value) < min) errors[field] = `${label} must be a whole number ≥ ${min}`;
}

/** A number field's bounds as a JSON schema states them. */
export interface Bounds {
  integer: boolean;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
}

interface SchemaNode extends Partial<Omit<Bounds, 'integer'>> {
  type?: string;
  anyOf?: readonly SchemaNode[];
}

/** The bounds of a property; of an optional one (`anyOf` with null), those of its number branch. */
export function boundsOf(property: SchemaNode): Bounds {
  const node = property.anyOf?.find((branch) => branch.type === 'integer' || branch.type === 'number') ?? property;
  const { minimum, maximum, exclusiveMinimum, exclusiveMaximum } = node;
  return { integer: node.type === 'integer', minimum, maximum, exclusiveMinimum, exclusiveMaximum };
}

const config = JobConfigSchema.properties;
/** The API's bounds on the config fields the form edits, from openapi.json. */
export const configBounds = {
  k: boundsOf(config.k), sigma: boundsOf(config.sigma), alpha: boundsOf(config.alpha), n: boundsOf(config.n),
  n0: boundsOf(config.n0), batch_size: boundsOf(config.batch_size), pack: boundsOf(config.pack),
  iss_delta: boundsOf(config.iss_delta), sequential_delta: boundsOf(config.sequential_delta),
  q_sigma: boundsOf(config.q_sigma), count: boundsOf(SubsetSchema.properties.count),
};

export function withinBounds(value: number, b: Bounds): boolean {
  return Number.isFinite(value) && (!b.integer || Number.isInteger(value))
    && (b.minimum === undefined || value >= b.minimum) && (b.maximum === undefined || value <= b.maximum)
    && (b.exclusiveMinimum === undefined || value > b.exclusiveMinimum)
    && (b.exclusiveMaximum === undefined || value < b.exclusiveMaximum);
}

/** "a whole number from 1 to 1024", "a number > 0 and ≤ 100" */
export function boundsText(b: Bounds): string {
  if (b.integer && b.minimum !== undefined && b.maximum !== undefined) return `a whole number from ${b.minimum} to ${b.maximum}`;
  const limits = [
    b.exclusiveMinimum !== undefined ? `> ${b.exclusiveMinimum}` : b.minimum !== undefined ? `≥ ${b.minimum}` : '',
    b.exclusiveMaximum !== undefined ? `< ${b.exclusiveMaximum}` : b.maximum !== undefined ? `≤ ${b.maximum}` : '',
  ].filter(Boolean);
  return `${b.integer ? 'a whole number' : 'a number'} ${limits.join(' and ')}`;
}

/** Checks a field against the schema's bounds; `tail` adds what an empty field means. */
function checkBounds(errors: Errors, field: keyof typeof configBounds, value: string, label: string, tail = '') {
  const b = configBounds[field];
  const number = b.integer ? (isInt(value) ? Number(value) : NaN) : isNum(value) ? Number(value) : NaN;
  if (!withinBounds(number, b)) errors[field] = `${label} must be ${boundsText(b)}${tail}`;
}

export function parseShape(text: string): number[] | null {
  const parts = text.split(/[,x×\s]+/).filter(Boolean);
  if (parts.length !== 3 || !parts.every(isInt) || parts.some((p) => Number(p) < 1)) return null;
  return parts.map(Number);
}

const classNames = (v: ModelValues) => v.class_names.split(',').map((s) => s.trim()).filter(Boolean);

export function validateModel(v: ModelValues): Errors {
  const errors: Errors = {};
  if (!v.file) errors.file = 'choose a model file (.pt, .pt2, .safetensors)';
  if (!v.name.trim()) errors.name = 'a name is required';
  else if (v.name.length > 255) errors.name = 'at most 255 characters';
  if (!parseShape(v.input_shape)) errors.input_shape = 'three positive integers: channels, height, width (e.g. 1,8,8)';
  if (v.kind === 'denoiser') return errors; // the API refuses classes and input scaling for a denoiser
  positiveInt(errors, 'num_classes', v.num_classes, 'classes', 2);
  const names = classNames(v);
  if (names.length && isInt(v.num_classes) && names.length !== Number(v.num_classes))
    errors.class_names = `${names.length} names for ${v.num_classes} classes`;
  if (!isNum(v.input_max) || Number(v.input_max) <= 0) errors.input_max = 'must be a number > 0';
  return errors;
}

export function validateConfig(v: ConfigValues): Errors {
  const errors: Errors = {};
  if (!v.dataset) errors.dataset = 'choose a dataset';
  if (v.count.trim() !== '') checkBounds(errors, 'count', v.count, 'count');
  checkBounds(errors, 'sigma', v.sigma, 'sigma');
  checkBounds(errors, 'alpha', v.alpha, 'alpha');
  checkBounds(errors, 'n', v.n, 'N');
  checkBounds(errors, 'n0', v.n0, 'n0');
  checkBounds(errors, 'batch_size', v.batch_size, 'batch size');
  if (v.noise === 'general_gaussian') {
    checkBounds(errors, 'k', v.k, 'k');
    if (!errors.k && Number(v.k) < 1) errors.k = 'generalized Gaussian noise needs k ≥ 1';
  }
  if (v.method === 'dsrs') {
    checkBounds(errors, 'q_sigma', v.q_sigma, "Q's sigma");
    if (!errors.q_sigma && !errors.sigma && Number(v.q_sigma) >= Number(v.sigma))
      errors.q_sigma = "Q's sigma must be below sigma: Q is the narrower noise";
  }
  if (v.method !== 'np') return errors; // sample-size schedules and packing are for NP only, and not sent otherwise
  if (v.iss_delta.trim() !== '') checkBounds(errors, 'iss_delta', v.iss_delta, 'ISS budget', ' (empty: fixed N)');
  if (v.sequential_delta.trim() !== '')
    checkBounds(errors, 'sequential_delta', v.sequential_delta, 'sequential delta', ' (empty: fixed N)');
  if (!errors.sequential_delta && v.sequential_delta.trim() !== '' && v.iss_delta.trim() !== '')
    errors.sequential_delta = 'choose one of ISS budget and sequential delta';
  if (v.pack.trim() === '') return errors;
  checkBounds(errors, 'pack', v.pack, 'pack', ' (empty: 1)');
  if (!errors.pack && Number(v.pack) > 1 && v.sequential_delta.trim() !== '') // the sequential looks go input by input
    errors.pack = 'pack works with a fixed N or an ISS budget, not a sequential delta';
  return errors;
}

export function modelMetadata(v: ModelValues) {
  const base = {
    name: v.name.trim(),
    kind: v.kind,
    ...(v.format ? { format: v.format } : {}),
    input_shape: parseShape(v.input_shape) ?? [],
  };
  if (v.kind === 'denoiser') return base;
  const names = classNames(v);
  return {
    ...base,
    num_classes: Number(v.num_classes),
    ...(names.length ? { class_names: names } : {}),
    input_max: Number(v.input_max),
  };
}

/** An optional number that only method np takes; null when empty or for another method. */
const optionalNp = (v: ConfigValues, value: string) => (v.method === 'np' && value.trim() ? Number(value) : null);

export function jobConfig(v: ConfigValues): JobConfig {
  return {
    method: v.method,
    noise: v.noise,
    k: v.noise === 'general_gaussian' ? Number(v.k) : 0,
    sigma: Number(v.sigma),
    alpha: Number(v.alpha),
    n: Number(v.n),
    n0: Number(v.n0),
    batch_size: Number(v.batch_size),
    pack: v.method === 'np' && v.pack.trim() ? Number(v.pack) : 1, // the API packs NP only
    iss_delta: optionalNp(v, v.iss_delta),
    sequential_delta: optionalNp(v, v.sequential_delta),
    q_sigma: v.method === 'dsrs' ? Number(v.q_sigma) : null,
    denoiser_id: v.denoiser_id ? Number(v.denoiser_id) : null,
    bf16: v.precision === 'bf16',
    compile: v.graph === 'compile',
    freeze: v.graph === 'freeze',
  };
}

export function jobCreate(modelId: number, v: ConfigValues): JobCreate {
  return {
    model_id: modelId,
    dataset: v.dataset,
    subset: v.count.trim() ? { count: Number(v.count) } : {},
    config: jobConfig(v),
  };
}

/**
 * Field errors from an API error body. A 422 list names its field by `loc`'s last string part
 * (`["body","config","sigma"]` -> sigma); a plain-string detail lands on `fallbackField`.
 */
export function fieldErrorsFrom422(error: unknown, fallbackField: string): Errors {
  const detail = (error as { detail?: unknown } | null)?.detail;
  if (typeof detail === 'string') return { [fallbackField]: detail };
  if (!Array.isArray(detail)) return { [fallbackField]: String((error as Error)?.message ?? error) };
  const errors: Errors = {};
  for (const d of detail as { loc?: (string | number)[]; msg?: string }[]) {
    const names = (d.loc ?? []).filter((p): p is string => typeof p === 'string' && p !== 'body');
    const field = names.at(-1) ?? fallbackField;
    const key = field === 'metadata' ? fallbackField : field;
    errors[key] = errors[key] ? `${errors[key]}; ${d.msg}` : (d.msg ?? 'invalid');
  }
  return errors;
}
