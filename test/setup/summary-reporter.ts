// Prints, after vitest's own summary, the 12 slowest test files (one line each, with their time) and then one plain
// closing line, `tests: N passed, N failed[, N skipped]`, always the last line, so that any log reader (CI included)
// can tell the outcome and track where the run's time goes without parsing vitest's coloured output.
import { relative } from 'node:path';
import type { Reporter, TestModule } from 'vitest/node';

/** How many of the slowest files are listed. */
const SLOWEST = 12;

/** A file's own time: its environment, harness, import, setup files, and its tests and hooks (0 when unknown). */
function fileMs(mod: TestModule): number {
  try {
    const d = mod.diagnostic();
    const ms = d.environmentSetupDuration + d.prepareDuration + d.collectDuration + d.setupDuration + d.duration;
    return Number.isFinite(ms) ? ms : 0;
  } catch {
    return 0; // never lose the closing line over a file's timing
  }
}

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    let passed = 0;
    let failed = unhandledErrors.length;
    let skipped = 0;
    for (const mod of testModules) {
      if (mod.state() === 'failed' && [...mod.children.allTests()].length === 0) failed++;
      for (const t of mod.children.allTests()) {
        const state = t.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
      }
    }
    const slowest = testModules
      .map((mod) => ({ name: `${relative(process.cwd(), mod.moduleId)} [${mod.project.name}]`, ms: fileMs(mod) }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, SLOWEST);
    let text = `\nslowest ${slowest.length} test file(s):\n`;
    for (const f of slowest) text += `${(f.ms / 1000).toFixed(1).padStart(8)} s  ${f.name}\n`;
    text += `\ntests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`;
    process.stdout.write(text);
  }
}
