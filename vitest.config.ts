// The test runner's projects: unit (beside the code), golden (parity with the shared golden set), integration.
import { defineConfig } from 'vitest/config';

// Three projects: `unit` (next to the code, and the house's import rule in test/house/), `golden` (numerical parity with ../shared/golden), and
// `integration` (spans processes; talks to a real nats-server and real gRPC sockets); a fourth, `soak`, only with BLIP2_SOAK set.
export default defineConfig({
  test: {
    reporters: ['default', './test/setup/summary-reporter.ts'],
    projects: [
      {
        test: {
          name: 'unit',
          include: ['{common,coordinator,trainer,dataloader,deploy,cli}/**/*.test.ts', 'test/house/**/*.test.ts'],
          testTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'golden',
          include: ['test/golden/**/*.test.ts'],
          testTimeout: 300_000,
        },
      },
      // `soak` (npm run test:soak): long fault runs, outside `npm test` and CI; the project exists only when asked for.
      ...(process.env.BLIP2_SOAK
        ? [{ test: { name: 'soak', include: ['test/soak/**/*.soak.ts'], globalSetup: ['test/setup/global-setup.ts'], testTimeout: 1_800_000, hookTimeout: 120_000 } }]
        : []),
      {
        test: {
          name: 'integration',
          include: ['test/**/*.test.ts'],
          exclude: ['test/golden/**', 'test/house/**'],
          globalSetup: ['test/setup/global-setup.ts'],
          testTimeout: 300_000,
          hookTimeout: 120_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
