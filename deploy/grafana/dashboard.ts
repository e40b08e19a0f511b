/**
 * The Grafana dashboard of a training job, built with @grafana/grafana-foundation-sdk (a Prometheus data source
 * variable, a `job` variable over the `job_id` label), one row per concern: losses, throughput and progress, the
 * step-time breakdown, collectives, the data pipeline, membership, and the processes. `dashboardQueries` lists
 * every query, so that a test can check each metric it names against a real job's scrape.
 */
import { DashboardBuilder, DatasourceVariableBuilder, QueryVariableBuilder, RowBuilder, VariableRefresh } from '@grafana/grafana-foundation-sdk/dashboard';
import type { Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { StackingConfigBuilder, StackingMode } from '@grafana/grafana-foundation-sdk/common';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatPanel } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeSeriesPanel } from '@grafana/grafana-foundation-sdk/timeseries';

export const DASHBOARD_UID = 'blip2-training';

const DS = { type: 'prometheus', uid: '${datasource}' };
/** Series of the selected job. */
const J = 'job_id="$job"';
const RATE = '[$__rate_interval]';

interface Query {
  expr: string;
  legend?: string;
}

type PanelSpec = { title: string; kind: 'timeseries' | 'stat'; unit?: string; description?: string; queries: Query[]; stack?: boolean; width?: number };

