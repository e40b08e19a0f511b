/**
 * The built-in demo: what `blip2 launch` runs with no --config. Four phases, each skipped when an earlier launch
 * finished it (so Ctrl-C and the same command again continue where the demo stopped):
 *
 *  1. stage1: the stage-1 job (ITC, ITM, ITG) on the synthetic dataset, in <runDir> (runs/blip2-demo), which also
 *     holds the data (<runDir>/data);
 *  2. lm:     the frozen language model of stage 2, pre-trained on the training captions (`blip2 pretrain-lm`), kept in
 *     <runDir>/opt-lm.safetensors and reused when it is there;
 *  3. stage2: the stage-2 job (the LM loss through the frozen LM) from stage 1's last commit, in <runDir>/stage2;
 *  4. eval:   both checkpoints on the held-out split: retrieval with stage 1's ITC and ITM, captions from stage 1's
 *     ITG head and from stage 2's decoder, VQA with stage 2's decoder, printed as tables beside their chance level or
 *     baseline (<runDir>/eval.json).
 * When every phase asked for is done, <runDir>/demo.json records it, and the next launch starts a new demo.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadJobConfig, UsageError } from '../common';
import { DEMO_OVERRIDES, launchLocal, type LaunchOptions, type LaunchSummary } from './launcher';
import { pretrainLm } from './pretrain-lm';
import { createTaskProgress, fmtDuration } from './progress';
import type { ContextQaReport, EvalReport } from '../trainer';
import { DEMO_LM, DEMO_PHASES, parseDemoPhases, type DemoPhase } from './defaults';

export { DEMO_LM, DEMO_PHASES, parseDemoPhases, type DemoPhase };

/** Stage 2's settings on top of the demo's (flags and environment still win, except the keys `stage2Flags` sets). */
export const DEMO_STAGE2_OVERRIDES: Record<string, unknown> = {
  'train.epochs': 3,
  'optim.lr': 1e-3,
  'optim.warmupSteps': 20,
};

export interface DemoOptions extends Omit<LaunchOptions, 'configFile' | 'overrides' | 'title'> {
  /** Phases to run, in their order. Default: all. */
  phases?: DemoPhase[];
  /** Steps of the language model pre-training. Default DEMO_LM.steps. */
  lmSteps?: number;
}

export interface DemoPhaseTime {
  phase: DemoPhase;
  seconds: number;
  /** Skipped: finished by an earlier launch. */
  skipped: boolean;
}

export interface DemoSummary {
  status: 'finished' | 'stopped' | 'failed';
  runDir: string;
  phases: DemoPhaseTime[];
  stage1?: LaunchSummary;
  stage2?: LaunchSummary;
  languageModel?: string;
  /** The evaluation reports (retrieval and caption of stage 1; caption and VQA of stage 2). */
  eval?: EvalReport[];
  wallSeconds: number;
}

/** Where the demo keeps the LM's context-QA figure (`contextQaAccuracy`): beside the LM. */
const contextQaPath = (lmPath: string) => lmPath.replace(/\.safetensors$/, '.context-qa.json');

const readJson = <T>(path: string): T | undefined => {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
};

