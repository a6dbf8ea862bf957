// benches/peers/node-cluster.js: a Node.js `cluster` HTTP server for node-cluster.sh.
//
// The primary forks WORKERS workers (default 4), passing each its 0-based index in WORKER_INDEX
// (cluster.worker.id starts at 1 and grows on every respawn). Every worker answers every request
// with `worker <index> pid <pid>\n`, the body `herd serve` gives, so `herd load` can count the
// distribution. The scheduling policy is Node's own: NODE_CLUSTER_SCHED_POLICY=rr (the primary
// accepts and hands each connection round-robin to a worker) or none (the workers share the
// listening handle and all accept on it). Listens on 127.0.0.1:PORT only. When every worker
// is listening the primary prints `ready ...`; SIGTERM or SIGINT stops the workers, then it.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

const workers = Number(process.env.WORKERS || 4);
const port = Number(process.env.PORT || 8080);
const host = '127.0.0.1';

if (cluster.isPrimary) {
  const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < workers; i++) {
    cluster.fork({ WORKER_INDEX: String(i) });
  }
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) {
      console.log(`ready policy=${policy} workers=${workers} listen=${host}:${port} pid=${process.pid}`);
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`worker pid ${worker.process.pid} exited (code ${code}, signal ${signal})`);
    }
    if (Object.keys(cluster.workers).length === 0 && stopping) {
      process.exit(0);
    }
  });
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const left = Object.values(cluster.workers);
    if (left.length === 0) process.exit(0);
    for (const w of left) w.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const body = `worker ${process.env.WORKER_INDEX} pid ${process.pid}\n`;
  const length = String(Buffer.byteLength(body));
  // `GET /block/MS` blocks this worker MS milliseconds before answering, as `herd serve` does:
  // a slow handler (Atomics.wait blocks the thread, like a CPU-bound or blocking call).
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  http
    .createServer((req, res) => {
      const block = /^\/block\/(\d+)$/.exec(req.url);
      if (block) Atomics.wait(sleeper, 0, 0, Math.min(Number(block[1]), 60000));
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': length });
      res.end(body);
    })
    .listen(port, host);
}
