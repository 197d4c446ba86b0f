import { describe, expect, it, vi, afterEach } from 'vitest';
import { render, screen, cleanup } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { MemoryRouter } from 'react-router-dom';
import { client } from '../../api';
import { AddModelPage } from './AddModelPage';

client.setConfig({ baseUrl: 'http://localhost' }); // jsdom's Request needs an absolute URL

function renderPage(fetchMock: ReturnType<typeof vi.fn>) {
  vi.stubGlobal('fetch', fetchMock);
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  render(<QueryClientProvider client={client}><MemoryRouter><AddModelPage /></MemoryRouter></QueryClientProvider>);
}
const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

afterEach(() => { cleanup(); vi.unstubAllGlobals(); });

describe('AddModelPage', () => {
  it('shows errors beside the fields and sends nothing while the form is invalid', async () => {
    const fetchMock = vi.fn(async (req: Request) => json(200, { data: [], count: 0, url: req.url }));
    renderPage(fetchMock);
    const user = userEvent.setup();
    await user.clear(screen.getByLabelText('Sigma'));
    await user.type(screen.getByLabelText('Sigma'), '-1');
    await user.click(screen.getByRole('button', { name: 'Add and certify' }));
    expect(await screen.findByText(/choose a model file/)).toBeInTheDocument();
    expect(screen.getByText('a name is required')).toBeInTheDocument();
    expect(screen.getByText(/sigma must be a number > 0/)).toBeInTheDocument();
    const posts = fetchMock.mock.calls.filter(([req]) => (req as Request).method === 'POST');
    expect(posts).toHaveLength(0);
  });

  it('offers the sample-size schedules for method np only, one at a time', async () => {
    const fetchMock = vi.fn(async () => json(200, { data: [], count: 0 }));
    renderPage(fetchMock);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('ISS budget'), '0.05');
    await user.type(screen.getByLabelText('Sequential delta'), '0.1');
    await user.click(screen.getByRole('button', { name: 'Add and certify' }));
    expect(await screen.findByText('choose one of ISS budget and sequential delta'))
      .toHaveAttribute('data-field', 'sequential_delta');
    await user.selectOptions(screen.getByLabelText('Method'), 'dsrs');
    for (const label of ['ISS budget', 'Sequential delta']) expect(screen.queryByLabelText(label)).toBeNull();
  });

  it('offers pack for method np only and checks it before sending', async () => {
    const fetchMock = vi.fn(async () => json(200, { data: [], count: 0 }));
    renderPage(fetchMock);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Pack'), '2000');
    await user.click(screen.getByRole('button', { name: 'Add and certify' }));
    expect(await screen.findByText('pack must be a whole number from 1 to 1024 (empty: 1)'))
      .toHaveAttribute('data-field', 'pack');
    await user.selectOptions(screen.getByLabelText('Method'), 'dsrs');
    expect(screen.queryByLabelText('Pack')).toBeNull();
  });

  it('registers a denoiser without classes, input scaling or a certification', async () => {
    const fetchMock = vi.fn(async (req: Request) =>
      req.method === 'POST' ? json(201, { id: 3 }) : json(200, { data: [], count: 0 }));
    renderPage(fetchMock);
    const user = userEvent.setup();
    await user.upload(screen.getByLabelText('File'), new File(['x'], 'drunet.pt'));
    await user.type(screen.getByLabelText('Name'), 'drunet');
    await user.selectOptions(screen.getByLabelText('Kind'), 'denoiser');
    expect(screen.getByText(/in front of a classifier .* the job's sigma/)).toBeInTheDocument();
    for (const label of ['Classes', 'Class names', 'Input max', 'Sigma']) expect(screen.queryByLabelText(label)).toBeNull();
    await user.click(screen.getByRole('button', { name: 'Add model' }));
    await vi.waitFor(() => expect(fetchMock.mock.calls.some(([req]) => (req as Request).method === 'POST')).toBe(true));
    const posts = fetchMock.mock.calls.map(([req]) => req as Request).filter((req) => req.method === 'POST');
    expect(posts).toHaveLength(1);
    const metadata = JSON.parse(String((await posts[0].formData()).get('metadata')));
    expect(metadata).toEqual({ name: 'drunet', kind: 'denoiser', input_shape: [1, 8, 8] });
  });

  // uploads a model, picks ``graph`` and asks for a certification that the API refuses with ``refusal``
  async function refusedGraph(file: string, graph: string, refusal: string) {
    const fetchMock = vi.fn(async (req: Request) => {
      if (req.method !== 'POST') return json(200, { data: [], count: 0 });
      return req.url.includes('/jobs') ? json(422, { detail: refusal }) : json(201, { id: 3 });
    });
    renderPage(fetchMock);
    const user = userEvent.setup();
    await user.upload(screen.getByLabelText('File'), new File(['x'], file));
    await user.type(screen.getByLabelText('Name'), 'cnn');
    expect(screen.getByLabelText('Graph')).toHaveValue('eager');
    await user.selectOptions(screen.getByLabelText('Graph'), graph);
    await user.click(screen.getByRole('button', { name: 'Add and certify' }));
    expect(await screen.findByText(refusal)).toHaveAttribute('role', 'alert');
    const jobPosts = fetchMock.mock.calls.map(([req]) => req as Request)
      .filter((req) => req.method === 'POST' && req.url.includes('/jobs'));
    expect(jobPosts).toHaveLength(1);
    return (await jobPosts[0].json()).config;
  }

  it('sends torch.compile when chosen and shows the API refusing it for a compiled format', async () => {
    const refusal = 'compile runs PyTorch modules through torch.compile (state_dict, safetensors, export files); '
      + 'model 3 (cnn) is torchscript, a compiled graph already';
    expect(await refusedGraph('cnn.pt', 'torch.compile', refusal))
      .toMatchObject({ compile: true, freeze: false, bf16: false });
  });

  it('sends a frozen graph when chosen and shows the API refusing it for a format that does not script', async () => {
    const refusal = 'freeze scripts PyTorch modules into TorchScript (state_dict, safetensors, torchscript files); '
      + 'model 3 (cnn) is onnx, which TorchScript cannot script';
    expect(await refusedGraph('cnn.onnx', 'frozen (TorchScript)', refusal)).toMatchObject({ compile: false, freeze: true });
  });

  it("shows the API's 422 message beside the field it names", async () => {
    const fetchMock = vi.fn(async (req: Request) =>
      req.method === 'POST'
        ? json(422, { detail: [{ loc: ['input_shape'], msg: 'the model fails on input shape (1, 8, 8)' }] })
        : json(200, { data: [], count: 0 }));
    renderPage(fetchMock);
    const user = userEvent.setup();
    await user.upload(screen.getByLabelText('File'), new File(['x'], 'cnn.pt'));
    await user.type(screen.getByLabelText('Name'), 'cnn');
    await user.click(screen.getByRole('button', { name: 'Add and certify' }));
    const message = await screen.findByText('the model fails on input shape (1, 8, 8)');
    expect(message).toHaveAttribute('data-field', 'input_shape');
  });
});
