/**
 * All-reduce benchmark: N rank processes on this machine, a gRPC ring (trainer/collective) between them.
 *
 *   npm run bench:allreduce -- --ranks 3 --mb 64 [--link 1gbit] [--fp16] [--iters 5]
 *
 * Prints per size the algorithm bandwidth (bytes of the fp32 tensor / time) and the bus bandwidth (NCCL's
 * definition: algbw × 2(N-1)/N) in MB/s (1 MB = 1e6 bytes), the raw bandwidth of plain TCP between two of the
 * same processes over the same path measured in the same run, then `busbw_MBps <n>` for the largest size and,
 * last, `busbw_ratio <busbw / raw>`.
 *
 * With --link RATE (a tc rate such as 1gbit or 500mbit; needs root and iproute2) every rank runs in its own
 * network namespace with one veth "NIC" to a bridge, limited to RATE in each direction, as on a cluster.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect as tcpConnect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { createCollectiveGroup, type CollectiveGroup } from '../collective';
import { passThroughBidiMethod } from '../collective/grpc-transport';

const passThrough = (b: Buffer) => b;
/** A bare gRPC stream through grpc-js's message layer (pass-through Buffers, big window), for comparison. */
const streamService: grpc.ServiceDefinition = { Pull: passThroughBidiMethod('/blip2.bench.v1.Stream/Pull') };

const MiB = 1024 * 1024;
const selfPath = fileURLToPath(import.meta.url);

// ---- worker (one rank) ------------------------------------------------------------------------------------------

type BenchOp = 'allreduce' | 'broadcast' | 'allgather';

interface WorkerArgs {
  rank: number;
  worldSize: number;
  chunkBytes: number;
  streamsPerLink: number;
  directFraming: boolean;
}

type Command_ =
  | { cmd: 'connect'; peers: { rank: number; host: string; port: number }[] }
  | { cmd: 'raw-listen' }
  | { cmd: 'raw-send'; host: string; port: number; bytes: number }
  | { cmd: 'grpc-listen'; bytes: number; chunkBytes: number }
  | { cmd: 'grpc-recv'; host: string; port: number; chunkBytes: number }
  | { cmd: 'allreduce'; elements: number; iters: number; warmup: number; fp16: boolean; op: BenchOp }
  | { cmd: 'exit' };

