import { useEffect, useState } from 'react';
import { Link, useNavigate, useParams } from 'react-router-dom';
import { useMutation, useQuery } from '@tanstack/react-query';
import {
  createJobApiV1JobsPostMutation, readDatasetsApiV1DatasetsGetOptions, readModelApiV1ModelsIdGetOptions,
} from '../../client/@tanstack/react-query.gen';
import type { DatasetPublic, ModelPublic } from '../../client/types.gen';
import { errorMessage } from '../../api';
import { ConfigFields } from '../../forms/ConfigFields';
import { defaultConfigValues, fieldErrorsFrom422, jobCreate, validateConfig, type ConfigValues, type Errors } from '../../forms/validation';
import { isNotFound, routeId } from '../../format';
import { NotFound } from '../notfound/NotFound';

const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/** The dataset a model is for: the one it names, else the first whose inputs and classes fit it. */
export function datasetFor(model: ModelPublic, datasets: DatasetPublic[]): string | undefined {
  if (model.dataset && datasets.some((d) => d.id === model.dataset)) return model.dataset;
  return datasets.find((d) => sameShape(d.input_shape, model.input_shape) && d.num_classes === model.num_classes)?.id;
}

/** The form's starting values for this model: its dataset and its training sigma, not a digits/0.25 default. */
export function configFor(model: ModelPublic, datasets: DatasetPublic[]): ConfigValues {
  return {
    ...defaultConfigValues,
    dataset: datasetFor(model, datasets) ?? defaultConfigValues.dataset,
    ...(model.sigma != null ? { sigma: String(model.sigma) } : {}),
  };
}

/** Start a certification job for one model. */
export function CertifyPage() {
  const raw = useParams().id;
  const id = routeId(raw);
  if (id == null) return <NotFound what={`Model "${raw}"`} />;
  return <Certify key={id} id={id} />; // a fresh form per model: another model's values never carry over
}

function Certify({ id }: { id: number }) {
  const navigate = useNavigate();
  const model = useQuery({
    ...readModelApiV1ModelsIdGetOptions({ path: { id } }),
    retry: (count, error) => !isNotFound(error) && count < 2,
  });
  const datasets = useQuery(readDatasetsApiV1DatasetsGetOptions());
  const [config, setConfig] = useState<ConfigValues | null>(null);
  const [errors, setErrors] = useState<Errors>({});
  const createJob = useMutation(createJobApiV1JobsPostMutation());

  // the form appears once the model and the datasets are known, starting from the model's own settings
  useEffect(() => {
    if (model.data && datasets.data && config === null) setConfig(configFor(model.data, datasets.data.data));
  }, [model.data, datasets.data, config]);

  if (model.isError && isNotFound(model.error)) return <NotFound what={`Model #${id}`} />;
  if (model.isError) return <p className="error" role="alert">{errorMessage(model.error)}</p>;
  if (model.data?.kind === 'denoiser')
    return <section><p><Link to="/">← Models</Link></p><p>{model.data.name} is a denoiser: certify a classifier and pick it as
      its denoiser.</p></section>;
  if (!model.data || !config) return <p>Loading model #{id}…</p>;
  const m = model.data;

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    if (!config) return;
    const found = validateConfig(config);
    setErrors(found);
    if (Object.keys(found).length) return;
    try {
      const job = await createJob.mutateAsync({ body: jobCreate(id, config) });
      navigate(`/jobs/${job.id}`);
    } catch (error) {
      setErrors(fieldErrorsFrom422(error, 'form'));
    }
  }

  return (
    <section>
      <p><Link to="/">← Models</Link></p>
      <h1>Certify {m.name}</h1>
      <p className="muted">input {m.input_shape.join('×')}, {m.num_classes} classes
        {m.dataset && <>, trained on {m.dataset}</>}{m.sigma != null && <> at sigma {m.sigma}</>}</p>
      <form onSubmit={submit} noValidate>
        <ConfigFields values={config} errors={errors} inputShape={m.input_shape}
                      onChange={(p) => setConfig((c) => ({ ...(c ?? defaultConfigValues), ...p }))} />
        {errors.form && <p className="error" role="alert">{errors.form}</p>}
        <button type="submit" disabled={createJob.isPending}>{createJob.isPending ? 'Starting…' : 'Start certification'}</button>
      </form>
    </section>
  );
}
