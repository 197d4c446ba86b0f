import { useState } from 'react';
import { Link, useNavigate, useParams } from 'react-router-dom';
import { useMutation, useQuery } from '@tanstack/react-query';
import { createJobApiV1JobsPostMutation, readModelApiV1ModelsIdGetOptions } from '../../client/@tanstack/react-query.gen';
import { ConfigFields } from '../../forms/ConfigFields';
import { defaultConfigValues, fieldErrorsFrom422, jobCreate, validateConfig, type ConfigValues, type Errors } from '../../forms/validation';

/** Start a certification job for one model. */
export function CertifyPage() {
  const id = Number(useParams().id);
  const navigate = useNavigate();
  const model = useQuery(readModelApiV1ModelsIdGetOptions({ path: { id } }));
  const [config, setConfig] = useState<ConfigValues>(defaultConfigValues);
  const [errors, setErrors] = useState<Errors>({});
  const createJob = useMutation(createJobApiV1JobsPostMutation());

  async function submit(e: React.FormEvent) {
    e.preventDefault();
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
      <h1>Certify {model.data ? model.data.name : `model #${id}`}</h1>
      {model.data && <p className="muted">input {model.data.input_shape.join('×')}, {model.data.num_classes} classes</p>}
      <form onSubmit={submit} noValidate>
        <ConfigFields values={config} errors={errors} onChange={(p) => setConfig((c) => ({ ...c, ...p }))} />
        {errors.form && <p className="error" role="alert">{errors.form}</p>}
        <button type="submit" disabled={createJob.isPending}>{createJob.isPending ? 'Starting…' : 'Start certification'}</button>
      </form>
    </section>
  );
}
