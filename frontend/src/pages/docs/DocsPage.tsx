/** How to choose a certification's parameters and how to read its results. */
export function DocsPage() {
  return (
    <section className="docs">
      <h1>Docs</h1>
      <p>Kavach certifies a classifier by <b>randomized smoothing</b>: the smoothed classifier answers the class the base
        model predicts most often on noisy copies of the input. For each input a job reports that class and a
        <b> certified radius</b> r: no perturbation of L2 norm below r changes the smoothed answer, with probability at
        least 1 − alpha.</p>

      <h2>Parameters</h2>
      <dl>
        <dt>Sigma</dt>
        <dd>The noise's standard deviation on the <b>[0, 1] pixel scale</b>, whatever range the model reads (its input max
          and normalisation are applied after the noise). Radii grow with sigma, but a model trained at a smaller sigma
          then misclassifies or abstains more: certify at the sigma the model was trained with (the form starts there).</dd>
        <dt>Alpha</dt>
        <dd>The probability that a certificate is wrong: 0.001 means one run in a thousand may overstate a radius.
          Smaller alpha, smaller radii.</dd>
        <dt>n0 and N</dt>
        <dd>NP (Cohen et al.): n0 noisy samples only pick the class; N fresh samples bound its probability pA from below
          (Clopper-Pearson) and the radius is sigma·Φ⁻¹(pA lower bound). Even when all N samples agree, pA's bound is
          alpha^(1/N), so no radius exceeds sigma·Φ⁻¹(alpha^(1/N)): about 0.68 for sigma 0.25, N = 2,000, alpha = 0.001.
          The job page draws that ceiling as a dashed line. DSRS: N is split evenly between P and Q.</dd>
        <dt>ISS budget</dt>
        <dd>Input-specific sampling (Chen et al.), NP only: the n0 pilot estimates pA and draws only as many of the N
          samples as needed to give up at most this much radius. Easy inputs take far fewer samples.</dd>
        <dt>Sequential delta</dt>
        <dd>NP only: draws samples in growing looks and stops once more samples could add no more than this to the
          radius; the bound stays valid at alpha across looks.</dd>
        <dt>DSRS and Q's sigma</dt>
        <dd>Double-sampling randomized smoothing (Li et al.) also samples a second distribution Q, the same noise at Q's
          sigma (a little below sigma), and combines both bounds into a larger radius, most of all with generalized
          Gaussian noise in high dimensions.</dd>
        <dt>Noise</dt>
        <dd>Gaussian, or generalized Gaussian with exponent k (Li et al.), which DSRS certifies better.</dd>
        <dt>Denoiser</dt>
        <dd>A denoiser of the same input shape placed in front of the classifier: it cleans each noisy copy, told the
          job's sigma, so an off-the-shelf classifier can be certified.</dd>
      </dl>

      <h2>Reading the results</h2>
      <dl>
        <dt>Abstain</dt>
        <dd>When the top class's lower bound does not exceed 1/2, the smoothed classifier abstains: no class, radius 0.
          An abstention counts as not certified. Its row names the two classes it could not decide between, "A vs B
          (selection draws)": the top class and the runner-up of the n0 selection draws, A being the class whose
          probability was bounded (<code>top_class</code> and <code>runner_up</code> in the downloads). They are for
          reading failures only: no bound or radius depends on them.</dd>
        <dt>Certified accuracy at radius r</dt>
        <dd>The share of inputs classified correctly with a radius of at least r. At r = 0 it is the clean smoothed
          accuracy. A misclassified input is never counted, whatever its radius.</dd>
        <dt>ACR</dt>
        <dd>The average certified radius: the mean over all inputs of the radius, counting 0 for misclassified and
          abstained ones; the area under the certified-accuracy curve.</dd>
        <dt>Rounding</dt>
        <dd>Radii, ACR and certified accuracies are shown rounded <b>down</b>: a displayed figure never claims more than
          was certified. Downloads (CSV, JSON) carry the exact values.</dd>
        <dt>Failures</dt>
        <dd>On a job page, "Show" filters the inputs to the misclassified (a wrong class certified) and the abstained
          ones.</dd>
      </dl>

      <h2>The API</h2>
      <ul>
        <li><a href="/docs" target="_blank" rel="noreferrer">Interactive API docs (Swagger UI)</a></li>
        <li><a href="/redoc" target="_blank" rel="noreferrer">API reference (ReDoc)</a></li>
        <li><a href="/api/v1/openapi.json" target="_blank" rel="noreferrer">openapi.json</a>: the contract this dashboard's client is generated from</li>
      </ul>
      <p>Every request carries <code>Authorization: Bearer &lt;token&gt;</code>; the dashboard keeps your token in this
        browser only.</p>
    </section>
  );
}
