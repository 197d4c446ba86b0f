import { describe, expect, it } from 'vitest';
import type { DatasetPublic, ModelPublic } from '../../client/types.gen';
import { configFor, datasetFor } from './CertifyPage';

const dataset = (id: string, input_shape: number[]): DatasetPublic =>
  ({ id, name: id, builtin: true, size: 100, input_shape, num_classes: 10 });
const datasets = [dataset('digits', [1, 8, 8]), dataset('fashion_mnist', [1, 28, 28]), dataset('cifar10', [3, 32, 32])];
const model = (patch: Partial<ModelPublic>): ModelPublic => ({
  id: 1, name: 'm', kind: 'classifier', input_shape: [1, 28, 28], num_classes: 10, size_bytes: 1,
  created_at: '2026-12-05T10:00:00Z', ...patch,
});

describe('the certify form follows the model', () => {
  it('takes the dataset and sigma the model names', () => {
    const values = configFor(model({ dataset: 'fashion_mnist', sigma: 0.5 }), datasets);
    expect(values.dataset).toBe('fashion_mnist');
    expect(values.sigma).toBe('0.5');
  });
  it('without a named dataset, picks one whose inputs fit the model, never digits for a 28x28 model', () => {
    expect(datasetFor(model({}), datasets)).toBe('fashion_mnist');
    expect(datasetFor(model({ input_shape: [3, 32, 32] }), datasets)).toBe('cifar10');
    expect(datasetFor(model({ dataset: 'gone', input_shape: [1, 8, 8] }), datasets)).toBe('digits');
  });
});
