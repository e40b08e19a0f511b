// The nats-server harness lives with the local launcher (cli/), which uses it too; tests import it from here.
export { startNatsServer, freePort, type NatsServerHandle, type StartNatsServerOptions } from '../../cli';