/** The rows and their panels, as data (the builder below renders them). */
export const ROWS: { title: string; panels: PanelSpec[] }[] = [
  {
    title: 'Losses',
    panels: [
      { title: 'Loss per objective', kind: 'timeseries', description: 'Loss of the global batch at every step (every rank reports the same value).',
        queries: [{ expr: `max by (objective) (blip2_trainer_loss{${J}})`, legend: '{{objective}}' }] },
      { title: 'Gradient norm', kind: 'timeseries', description: 'Global L2 norm before clipping.',
        queries: [{ expr: `max(blip2_trainer_grad_norm{${J}})`, legend: 'grad norm' }] },
      { title: 'Learning rate', kind: 'timeseries', queries: [{ expr: `max(blip2_trainer_learning_rate{${J}})`, legend: 'lr' }] },
    ],
  },
  {
    title: 'Evaluation (held-out split)',
    panels: [
      { title: 'Retrieval recall', kind: 'timeseries', unit: 'percent', description: 'In-job evaluation (eval.tasks), stage 1: recall@k in percent, with the chance level of a random order ("chance").',
        queries: [
          { expr: `max by (metric) (blip2_eval_value{${J},task="retrieval"})`, legend: '{{metric}}' },
          { expr: `max by (metric) (blip2_eval_baseline{${J},task="retrieval"})`, legend: 'chance {{metric}}' },
        ] },
      { title: 'Caption scores', kind: 'timeseries', description: 'BLEU-1..4 and CIDEr-D of the generated captions, and of always answering the most common training caption ("baseline").',
        queries: [
          { expr: `max by (metric) (blip2_eval_value{${J},task="caption"})`, legend: '{{metric}}' },
          { expr: `max by (metric) (blip2_eval_baseline{${J},task="caption"})`, legend: 'baseline {{metric}}' },
        ] },
      { title: 'VQA accuracy', kind: 'timeseries', unit: 'percent', description: 'Stage 2: VQAv2 accuracy in percent, and the most common training answer per question type ("baseline").',
        queries: [
          { expr: `max(blip2_eval_value{${J},task="vqa",metric="accuracy"})`, legend: 'accuracy' },
          { expr: `max(blip2_eval_baseline{${J},task="vqa",metric="accuracy"})`, legend: 'baseline' },
        ] },
    ],
  },
  {
    title: 'Throughput and progress',
    panels: [
      { title: 'Samples per second', kind: 'timeseries', unit: 'short',
        queries: [{ expr: `sum(rate(blip2_trainer_samples_total{${J}}${RATE}))`, legend: 'job' }, { expr: `rate(blip2_trainer_samples_total{${J}}${RATE})`, legend: '{{node}}' }] },
      { title: 'Samples committed', kind: 'stat', unit: 'percentunit', width: 4, description: 'Samples in the last committed checkpoint, of all the job plans.',
        queries: [{ expr: `max(blip2_coordinator_samples_committed{${J}}) / max(blip2_coordinator_samples_planned{${J}})` }] },
      { title: 'Step', kind: 'stat', width: 4, description: 'Last step, and the estimated steps of the whole job at the current world size.',
        queries: [{ expr: `max(blip2_trainer_step{${J}})`, legend: 'step' }, { expr: `max(blip2_coordinator_steps_planned{${J}})`, legend: 'planned' }] },
      { title: 'Epoch', kind: 'stat', width: 4,
        queries: [{ expr: `max(blip2_coordinator_epoch{${J}}) + 1`, legend: 'epoch' }, { expr: `max(blip2_coordinator_epochs_planned{${J}})`, legend: 'of' }] },
      { title: 'ETA', kind: 'stat', unit: 's', width: 4, description: 'Samples still to train over the job\'s samples per second of the last 10 minutes.',
        queries: [{ expr: `(max(blip2_coordinator_samples_planned{${J}}) - max(blip2_coordinator_samples_committed{${J}})) / sum(rate(blip2_trainer_samples_total{${J}}[10m]))` }] },
      { title: 'Checkpoint age', kind: 'stat', unit: 's', width: 4, queries: [{ expr: `max(blip2_coordinator_checkpoint_age_seconds{${J}})` }] },
    ],
  },
  {
    title: 'Step time',
    panels: [
      { title: 'Step time by phase (mean)', kind: 'timeseries', unit: 's', stack: true,
        queries: [{ expr: `sum by (phase) (rate(blip2_trainer_step_phase_seconds_sum{${J}}${RATE})) / sum by (phase) (rate(blip2_trainer_step_phase_seconds_count{${J}}${RATE}))`, legend: '{{phase}}' }] },
      { title: 'Step time p50 / p90', kind: 'timeseries', unit: 's',
        queries: [
          { expr: `histogram_quantile(0.5, sum by (le) (rate(blip2_trainer_step_seconds_bucket{${J}}${RATE})))`, legend: 'p50' },
          { expr: `histogram_quantile(0.9, sum by (le) (rate(blip2_trainer_step_seconds_bucket{${J}}${RATE})))`, legend: 'p90' },
        ] },
      { title: 'Checkpoint write / restore (mean)', kind: 'timeseries', unit: 's',
        queries: [{ expr: `sum by (kind) (rate(blip2_trainer_checkpoint_seconds_sum{${J}}${RATE})) / sum by (kind) (rate(blip2_trainer_checkpoint_seconds_count{${J}}${RATE}))`, legend: '{{kind}}' }] },
    ],
  },
  {
    title: 'Collectives',
    panels: [
      { title: 'All-reduce bytes per second', kind: 'timeseries', unit: 'Bps',
        queries: [{ expr: `rate(blip2_trainer_allreduce_bytes_total{${J}}${RATE})`, legend: '{{node}}' }] },
      { title: 'Bus bandwidth (last all-reduce)', kind: 'timeseries', unit: 'Bps',
        queries: [{ expr: `blip2_trainer_allreduce_bus_bandwidth_bytes_per_second{${J}}`, legend: '{{node}}' }] },
      { title: 'Share of time in all-reduce', kind: 'timeseries', unit: 'percentunit',
        queries: [{ expr: `rate(blip2_trainer_allreduce_seconds_total{${J}}${RATE})`, legend: '{{node}}' }] },
    ],
  },
  {
    title: 'Data pipeline',
    panels: [
      { title: 'Shard queue', kind: 'timeseries', description: 'Coordinator: descriptors of the epoch not yet committed, waiting in the queue, leased.',
        queries: [
          { expr: `max(blip2_coordinator_shards_uncommitted{${J}})`, legend: 'uncommitted' },
          { expr: `max(blip2_coordinator_shards_pending{${J}})`, legend: 'pending' },
          { expr: `max(blip2_coordinator_shards_in_flight{${J}})`, legend: 'in flight' },
        ] },
      { title: 'Shard leases per trainer', kind: 'timeseries',
        queries: [
          { expr: `blip2_trainer_data_shards_held{${J}}`, legend: 'held {{node}}' },
          { expr: `increase(blip2_trainer_data_shards_leased_total{${J}}${RATE})`, legend: 'leased {{node}}' },
          { expr: `increase(blip2_trainer_data_shards_acked_total{${J}}${RATE})`, legend: 'acked {{node}}' },
          { expr: `increase(blip2_trainer_data_shards_nacked_total{${J}}${RATE})`, legend: 'nacked {{node}}' },
          { expr: `increase(blip2_trainer_data_shards_redelivered_total{${J}}${RATE})`, legend: 'redelivered {{node}}' },
          { expr: `increase(blip2_trainer_data_descriptors_rejected_total{${J}}${RATE})`, legend: 'rejected {{node}}' },
        ] },
      { title: 'Samples skipped by reason', kind: 'timeseries',
        queries: [{ expr: `sum by (reason) (increase(blip2_trainer_data_samples_skipped_total{${J}}${RATE}))`, legend: '{{reason}}' }] },
      { title: 'Waiting for a batch (mean)', kind: 'timeseries', unit: 's',
        queries: [{ expr: `rate(blip2_trainer_data_batch_wait_seconds_sum{${J}}${RATE}) / rate(blip2_trainer_data_batch_wait_seconds_count{${J}}${RATE})`, legend: '{{node}}' }] },
    ],
  },
  {
    title: 'Membership',
    panels: [
      { title: 'World size', kind: 'timeseries',
        queries: [
          { expr: `max(blip2_coordinator_world_size{${J}})`, legend: 'world' },
          { expr: `max(blip2_coordinator_members{${J}})`, legend: 'registered' },
          { expr: `max(blip2_coordinator_world_min{${J}})`, legend: 'world.min' },
        ] },
      { title: 'Generation', kind: 'timeseries', queries: [{ expr: `max(blip2_coordinator_generation{${J}})`, legend: 'generation' }] },
      { title: 'Rendezvous by reason', kind: 'timeseries', description: 'failure: a collective failed (a trainer lost); generation_change: the world changed.',
        queries: [{ expr: `sum by (reason) (increase(blip2_trainer_rendezvous_total{${J}}${RATE}))`, legend: '{{reason}}' }] },
    ],
  },
  {
    title: 'Processes',
    panels: [
      { title: 'CPU (cores)', kind: 'timeseries', queries: [{ expr: `rate(process_cpu_seconds_total{${J}}${RATE})`, legend: '{{node}}' }] },
      { title: 'Resident memory', kind: 'timeseries', unit: 'bytes', queries: [{ expr: `process_resident_memory_bytes{${J}}`, legend: '{{node}}' }] },
      { title: 'Event loop lag p99', kind: 'timeseries', unit: 's', queries: [{ expr: `nodejs_eventloop_lag_p99_seconds{${J}}`, legend: '{{node}}' }] },
    ],
  },
];