/** Runs the demo's phases (see the top of this file); resolves with what each took. */
export async function launchDemo(o: DemoOptions = {}): Promise<DemoSummary> {
  const out = o.out ?? process.stdout;
  const say = (line: string) => out.write(line + '\n');
  const env = o.env ?? process.env;
  const phases = o.phases ?? [...DEMO_PHASES];
  const userArgs = o.configArgs ?? [];
  // The demo's run dir and data: stage 1's job.runDir and data.root (flags and environment win).
  const { config: c1 } = loadJobConfig({ env, argv: userArgs, overrides: DEMO_OVERRIDES });
  const root = c1.job.runDir;
  const marker = join(root, 'demo.json');
  if (readJson<{ status?: string }>(marker)?.status === 'finished') {
    say(`the previous demo in ${root} finished; starting a new one`);
    rmSync(root, { recursive: true, force: true });
  }
  const t0 = Date.now();
  const summary: DemoSummary = { status: 'finished', runDir: root, phases: [], wallSeconds: 0 };
  const timed = async <T>(phase: DemoPhase, f: () => Promise<T>): Promise<T> => {
    const t = Date.now();
    const r = await f();
    summary.phases.push({ phase, seconds: (Date.now() - t) / 1000, skipped: false });
    return r;
  };
  const skipped = (phase: DemoPhase) => summary.phases.push({ phase, seconds: 0, skipped: true });
  const end = (status: DemoSummary['status']) => {
    summary.status = status;
    summary.wallSeconds = (Date.now() - t0) / 1000;
    if (status === 'finished') writeFileSync(marker, JSON.stringify({ ...summary, stage1: undefined, stage2: undefined, eval: undefined }, null, 2) + '\n');
    say('');
    say(`demo ${status} after ${fmtDuration(summary.wallSeconds)}: ${summary.phases.map((p) => `${p.phase} ${p.skipped ? 'done earlier' : fmtDuration(p.seconds)}`).join(', ')}`);
    return summary;
  };
  const count = phases.length;
  const heading = (i: number, what: string) => say(`\n== demo ${i}/${count}: ${what}`);
  let n = 0;

  // 1. Stage 1.
  if (phases.includes('stage1')) {
    heading(++n, 'stage 1 (ITC, ITM, ITG) on the synthetic dataset');
    const earlier = readJson<LaunchSummary>(join(root, 'summary.json'));
    if (earlier?.status === 'finished') {
      say(`stage 1 finished in an earlier launch: checkpoint ${earlier.checkpointDir}`);
      skipped('stage1');
      summary.stage1 = earlier;
    } else {
      summary.stage1 = await timed('stage1', () => launchLocal({ ...o, configArgs: userArgs, overrides: DEMO_OVERRIDES, title: 'built-in demo, stage 1' }));
      if (summary.stage1.status !== 'finished') return end(summary.stage1.status === 'stopped' ? 'stopped' : 'failed');
    }
  }

  // 2. The frozen language model.
  const lmPath = join(root, 'opt-lm.safetensors');
  if (phases.includes('lm')) {
    heading(++n, 'the frozen language model of stage 2, pre-trained on the training captions');
    if (existsSync(lmPath)) {
      say(`reusing ${lmPath}`);
      skipped('lm');
    } else {
      if (!existsSync(join(c1.data.root, 'index.json'))) throw new UsageError(`the demo's data ${c1.data.root} is missing: run the stage1 phase first`);
      const lm = await timed('lm', () => pretrainLm({
        data: c1.data.root, preset: c1.model.preset, out: lmPath, steps: o.lmSteps ?? DEMO_LM.steps, batchSize: DEMO_LM.batchSize,
        lr: DEMO_LM.lr, seed: DEMO_LM.seed, say,
      }));
      // Kept beside the LM, for the evaluation to print beside the VQA accuracy (also when the LM is reused).
      if (lm.contextQa) writeFileSync(contextQaPath(lmPath), JSON.stringify(lm.contextQa, null, 2) + '\n');
    }
    summary.languageModel = lmPath;
  }

  // 3. Stage 2 from stage 1's last commit, in <root>/stage2, on the same data.
  if (phases.includes('stage2')) {
    heading(++n, 'stage 2 (the LM loss through the frozen language model) from stage 1');
    const runDir = join(root, 'stage2');
    if (!existsSync(lmPath)) throw new UsageError(`${lmPath} is missing: run the lm phase first`);
    const earlier = readJson<LaunchSummary>(join(runDir, 'summary.json'));
    if (earlier?.status === 'finished') {
      say(`stage 2 finished in an earlier launch: checkpoint ${earlier.checkpointDir}`);
      skipped('stage2');
      summary.stage2 = earlier;
    } else {
      // Set here whatever the flags say: this phase's own job, run dir and checkpoints, on stage 1's data and model.
      const stage2Flags = [
        '--job.id', `${c1.job.id}-stage2`, '--job.runDir', runDir, '--checkpoint.dir', join(runDir, 'checkpoints'), '--data.root', c1.data.root,
        '--data.tokenizer', c1.data.tokenizer, '--data.lmTokenizer', c1.data.lmTokenizer, '--train.stage', '2', '--model.checkpoint', root,
        '--model.languageModel', lmPath,
      ];
      summary.stage2 = await timed('stage2', () => launchLocal({
        ...o, configArgs: [...userArgs, ...stage2Flags], overrides: { ...DEMO_OVERRIDES, ...DEMO_STAGE2_OVERRIDES }, title: 'built-in demo, stage 2',
      }));
      if (summary.stage2.status !== 'finished') return end(summary.stage2.status === 'stopped' ? 'stopped' : 'failed');
    }
  }

  // 4. Evaluation on the held-out split.
  if (phases.includes('eval')) {
    heading(++n, 'evaluation on the held-out split');
    summary.eval = await timed('eval', () => evaluateDemo({ root, dataRoot: c1.data.root, out, say }));
  }
  return end('finished');
}

