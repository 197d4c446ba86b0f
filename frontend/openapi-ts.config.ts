import { defineConfig } from '@hey-api/openapi-ts';

// The API client is generated from the contract at the repo root (`make openapi` keeps it current).
export default defineConfig({
  input: '../openapi.json',
  output: 'src/client',
  plugins: ['@hey-api/client-fetch', '@tanstack/react-query', '@hey-api/schemas'],
});
