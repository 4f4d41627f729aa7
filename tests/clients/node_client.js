// The wire contract from Node's @grpc/grpc-js, a third gRPC implementation
// (beside tonic and grpcio), with @grpc/proto-loader reading proto/ as
// shipped. Run by tests/cross_client.rs on the Unix socket (default options)
// and over TCP with a bearer token.
//
//   node node_client.js PROTO_DIR TARGET HOME MYSQL_PORT [TOKEN]
//
// TARGET is unix:/path or 127.0.0.1:PORT. It starts the stand-in observer
// (OBHOST_FAKE_OBSERVER) at HOME with StartObserver, follows it with
// WatchSteps to SUCCEEDED, replays the step id, and checks a refusal.
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protoDir, target, home, mysqlPort, token] = process.argv.slice(2);
const def = loader.loadSync("obhost/v1/host_agent.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const pkg = grpc.loadPackageDefinition(def).obhost.v1;
const client = new pkg.HostAgent(target, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
if (token) md.set("authorization", `Bearer ${token}`);

const call = (method, req) =>
  new Promise((resolve, reject) =>
    client[method](req, md, (err, res) => (err ? reject(err) : resolve(res))));

function fail(what) {
  console.error(`FAILED: ${what}`);
  process.exit(1);
}

async function main() {
  const host = (await call("GetHostInfo", {})).host;
  if (!(Number(host.cpus) > 0)) fail(`host info: ${JSON.stringify(host)}`);

  const id = `node-start-${target.startsWith("unix:") ? "unix" : "tcp"}`;
  const ended = new Promise((resolve, reject) => {
    const watch = client.WatchSteps({ step_ids: [id] }, md);
    watch.on("data", (m) => {
      if (m.step && m.step.id === id && !["STEP_STATE_PENDING", "STEP_STATE_RUNNING"].includes(m.step.state)) {
        watch.cancel();
        resolve(m.step);
      }
    });
    watch.on("error", (e) => (e.code === grpc.status.CANCELLED ? null : reject(e)));
  });
  const spec = {
    home_path: home,
    binary: process.env.OBHOST_FAKE_OBSERVER,
    mysql_port: Number(mysqlPort),
    rpc_port: Number(mysqlPort) + 1,
    zone: "zone1",
    cluster_name: "obtest",
    cluster_id: 1,
  };
  const req = { meta: { step_id: id, timeout: { seconds: 60 } }, observer: spec };
  const first = (await call("StartObserver", req)).step;
  const step = await ended;
  if (step.state !== "STEP_STATE_SUCCEEDED") fail(`${id} ended ${JSON.stringify(step)}`);
  const again = (await call("StartObserver", req)).step;
  if (again.id !== first.id || JSON.stringify(again.created_at) !== JSON.stringify(first.created_at)) {
    fail(`a replayed step id made a new step: ${JSON.stringify(again)}`);
  }
  try {
    await call("StartObserver", { meta: { step_id: `${id}-bad` }, observer: { home_path: "relative/home" } });
    fail("a relative home_path was accepted");
  } catch (e) {
    if (e.code !== grpc.status.INVALID_ARGUMENT || !e.details.includes("home_path")) fail(`refused as ${e.code}: ${e.details}`);
  }
  console.log(`node ${target.startsWith("unix:") ? "unix" : "tcp"}: all checks passed`);
  client.close();
}

main().catch((e) => fail(e.stack || e));
