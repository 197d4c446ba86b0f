import { useQuery } from '@tanstack/react-query';
import { readDatasetsApiV1DatasetsGetOptions, readModelsApiV1ModelsGetOptions } from '../client/@tanstack/react-query.gen';
import { Field } from './Field';
import type { ConfigValues, Errors } from './validation';

/** The config fields typed into a text input (the others are selects and a checkbox). */
type TextField = { [K in keyof ConfigValues]: ConfigValues[K] extends string ? K : never }[keyof ConfigValues];

/** The certification config inputs, shared by the add-model and certify forms. */
export function ConfigFields({ values, errors, onChange, inputShape }: {
  values: ConfigValues; errors: Errors; onChange: (patch: Partial<ConfigValues>) => void;
  inputShape?: number[]; // the classifier's (C, H, W): only denoisers of that shape can sit in front of it
}) {
  const datasets = useQuery(readDatasetsApiV1DatasetsGetOptions());
  const models = useQuery(readModelsApiV1ModelsGetOptions());
  const fits = (shape: number[]) => !inputShape || shape.join(',') === inputShape.join(',');
  const denoisers = (models.data?.data ?? []).filter((m) => m.kind === 'denoiser' && fits(m.input_shape));
  const allDatasets = datasets.data?.data ?? [{ id: 'digits', name: 'digits', input_shape: [1, 8, 8] }];
  // a dataset of another input shape would only earn a 422; keep the chosen one listed whatever it is
  const offered = allDatasets.filter((d) => fits(d.input_shape) || d.id === values.dataset);
  const text = (name: TextField, label: string, hint?: string, inputMode: 'numeric' | 'decimal' = 'decimal') => (
    <Field name={name} label={label} error={errors[name]} hint={hint}>
      <input id={`f-${name}`} name={name} inputMode={inputMode} value={values[name]}
             aria-invalid={!!errors[name]} onChange={(e) => onChange({ [name]: e.target.value })} />
    </Field>
  );
  return (
    <fieldset>
      <legend>Certification</legend>
      <div className="grid">
        <Field name="dataset" label="Dataset" error={errors.dataset}
               hint={inputShape ? `datasets of ${inputShape.join('×')} inputs` : undefined}>
          <select id="f-dataset" name="dataset" value={values.dataset} onChange={(e) => onChange({ dataset: e.target.value })}>
            {offered.map((d) => (
              <option key={d.id} value={d.id}>{d.name}</option>
            ))}
          </select>
        </Field>
        {text('count', 'Inputs (count)', 'empty: the whole split', 'numeric')}
        <Field name="noise" label="Noise" error={errors.noise}>
          <select id="f-noise" name="noise" value={values.noise}
                  onChange={(e) => onChange({ noise: e.target.value as ConfigValues['noise'] })}>
            <option value="gaussian">Gaussian</option>
            <option value="general_gaussian">Generalized Gaussian</option>
          </select>
        </Field>
        {values.noise === 'general_gaussian' && text('k', 'k', 'generalized Gaussian exponent', 'numeric')}
        <Field name="method" label="Method" error={errors.method}>
          <select id="f-method" name="method" value={values.method}
                  onChange={(e) => onChange({ method: e.target.value as ConfigValues['method'] })}>
            <option value="np">NP (Cohen et al.)</option>
            <option value="dsrs">DSRS (double sampling)</option>
          </select>
        </Field>
        {values.method === 'dsrs' && text('q_sigma', "Q's sigma",
          'DSRS samples a second distribution Q: the same noise at this sigma (usually a little below sigma)')}
        {text('sigma', 'Sigma', 'noise level on the [0, 1] pixel scale, whatever the model reads; the model\'s training sigma certifies best')}
        {text('alpha', 'Alpha', 'the certificate fails with probability at most alpha (0.001: 1 in 1000)')}
        {text('n', 'N', values.method === 'dsrs' ? 'estimation samples, split evenly between P and Q; more: larger radii'
          : 'estimation samples (ISS, sequential: the maximum); more: larger radii, up to sigma·Φ⁻¹(alpha^(1/N))', 'numeric')}
        {text('n0', 'n0', 'selection samples: they only pick the class to certify', 'numeric')}
        {text('batch_size', 'Batch size', undefined, 'numeric')}
        {values.method === 'np' && text('pack', 'Pack', 'inputs certified together, sharing batches; empty: 1',
          'numeric')}
        {values.method === 'np' && text('iss_delta', 'ISS budget',
          'input-specific sampling: the n0 pilot picks each input\'s N, giving up at most this much radius against the full N; empty: fixed N')}
        {values.method === 'np' && text('sequential_delta', 'Sequential delta',
          'stop once more samples add less radius; empty: fixed N')}
        <Field name="precision" label="Precision" error={errors.precision}
               hint="bf16: faster on GPUs and AVX512-BF16 CPUs; certifies the bf16 model (weights files only)">
          <select id="f-precision" name="precision" value={values.precision}
                  onChange={(e) => onChange({ precision: e.target.value as ConfigValues['precision'] })}>
            <option value="fp32">float32</option>
            <option value="bf16">bfloat16</option>
          </select>
        </Field>
        <Field name="graph" label="Graph" error={errors.graph ?? errors.freeze ?? errors.compile}
               hint="frozen: one TorchScript graph, the fast path on CPU workers (weights and TorchScript files);
                     torch.compile: pays on long runs on GPUs, the first batch of each size waits (weights and .pt2 files)">
          <select id="f-graph" name="graph" value={values.graph}
                  onChange={(e) => onChange({ graph: e.target.value as ConfigValues['graph'] })}>
            <option value="eager">eager</option>
            <option value="freeze">frozen (TorchScript)</option>
            <option value="compile">torch.compile</option>
          </select>
        </Field>
        <Field name="denoiser_id" label="Denoiser" error={errors.denoiser_id}>
          <select id="f-denoiser_id" name="denoiser_id" value={values.denoiser_id}
                  onChange={(e) => onChange({ denoiser_id: e.target.value })}>
            <option value="">none</option>
            {denoisers.map((m) => <option key={m.id} value={m.id}>{m.name}</option>)}
          </select>
        </Field>
      </div>
    </fieldset>
  );
}
