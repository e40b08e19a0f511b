// The command line and the launchers: the `blip2` command (main.ts, loaded by bin/blip2.js, with the model, data
// and job subcommands), the local launcher that runs a whole job on this machine, the nats-server it starts, the
// Kubernetes target and the job benchmark (bench/). The top of the house: nothing in the other rooms imports it.
// This surface is for the tests and the benchmark.
export { launchLocal, DEMO_OVERRIDES, type LaunchOptions, type LaunchSummary } from './launcher';
export { startNatsServer, freePort, type NatsServerHandle, type StartNatsServerOptions } from './nats-server';
export { renderKubernetesTarget, type KubernetesTargetOptions, type RenderedFiles } from './kubernetes';
