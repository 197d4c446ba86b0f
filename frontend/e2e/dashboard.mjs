// The dashboard end to end in Debian's chromium (driven by playwright-core; no browser download).
// Started by tests/e2e/test_dashboard.py, which runs the service and passes KAVACH_URL, KAVACH_TOKEN,
// KAVACH_MODEL (a TorchScript digits CNN), KAVACH_DENOISER (a DRUNet checkpoint), CHROMIUM, SCREENSHOTS and PROFILE_DIR.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const {
  KAVACH_URL: url, KAVACH_TOKEN: token, KAVACH_MODEL: modelFile, KAVACH_DENOISER: denoiserFile, SCREENSHOTS: shots,
  PROFILE_DIR: profile,
} = process.env;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TIMEOUT = 120_000;

const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  // without the background-networking flags chromium's own connections are refused in a closed network
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1400, height: 900 }, // the size of the walk through the dashboard
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(30_000);
const errors = [];
page.on('pageerror', (e) => errors.push(String(e)));
const shot = (name, fullPage = true) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage });
const step = (text) => console.log(`- ${text}`);
const requests = [];
page.on('request', (r) => requests.push(r.url()));
// the dashboard's rounding of a certified figure: down, never up (frontend/src/format.ts)
const floorFixed = (v, digits = 3) => (Math.floor(v * 10 ** digits + 1e-9) / 10 ** digits).toFixed(digits);
const api = async (route) =>
  (await page.request.get(`${url}/api/v1${route}`, { headers: { Authorization: `Bearer ${token}` } })).json();
const rowsShown = () => page.locator('[data-testid=results-table] tbody tr');

/** The not-found page, still there a moment later (no flipping back to loading), with its way back. */
async function expectNotFound(hash) {
  await page.goto(`${url}/#${hash}`);
  await page.getByTestId('not-found').waitFor();
  await page.waitForTimeout(2500);
  assert.ok(await page.getByTestId('not-found').isVisible(), `${hash}: the not-found page stays`);
  assert.equal(await page.getByText(/Loading/).count(), 0, `${hash}: no loading text`);
  assert.equal(await page.locator('#f-sigma').count(), 0, `${hash}: no usable form`);
  await page.getByRole('link', { name: '← Back to the models' }).waitFor();
}

async function certifyFromForm({ count, sigma, n = 2000 }) {
  await page.fill('#f-count', String(count));
  await page.fill('#f-sigma', String(sigma));
  await page.fill('#f-n', String(n));
  await page.fill('#f-n0', '50');
  await page.fill('#f-batch_size', '500');
}