async function worker(a: WorkerArgs): Promise<void> {
  const reply = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
  const group: CollectiveGroup = await createCollectiveGroup({
    jobId: 'bench-allreduce',
    token: 'bench-token',
    listen: { host: '0.0.0.0', port: 0 },
    timeoutMs: 60_000,
    chunkBytes: a.chunkBytes,
    streamsPerLink: a.streamsPerLink,
    directFraming: a.directFraming,
    bucketCapBytes: 1024 * MiB,
  });
  reply({ port: group.address.port });
  let rawReceived: Promise<void> | null = null;
  let grpcServer: grpc.Server | null = null;
  for await (const line of createInterface({ input: process.stdin })) {
    const c = JSON.parse(line) as Command_;
    if (c.cmd === 'connect') {
      await group.connect({ generation: 1, rank: a.rank, worldSize: a.worldSize, peers: c.peers });
      reply({ ok: true, direct: group.directFramingStreams() });
    } else if (c.cmd === 'raw-listen') {
      // Receives bytes on a plain TCP socket and answers one byte when the sender's total has arrived.
      const server = createServer();
      server.listen(0, '0.0.0.0');
      await once(server, 'listening');
      rawReceived = new Promise((resolve) => {
        server.once('connection', (s: Socket) => {
          let want = -1;
          let got = 0;
          let head = Buffer.alloc(0);
          s.on('data', (d: Buffer) => {
            if (want < 0) {
              head = Buffer.concat([head, d]);
              if (head.length < 8) return;
              want = Number(head.readBigUInt64LE(0));
              got = head.length - 8;
            } else {
              got += d.length;
            }
            if (got >= want) {
              s.end(Buffer.from([1]));
              server.close();
              resolve();
            }
          });
        });
      });
      reply({ port: (server.address() as { port: number }).port });
    } else if (c.cmd === 'grpc-listen') {
      // Serves one stream that writes `bytes` in chunkBytes messages on the response side (as the ring does).
      const server = new grpc.Server({ 'grpc.max_send_message_length': c.chunkBytes + 65536, 'grpc.max_receive_message_length': c.chunkBytes + 65536 });
      server.addService(streamService, {
        Pull: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
          const msg = Buffer.alloc(c.chunkBytes, 3);
          let left = c.bytes;
          const pump = () => {
            while (left > 0) {
              const n = Math.min(left, msg.length);
              left -= n;
              if (!call.write(n === msg.length ? msg : msg.subarray(0, n))) return void call.once('drain', pump);
            }
            call.end();
          };
          call.on('error', () => {});
          pump();
        },
      });
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('0.0.0.0:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
      );
      grpcServer = server;
      reply({ port });
    } else if (c.cmd === 'grpc-recv') {
      const client = new grpc.Client(`${c.host}:${c.port}`, grpc.credentials.createInsecure(), {
        'grpc-node.flow_control_window': 32 * MiB,
        'grpc.max_receive_message_length': c.chunkBytes + 65536,
      });
      const t0 = process.hrtime.bigint();
      const call = client.makeBidiStreamRequest('/blip2.bench.v1.Stream/Pull', passThrough, passThrough, new grpc.Metadata());
      let got = 0;
      call.on('data', (b: Buffer) => (got += b.length));
      await new Promise<void>((resolve, reject) => {
        call.on('status', (st: grpc.StatusObject) => (st.code === grpc.status.OK ? resolve() : reject(new Error(st.details))));
        call.on('error', reject);
      });
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      client.close();
      grpcServer?.forceShutdown();
      reply({ MBps: got / 1e6 / seconds });
    } else if (c.cmd === 'raw-send') {
      const s = tcpConnect(c.port, c.host);
      await once(s, 'connect');
      const block = Buffer.alloc(4 * MiB, 7);
      const t0 = process.hrtime.bigint();
      const head = Buffer.alloc(8);
      head.writeBigUInt64LE(BigInt(c.bytes));
      s.write(head);
      let sent = 0;
      while (sent < c.bytes) {
        const n = Math.min(block.length, c.bytes - sent);
        sent += n;
        if (!s.write(n === block.length ? block : block.subarray(0, n))) await once(s, 'drain');
      }
      await once(s, 'data');
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      s.destroy();
      reply({ MBps: c.bytes / 1e6 / seconds });
    } else if (c.cmd === 'allreduce') {
      const buf = new Float32Array(c.elements);
      const times: number[] = [];
      let cpuMs = 0;
      for (let i = 0; i < c.warmup + c.iters; i++) {
        buf.fill(a.rank + 1);
        await group.barrier();
        const c0 = process.cpuUsage();
        const t0 = process.hrtime.bigint();
        if (c.op === 'broadcast') await group.broadcast(buf, 0);
        else if (c.op === 'allgather') await group.allGather(buf.subarray(0, Math.floor(c.elements / a.worldSize)));
        else await group.allReduce([buf], { fp16Wire: c.fp16 });
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        const cpu = process.cpuUsage(c0);
        if (i >= c.warmup) {
          times.push(ms);
          cpuMs += (cpu.user + cpu.system) / 1000 / c.iters;
        }
        const want = c.op === 'allreduce' ? (a.worldSize * (a.worldSize + 1)) / 2 : c.op === 'broadcast' ? 1 : a.rank + 1;
        if (buf[0] !== want || (c.op !== 'allgather' && (buf[c.elements - 1] !== want || buf[c.elements >> 1] !== want))) {
          throw new Error(`rank ${a.rank}: wrong sum ${buf[0]} (want ${want})`);
        }
      }
      reply({ times, cpuMs });
    } else if (c.cmd === 'exit') {
      await rawReceived;
      await group.close();
      reply({ ok: true });
      process.exit(0);
    }
  }
}

// ---- network namespaces -----------------------------------------------------------------------------------------