/** Every query of the dashboard, with its panel's title. */
export function dashboardQueries(): { panel: string; expr: string }[] {
  return ROWS.flatMap((r) => r.panels.flatMap((p) => p.queries.map((q) => ({ panel: `${r.title} / ${p.title}`, expr: q.expr }))));
}

/** Metric names a PromQL expression reads (the series names of this project and of Node's default metrics). */
export function metricNames(expr: string): string[] {
  return [...new Set(expr.match(/\b(?:blip2|process|nodejs)_[a-zA-Z0-9_]+/g) ?? [])];
}

export function buildDashboard(): Dashboard {
  const b = new DashboardBuilder('BLIP-2 training')
    .uid(DASHBOARD_UID)
    .tags(['blip2-dist', 'training'])
    .description('One training job: losses, progress, step time, collectives, data pipeline, membership. Pick the job with the `job` variable.')
    .refresh('30s')
    .time({ from: 'now-6h', to: 'now' })
    .timezone('browser')
    .editable()
    .withVariable(new DatasourceVariableBuilder('datasource').label('Prometheus').type('prometheus'))
    .withVariable(
      new QueryVariableBuilder('job').label('job')
        .description('The job id (job.id): the job_id label every series of its processes carries.')
        .datasource(DS).query('label_values(blip2_coordinator_generation, job_id)').definition('label_values(blip2_coordinator_generation, job_id)')
        .refresh(VariableRefresh.OnTimeRangeChanged).sort(1),
    );
  for (const row of ROWS) {
    b.withRow(new RowBuilder(row.title));
    const width = Math.floor(24 / row.panels.length);
    for (const p of row.panels) {
      const targets = p.queries.map((q, i) => {
        const t = new DataqueryBuilder().expr(q.expr).refId(String.fromCharCode(65 + i)).datasource(DS);
        return q.legend ? t.legendFormat(q.legend) : t;
      });
      if (p.kind === 'stat') {
        const panel = new StatPanel().title(p.title).datasource(DS).height(6).span(p.width ?? width);
        if (p.unit) panel.unit(p.unit);
        if (p.description) panel.description(p.description);
        for (const t of targets) panel.withTarget(t);
        b.withPanel(panel);
      } else {
        const panel = new TimeSeriesPanel().title(p.title).datasource(DS).height(8).span(p.width ?? width);
        if (p.unit) panel.unit(p.unit);
        if (p.description) panel.description(p.description);
        if (p.stack) panel.fillOpacity(40).stacking(new StackingConfigBuilder().mode(StackingMode.Normal));
        for (const t of targets) panel.withTarget(t);
        b.withPanel(panel);
      }
    }
  }
  return b.build();
}
