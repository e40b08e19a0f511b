// Generated deployment artifacts: the Kubernetes manifests of a job (deploy/k8s/), rendered from its resolved
// config. Used by the command line only (`blip2 launch --target kubernetes`); nothing here talks to a cluster.
export { renderKubernetes, renderKubernetesYaml, type RenderOptions } from './k8s/manifests';