interface Netns {
  names: string[];
  hosts: string[];
  teardown(): void;
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** One namespace per rank, each with a veth to a shared bridge; tc limits both directions of every veth. */
function setupNetns(worldSize: number, rate: string): Netns {
  if (process.getuid?.() !== 0) throw new Error('--link needs root (network namespaces and tc)');
  try {
    execFileSync('tc', ['-V'], { stdio: 'ignore' });
  } catch {
    throw new Error('--link needs iproute2 (ip, tc); run test/setup/install.sh');
  }
  const tag = `${process.pid % 100000}`;
  const bridge = `brar${tag}`;
  const names = Array.from({ length: worldSize }, (_, r) => `blip2-ar-${tag}-${r}`);
  const hosts = Array.from({ length: worldSize }, (_, r) => `10.77.0.${r + 1}`);
  const teardown = () => {
    for (const n of names) {
      try {
        ip('netns', 'del', n);
      } catch {
        // already gone
      }
    }
    try {
      ip('link', 'del', bridge);
    } catch {
      // already gone
    }
  };
  // A token bucket on each end of each veth: the rank's egress, and the bridge port's egress (= its ingress).
  // burst must hold a GSO super-packet (64 KiB) or the qdisc drops it.
  const limit = (dev: string, ns?: string) =>
    execFileSync(ns ? 'ip' : 'tc', [...(ns ? ['netns', 'exec', ns, 'tc'] : []), 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '20ms'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  try {
    ip('link', 'add', bridge, 'type', 'bridge');
    ip('link', 'set', bridge, 'up');
    names.forEach((ns, r) => {
      const inner = `va${tag}r${r}`;
      const outer = `vb${tag}r${r}`;
      ip('netns', 'add', ns);
      ip('link', 'add', inner, 'type', 'veth', 'peer', 'name', outer);
      ip('link', 'set', inner, 'netns', ns);
      ip('link', 'set', outer, 'master', bridge);
      ip('link', 'set', outer, 'up');
      ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');
      ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${hosts[r]}/24`, 'dev', inner);
      ip('netns', 'exec', ns, 'ip', 'link', 'set', inner, 'up');
      limit(inner, ns);
      limit(outer);
    });
  } catch (e) {
    teardown();
    const err = e as Error & { stderr?: Buffer };
    throw new Error(`cannot set up network namespaces: ${err.stderr?.toString().trim() || err.message}`);
  }
  return { names, hosts, teardown };
}

// ---- parent ---------------------------------------------------------------------------------------------------

class Rank {
  private readonly lines: AsyncIterator<string>;
  stderr = '';
  constructor(readonly child: ChildProcess) {
    this.lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }
  async next<T>(): Promise<T> {
    const { value, done } = await this.lines.next();
    if (done) throw new Error(`rank process exited (${this.child.exitCode}): ${this.stderr.slice(-2000)}`);
    return JSON.parse(value as string) as T;
  }
  async ask<T>(c: Command_): Promise<T> {
    this.child.stdin!.write(JSON.stringify(c) + '\n');
    return this.next<T>();
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function parseIntArg(name: string, min: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}; got "${v}"`);
    return n;
  };
}

async function main(): Promise<void> {
  const program = new Command('bench:allreduce')
    .description('Ring all-reduce over gRPC between N rank processes; bus bandwidth against raw TCP on the same path.')
    .option('--ranks <n>', 'number of rank processes', parseIntArg('--ranks', 2), 2)
    .option('--mb <m>', 'largest tensor, in MiB of fp32 (sizes 1, 4, 16, ... up to it)', parseIntArg('--mb', 1), 64)
    .option('--link <rate>', 'run each rank in its own network namespace behind a veth limited to this tc rate (e.g. 1gbit)')
    .option('--fp16', 'send fp16 on the wire (algbw counts fp32 bytes)', false)
    .option('--op <op>', 'collective to time: allreduce, broadcast (from rank 0) or allgather (size = all blocks together)', 'allreduce')
    .option('--iters <k>', 'timed iterations per size (median reported, and the best)', parseIntArg('--iters', 1), 5)
    .option('--warmup <k>', 'untimed iterations per size', parseIntArg('--warmup', 0), 1)
    .option('--streams <k>', 'parallel gRPC streams per neighbour link', parseIntArg('--streams', 1), 1)
    .option('--framing <how>', 'data frames: direct (on the HTTP/2 streams beneath grpc-js) or grpc (grpc-js messages)', 'direct')
    .option('--chunk-kb <k>', 'largest payload of one gRPC message, KiB', parseIntArg('--chunk-kb', 16), 1024)
    .option('--raw-mb <m>', 'MiB sent for the raw TCP baseline', parseIntArg('--raw-mb', 1), 256)
    .option('--cpu-prof-dir <dir>', 'write a V8 CPU profile of every rank process into this folder');
  program.parse();
  const o = program.opts<{ ranks: number; mb: number; link?: string; fp16: boolean; iters: number; warmup: number; chunkKb: number; rawMb: number; cpuProfDir?: string; op: BenchOp; streams: number; framing: string }>();
  if (o.framing !== 'direct' && o.framing !== 'grpc') throw new InvalidArgumentError(`--framing must be direct or grpc; got "${o.framing}"`);
  if (!['allreduce', 'broadcast', 'allgather'].includes(o.op)) throw new InvalidArgumentError(`--op must be allreduce, broadcast or allgather; got "${o.op}"`);
  if (o.link !== undefined && !/^\d+(\.\d+)?([kmg]?bit|[kmg]?bps)$/i.test(o.link)) {
    throw new InvalidArgumentError(`--link must be a tc rate such as 1gbit or 500mbit; got "${o.link}"`);
  }
  const n = o.ranks;
  const sizes: number[] = [];
  for (let s = 1; s < o.mb; s *= 4) sizes.push(s);
  sizes.push(o.mb);

  const netns = o.link ? setupNetns(n, o.link) : null;
  const cleanup = () => netns?.teardown();
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  const ranks: Rank[] = [];
  try {
    const hosts = netns ? netns.hosts : Array.from({ length: n }, () => '127.0.0.1');
    for (let r = 0; r < n; r++) {
      const args = [...(o.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProfDir] : []), '--import', 'tsx', selfPath, '--worker', JSON.stringify({ rank: r, worldSize: n, chunkBytes: o.chunkKb * 1024, streamsPerLink: o.streams, directFraming: o.framing === 'direct' } satisfies WorkerArgs)];
      const child = netns ? spawn('ip', ['netns', 'exec', netns.names[r]!, process.execPath, ...args]) : spawn(process.execPath, args);
      ranks.push(new Rank(child));
    }
    const ports = await Promise.all(ranks.map((r) => r.next<{ port: number }>()));
    const peers = ports.map((p, r) => ({ rank: r, host: hosts[r]!, port: p.port }));
    const connected = await Promise.all(ranks.map((r) => r.ask<{ direct: { send: number; receive: number } | null }>({ cmd: 'connect', peers })));
    const directSend = connected.reduce((t, c) => t + (c.direct?.send ?? 0), 0);
    const directReceive = connected.reduce((t, c) => t + (c.direct?.receive ?? 0), 0);

    const rawOnce = async () => {
      const { port } = await ranks[1]!.ask<{ port: number }>({ cmd: 'raw-listen' });
      const { MBps } = await ranks[0]!.ask<{ MBps: number }>({ cmd: 'raw-send', host: hosts[1]!, port, bytes: o.rawMb * MiB });
      return MBps;
    };
    const raw1 = await rawOnce();
    const grpcOnce = async () => {
      const { port } = await ranks[1]!.ask<{ port: number }>({ cmd: 'grpc-listen', bytes: o.rawMb * MiB, chunkBytes: o.chunkKb * 1024 });
      const { MBps } = await ranks[0]!.ask<{ MBps: number }>({ cmd: 'grpc-recv', host: hosts[1]!, port, chunkBytes: o.chunkKb * 1024 });
      return MBps;
    };

    const machine = `${(await import('node:os')).cpus().length} CPUs, ${(await import('node:os')).cpus()[0]?.model ?? '?'}`;
    console.log(`# ring ${o.op} over gRPC: ${n} ranks, ${o.link ? `network namespaces, ${o.link} veth links` : 'loopback'}, ${o.fp16 ? 'fp16' : 'fp32'} on the wire, chunk ${o.chunkKb} KiB, ${o.streams} stream(s) per link, framing ${o.framing} (direct on ${directSend} sending / ${directReceive} receiving of ${n * o.streams} streams), median of ${o.iters}; ${machine}`);
    console.log('size_MiB  time_ms  algbw_MBps  busbw_MBps  busbw/raw  best_busbw  cpu_ms/rank');
    let lastBus = 0;
    for (const mib of sizes) {
      const elements = (mib * MiB) / 4;
      const res = await Promise.all(ranks.map((r) => r.ask<{ times: number[]; cpuMs: number }>({ cmd: 'allreduce', elements, iters: o.iters, warmup: o.warmup, fp16: o.fp16, op: o.op })));
      // Per iteration, the slowest rank's time (the collective is done when every rank is).
      const perIter = res[0]!.times.map((_, i) => Math.max(...res.map((x) => x.times[i]!)));
      const ms = median(perIter);
      const bestMs = Math.min(...perIter);
      const algbw = (mib * MiB) / 1e6 / (ms / 1000);
      // NCCL's bus-bandwidth factors: all-reduce 2(N-1)/N, all-gather (N-1)/N, broadcast 1.
      const busbw = algbw * (o.op === 'allreduce' ? (2 * (n - 1)) / n : o.op === 'allgather' ? (n - 1) / n : 1);
      lastBus = busbw;
      console.log(`${String(mib).padStart(8)}  ${ms.toFixed(1).padStart(7)}  ${algbw.toFixed(0).padStart(10)}  ${busbw.toFixed(0).padStart(10)}  ${(busbw / raw1).toFixed(3).padStart(9)}  ${((busbw * ms) / bestMs).toFixed(0).padStart(10)}  ${(res.reduce((t, x) => t + x.cpuMs, 0) / n).toFixed(0).padStart(11)}`);
    }
    const raw2 = await rawOnce();
    if (netns) {
      // TCP retransmissions and timeouts inside the namespaces (losses at the rate limiter stall a stream).
      const stat = (ns: string) => {
        const out = execFileSync('ip', ['netns', 'exec', ns, 'nstat', '-az', 'TcpRetransSegs', 'TcpExtTCPTimeouts', 'TcpOutSegs'], { encoding: 'utf8' });
        const get = (k: string) => Number(out.match(new RegExp(`${k}\\s+(\\d+)`))?.[1] ?? NaN);
        return `${get('TcpRetransSegs')}/${get('TcpOutSegs')} retransmitted, ${get('TcpExtTCPTimeouts')} timeouts`;
      };
      console.log(`# tcp: ${netns.names.map((ns, r) => `rank ${r}: ${stat(ns)}`).join('; ')}`);
    }
    const raw = Math.max(raw1, raw2);
    const grpcStream = await grpcOnce();
    console.log(`raw_tcp_MBps ${raw.toFixed(0)} (two processes, same path; runs ${raw1.toFixed(0)} and ${raw2.toFixed(0)})`);
    console.log(`grpc_stream_MBps ${grpcStream.toFixed(0)} (one gRPC stream through grpc-js's own message layer, same processes and settings, ${o.chunkKb} KiB messages)`);
    console.log(`busbw_MBps ${lastBus.toFixed(0)}`);
    console.log(`busbw_ratio ${(lastBus / raw).toFixed(3)}`);
    await Promise.all(ranks.map((r) => r.ask({ cmd: 'exit' })));
    await Promise.all(ranks.map((r) => (r.child.exitCode === null ? Promise.race([once(r.child, 'exit'), new Promise((f) => setTimeout(f, 5000))]) : null)));
  } finally {
    for (const r of ranks) if (r.child.exitCode === null) r.child.kill('SIGKILL');
    cleanup();
  }
}

const workerAt = process.argv.indexOf('--worker');
if (workerAt >= 0) {
  worker(JSON.parse(process.argv[workerAt + 1]!) as WorkerArgs).catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? e}\n`);
    process.exit(1);
  });
} else {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
