/** Where to read more: the API's own interactive docs and its OpenAPI contract. */
export function DocsPage() {
  return (
    <section>
      <h1>Docs</h1>
      <ul>
        <li><a href="/docs" target="_blank" rel="noreferrer">Interactive API docs (Swagger UI)</a></li>
        <li><a href="/redoc" target="_blank" rel="noreferrer">API reference (ReDoc)</a></li>
        <li><a href="/api/v1/openapi.json" target="_blank" rel="noreferrer">openapi.json</a>: the contract this dashboard's client is generated from</li>
      </ul>
      <p>Every request carries <code>Authorization: Bearer &lt;token&gt;</code>; the dashboard keeps your token in this
        browser only. A radius r certifies that no L2 perturbation smaller than r changes the smoothed prediction,
        with probability at least 1 − alpha.</p>
    </section>
  );
}
