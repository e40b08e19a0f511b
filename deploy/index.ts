// Generated deployment artifacts: the Kubernetes manifests of a job (deploy/k8s/), rendered from its resolved
// config, the Grafana dashboard (deploy/grafana/) and the Prometheus scrape config and alert rules (deploy/prometheus/).
// Used by the command line and scripts; nothing here talks to a cluster.
export { renderKubernetes, renderKubernetesYaml, type RenderOptions } from './k8s/manifests';
export { buildDashboard, dashboardQueries, metricNames, DASHBOARD_UID } from './grafana/dashboard';