/** Waits on the job page until the live progress reads total/total and the job is done; returns the job id. */
async function watchJob(total) {
  await page.waitForURL(/#\/jobs\/\d+/);
  const id = Number(page.url().match(/#\/jobs\/(\d+)/)[1]);
  await page.getByTestId('progress').waitFor();
  await page.getByTestId('progress-count').filter({ hasText: `${total}/${total} inputs (100%)` }).waitFor({ timeout: TIMEOUT });
  await page.getByTestId('job-state').filter({ hasText: 'done' }).waitFor({ timeout: TIMEOUT });
  assert.equal(await page.getByRole('progressbar').getAttribute('aria-valuenow'), '100');
  return id;
}

/** On a job page: each choice of the outcome filter shows exactly the API's rows of those outcomes. */
async function checkFilter(apiRows) {
  const expected = {
    wrong: apiRows.filter((r) => r.prediction >= 0 && !r.correct).length,
    abstain: apiRows.filter((r) => r.prediction < 0).length,
    correct: apiRows.filter((r) => r.correct).length,
  };
  console.log(`  outcomes: ${JSON.stringify(expected)}`);
  for (const [choice, outcomes, count] of [['failures', ['wrong', 'abstain'], expected.wrong + expected.abstain],
    ['wrong', ['wrong'], expected.wrong], ['abstain', ['abstain'], expected.abstain], ['correct', ['correct'], expected.correct]]) {
    await page.getByTestId('outcome-filter').selectOption(choice);
    await page.getByText(`(${count} inputs)`).waitFor();
    assert.equal(await rowsShown().count(), count, `${choice}: ${count} rows`);
    for (const o of await rowsShown().evaluateAll((trs) => trs.map((tr) => tr.dataset.outcome)))
      assert.ok(outcomes.includes(o), `${choice} shows a ${o} row`);
    if (choice === 'abstain') { // each abstention names its selection draws' top class (and runner-up, if drawn)
      const named = apiRows.filter((r) => r.prediction < 0 && r.top_class != null).length;
      assert.equal(named, expected.abstain, 'the API names a top class for every abstention');
      assert.equal(await page.locator('[data-testid=results-table] [data-testid=runner-up]').count(), Math.min(named, 25));
    }
  }
  await page.getByTestId('outcome-filter').selectOption('all');
  assert.equal(await rowsShown().count(), apiRows.length);
  return expected;
}

try {
  step('no token: the token screen says so and links to the API docs');
  await page.goto(`${url}/`);
  await page.getByText('No API token yet').waitFor();
  assert.equal(await page.getByRole('link', { name: '/docs' }).getAttribute('href'), '/docs');
  await shot('01-token');

  step('a wrong token is refused with a clear message');
  await page.fill('input[name=token]', 'not-a-token');
  await page.click('button:has-text("Save token")');
  await page.getByText('The API refused that token').waitFor();
  await shot('02-token-refused');

  step('the right token opens the (empty) models list');
  await page.fill('input[name=token]', token);
  await page.click('button:has-text("Save token")');
  await page.getByRole('heading', { name: 'Models' }).waitFor();
  await page.getByText('No models yet').waitFor();

  step('the add-model form validates before sending');
  await page.getByRole('link', { name: 'Add model' }).first().click();
  await page.fill('#f-sigma', '0');
  await page.click('button[type=submit]');
  await page.getByText('a name is required').waitFor();
  await page.getByText('sigma must be a number > 0').waitFor();
  await page.getByText('choose a model file').waitFor();
  await shot('03-add-model-invalid');

  step("the API's 422 lands beside the field: a shape the model cannot take");
  await page.setInputFiles('#f-file', modelFile);
  await page.fill('#f-name', 'digits-cnn');
  await page.fill('#f-input_shape', '3,8,8');
  await certifyFromForm({ count: 12, sigma: 0.25 });
  await page.click('button[type=submit]');
  const apiError = page.locator('.field.invalid .error[data-field=file]');
  await apiError.waitFor({ timeout: TIMEOUT });
  console.log(`  API said: ${await apiError.textContent()}`);
  await shot('04-add-model-api-422');

  step('add the model and certify 12 digits; progress reaches 100% live');
  await page.fill('#f-input_shape', '1,8,8');
  await page.fill('#f-class_names', '0,1,2,3,4,5,6,7,8,9');
  await page.click('button[type=submit]');
  await page.waitForURL(/#\/jobs\/\d+/);
  await shot('05-job-running', false);
  const first = await watchJob(12);

  step('the result: curve, histogram, summary and a sortable table of 12 inputs with thumbnails');
  await page.locator('[data-testid=curve-chart] .recharts-line path.recharts-curve').first().waitFor();
  await page.locator('[data-testid=histogram-chart] .recharts-bar-rectangle').first().waitFor();
  await page.getByTestId('summary').getByText('ACR').waitFor();
  await page.locator('[data-testid=results-table] tbody tr').nth(11).waitFor();
  assert.equal(await page.locator('[data-testid=results-table] tbody tr').count(), 12);
  await page.click('th button:has-text("Radius")');
  await page.click('th button:has-text("Radius")');
  const radii = (await page.locator('[data-testid=results-table] tbody tr td:nth-child(4)').allTextContents()).map(Number);
  assert.deepEqual(radii, [...radii].sort((a, b) => b - a), 'radius column sorted descending');
  const thumb = page.locator('[data-testid=results-table] tbody tr').first().locator('img.thumb');
  await thumb.waitFor();
  await page.waitForFunction((img) => img.complete && img.naturalWidth > 0, await thumb.elementHandle());
  assert.equal(await thumb.evaluate((img) => img.naturalWidth), 64, 'the 8x8 digit comes back as 64x64');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('button:has-text("Download CSV")')]);
  assert.equal(download.suggestedFilename(), `job-${first}-results.csv`);
  step('the certified smoothed classifier downloads as a program (TorchScript, as the upload was) carrying what it certifies');
  const [program] = await Promise.all([
    page.waitForEvent('download', { timeout: TIMEOUT }), page.click('[data-testid=download-model]'),
  ]);
  assert.equal(program.suggestedFilename(), `kavach-job${first}-smoothed.pt`);
  const archive = await readFile(await program.path());
  assert.equal(archive.subarray(0, 2).toString(), 'PK', 'a TorchScript archive is a zip');
  assert.ok(archive.includes(Buffer.from('extra/kavach.json')), 'the archive carries kavach.json');
  assert.equal(await page.getByTestId('download-model').textContent(), 'Download certified model');
  await shot('06-job-done');

  step('radii in the table are the API\'s rounded down (0.79964 reads 0.799, never 0.800)');
  const apiRows = (await api(`/jobs/${first}/results?limit=100`)).data;
  const byIndex = new Map(apiRows.map((r) => [r.index, r]));
  for (const tr of await rowsShown().all()) {
    const index = Number((await tr.locator('td').nth(0).textContent()).trim());
    const shown = (await tr.locator('td').nth(3).textContent()).trim();
    assert.equal(shown, floorFixed(byIndex.get(index).radius), `input ${index}: radius ${byIndex.get(index).radius}`);
    assert.ok(Number(shown) <= byIndex.get(index).radius, 'never above the certificate');
  }
  const summary = await api(`/jobs/${first}/summary`);
  await page.getByTestId('summary').getByText(floorFixed(summary.acr), { exact: true }).first().waitFor();
  assert.ok(summary.max_radius > 0);
  await page.getByTestId('max-radius').getByText(floorFixed(summary.max_radius)).waitFor();

  step('the wrong/abstained filter shows exactly the failures the API reports');
  await checkFilter(apiRows);

  step('the models list shows the latest result; Certify from the row starts a second job');
  await page.getByRole('link', { name: 'Models', exact: true }).click();
  const row = page.locator('tr[data-model="digits-cnn"]');
  await row.getByRole('link', { name: `job #${first}` }).waitFor();
  await page.waitForFunction(() => !document.querySelector('tr[data-model="digits-cnn"]').textContent.includes('…'));
  await shot('07-models');
  step('at 1400 px the Certify button is on screen, not behind a horizontal scroll; the dataset is listed');
  const certifyBox = await row.getByRole('link', { name: 'Certify' }).boundingBox();
  const wrapBox = await page.locator('.table-wrap').first().boundingBox();
  assert.ok(certifyBox.x >= wrapBox.x && certifyBox.x + certifyBox.width <= wrapBox.x + wrapBox.width,
    `Certify at ${JSON.stringify(certifyBox)} lies inside the table's visible box ${JSON.stringify(wrapBox)}`);
  assert.ok(certifyBox.x + certifyBox.width <= 1400 && certifyBox.y + certifyBox.height <= 900, 'inside the window');
  assert.equal((await row.getByTestId('model-dataset').textContent()).trim(), 'digits');
  await row.getByRole('link', { name: 'Certify' }).click();
  await page.getByRole('heading', { name: 'Certify digits-cnn' }).waitFor();
  await certifyFromForm({ count: 12, sigma: 0.5 });
  await page.click('button[type=submit]');
  const second = await watchJob(12);

  step('compare the two jobs: two curves, a legend naming each config');
  await page.getByRole('link', { name: 'Compare' }).first().click();
  // the chosen jobs live in the URL: each click is a navigation, so wait for it rather than the box itself
  await page.getByLabel(`compare job ${first}`).click();
  await page.waitForURL(new RegExp(`jobs=${first}$`));
  await page.getByLabel(`compare job ${second}`).click();
  await page.waitForURL(new RegExp(`jobs=${first}%2C${second}$|jobs=${first},${second}$`));
  const secondBox = page.getByLabel(`compare job ${second}`);
  // the box re-renders from the URL: on a busy machine that can trail the navigation by a moment
  for (let i = 0; i < 50 && !(await secondBox.isChecked()); i += 1) await page.waitForTimeout(100);
  assert.ok(await secondBox.isChecked());
  const legend = page.locator('[data-testid=curve-chart] .recharts-legend-item');
  await legend.nth(1).waitFor();
  const names = await legend.allTextContents();
  assert.equal(names.length, 2);
  assert.ok(names.some((n) => n.includes(`#${first}`) && n.includes('σ=0.25')), names.join(' | '));
  assert.ok(names.some((n) => n.includes(`#${second}`) && n.includes('σ=0.5')), names.join(' | '));
  assert.equal(await page.locator('[data-testid=curve-chart] .recharts-line').count(), 2);
  await shot('08-compare');

  step('register a DRUNet denoiser through the form: no classes, no input scaling, no certification of its own');
  await page.getByRole('link', { name: 'Models', exact: true }).click();
  await page.getByRole('link', { name: 'Add model' }).first().click();
  await page.setInputFiles('#f-file', denoiserFile);
  await page.fill('#f-name', 'drunet-small');
  await page.selectOption('#f-kind', 'denoiser');
  await page.getByText("in front of a classifier and tells it the job's sigma").waitFor();
  for (const hidden of ['#f-num_classes', '#f-class_names', '#f-input_max', '#f-sigma', 'input[name=certify_now]'])
    assert.equal(await page.locator(hidden).count(), 0, `${hidden} is hidden for a denoiser`);
  await shot('09-add-denoiser');
  await page.click('button[type=submit]:has-text("Add model")');
  const denoiserRow = page.locator('tr[data-model="drunet-small"]');
  await denoiserRow.getByText('(denoiser)').waitFor({ timeout: TIMEOUT });
  assert.equal(await denoiserRow.getByRole('link', { name: 'Certify' }).count(), 0, 'a denoiser is not certified alone');

  step('certify 5 digits with the CNN behind the denoiser; the job finishes with rows');
  await page.locator('tr[data-model="digits-cnn"]').getByRole('link', { name: 'Certify' }).click();
  await page.getByRole('heading', { name: 'Certify digits-cnn' }).waitFor();
  await certifyFromForm({ count: 5, sigma: 0.25, n: 300 });
  await page.locator('#f-denoiser_id option', { hasText: 'drunet-small' }).waitFor({ state: 'attached' });
  await page.selectOption('#f-denoiser_id', { label: 'drunet-small' });
  await page.click('button[type=submit]');
  const denoised = await watchJob(5);
  const drunet = (await api('/models')).data.find((m) => m.name === 'drunet-small');
  assert.equal(drunet.kind, 'denoiser');
  assert.equal(drunet.num_classes, null);
  assert.equal((await api(`/jobs/${denoised}`)).config.denoiser_id, drunet.id, 'the job ran through the chosen denoiser');
  await page.getByText(`denoiser #${drunet.id}`).waitFor();
  await page.locator('[data-testid=results-table] tbody tr').nth(4).waitFor();
  assert.equal(await page.locator('[data-testid=results-table] tbody tr').count(), 5);
  await shot('10-job-denoised');
  // a random DRUNet in front of the CNN makes failures: the filter must find each of them
  const denoisedOutcomes = await checkFilter((await api(`/jobs/${denoised}/results?limit=100`)).data);
  await page.getByTestId('outcome-filter').selectOption('failures');
  await shot('10b-job-failures');
  await page.getByTestId('outcome-filter').selectOption('all');
  assert.ok(denoisedOutcomes.wrong + denoisedOutcomes.abstain + denoisedOutcomes.correct === 5);

  step('the certify form starts from the model: its dataset, its sigma, only denoisers of its input shape');
  const register = async (file, name, metadata) => {
    const response = await page.request.post(`${url}/api/v1/models`, {
      headers: { Authorization: `Bearer ${token}` },
      multipart: { file: { name: path.basename(file), mimeType: 'application/octet-stream', buffer: (await import('node:fs')).readFileSync(file) },
        metadata: JSON.stringify({ name, ...metadata }) },
    });
    assert.equal(response.status(), 201, await response.text());
    return (await response.json()).id;
  };
  const half = await register(modelFile, 'digits-cnn-0.5', { input_shape: [1, 8, 8], num_classes: 10, dataset: 'digits', sigma: 0.5 });
  await register(denoiserFile, 'drunet-16', { kind: 'denoiser', input_shape: [1, 16, 16] });
  await page.goto(`${url}/#/models/${half}/certify`);
  await page.getByRole('heading', { name: 'Certify digits-cnn-0.5' }).waitFor();
  assert.equal(await page.inputValue('#f-sigma'), '0.5', 'the model\'s sigma, not 0.25');
  assert.equal(await page.inputValue('#f-dataset'), 'digits');
  await page.locator('#f-denoiser_id option', { hasText: 'drunet-small' }).waitFor({ state: 'attached' });
  assert.equal(await page.locator('#f-denoiser_id option', { hasText: 'drunet-16' }).count(), 0, 'a 16x16 denoiser is not offered to an 8x8 model');
  const cnn = (await api('/models')).data.find((m) => m.name === 'digits-cnn');
  assert.equal(cnn.sigma, 0.25);
  assert.equal(cnn.dataset, 'digits');
  await page.goto(`${url}/#/models/${cnn.id}/certify`);
  await page.getByRole('heading', { name: 'Certify digits-cnn' }).waitFor();
  assert.equal(await page.inputValue('#f-sigma'), '0.25', 'the model added through the form keeps its certification\'s sigma');
  await shot('11-certify-defaults');

  step('abstentions name the two classes of their selection draws (n = 5 certifies nothing at alpha 0.001; sigma 1 spreads the votes)');
  await certifyFromForm({ count: 3, sigma: 1, n: 5 });
  await page.click('button[type=submit]');
  const abstained = await watchJob(3);
  const abstainedRows = (await api(`/jobs/${abstained}/results?limit=100`)).data;
  assert.ok(abstainedRows.every((r) => r.prediction === -1 && r.top_class != null), JSON.stringify(abstainedRows));
  assert.equal((await checkFilter(abstainedRows)).abstain, 3);
  const digitNames = (await api('/datasets')).data.find((d) => d.id === 'digits').class_names;
  const named = (c) => digitNames?.[c] ?? String(c);
  const shown = await page.locator('[data-testid=results-table] [data-testid=runner-up]').allTextContents();
  assert.deepEqual(shown, abstainedRows.map((r) => (r.runner_up == null
    ? `top ${named(r.top_class)}, no other class drawn (selection draws)`
    : `${named(r.top_class)} vs ${named(r.runner_up)} (selection draws)`)));
  assert.ok(abstainedRows.some((r) => r.runner_up != null), 'sigma 1 makes a runner-up');
  await page.getByTestId('histogram-empty').waitFor(); // no empty axes where no input counts
  await shot('11b-job-abstained');

  step('not-found pages: a missing job, a job id that is not a number, a missing model');
  await expectNotFound('/jobs/99999');
  requests.length = 0;
  await expectNotFound('/jobs/abc');
  assert.ok(!requests.some((u) => u.includes('/jobs/NaN') || u.includes('/jobs/abc')), requests.join(' '));
  await expectNotFound('/models/99999/certify');
  await shot('12-not-found');
  await page.getByRole('link', { name: '← Back to the models' }).click();
  await page.getByRole('heading', { name: 'Models' }).waitFor();

  step('the jobs list: state, model, method, ACR, certified accuracy and time of every job');
  await page.getByRole('link', { name: 'Jobs', exact: true }).click();
  const jobRow = page.locator(`[data-testid=jobs-table] tr[data-job="${first}"]`);
  await jobRow.getByTestId('job-acr').filter({ hasText: floorFixed(summary.acr) }).waitFor();
  await jobRow.getByText('digits-cnn', { exact: true }).waitFor();
  await jobRow.getByText('done').waitFor();
  // the page may first show the cached list, then its refetch: wait for every job the API has
  const jobCount = (await api('/jobs')).count;
  await page.locator(`[data-testid=jobs-table] tbody tr >> nth=${jobCount - 1}`).waitFor();
  assert.equal(await page.locator('[data-testid=jobs-table] tbody tr').count(), jobCount);
  await shot('13-jobs');
  const favicon = await page.request.get(`${url}/favicon.svg`);
  assert.equal(favicon.status(), 200, 'the favicon is served');

  step('a phone-sized screen');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${url}/#/jobs/${first}`);
  await page.locator('[data-testid=results-table] tbody tr').first().waitFor();
  await shot('14-phone-job');
  await page.goto(`${url}/#/`);
  await page.locator('tr[data-model="digits-cnn"]').waitFor();
  await shot('15-phone-models', false);

  assert.deepEqual(errors, [], 'no uncaught errors in the page');
  console.log('dashboard e2e: all steps passed');
} catch (error) {
  await shot('failure').catch(() => {});
  console.error(error);
  process.exitCode = 1;
} finally {
  await context.close();
}