/**
 * The demo's evaluation settings (`blip2 eval`): the first `limit` images of the held-out split, candidates re-ranked
 * with ITM per retrieval query, caption beams.
 */
export const DEMO_EVAL = { limit: 100, k: 16, beams: 5 };

/**
 * 4. Retrieval and captioning (the ITG head) with the stage-1 checkpoint, captioning (the OPT decoder) and VQA with the
 * stage-2 checkpoint (when those phases ran),
 * on the held-out split; the reports go to <root>/eval.json and their tables to the console.
 */
async function evaluateDemo(x: { root: string; dataRoot: string; out: NodeJS.WritableStream; say: (line: string) => void }): Promise<EvalReport[]> {
  const { evaluateCheckpoint, formatEvalReport } = await import('../trainer');
  const runs: Array<{ checkpoint: string; tasks: Array<'retrieval' | 'caption' | 'vqa'> }> = [];
  if (readJson<LaunchSummary>(join(x.root, 'summary.json'))?.status === 'finished') runs.push({ checkpoint: x.root, tasks: ['retrieval', 'caption'] });
  if (readJson<LaunchSummary>(join(x.root, 'stage2', 'summary.json'))?.status === 'finished') runs.push({ checkpoint: join(x.root, 'stage2'), tasks: ['caption', 'vqa'] });
  if (!runs.length) throw new UsageError(`nothing to evaluate in ${x.root}: neither stage finished (run the stage1 and stage2 phases first)`);
  const progress = createTaskProgress(x.out);
  const reports: EvalReport[] = [];
  try {
    for (const r of runs) {
      reports.push(await evaluateCheckpoint({
        checkpoint: r.checkpoint, data: x.dataRoot, split: 'val', tasks: r.tasks, limit: DEMO_EVAL.limit, k: DEMO_EVAL.k, beams: DEMO_EVAL.beams,
        progress: (p) => progress.update(`${r.checkpoint === x.root ? 'stage 1' : 'stage 2'} ${p.task}`, p.done, p.total),
      }));
    }
  } finally {
    progress.stop();
  }
  for (const r of reports) x.say('\n' + formatEvalReport(r));
  const ceiling = readJson<ContextQaReport>(contextQaPath(join(x.root, 'opt-lm.safetensors')));
  if (ceiling && reports.some((r) => r.vqa)) {
    x.say(`vqa ceiling: the frozen LM, given each held-out image's caption in place of the soft prompt, answers ${ceiling.accuracy.toFixed(1)} % of ${ceiling.questions} questions; zero-shot VQA reads the image only through it`);
  }
  writeFileSync(join(x.root, 'eval.json'), JSON.stringify(reports, null, 2) + '\n');
  x.say(`\nreports: ${join(x.root, 'eval.json')}`);
  return reports;
}
