// Generated deployment artifacts: the Kubernetes manifests of a job (deploy/k8s/), rendered from its resolved
// config as typed objects, the Grafana dashboard (deploy/grafana/) and the Prometheus scrape config and alert rules
// (deploy/prometheus/). Used by the command line and scripts; nothing here talks to a cluster. The image recipe is
// deploy/Dockerfile.
export {
  renderKubernetes, renderKubernetesYaml, toYaml, checkKubernetesJobId, cpuCores,
  COORDINATOR_METRICS_PORT, TRAINER_METRICS_PORT, TRAINER_GRPC_PORT, NATS_CLIENT_PORT, DATA_MOUNT, CONFIG_MOUNT, MAX_KUBERNETES_JOB_ID,
  type RenderOptions, type RenderedObject,
} from './k8s/manifests';
export { buildDashboard, dashboardQueries, metricNames, DASHBOARD_UID } from './grafana/dashboard';
