import { useState } from 'react';
import { useNavigate } from 'react-router-dom';
import { useMutation, useQueryClient } from '@tanstack/react-query';
import { createModelApiV1ModelsPostMutation, createJobApiV1JobsPostMutation } from '../../client/@tanstack/react-query.gen';
import { ConfigFields } from '../../forms/ConfigFields';
import { Field } from '../../forms/Field';
import {
  defaultConfigValues, defaultModelValues, fieldErrorsFrom422, jobCreate, modelMetadata, validateConfig, validateModel,
  type ConfigValues, type Errors, type ModelValues,
} from '../../forms/validation';

const DENOISER_HINT = "cleans noisy images: a job puts it in front of a classifier and tells it the job's sigma";

/** Register a model (the file plus its metadata) and, optionally, start its first certification. */
export function AddModelPage() {
  const navigate = useNavigate();
  const queryClient = useQueryClient();
  const [model, setModel] = useState<ModelValues>(defaultModelValues);
  const [config, setConfig] = useState<ConfigValues>(defaultConfigValues);
  const [certifyNow, setCertifyNow] = useState(true);
  const [errors, setErrors] = useState<Errors>({});
  const createModel = useMutation(createModelApiV1ModelsPostMutation());
  const createJob = useMutation(createJobApiV1JobsPostMutation());
  const busy = createModel.isPending || createJob.isPending;
  const denoiser = model.kind === 'denoiser';
  const certify = certifyNow && !denoiser; // a denoiser is certified only in front of a classifier

  const patchModel = (patch: Partial<ModelValues>) => setModel((m) => ({ ...m, ...patch }));

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    const found = { ...validateModel(model), ...(certify ? validateConfig(config) : {}) };
    setErrors(found);
    if (Object.keys(found).length) return;
    let created;
    try {
      created = await createModel.mutateAsync({
        // certified right away: the dataset and sigma chosen become the model's own, the certify form's defaults later
        body: { file: model.file as Blob, metadata: JSON.stringify({ ...modelMetadata(model),
          ...(certify ? { dataset: config.dataset, sigma: Number(config.sigma) } : {}) }) },
      });
    } catch (error) {
      setErrors(fieldErrorsFrom422(error, 'file'));
      return;
    }
    await queryClient.invalidateQueries();
    if (!certify) { navigate('/'); return; }
    try {
      const job = await createJob.mutateAsync({ body: jobCreate(created.id, config) });
      navigate(`/jobs/${job.id}`);
    } catch (error) {
      setErrors(fieldErrorsFrom422(error, 'form'));
    }
  }

  const text = (name: keyof Omit<ModelValues, 'file'>, label: string, hint?: string) => (
    <Field name={name} label={label} error={errors[name]} hint={hint}>
      <input id={`f-${name}`} name={name} value={model[name]} aria-invalid={!!errors[name]}
             onChange={(e) => patchModel({ [name]: e.target.value })} />
    </Field>
  );

  return (
    <section>
      <h1>Add a model</h1>
      <form onSubmit={submit} noValidate>
        <fieldset>
          <legend>Model</legend>
          <div className="grid">
            <Field name="file" label="File" error={errors.file} hint="TorchScript .pt, torch.export .pt2, ONNX, safetensors">
              <input id="f-file" name="file" type="file" accept=".pt,.pt2,.pth,.safetensors,.onnx"
                     onChange={(e) => patchModel({ file: e.target.files?.[0] ?? null })} />
            </Field>
            {text('name', 'Name')}
            <Field name="kind" label="Kind" error={errors.kind} hint={denoiser ? DENOISER_HINT : 'outputs class scores'}>
              <select id="f-kind" name="kind" value={model.kind}
                      onChange={(e) => patchModel({ kind: e.target.value as ModelValues['kind'] })}>
                <option value="classifier">classifier</option>
                <option value="denoiser">denoiser</option>
              </select>
            </Field>
            <Field name="format" label="Format" error={errors.format}>
              <select id="f-format" name="format" value={model.format} onChange={(e) => patchModel({ format: e.target.value })}>
                <option value="">detect from the file</option>
                <option value="torchscript">TorchScript</option>
                <option value="export">torch.export</option>
                <option value="safetensors">safetensors</option>
                <option value="state_dict">state dict</option>
                <option value="onnx">ONNX</option>
              </select>
            </Field>
            {text('input_shape', 'Input shape', 'C,H,W')}
            {!denoiser && <>
              {text('num_classes', 'Classes')}
              {text('class_names', 'Class names', 'optional, comma separated')}
              {text('input_max', 'Input max', 'the model reads pixels in [0, max]')}
            </>}
          </div>
        </fieldset>
        {!denoiser && <label className="check">
          <input type="checkbox" name="certify_now" checked={certifyNow} onChange={(e) => setCertifyNow(e.target.checked)} />
          Start a certification right away
        </label>}
        {certify && <ConfigFields values={config} errors={errors} onChange={(p) => setConfig((c) => ({ ...c, ...p }))} />}
        {errors.form && <p className="error" role="alert">{errors.form}</p>}
        <button type="submit" disabled={busy}>{busy ? 'Uploading…' : certify ? 'Add and certify' : 'Add model'}</button>
      </form>
    </section>
  );
}
